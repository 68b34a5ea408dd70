#!/bin/bash
# A single-node Slurm cluster run entirely as the current (non-root) user.
#
#   binder/cluster.sh up       write the configuration (once) and start munged, slurmctld, slurmd
#   binder/cluster.sh down     stop the three daemons
#   binder/cluster.sh status   one line per daemon, then sinfo
#   binder/cluster.sh env      print the shell exports clients need (SLURM_CONF, ...)
#
# Everything lives under $JUPYTER_HPC_DEMO_DIR (default ~/.jupyter-hpc-demo):
#   etc/slurm.conf, etc/gres.conf, etc/munge.key    configuration (SLURM_CONF points here)
#   run/                                            munge socket and pid files
#   log/                                            daemon logs
#   lib/                                            Slurm state and spool directories
#
# The cluster uses its own TCP ports (free ones, chosen once), its own munged
# (its own key and socket: AuthInfo=socket=...) and SlurmUser = SlurmdUser =
# the current user, so it runs beside a system-wide Slurm on the same machine.
# Jobs run as the current user only. The node is in two partitions: `cpu`
# (default) and `gpu`; `gpu` has the machine's NVIDIA GPUs as GRES or, when
# there are none, one stand-in GPU (File=/dev/null) so that GPU requests can be
# demonstrated; programs then find no CUDA device and say so.
set -euo pipefail

DEMO_DIR=${JUPYTER_HPC_DEMO_DIR:-$HOME/.jupyter-hpc-demo}
ETC=$DEMO_DIR/etc
RUN=$DEMO_DIR/run
LOG=$DEMO_DIR/log
LIB=$DEMO_DIR/lib
CONF=$ETC/slurm.conf
MUNGE_SOCKET=$RUN/munge.socket
MUNGE_KEY=$ETC/munge.key
MUNGE_PID=$RUN/munged.pid
SLURMCTLD_PID=$RUN/slurmctld.pid
SLURMD_PID=$RUN/slurmd.pid

SBIN=${JUPYTER_HPC_DEMO_SBIN:-/usr/sbin}
export SLURM_CONF=$CONF

