#!/usr/bin/env bash
# JupyterHub demo on the testbed: every user's server is a Slurm job inside an Apptainer image.
#
#   bash tests/testbed/demo.sh start    # start the hub (http://127.0.0.1:8000), print the login
#   bash tests/testbed/demo.sh status
#   bash tests/testbed/demo.sh stop     # stop the hub and the servers it started
#
# Needs the testbed (bash tests/testbed/testbed.sh up). Runs as root.
# Environment: JUPYTER_HPC_DEMO_URL (default http://127.0.0.1:8000).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${JUPYTER_HPC_VENV:-/opt/jupyter-hpc/venv}"
STATE_DIR="${JUPYTER_HPC_DEMO_STATE:-/var/lib/jupyter-hpc/demo}"
LOG_DIR=/var/log/jupyter-hpc
LOG="$LOG_DIR/demo-hub.log"
PID_FILE="$STATE_DIR/jupyterhub.pid"
PASSWORD_FILE="${JUPYTER_HPC_DEMO_PASSWORD_FILE:-/etc/jupyter-hpc/demo-password}"
URL="${JUPYTER_HPC_DEMO_URL:-http://127.0.0.1:8000}"
export JUPYTER_HPC_DEMO_URL="$URL" JUPYTER_HPC_DEMO_STATE="$STATE_DIR" JUPYTER_HPC_DEMO_PASSWORD_FILE="$PASSWORD_FILE"

die() { echo "demo.sh: $*" >&2; exit 1; }

running_pid() {
    local pid
    [ -f "$PID_FILE" ] || return 1
    pid="$(cat "$PID_FILE")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    grep -q jupyterhub "/proc/$pid/cmdline" 2>/dev/null || return 1
    echo "$pid"
}

cmd_start() {
    [ "$(id -u)" = 0 ] || die "run as root (the hub submits jobs as the users with runuser)"
    [ -x "$VENV/bin/jupyterhub" ] || die "no $VENV/bin/jupyterhub; run: bash tests/testbed/testbed.sh up"
    if pid="$(running_pid)"; then
        echo "JupyterHub already running (pid $pid) at $URL"
        return 0
    fi
    install -d -m 0700 "$STATE_DIR"
    install -d -m 0755 "$LOG_DIR"
    if [ ! -s "$PASSWORD_FILE" ]; then
        install -d -m 0755 "$(dirname "$PASSWORD_FILE")"
        (umask 077 && head -c 12 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' > "$PASSWORD_FILE")
    fi
    chmod 0600 "$PASSWORD_FILE"
    cd "$STATE_DIR"
    PATH="$VENV/bin:$PATH" setsid "$VENV/bin/jupyterhub" -f "$HERE/jupyterhub_config.py" \
        --JupyterHub.pid_file="$PID_FILE" >>"$LOG" 2>&1 < /dev/null &
    local i
    for i in $(seq 1 120); do
        if "$VENV/bin/python" - "$URL" <<'EOF' 2>/dev/null; then
import sys, urllib.request
urllib.request.urlopen(sys.argv[1] + "/hub/api/", timeout=2).read()
EOF
            echo "JupyterHub demo running at $URL"
            echo "  log in as alice, bob or carol (admin: admin) with password: $(cat "$PASSWORD_FILE")"
            echo "  log: $LOG"
            return 0
        fi
        sleep 0.5
    done
    tail -n 40 "$LOG" >&2 || true
    die "JupyterHub did not answer at $URL within 60 s (log: $LOG)"
}

cmd_stop() {
    local pid i
    if ! pid="$(running_pid)"; then
        echo "JupyterHub demo not running"
        return 0
    fi
    kill -TERM "$pid"
    for i in $(seq 1 120); do
        kill -0 "$pid" 2>/dev/null || { echo "JupyterHub demo stopped"; return 0; }
        sleep 0.5
    done
    kill -KILL "$pid" 2>/dev/null || true
    echo "JupyterHub demo killed after 60 s"
}

cmd_status() {
    local pid
    if pid="$(running_pid)"; then
        echo "jupyterhub-demo  up (pid $pid) $URL"
    else
        echo "jupyterhub-demo  down"
        return 3
    fi
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    restart) cmd_stop; cmd_start ;;
    *) echo "usage: $0 start|stop|status|restart" >&2; exit 2 ;;
esac
