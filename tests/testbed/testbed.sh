#!/bin/bash
# Single-node Slurm + Apptainer testbed for jupyter-hpc (run as root, Debian 12/13).
#
#   testbed.sh up                 install what is missing and start everything (idempotent)
#   testbed.sh install            reinstall this checkout into the venv (and the images)
#   testbed.sh status             what runs and what is present
#   testbed.sh down               stop the daemons (slurmd, slurmctld, munged, registry)
#   testbed.sh restart-slurmctld | stop-slurmctld | start-slurmctld
#
# Layout: docs/architecture.md ("Testbed layout"); values for tests are written
# to /etc/jupyter-hpc/testbed.env.
set -euo pipefail

TB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TB_REPO=$(cd "$TB_DIR/../.." && pwd)

# shellcheck source=lib/common.sh
. "$TB_DIR/lib/common.sh"
for _f in packages slurm users venv images torch registry; do
    # shellcheck disable=SC1090
    . "$TB_DIR/lib/$_f.sh"
done

write_env_file() {
    install -d -m 0755 "$(dirname "$TB_ENV_FILE")"
    local tmp; tmp=$(mktemp)
    cat >"$tmp" <<EOT
# Written by tests/testbed/testbed.sh up; shell KEY=value lines.
SLURM_NODE=$(slurm_node)
CPU_PARTITION=$TB_CPU_PARTITION
GPU_PARTITION=$TB_GPU_PARTITION
GPU_TYPE=$TB_GPU_TYPE
GPU_COUNT=$TB_GPU_COUNT
NODE_CPUS=$TB_NODE_CPUS
NODE_MEMORY_MB=$TB_NODE_MEMORY
MACHINE_CPUS=$(nproc --all)
CGROUPS=$(slurm_cgroup_mode)
MIN_JOB_AGE=300
SACCT_AVAILABLE=0
TEST_USERS=$(IFS=,; echo "${TB_USERS[*]}")
TEST_GROUP=$TB_GROUP
REGISTRY=$TB_REGISTRY_ADDR
TINY_REF=$TB_TINY_REF
NOTEBOOK_REF=$TB_NOTEBOOK_REF
IMAGE_DIR=$TB_IMAGE_DIR
NOTEBOOK_SIF=$TB_NOTEBOOK_SIF
PYTORCH_SIF=$TB_TORCH_SIF
SANDBOX_DIR=$TB_SANDBOX_DIR
CH_IMAGE_DIR=$TB_CH_DIR
USER_IMAGE_DIR_TEMPLATE={home}/images
ALICE_PRIVATE_SIF=/home/alice/images/alice-private.sif
PULL_CACHE=$TB_PULL_CACHE
BUILD_CACHE=$TB_BUILD_CACHE
VENV=$TB_VENV
PYTHON=$TB_VENV/bin/python
CHP=$TB_CHP
APPTAINER=$TB_APPTAINER
APPTAINER_INSECURE_PULL_FLAG=--no-https
SLURM_CONF=$TB_SLURM_CONF_DIR/slurm.conf
SLURM_LOG_DIR=$TB_SLURM_LOG_DIR
TESTBED=$TB_DIR/testbed.sh
REPO=$TB_REPO
EOT
    install -m 0644 "$tmp" "$TB_ENV_FILE"
    rm -f "$tmp"
}

verify() {
    local p s
    for p in "$TB_CPU_PARTITION" "$TB_GPU_PARTITION"; do
        s=$(sinfo -h -p "$p" -o '%T' | sort -u | paste -sd, -)
        case $s in
            idle|mixed|allocated|completing) ;;
            *) die "partition $p: node state '$s' ($(sinfo -h -N -o '%E' | head -1))" ;;
        esac
    done
    if [[ -f $TB_NOTEBOOK_SIF ]]; then
        (cd / && runuser -u alice -- "$TB_APPTAINER" exec "$TB_NOTEBOOK_SIF" \
            python -c 'import jupyter_server, jupyter_hpc') ||
            die "notebook.sif: 'import jupyter_server, jupyter_hpc' failed as alice"
    fi
}