say() { printf 'jupyter-hpc demo cluster: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

pid_alive() {
    local f=$1 pid
    [[ -s $f ]] || return 1
    pid=$(<"$f")
    [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null
}

# stop_pidfile FILE [SECONDS]: TERM, wait, KILL.
stop_pidfile() {
    local f=$1 t=${2:-20} pid i
    pid_alive "$f" || { rm -f "$f"; return 0; }
    pid=$(<"$f")
    kill "$pid" 2>/dev/null || true
    for ((i = 0; i < t * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$f"; return 0; }
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$f"
}

wait_for() {
    local t=$1 i; shift
    for ((i = 0; i < t * 5; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    return 1
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

node_name() { hostname -s; }

gpu_lines() {
    # -> "<count> <gres.conf File= value> <type>"
    local devs=() d
    for d in /dev/nvidia[0-9]*; do
        [[ -c $d ]] && devs+=("$d")
    done
    if ((${#devs[@]})); then
        echo "${#devs[@]} /dev/nvidia[0-$((${#devs[@]} - 1))] nvidia"
    else
        echo "1 /dev/null none"
    fi
}

write_config() {
    install -d -m 0700 "$DEMO_DIR" "$ETC" "$RUN" "$LOG" "$LIB" "$LIB/slurmctld" "$LIB/slurmd"
    if [[ ! -s $MUNGE_KEY ]]; then
        (umask 077 && dd if=/dev/urandom of="$MUNGE_KEY" bs=1024 count=1 status=none)
    fi
    chmod 0400 "$MUNGE_KEY"
    [[ -s $CONF ]] && return 0
    local node user cpus mem ctld_port slurmd_port gcount gfile gtype
    node=$(node_name)
    user=$(id -un)
    cpus=$(nproc)
    ((cpus >= 4)) || cpus=4
    mem=$(awk '/^MemTotal:/ { printf "%d", $2 / 1024 }' /proc/meminfo)
    ((mem <= 16000)) || mem=16000
    ctld_port=${JUPYTER_HPC_DEMO_SLURMCTLD_PORT:-$(free_port)}
    slurmd_port=${JUPYTER_HPC_DEMO_SLURMD_PORT:-$(free_port)}
    [[ $ctld_port != "$slurmd_port" ]] || slurmd_port=$(free_port)
    read -r gcount gfile gtype < <(gpu_lines)
    cat >"$CONF.tmp" <<EOT
# Single-node Slurm cluster of the jupyter-hpc demo, run as $user
# (written by binder/cluster.sh).
ClusterName=jupyterhpcdemo
SlurmctldHost=$node(127.0.0.1)
SlurmUser=$user
SlurmdUser=$user
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET
StateSaveLocation=$LIB/slurmctld
SlurmdSpoolDir=$LIB/slurmd
SlurmctldPidFile=$SLURMCTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MinJobAge=300
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=256
GresTypes=gpu
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,sched_min_interval=0,batch_sched_delay=0,bf_interval=1
MessageTimeout=10
KillWait=5
InactiveLimit=0
SlurmdTimeout=300
ReturnToService=2
SlurmdParameters=config_overrides
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem Gres=gpu:$gtype:$gcount State=UNKNOWN
PartitionName=cpu Nodes=$node Default=YES MaxTime=1-00:00:00 DefaultTime=01:00:00 State=UP
PartitionName=gpu Nodes=$node Default=NO MaxTime=1-00:00:00 DefaultTime=01:00:00 State=UP
EOT
    echo "NodeName=$node Name=gpu Type=$gtype File=$gfile" >"$ETC/gres.conf"
    mv "$CONF.tmp" "$CONF"
}

munge_ok() { munge -S "$MUNGE_SOCKET" -n </dev/null | unmunge -S "$MUNGE_SOCKET" >/dev/null 2>&1; }

munge_up() {
    if pid_alive "$MUNGE_PID" && munge_ok; then return 0; fi
    rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
    # --force: accept the directory ownership found in containers and user namespaces.
    "$SBIN/munged" --force --socket="$MUNGE_SOCKET" --key-file="$MUNGE_KEY" --pid-file="$MUNGE_PID" \
        --log-file="$LOG/munged.log" --seed-file="$LIB/munged.seed" ||
        { tail -5 "$LOG/munged.log" >&2; return 1; }
    wait_for 10 munge_ok || { tail -5 "$LOG/munged.log" >&2; die "munged does not answer"; }
}

slurm_answers() { scontrol ping 2>/dev/null | grep -q 'is UP'; }

node_ready() {
    case $(sinfo -h -N -o '%T' 2>/dev/null | sort -u | paste -sd, -) in
        idle|mixed|allocated|idle,*|mixed,*|allocated,*) return 0 ;;
    esac
    return 1
}

cmd_up() {
    command -v "$SBIN/slurmctld" >/dev/null || die "Slurm is not installed ($SBIN/slurmctld)"
    write_config
    munge_up
    if ! pid_alive "$SLURMCTLD_PID"; then
        "$SBIN/slurmctld" || { tail -5 "$LOG/slurmctld.log" >&2; die "slurmctld did not start"; }
    fi
    wait_for 30 slurm_answers || { tail -5 "$LOG/slurmctld.log" >&2; die "slurmctld does not answer"; }
    if ! pid_alive "$SLURMD_PID"; then
        "$SBIN/slurmd" || { tail -5 "$LOG/slurmd.log" >&2; die "slurmd did not start"; }
    fi
    if ! wait_for 20 node_ready; then
        scontrol update NodeName="$(node_name)" State=RESUME >/dev/null 2>&1 || true
        wait_for 20 node_ready || { tail -5 "$LOG/slurmd.log" >&2; die "node not ready: $(sinfo -h -N -o '%T %E')"; }
    fi
    say "up (SLURM_CONF=$CONF)"
}

cmd_down() {
    stop_pidfile "$SLURMD_PID"
    stop_pidfile "$SLURMCTLD_PID"
    stop_pidfile "$MUNGE_PID"
    rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
    say "stopped"
}

cmd_status() {
    local f
    for f in munged slurmctld slurmd; do
        printf '%-10s %s\n' "$f" "$(pid_alive "$RUN/$f.pid" && echo "up (pid $(<"$RUN/$f.pid"))" || echo DOWN)"
    done
    slurm_answers && sinfo
}

cmd_env() {
    printf 'export SLURM_CONF=%q\n' "$CONF"
}

case ${1:-} in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) cmd_env ;;
    *) sed -n '2,8s/^# \{0,1\}//p' "$0"; exit 2 ;;
esac
