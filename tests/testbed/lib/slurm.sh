# munge + single-node Slurm (slurmctld and slurmd on this host, no systemd).
# shellcheck shell=bash

TB_SLURM_CONF_DIR=/etc/slurm
TB_SLURM_LOG_DIR=/var/log/slurm
TB_SLURM_STATE=/var/lib/slurm
TB_SLURMCTLD_PID=/run/slurmctld.pid
TB_SLURMD_PID=/run/slurmd.pid
TB_MUNGE_PID=/run/munge/munged.pid

slurm_node() { hostname -s; }

# ---- munge ----------------------------------------------------------------------
munge_start() {
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge /etc/munge
    if [[ ! -s /etc/munge/munge.key ]]; then
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    if pid_alive "$TB_MUNGE_PID" && munge -n </dev/null | unmunge >/dev/null 2>&1; then
        return 0
    fi
    rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
    runuser -u munge -- /usr/sbin/munged --pid-file="$TB_MUNGE_PID" ||
        { tail -5 /var/log/munge/munged.log >&2; return 1; }
    wait_for 10 sh -c 'munge -n </dev/null | unmunge' || { echo "munged does not answer" >&2; return 1; }
}

munge_stop() { kill_pidfile "$TB_MUNGE_PID"; }

# ---- configuration ------------------------------------------------------------------
# Which cgroup version Slurm's task/cgroup plugin can use here: "v1" (cpuset and
# memory controllers mounted under /sys/fs/cgroup/<name>), "v2" (unified hierarchy
# offering both), or "none". Without cgroups the testbed falls back to the sampler.
slurm_cgroup_mode() {
    if [[ -f /sys/fs/cgroup/cpuset/cpuset.cpus && -f /sys/fs/cgroup/memory/memory.limit_in_bytes ]]; then
        echo v1
    elif [[ -f /sys/fs/cgroup/cgroup.controllers ]] &&
        grep -qw cpuset /sys/fs/cgroup/cgroup.controllers && grep -qw memory /sys/fs/cgroup/cgroup.controllers; then
        echo v2
    else
        echo none
    fi
}

write_slurm_conf() {
    local node; node=$(slurm_node)
    local tmp; tmp=$(mktemp)
    local cgroups; cgroups=$(slurm_cgroup_mode)
    local limits
    if [[ $cgroups == none ]]; then
        limits='# No usable cgroups here: plain process tracking, no CPU binding. Memory
# limits are enforced by the sampler: a job over its --mem is killed.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherParams=OverMemoryKill'
    else
        limits='# Limits enforced by the kernel: each job runs in a cgroup holding only the
# CPUs it was allocated (cpuset) and at most its --mem (memory controller; a job
# over it ends OUT_OF_MEMORY). Settings in cgroup.conf.
ProctrackType=proctrack/cgroup
TaskPlugin=task/cgroup'
    fi
    cat >"$tmp" <<EOT
# Single-node Slurm testbed for jupyter-hpc (written by tests/testbed/testbed.sh).
ClusterName=jupyterhpc
SlurmctldHost=$node
AuthType=auth/munge
SlurmUser=slurm
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$TB_SLURM_STATE/slurmctld
SlurmdSpoolDir=$TB_SLURM_STATE/slurmd
SlurmctldPidFile=$TB_SLURMCTLD_PID
SlurmdPidFile=$TB_SLURMD_PID
SlurmctldLogFile=$TB_SLURM_LOG_DIR/slurmctld.log
SlurmdLogFile=$TB_SLURM_LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info

$limits
# Live job vitals (sstat: CPU time, current and peak memory), sampled every 2 s.
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=2
MpiDefault=none

# No slurmdbd: sacct is unavailable. Finished jobs stay visible in squeue
# for MinJobAge seconds, which is where the testbed learns their end state.
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MinJobAge=300

SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=256
GresTypes=gpu

# Start jobs at once: schedule on every submit/end, short main loop.
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,sched_min_interval=0,batch_sched_delay=0,bf_interval=1,default_queue_depth=200
MessageTimeout=10
KillWait=5
InactiveLimit=0
SlurmdTimeout=300
ReturnToService=2

# The node declares more CPUs than the machine has so that many small jobs fit;
# config_overrides makes slurmd report the configured values. With cgroups the
# declared CPUs map onto the real ones in turn: a 1-CPU job is held to one real
# CPU, and successive jobs land on different ones.
SlurmdParameters=config_overrides
NodeName=$node CPUs=$TB_NODE_CPUS RealMemory=$TB_NODE_MEMORY Gres=gpu:$TB_GPU_TYPE:$TB_GPU_COUNT State=UNKNOWN
PartitionName=$TB_CPU_PARTITION Nodes=$node Default=YES MaxTime=1-00:00:00 DefaultTime=01:00:00 State=UP
PartitionName=$TB_GPU_PARTITION Nodes=$node Default=NO MaxTime=1-00:00:00 DefaultTime=01:00:00 State=UP
EOT
    install -d -m 0755 "$TB_SLURM_CONF_DIR"
    _slurm_conf_changed=
    if ! cmp -s "$tmp" "$TB_SLURM_CONF_DIR/slurm.conf"; then
        install -m 0644 "$tmp" "$TB_SLURM_CONF_DIR/slurm.conf"
        _slurm_conf_changed=1
    fi
    if [[ $cgroups == none ]]; then
        if [[ -e $TB_SLURM_CONF_DIR/cgroup.conf ]]; then
            rm -f "$TB_SLURM_CONF_DIR/cgroup.conf"
            _slurm_conf_changed=1
        fi
    else
        # The fake GPU devices are not real devices: device constraints stay off.
        cat >"$tmp" <<EOT
# Written by tests/testbed/testbed.sh.
CgroupPlugin=cgroup/$cgroups
ConstrainCores=yes
ConstrainRAMSpace=yes
ConstrainDevices=no
EOT
        if ! cmp -s "$tmp" "$TB_SLURM_CONF_DIR/cgroup.conf"; then
            install -m 0644 "$tmp" "$TB_SLURM_CONF_DIR/cgroup.conf"
            _slurm_conf_changed=1
        fi
    fi
    echo "NodeName=$node Name=gpu Type=$TB_GPU_TYPE File=/dev/fakegpu[0-$((TB_GPU_COUNT - 1))]" >"$tmp"
    if ! cmp -s "$tmp" "$TB_SLURM_CONF_DIR/gres.conf"; then
        install -m 0644 "$tmp" "$TB_SLURM_CONF_DIR/gres.conf"
        _slurm_conf_changed=1
    fi
    rm -f "$tmp"
    # Fake GPU devices (same numbers as /dev/null) for gres.conf File=.
    local i
    for ((i = 0; i < TB_GPU_COUNT; i++)); do
        [[ -c /dev/fakegpu$i ]] || mknod -m 666 "/dev/fakegpu$i" c 1 3
    done
    install -d -o slurm -g slurm -m 0755 "$TB_SLURM_LOG_DIR" "$TB_SLURM_STATE" \
        "$TB_SLURM_STATE/slurmctld" "$TB_SLURM_STATE/slurmd"
}