cmd_up() {
    require_root
    install -d -m 0755 "$TB_LOG_DIR" "$TB_ROOT" "$TB_IMAGE_DIR"
    install -d -m 0700 "$TB_BUILD_CACHE"
    step "debian packages" install_packages
    step "apptainer" install_apptainer
    step "users" create_users
    step "slurm" slurm_up
    step "venv" create_venv
    step "labextension" build_labextension
    step "checkout into venv" install_checkout
    step "labextension link" build_labextension
    step "configurable-http-proxy" install_chp
    write_env_file
    step "registry" registry_up
    step "images" build_images
    step "pytorch image" build_torch_image
    write_env_file
    step "verify" verify
    step "late packages" install_late_packages
    log "testbed is up ($TB_ENV_FILE)"
}

cmd_install() {
    require_root
    install -d -m 0755 "$TB_LOG_DIR"
    step "venv" create_venv
    step "labextension" build_labextension
    step "checkout into venv" install_checkout force
    step "labextension link" build_labextension
    if [[ ${1:-} != --no-images ]] && apptainer_ok; then
        step "images" build_images
        step "pytorch image" build_torch_image
    fi
}

cmd_down() {
    require_root
    registry_down
    slurm_down
    log "stopped"
}

# One short line per component.
cmd_status() {
    local ok="up" bad="DOWN"
    _st() { printf '%-16s %s\n' "$1" "$2"; }
    _st munged "$(pid_alive "$TB_MUNGE_PID" && echo "$ok (pid $(<"$TB_MUNGE_PID"))" || echo "$bad")"
    _st slurmctld "$(slurmctld_running && echo "$ok (pid $(<"$TB_SLURMCTLD_PID"))" || echo "$bad")"
    _st slurmd "$(slurmd_running && echo "$ok (pid $(<"$TB_SLURMD_PID"))" || echo "$bad")"
    if slurm_answers; then
        _st node "$(slurm_node): $(sinfo -h -o '%P=%T' | paste -sd' ' -)"
        _st jobs "$(squeue -h -t PD,R 2>/dev/null | wc -l) pending/running"
    else
        _st node "unknown (slurmctld not answering)"
    fi
    _st registry "$(registry_running && echo "$ok $TB_REGISTRY_ADDR (pid $(<"$TB_REGISTRY_PID"))" || echo "$bad")"
    _st apptainer "$("$TB_APPTAINER" version 2>/dev/null || echo missing)"
    _st venv "$([[ -x $TB_VENV/bin/python ]] && "$TB_VENV/bin/python" -c 'import jupyter_hpc, jupyterhub; print("jupyterhub", jupyterhub.__version__)' 2>/dev/null || echo "missing/broken")"
    _st chp "$([[ -x $TB_CHP ]] && echo "$TB_CHP" || echo missing)"
    local f
    for f in "$TB_NOTEBOOK_SIF" "$TB_SANDBOX_DIR" "$TB_CH_DIR" "$TB_TORCH_SIF" /home/alice/images/alice-private.sif; do
        _st "$(basename "$f")" "$([[ -e $f ]] && du -sh "$f" 2>/dev/null | cut -f1 || echo missing)"
    done
    _st env-file "$([[ -f $TB_ENV_FILE ]] && echo "$TB_ENV_FILE" || echo missing)"
}

main() {
    local cmd=${1:-}
    shift || true
    case $cmd in
        up) cmd_up "$@" ;;
        install) cmd_install "$@" ;;
        status) cmd_status ;;
        down) cmd_down ;;
        stop-slurmctld) require_root; slurmctld_stop ;;
        start-slurmctld) require_root; slurmctld_start; wait_node_idle ;;
        restart-slurmctld) require_root; slurmctld_stop; slurmctld_start; wait_node_idle ;;
        *) sed -n '2,10s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; [[ $cmd == -h || $cmd == --help || $cmd == help ]] ;;
    esac
}

main "$@"
