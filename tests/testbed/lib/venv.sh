# Hub / test virtual environment from Debian's python3, readable by all users,
# and configurable-http-proxy from npm.
# shellcheck shell=bash

TB_SYSTEM_PYTHON=/usr/bin/python3

venv_pip() { "$TB_VENV/bin/python" -m pip "$@"; }

create_venv() {
    if [[ ! -x $TB_VENV/bin/python ]] || ! "$TB_VENV/bin/python" -c 'import sys' 2>/dev/null; then
        rm -rf "$TB_VENV"
        install -d -m 0755 "$TB_ROOT"
        "$TB_SYSTEM_PYTHON" -m venv "$TB_VENV" || return 1
        venv_pip install -q --upgrade pip setuptools wheel >>"$TB_LOG_DIR/pip.log" 2>&1 || return 1
    fi
}

# Content hash of the checkout's files (without VCS data and build outputs).
checkout_tree_hash() {
    (cd "$TB_REPO" && find . \( -name .git -o -name node_modules -o -path ./build -o -name '*.egg-info' \
        -o -name __pycache__ -o -name .pytest_cache \) -prune -o -type f -print0 | sort -z |
        xargs -0 sha256sum) | short_hash
}

# Editable install when test users can read the checkout (so code changes are
# seen without reinstalling), a normal install otherwise.
install_checkout() {
    local mode=editable
    runuser -u nobody -- test -r "$TB_REPO/setup.cfg" || mode=copy
    # Skip when nothing about the checkout's metadata changed since last time.
    # A copy install must be redone whenever any file changes: hash the tree.
    local key; key=$( { echo "$mode"; cat "$TB_REPO/setup.cfg" "$TB_REPO/pyproject.toml"; printf '%s\n' "${TB_HUB_PINS[@]}"
                        if [[ $mode == copy ]]; then checkout_tree_hash; fi; } | short_hash)
    local mark=$TB_VENV/.jupyter-hpc-install
    if [[ -f $mark && $(<"$mark") == "$key" && ${1:-} != force ]] &&
        "$TB_VENV/bin/python" -c 'import jupyter_hpc, jupyterhub, batchspawner' 2>/dev/null; then
        return 0
    fi
    log "pip install ($mode) $TB_REPO[test] + ${TB_HUB_PINS[*]}"
    if [[ $mode == editable ]]; then
        venv_pip install -q -e "$TB_REPO[test]" "${TB_HUB_PINS[@]}" >>"$TB_LOG_DIR/pip.log" 2>&1 ||
            { tail -20 "$TB_LOG_DIR/pip.log" >&2; return 1; }
    else
        # From a wheel built out of a copy of the tree (no build/ left in it);
        # the version does not change between builds, hence --force-reinstall.
        local wheel; wheel=$(build_checkout_wheel) || return 1
        { venv_pip install -q "$wheel[test]" "${TB_HUB_PINS[@]}" &&
          venv_pip install -q --force-reinstall --no-deps "$wheel"; } >>"$TB_LOG_DIR/pip.log" 2>&1 ||
            { tail -20 "$TB_LOG_DIR/pip.log" >&2; return 1; }
    fi
    echo "$key" >"$mark"
}

# The prebuilt JupyterLab extension (jupyter_hpc/labextension), before any
# wheel of the checkout is built: the wheel and so the notebook images ship it.
# An editable install in the venv sees the build through a link, like
# `jupyter labextension develop`.
build_labextension() {
    "$TB_VENV/bin/python" -c 'import jupyterlab' 2>/dev/null ||
        venv_pip install -q "${TB_HUB_PINS[@]}" >>"$TB_LOG_DIR/pip.log" 2>&1 ||
        { tail -20 "$TB_LOG_DIR/pip.log" >&2; return 1; }
    JUPYTER_HPC_PYTHON=$TB_VENV/bin/python bash "$TB_REPO/labextension/build.sh" \
        >>"$TB_LOG_DIR/labextension.log" 2>&1 || { tail -30 "$TB_LOG_DIR/labextension.log" >&2; return 1; }
    local dest=$TB_VENV/share/jupyter/labextensions/jupyter-hpc
    if [[ -f $TB_VENV/.jupyter-hpc-install ]] && runuser -u nobody -- test -r "$TB_REPO/setup.cfg"; then
        if [[ $(readlink "$dest" 2>/dev/null) != "$TB_REPO/jupyter_hpc/labextension" ]]; then
            rm -rf "$dest"
            install -d -m 0755 "$(dirname "$dest")"
            ln -s "$TB_REPO/jupyter_hpc/labextension" "$dest"
        fi
    fi
}

install_chp() {
    [[ -x $TB_CHP ]] && "$TB_CHP" --version >/dev/null 2>&1 && return 0
    command -v npm >/dev/null || { echo "npm not found" >&2; return 1; }
    log "npm install configurable-http-proxy"
    install -d -m 0755 "$TB_NODE_PREFIX"
    npm install --no-audit --no-fund --prefix "$TB_NODE_PREFIX" configurable-http-proxy \
        >>"$TB_LOG_DIR/npm.log" 2>&1 || { tail -20 "$TB_LOG_DIR/npm.log" >&2; return 1; }
}
