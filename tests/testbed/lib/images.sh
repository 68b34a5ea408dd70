# Container images: notebook.sif / notebook-sandbox (Debian rootfs + venv +
# this checkout), a tiny busybox image (alice's private SIF, OCI registry).
#
# Build stages are cached in $TB_BUILD_CACHE, each keyed by a hash of its inputs:
#   base-<key>.tar      debootstrap --variant=minbase rootfs
#   env-<key>.tar       base + /opt/env venv with $TB_IMAGE_PINS
#   notebook-<key>.sif  env + wheel of this checkout (key includes the wheel's content hash)
# shellcheck shell=bash

TB_IMAGE_SUITE=${TB_IMAGE_SUITE:-bookworm}
TB_IMAGE_INCLUDE=python3,python3-venv,ca-certificates,procps,iproute2,less,tini
TB_IMAGE_CACHE_TINY_SIF=$TB_BUILD_CACHE/tiny.sif
TB_ALICE_SIF=/home/alice/images/alice-private.sif

# A clean environment for commands run inside a chroot.
chroot_env=(env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
            HOME=/root LANG=C.UTF-8 SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
            PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180 PIP_NO_CACHE_DIR=1)

# apptainer build runs mksquashfs only; keep its temp files on disk, not tmpfs.
# zstd instead of the default gzip: about as small, 20x faster to build here.
TB_MKSQUASHFS_ARGS=${TB_MKSQUASHFS_ARGS:--comp zstd -Xcompression-level 3}
apptainer_build() {
    APPTAINER_TMPDIR=$TB_BUILD_CACHE/tmp "$TB_APPTAINER" -s build -F --mksquashfs-args "$TB_MKSQUASHFS_ARGS" "$@" >>"$TB_LOG_DIR/apptainer-build.log" 2>&1 ||
        { tail -20 "$TB_LOG_DIR/apptainer-build.log" >&2; return 1; }
}

# write_labels ROOTFS KEY=VALUE... -> ROOTFS/.singularity.d/labels.json
write_labels() {
    local root=$1; shift
    install -d -m 0755 "$root/.singularity.d"
    python3 - "$root/.singularity.d/labels.json" "$@" <<'PY'
import json, sys
labels = dict(arg.split("=", 1) for arg in sys.argv[2:])
with open(sys.argv[1], "w") as f:
    json.dump(labels, f, indent=2, sort_keys=True)
    f.write("\n")
PY
    chmod 0644 "$root/.singularity.d/labels.json"
}

# ---- stage 1: Debian rootfs ------------------------------------------------------
base_key() { echo "v1 $TB_IMAGE_SUITE $TB_IMAGE_INCLUDE $TB_DEBIAN_MIRROR" | short_hash; }

build_base_tar() {
    local tar=$TB_BUILD_CACHE/base-$(base_key).tar
    [[ -s $tar ]] && { echo "$tar"; return 0; }
    log "debootstrap $TB_IMAGE_SUITE (minbase + $TB_IMAGE_INCLUDE)" >&2
    local root=$TB_BUILD_CACHE/tmp/base-rootfs
    rm -rf "$root"; mkdir -p "$root"
    debootstrap --variant=minbase --include="$TB_IMAGE_INCLUDE" "$TB_IMAGE_SUITE" "$root" "$TB_DEBIAN_MIRROR" \
        >"$TB_LOG_DIR/debootstrap.log" 2>&1 || { tail -20 "$TB_LOG_DIR/debootstrap.log" >&2; return 1; }
    "${chroot_env[@]}" chroot "$root" apt-get clean
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin
    tar -C "$root" -cf "$tar.tmp" . && mv "$tar.tmp" "$tar"
    rm -rf "$root"
    echo "$tar"
}

# ---- stage 2: venv /opt/env ---------------------------------------------------------
env_key() { { base_key; echo v1; printf '%s\n' "${TB_IMAGE_PINS[@]}"; } | short_hash; }

