# PyTorch image for the example notebooks: /opt/jupyter-hpc/images/pytorch.sif,
# the notebook image's environment plus a CPU build of PyTorch.
#
# The PyTorch wheel comes from $TB_TORCH_WHEEL_DIR (a file on the machine; PyPI's
# default torch is a multi-GB CUDA build), its dependencies from PyPI. Without
# a wheel the image is skipped with a warning (tests that need it skip too).
#
# Stages in $TB_BUILD_CACHE, each keyed by a hash of its inputs:
#   torch-env-<key>.tar  env stage (images.sh) + the torch wheel and its dependencies
#                        (key: env key, the wheel's sha256, this script)
#   pytorch-<key>.sif    torch-env + the checkout's wheel that notebook.sif has (key: the
#                        above + the wheel's content hash), labels org.jupyter-hpc.title,
#                        description and gpu=true
# A second `testbed.sh up` with nothing changed reuses the SIF; a code change only
# reinstalls the checkout's wheel (offline) and rebuilds the SIF.
# shellcheck shell=bash

TB_TORCH_WHEEL_DIR=${TB_TORCH_WHEEL_DIR:-/opt/wheels}
TB_TORCH_SIF=$TB_IMAGE_DIR/pytorch.sif
TORCH_TITLE="PyTorch (CPU build)"
TORCH_DESCRIPTION="Debian $TB_IMAGE_SUITE, Python 3 with PyTorch, numpy, matplotlib, JupyterLab and jupyter-hpc; run with --nv on NVIDIA GPU nodes"

# The newest CPython 3.11 torch wheel in $TB_TORCH_WHEEL_DIR (the image's Python), or nothing.
torch_wheel() {
    local w
    w=$(ls "$TB_TORCH_WHEEL_DIR"/torch-*-cp311-cp311-*manylinux*x86_64.whl 2>/dev/null | sort -V | tail -n 1)
    [[ -n $w && -s $w ]] && echo "$w"
}

torch_script_hash() { short_hash <"$TB_DIR/lib/torch.sh"; }

torch_env_key() {
    local wheel=$1
    { env_key; echo v1; basename "$wheel"; sha256sum <"$wheel"; torch_script_hash; } | short_hash
}

# build_torch_env_tar WHEEL -> path of torch-env-<key>.tar
build_torch_env_tar() {
    local wheel=$1 key tar env_tar name
    key=$(torch_env_key "$wheel")
    tar=$TB_BUILD_CACHE/torch-env-$key.tar
    [[ -s $tar ]] && { echo "$tar"; return 0; }
    env_tar=$(build_env_tar) || return 1
    log "image venv + $(basename "$wheel") and its dependencies" >&2
    local root=$TB_BUILD_CACHE/tmp/torch-env-rootfs
    rm -rf "$root"; mkdir -p "$root"
    tar -C "$root" -xf "$env_tar" || return 1
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
    cp -L /etc/resolv.conf "$root/etc/resolv.conf"
    name=$(basename "$wheel")
    cp "$wheel" "$root/tmp/$name"
    "${chroot_env[@]}" chroot "$root" /opt/env/bin/pip install -q "/tmp/$name" \
        >"$TB_LOG_DIR/image-torch.log" 2>&1 || { tail -20 "$TB_LOG_DIR/image-torch.log" >&2; return 1; }
    "${chroot_env[@]}" chroot "$root" /opt/env/bin/python -c 'import torch; torch.ones(2) @ torch.ones(2)' \
        >>"$TB_LOG_DIR/image-torch.log" 2>&1 || { tail -20 "$TB_LOG_DIR/image-torch.log" >&2; return 1; }
    rm -f "$root/tmp/$name"
    : >"$root/etc/resolv.conf"
    find "$root/opt/env" -name __pycache__ -prune -exec rm -rf {} + 2>/dev/null || true
    tar -C "$root" -cf "$tar.tmp" . && mv "$tar.tmp" "$tar"
    rm -rf "$root"
    # Keep the newest torch-env stage only.
    ls -t "$TB_BUILD_CACHE"/torch-env-*.tar 2>/dev/null | tail -n +2 | xargs -r rm -f
    echo "$tar"
}