# ---- daemons ------------------------------------------------------------------
slurmctld_running() { pid_alive "$TB_SLURMCTLD_PID"; }
slurmd_running() { pid_alive "$TB_SLURMD_PID"; }
slurm_answers() { scontrol ping 2>/dev/null | grep -q 'is UP'; }

slurmctld_start() {
    if slurmctld_running; then return 0; fi
    rm -f "$TB_SLURMCTLD_PID"
    # slurmctld drops to SlurmUser itself; -R recovers the saved job state.
    /usr/sbin/slurmctld -R || { tail -5 "$TB_SLURM_LOG_DIR/slurmctld.log" >&2; return 1; }
    wait_for 30 slurm_answers || { tail -5 "$TB_SLURM_LOG_DIR/slurmctld.log" >&2; return 1; }
}

slurmctld_stop() {
    slurmctld_running || return 0
    kill_pidfile "$TB_SLURMCTLD_PID" 30
}

slurmd_start() {
    if slurmd_running; then return 0; fi
    rm -f "$TB_SLURMD_PID"
    /usr/sbin/slurmd || { tail -5 "$TB_SLURM_LOG_DIR/slurmd.log" >&2; return 1; }
    wait_for 10 slurmd_running
}

slurmd_stop() { kill_pidfile "$TB_SLURMD_PID" 30; }

node_state() { sinfo -h -N -n "$(slurm_node)" -o '%T' 2>/dev/null | sort -u | paste -sd, -; }

wait_node_idle() {
    local s i
    for ((i = 0; i < 100; i++)); do
        s=$(node_state)
        case $s in
            idle|mixed|allocated|idle,*|mixed,*|allocated,*) return 0 ;;
            *drain*|*invalid*|*down*)
                # A node that was down (e.g. after a restart) is resumed once.
                if ((i == 25)); then scontrol update NodeName="$(slurm_node)" State=RESUME 2>/dev/null || true; fi ;;
        esac
        sleep 0.2
    done
    echo "node $(slurm_node) is '$s': $(sinfo -h -N -o '%E' | head -1)" >&2
    return 1
}

slurm_up() {
    write_slurm_conf
    munge_start || return 1
    if [[ -n $_slurm_conf_changed ]] && slurmctld_running; then
        log "slurm.conf changed: restarting slurmctld and slurmd"
        slurmd_stop; slurmctld_stop
    fi
    slurmctld_start || return 1
    slurmd_start || return 1
    wait_node_idle
}

slurm_down() {
    slurmd_stop
    slurmctld_stop
    munge_stop
}