build_env_tar() {
    local tar=$TB_BUILD_CACHE/env-$(env_key).tar base
    [[ -s $tar ]] && { echo "$tar"; return 0; }
    base=$(build_base_tar) || return 1
    log "image venv /opt/env: ${TB_IMAGE_PINS[*]}" >&2
    local root=$TB_BUILD_CACHE/tmp/env-rootfs
    rm -rf "$root"; mkdir -p "$root"
    tar -C "$root" -xf "$base"
    # pip inside the chroot needs the host's CA bundle (site TLS proxies) and DNS.
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
    cp -L /etc/resolv.conf "$root/etc/resolv.conf"
    "${chroot_env[@]}" chroot "$root" /usr/bin/python3 -m venv /opt/env &&
    "${chroot_env[@]}" chroot "$root" /opt/env/bin/pip install -q --upgrade pip \
        >"$TB_LOG_DIR/image-pip.log" 2>&1 &&
    "${chroot_env[@]}" chroot "$root" /opt/env/bin/pip install -q "${TB_IMAGE_PINS[@]}" \
        >>"$TB_LOG_DIR/image-pip.log" 2>&1 || { tail -20 "$TB_LOG_DIR/image-pip.log" >&2; return 1; }
    : >"$root/etc/resolv.conf"   # apptainer binds the host's at run time
    find "$root/opt/env" -name __pycache__ -prune -exec rm -rf {} + 2>/dev/null || true
    tar -C "$root" -cf "$tar.tmp" . && mv "$tar.tmp" "$tar"
    rm -rf "$root"
    echo "$tar"
}