# The checkout's wheel as installed in the notebook sandbox (left in the build
# cache by the "images" step, checked by content hash), else a fresh build:
# pytorch.sif carries the same jupyter-hpc as notebook.sif.
torch_checkout_wheel() {
    local w
    w=$(ls "$TB_BUILD_CACHE"/tmp/wheel/*.whl 2>/dev/null | head -n 1)
    if [[ -n $w && $(wheel_content_hash "$w") == "$(cat "$TB_IMAGE_DIR/.sandbox-wheel.key" 2>/dev/null)" ]]; then
        echo "$w"
        return 0
    fi
    build_checkout_wheel
}

build_torch_image() {
    local wheel
    wheel=$(torch_wheel) || true
    if [[ -z $wheel ]]; then
        warn "no torch wheel (torch-*-cp311-*.whl) in $TB_TORCH_WHEEL_DIR: skipping $TB_TORCH_SIF"
        rm -f "$TB_TORCH_SIF" "$TB_IMAGE_DIR/.pytorch.key"
        return 0
    fi
    install -d -m 0700 "$TB_BUILD_CACHE/tmp"
    local torch_tar checkout whash key sif mark=$TB_IMAGE_DIR/.pytorch.key
    torch_tar=$(build_torch_env_tar "$wheel") || return 1
    checkout=$(torch_checkout_wheel) || return 1
    whash=$(wheel_content_hash "$checkout")
    key=$( { basename "$torch_tar"; echo "$whash"; torch_script_hash; } | short_hash)
    sif=$TB_BUILD_CACHE/pytorch-$key.sif
    if [[ -f $mark && $(<"$mark") == "$key" && -s $TB_TORCH_SIF ]]; then
        log "pytorch.sif up to date ($key)"
        return 0
    fi
    if [[ ! -s $sif ]]; then
        log "building pytorch.sif ($key)"
        local root=$TB_BUILD_CACHE/tmp/torch-rootfs name
        rm -rf "$root"; mkdir -p "$root"
        tar -C "$root" -xf "$torch_tar" || return 1
        name=$(basename "$checkout")
        cp "$checkout" "$root/tmp/$name"
        "${chroot_env[@]}" chroot "$root" /opt/env/bin/pip install -q --no-deps --no-index --force-reinstall \
            "/tmp/$name" >"$TB_LOG_DIR/image-torch-wheel.log" 2>&1 ||
            { tail -20 "$TB_LOG_DIR/image-torch-wheel.log" >&2; return 1; }
        rm -f "$root/tmp/$name"
        install -d -m 0755 "$root/.singularity.d/env"
        notebook_env_script >"$root/.singularity.d/env/90-jupyter-hpc.sh"
        chmod 0755 "$root/.singularity.d/env/90-jupyter-hpc.sh"
        write_labels "$root" org.jupyter-hpc.title="$TORCH_TITLE" \
            org.jupyter-hpc.description="$TORCH_DESCRIPTION" org.jupyter-hpc.gpu=true
        apptainer_build "$sif.tmp" "$root/" && mv "$sif.tmp" "$sif" || return 1
        rm -rf "$root"
    fi
    ln -f "$sif" "$TB_TORCH_SIF.tmp" 2>/dev/null || cp "$sif" "$TB_TORCH_SIF.tmp"
    chmod 0644 "$TB_TORCH_SIF.tmp"
    mv -f "$TB_TORCH_SIF.tmp" "$TB_TORCH_SIF"
    echo "$key" >"$mark"
    # Keep the two newest PyTorch SIFs in the cache.
    ls -t "$TB_BUILD_CACHE"/pytorch-*.sif 2>/dev/null | tail -n +3 | xargs -r rm -f
}
