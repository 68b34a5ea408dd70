# Shared settings and helpers for the testbed scripts (sourced by testbed.sh).
# shellcheck shell=bash

export DEBIAN_FRONTEND=noninteractive
export LC_ALL=C.UTF-8

# ---- layout (see docs/architecture.md, "Testbed layout") -------------------
TB_ROOT=/opt/jupyter-hpc
TB_VENV=$TB_ROOT/venv
TB_NODE_PREFIX=$TB_ROOT/node
TB_CHP=$TB_NODE_PREFIX/node_modules/.bin/configurable-http-proxy
TB_IMAGE_DIR=$TB_ROOT/images
TB_NOTEBOOK_SIF=$TB_IMAGE_DIR/notebook.sif
TB_SANDBOX_DIR=$TB_IMAGE_DIR/notebook-sandbox
TB_CH_DIR=$TB_IMAGE_DIR/notebook-ch
TB_PULL_CACHE=$TB_ROOT/cache
TB_BUILD_CACHE=/var/cache/jupyter-hpc
TB_ENV_FILE=/etc/jupyter-hpc/testbed.env
TB_LOG_DIR=/var/log/jupyter-hpc

TB_USERS=(alice bob carol)
TB_FIRST_UID=2001
TB_GROUP=hpcusers
TB_GROUP_GID=2000

TB_REGISTRY_ADDR=127.0.0.1:5000
TB_REGISTRY_DIR=/var/lib/jupyter-hpc-registry
TB_REGISTRY_CONF=/etc/jupyter-hpc/registry.yml
TB_REGISTRY_PID=/run/jupyter-hpc-registry.pid
TB_TINY_REF=docker://$TB_REGISTRY_ADDR/demo/tiny:latest
TB_NOTEBOOK_REF=docker://$TB_REGISTRY_ADDR/demo/notebook:latest

TB_CPU_PARTITION=cpu
TB_GPU_PARTITION=gpu
TB_GPU_TYPE=tesla
TB_GPU_COUNT=2
TB_NODE_CPUS=32
TB_NODE_MEMORY=16000

TB_APPTAINER=/usr/bin/apptainer

# Pinned Python packages (hub venv and notebook image).
TB_HUB_PINS=(jupyterhub==6.1.1 batchspawner==1.3.0 jupyter_server jupyterlab
             jupyter-server-proxy ipykernel)
TB_IMAGE_PINS=(jupyterhub==6.1.1 batchspawner==1.3.0 jupyterlab jupyter_server
               ipykernel matplotlib numpy jupyter-server-proxy)

# ---- output -----------------------------------------------------------------
_tb_t0=${_tb_t0:-$(date +%s)}
log()  { printf '[testbed %4ss] %s\n' "$(( $(date +%s) - _tb_t0 ))" "$*" >&2; }
warn() { printf '[testbed] WARNING: %s\n' "$*" >&2; }
die()  { printf '[testbed] ERROR: %s\n' "$*" >&2; exit 1; }

# Run a step, logging its wall time.
step() {
    local name=$1; shift
    local s; s=$(date +%s)
    log "-> $name"
    "$@" || die "step '$name' failed"
    log "<- $name ($(( $(date +%s) - s ))s)"
}

require_root() { [[ $(id -u) -eq 0 ]] || die "must run as root"; }

debian_major() { cut -d. -f1 /etc/debian_version; }
# "13" for trixie; testing/sid report a codename instead of a number.
is_debian12() { [[ $(debian_major) == 12 ]]; }

# pid_alive PIDFILE -> 0 when the process in PIDFILE runs.
pid_alive() {
    local f=$1 pid
    [[ -s $f ]] || return 1
    pid=$(<"$f")
    [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null
}

# kill_pidfile PIDFILE [timeout]: TERM the process, wait, KILL if needed.
kill_pidfile() {
    local f=$1 t=${2:-15} pid i
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

# wait_for SECONDS CMD...: poll CMD every 0.2 s.
wait_for() {
    local t=$1 i; shift
    for ((i = 0; i < t * 5; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    return 1
}

# sha256 of stdin, short.
short_hash() { sha256sum | cut -c1-16; }

# Hash of this directory's build inputs (scripts that shape the images).
script_hash() { cat "$@" | short_hash; }