# ---- stage 3: this checkout --------------------------------------------------------------
# Build a wheel of the checkout; print its path. Its *content* hash keys the SIF
# (zip timestamps vary between builds, the files do not).
build_checkout_wheel() {
    local out=$TB_BUILD_CACHE/tmp/wheel src=$TB_BUILD_CACHE/tmp/wheel-src
    rm -rf "$out" "$src"; mkdir -p "$out" "$src"
    # Build from a copy: setuptools' build/ directory in the checkout would keep
    # files that were deleted from the tree (and other builds may run there).
    tar -C "$TB_REPO" --exclude=.git --exclude=node_modules --exclude=./build \
        --exclude='*.egg-info' --exclude=__pycache__ --exclude='*.sif' -cf - . | tar -C "$src" -xf - ||
        return 1
    SOURCE_DATE_EPOCH=315532800 "$TB_VENV/bin/pip" wheel -q --no-deps --no-build-isolation -w "$out" "$src" \
        >"$TB_LOG_DIR/wheel.log" 2>&1 || { tail -20 "$TB_LOG_DIR/wheel.log" >&2; return 1; }
    rm -rf "$src"
    ls "$out"/*.whl
}

wheel_content_hash() {
    python3 - "$1" <<'PY' | short_hash
import hashlib, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for name in sorted(z.namelist()):
        print(name, hashlib.sha256(z.read(name)).hexdigest())
PY
}

images_script_hash() { cat "$TB_DIR/lib/images.sh" | short_hash; }

notebook_env_script() {
    cat <<'EOT'
# jupyter-hpc notebook image: the Python environment with Jupyter comes first.
export PATH="/opt/env/bin:$PATH"
export VIRTUAL_ENV=/opt/env
EOT
}

NOTEBOOK_TITLE="Python notebook"
NOTEBOOK_DESCRIPTION="Debian $TB_IMAGE_SUITE, Python 3 with JupyterLab, ipykernel, numpy, matplotlib and jupyter-hpc"
SANDBOX_TITLE="Python notebook (sandbox)"
SANDBOX_DESCRIPTION="The Python notebook image as a sandbox directory"

# The sandbox is the working tree of the notebook image: created from the env
# stage, then only the checkout's wheel is reinstalled into it when the code
# changes; notebook.sif is built from it with its own labels.
build_sandbox_base() {
    local key=$1 env_tar=$2
    local root=$TB_BUILD_CACHE/tmp/notebook-rootfs
    log "creating notebook sandbox ($key)"
    rm -rf "$root" "$TB_SANDBOX_DIR.new"; mkdir -p "$root"
    tar -C "$root" -xf "$env_tar" || return 1
    # Images are read-only at run time: without bytecode in the image every
    # start would compile Jupyter's modules again (seconds per server start).
    "${chroot_env[@]}" chroot "$root" /opt/env/bin/python -m compileall -q -j 0 /opt/env/lib \
        >"$TB_LOG_DIR/image-compileall.log" 2>&1 || warn "compileall reported errors (see $TB_LOG_DIR/image-compileall.log)"
    install -d -m 0755 "$root/.singularity.d/env"
    notebook_env_script >"$root/.singularity.d/env/90-jupyter-hpc.sh"
    chmod 0755 "$root/.singularity.d/env/90-jupyter-hpc.sh"
    write_labels "$root" org.jupyter-hpc.title="$SANDBOX_TITLE" \
        org.jupyter-hpc.description="$SANDBOX_DESCRIPTION" org.jupyter-hpc.gpu=false
    apptainer_build --sandbox "$TB_SANDBOX_DIR.new" "$root/" || return 1
    rm -rf "$root" "$TB_SANDBOX_DIR.old"
    [[ -d $TB_SANDBOX_DIR ]] && mv "$TB_SANDBOX_DIR" "$TB_SANDBOX_DIR.old"
    mv "$TB_SANDBOX_DIR.new" "$TB_SANDBOX_DIR"
    rm -rf "$TB_SANDBOX_DIR.old"
    rm -f "$TB_IMAGE_DIR/.sandbox-wheel.key"
    echo "$key" >"$TB_IMAGE_DIR/.sandbox-base.key"
}

install_wheel_into_sandbox() {
    local wheel=$1 name; name=$(basename "$wheel")
    cp "$wheel" "$TB_SANDBOX_DIR/tmp/$name"
    "${chroot_env[@]}" chroot "$TB_SANDBOX_DIR" /opt/env/bin/pip install -q --no-deps --no-index \
        --force-reinstall "/tmp/$name" >"$TB_LOG_DIR/image-wheel.log" 2>&1
    local rc=$?
    rm -f "$TB_SANDBOX_DIR/tmp/$name"
    ((rc == 0)) || { tail -20 "$TB_LOG_DIR/image-wheel.log" >&2; return 1; }
}

build_notebook_images() {
    local env_tar wheel whash base_key full_key
    env_tar=$(build_env_tar) || return 1
    wheel=$(build_checkout_wheel) || return 1
    whash=$(wheel_content_hash "$wheel")
    base_key=$( { env_key; images_script_hash; } | short_hash)
    full_key=$( { echo "$base_key"; echo "$whash"; } | short_hash)
    local sif=$TB_BUILD_CACHE/notebook-$full_key.sif mark=$TB_IMAGE_DIR/.notebook.key
    if [[ -f $mark && $(<"$mark") == "$full_key" && -s $TB_NOTEBOOK_SIF && -d $TB_SANDBOX_DIR && -d $TB_CH_DIR ]] &&
        notebook_pushed "$full_key"; then
        log "notebook images up to date ($full_key)"
        return 0
    fi
    if [[ ! -d $TB_SANDBOX_DIR || $(cat "$TB_IMAGE_DIR/.sandbox-base.key" 2>/dev/null) != "$base_key" ]]; then
        build_sandbox_base "$base_key" "$env_tar" || return 1
    fi
    if [[ $(cat "$TB_IMAGE_DIR/.sandbox-wheel.key" 2>/dev/null) != "$whash" ]]; then
        log "installing $(basename "$wheel") into the sandbox ($whash)"
        install_wheel_into_sandbox "$wheel" || return 1
        echo "$whash" >"$TB_IMAGE_DIR/.sandbox-wheel.key"
    fi
    if [[ ! -s $sif ]]; then
        log "building notebook.sif ($full_key)"
        local def=$TB_BUILD_CACHE/tmp/notebook.def
        cat >"$def" <<EOT
Bootstrap: localimage
From: $TB_SANDBOX_DIR

%labels
    org.jupyter-hpc.title $NOTEBOOK_TITLE
    org.jupyter-hpc.description $NOTEBOOK_DESCRIPTION
    org.jupyter-hpc.gpu true
EOT
        apptainer_build "$sif.tmp" "$def" && mv "$sif.tmp" "$sif" || return 1
    fi
    ln -f "$sif" "$TB_NOTEBOOK_SIF.tmp" 2>/dev/null || cp "$sif" "$TB_NOTEBOOK_SIF.tmp"
    chmod 0644 "$TB_NOTEBOOK_SIF.tmp"
    mv -f "$TB_NOTEBOOK_SIF.tmp" "$TB_NOTEBOOK_SIF"
    build_charliecloud_image "$full_key" || return 1
    push_notebook_image "$full_key" || return 1
    echo "$full_key" >"$mark"
    # Keep the two newest notebook SIFs in the cache.
    ls -t "$TB_BUILD_CACHE"/notebook-*.sif 2>/dev/null | tail -n +3 | xargs -r rm -f
}

# ---- Charliecloud image -------------------------------------------------------------
CH_TITLE="Python notebook (Charliecloud)"
CH_DESCRIPTION="The Python notebook image as a Charliecloud image directory, run with ch-run"

# notebook-ch: the sandbox's root filesystem as a Charliecloud image directory
# (ch/environment, ch/metadata.json with labels; no .singularity.d), hard-linked
# to the sandbox's files, with empty mount points for the host paths a server
# binds (Slurm and Apptainer clients, the Apptainer shim, the site image directory and
# the pull cache): ch-run cannot create them in a read-only image.
build_charliecloud_image() {
    local key=$1 new=$TB_CH_DIR.new p
    if [[ -d $TB_CH_DIR && $(cat "$TB_IMAGE_DIR/.notebook-ch.key" 2>/dev/null) == "$key" ]]; then
        return 0
    fi
    log "creating the Charliecloud image notebook-ch ($key)"
    rm -rf "$new"
    cp -al "$TB_SANDBOX_DIR" "$new" || return 1
    rm -rf "$new/.singularity.d" "$new/singularity" "$new/environment" "$new/.exec" "$new/.run" "$new/.shell" \
        "$new/.test" "$new/.env"
    install -d -m 0755 "$new/ch"
    printf '%s\n' 'PATH=/opt/env/bin:$PATH' 'VIRTUAL_ENV=/opt/env' >"$new/ch/environment"
    "$TB_VENV/bin/python" - "$new/ch/metadata.json" "$CH_TITLE" "$CH_DESCRIPTION" <<'EOT' || return 1
import json, sys
path, title, description = sys.argv[1:4]
meta = {"labels": {"org.jupyter-hpc.title": title, "org.jupyter-hpc.description": description,
                   "org.jupyter-hpc.gpu": "false", "org.jupyter-hpc.runtime": "charliecloud"},
        "env": {"PATH": "/opt/env/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "VIRTUAL_ENV": "/opt/env"}}
with open(path, "w") as f:
    json.dump(meta, f, indent=2)
EOT
    while IFS= read -r p; do
        [[ -n $p && -e $p && ! -e $new$p && ! -L $new$p ]] || continue
        if [[ -d $p ]]; then install -d -m 0755 "$new$p"; else install -d -m 0755 "$(dirname "$new$p")" && : >"$new$p"; fi
    done < <("$TB_VENV/bin/python" -c 'from jupyter_hpc.hosttools import detect_paths; print("\n".join(detect_paths()))'
             printf '%s\n' "$TB_IMAGE_DIR" "$TB_PULL_CACHE" "$TB_SHIM_DIR")
    rm -rf "$TB_CH_DIR.old"
    [[ -d $TB_CH_DIR ]] && mv "$TB_CH_DIR" "$TB_CH_DIR.old"
    mv "$new" "$TB_CH_DIR"
    rm -rf "$TB_CH_DIR.old"
    echo "$key" >"$TB_IMAGE_DIR/.notebook-ch.key"
}

# ---- tiny busybox image -------------------------------------------------------------
# make_busybox_rootfs DIR: static busybox with its applets as symlinks.
make_busybox_rootfs() {
    local root=$1 a
    install -d -m 0755 "$root"/{bin,etc,home,proc,sys,dev,tmp,root,usr/bin}
    chmod 1777 "$root/tmp"
    install -m 0755 "$(command -v busybox)" "$root/bin/busybox"
    for a in $("$root/bin/busybox" --list); do
        [[ $a == busybox ]] || ln -sf busybox "$root/bin/$a"
    done
    echo "root:x:0:0:root:/root:/bin/sh" >"$root/etc/passwd"
    echo "root:x:0:" >"$root/etc/group"
}

build_tiny_sif() {
    local key; key=$( { images_script_hash; sha256sum "$(command -v busybox)"; } | short_hash)
    local mark=$TB_BUILD_CACHE/tiny.key
    if [[ ! -s $TB_IMAGE_CACHE_TINY_SIF || ! -f $mark || $(<"$mark") != "$key" ]]; then
        local root=$TB_BUILD_CACHE/tmp/tiny-rootfs
        rm -rf "$root"
        make_busybox_rootfs "$root"
        write_labels "$root" \
            org.jupyter-hpc.title="Alice's private image" \
            org.jupyter-hpc.description="busybox only (a user's own image)" \
            org.jupyter-hpc.gpu=false
        apptainer_build "$TB_IMAGE_CACHE_TINY_SIF.tmp" "$root/" || return 1
        mv "$TB_IMAGE_CACHE_TINY_SIF.tmp" "$TB_IMAGE_CACHE_TINY_SIF"
        rm -rf "$root"
        echo "$key" >"$mark"
    fi
    if ! cmp -s "$TB_IMAGE_CACHE_TINY_SIF" "$TB_ALICE_SIF"; then
        install -d -o alice -g alice -m 0700 /home/alice/images
        install -o alice -g alice -m 0600 "$TB_IMAGE_CACHE_TINY_SIF" "$TB_ALICE_SIF"
    fi
}

build_images() {
    install -d -m 0755 "$TB_IMAGE_DIR"
    install -d -m 0700 "$TB_BUILD_CACHE/tmp"
    build_tiny_sif || return 1
    build_notebook_images
}
