# Debian packages and Apptainer.
# shellcheck shell=bash

TB_APT_PACKAGES=(
    slurm-wlm munge
    debootstrap squashfs-tools squashfuse fuse2fs fuse-overlayfs uidmap
    containernetworking-plugins libseccomp2 libsqlite3-0 patchelf
    docker-registry umoci skopeo busybox-static charliecloud-runtime
    python3-venv python3-dev gcc libc6-dev
    ca-certificates curl procps iproute2 psmisc nodejs
)
# Installed last, after everything else runs (large, only for browser tests).
TB_APT_LATE_PACKAGES=(chromium)

TB_DEBIAN_MIRROR=${TB_DEBIAN_MIRROR:-http://deb.debian.org/debian}
TB_APT_OPTS=(-q -o Acquire::Check-Valid-Until=false -o Dpkg::Use-Pty=0)

# Print the packages from "$@" that are not installed.
missing_packages() {
    local p
    for p in "$@"; do
        [[ -n $p ]] || continue
        dpkg-query -W -f='${db:Status-Status}\n' "$p" 2>/dev/null | grep -qx installed || echo "$p"
    done
}

_apt_updated=
apt_update_once() {
    [[ -n $_apt_updated ]] && return 0
    # Unreachable extra sources only produce warnings; they must not stop us.
    apt-get "${TB_APT_OPTS[@]}" update >"$TB_LOG_DIR/apt-update.log" 2>&1 ||
        warn "apt-get update reported errors (see $TB_LOG_DIR/apt-update.log); continuing"
    _apt_updated=1
}

apt_install() {
    local missing
    mapfile -t missing < <(missing_packages "$@")
    ((${#missing[@]})) || return 0
    # npm ships with the nodesource nodejs; Debian's nodejs needs the npm package.
    if [[ " ${missing[*]} " == *" nodejs "* ]] && ! command -v npm >/dev/null; then
        missing+=(npm)
    fi
    log "apt-get install ${missing[*]}"
    apt_update_once
    apt-get "${TB_APT_OPTS[@]}" install -y --no-install-recommends "${missing[@]}" \
        >>"$TB_LOG_DIR/apt-install.log" 2>&1 ||
        { tail -20 "$TB_LOG_DIR/apt-install.log" >&2; return 1; }
}

install_packages() {
    # nodejs may come from another source (e.g. nodesource) with npm inside.
    if command -v node >/dev/null && command -v npm >/dev/null; then
        apt_install "${TB_APT_PACKAGES[@]/nodejs/}"
    else
        apt_install "${TB_APT_PACKAGES[@]}"
    fi
}

install_late_packages() {
    apt_install "${TB_APT_LATE_PACKAGES[@]}" || warn "could not install ${TB_APT_LATE_PACKAGES[*]} (browser tests will skip)"
}

# ---- Apptainer ----------------------------------------------------------------
TB_APPTAINER_LIBEXEC=/usr/lib/x86_64-linux-gnu/apptainer
TB_SHIM_DIR=/usr/local/lib/jupyter-hpc
TB_SHIM=$TB_SHIM_DIR/libisoc23compat.so
TB_APPTAINER_MARK=$TB_APPTAINER_LIBEXEC/.jupyter-hpc-installed

apptainer_ok() { "$TB_APPTAINER" version >/dev/null 2>&1; }

# Debian 13+: glibc is new enough, install apptainer from sid with low priority.
install_apptainer_apt() {
    if dpkg-query -W -f='${db:Status-Status}' apptainer 2>/dev/null | grep -qx installed && apptainer_ok; then
        return 0
    fi
    cat >/etc/apt/sources.list.d/jupyter-hpc-sid.list <<EOT
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $TB_DEBIAN_MIRROR sid main
EOT
    cat >/etc/apt/preferences.d/jupyter-hpc-sid <<'EOT'
# Only what is asked for explicitly (apptainer/sid) comes from sid.
Package: *
Pin: release n=sid
Pin-Priority: 100
EOT
    _apt_updated=
    apt_update_once
    apt-get "${TB_APT_OPTS[@]}" install -y --no-install-recommends apptainer/sid \
        >>"$TB_LOG_DIR/apt-install.log" 2>&1 ||
        { tail -20 "$TB_LOG_DIR/apt-install.log" >&2; return 1; }
}

# Fetch the apptainer .deb from sid without touching the system's sources.
download_apptainer_deb() {
    local d=$TB_BUILD_CACHE/apt-sid deb
    deb=$(ls "$TB_BUILD_CACHE"/debs/apptainer_*_amd64.deb 2>/dev/null | sort -V | tail -1)
    if [[ -n $deb ]]; then echo "$deb"; return 0; fi
    mkdir -p "$d/lists/partial" "$d/cache/archives/partial" "$TB_BUILD_CACHE/debs"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $TB_DEBIAN_MIRROR sid main" >"$d/sources.list"
    local o=(-o "Dir::Etc::SourceList=$d/sources.list" -o Dir::Etc::SourceParts=/nonexistent
             -o "Dir::State::Lists=$d/lists" -o "Dir::Cache=$d/cache" "${TB_APT_OPTS[@]}")
    apt-get "${o[@]}" update >"$TB_LOG_DIR/apt-sid.log" 2>&1 || { tail "$TB_LOG_DIR/apt-sid.log" >&2; return 1; }
    (cd "$TB_BUILD_CACHE/debs" && apt-get "${o[@]}" download apptainer) >>"$TB_LOG_DIR/apt-sid.log" 2>&1 ||
        { tail "$TB_LOG_DIR/apt-sid.log" >&2; return 1; }
    ls "$TB_BUILD_CACHE"/debs/apptainer_*_amd64.deb | sort -V | tail -1
}

# Debian 12: unpack the sid package by hand and make it run on glibc 2.36.
install_apptainer_unpacked() {
    local deb key
    deb=$(download_apptainer_deb) || return 1
    key="$(cat "$deb" "$TB_DIR/elfcompat.py" "$TB_DIR/glibc-compat/isoc23.c" | short_hash)"  # contents only: any checkout path
    if [[ -f $TB_APPTAINER_MARK && $(<"$TB_APPTAINER_MARK") == "$key" ]] && apptainer_ok; then
        return 0
    fi
    log "installing $(basename "$deb") (unpacked, glibc compatibility shim)"
    local tmp; tmp=$(mktemp -d)
    dpkg -x "$deb" "$tmp" || return 1

    # 1. Everything newer than our glibc must be one of the two shimmed symbols.
    python3 "$TB_DIR/elfcompat.py" scan "$tmp" --allow __isoc23_strtol,__isoc23_strtoul \
        >"$TB_LOG_DIR/apptainer-elf-scan.log" ||
        { rm -rf "$tmp"; die "apptainer needs glibc symbols this system cannot provide (see above)"; }

    # 2. The shim library, referenced by absolute path.
    mkdir -p "$TB_SHIM_DIR"
    gcc -O2 -shared -fPIC -Wall -o "$TB_SHIM.tmp" "$TB_DIR/glibc-compat/isoc23.c" || return 1
    mv "$TB_SHIM.tmp" "$TB_SHIM"

    # 3. Patch every ELF file that needs a too-new glibc.
    local f rel
    while read -r rel; do
        f=$tmp/$rel
        patchelf --add-needed "$TB_SHIM" "$f" &&
        patchelf --clear-symbol-version __isoc23_strtol --clear-symbol-version __isoc23_strtoul "$f" &&
        python3 "$TB_DIR/elfcompat.py" repoint "$f" --to GLIBC_2.34 >>"$TB_LOG_DIR/apptainer-elf-scan.log" ||
            { rm -rf "$tmp"; echo "patching $rel failed" >&2; return 1; }
    done < <(sed -n 's/: needs GLIBC_.*//p' "$TB_LOG_DIR/apptainer-elf-scan.log" | sort -u)
    python3 "$TB_DIR/elfcompat.py" scan "$tmp" --allow none >/dev/null ||
        { rm -rf "$tmp"; die "apptainer binaries still need a newer glibc after patching"; }

    # 4. Copy into place (config files only when absent: keep local edits).
    mkdir -p /etc/apptainer
    cp -an "$tmp/etc/apptainer/." /etc/apptainer/
    rm -rf "$TB_APPTAINER_LIBEXEC"
    cp -a "$tmp$TB_APPTAINER_LIBEXEC" "$TB_APPTAINER_LIBEXEC"
    install -m 0755 "$tmp/usr/bin/apptainer" /usr/bin/apptainer.tmp && mv /usr/bin/apptainer.tmp /usr/bin/apptainer
    cp -a "$tmp/usr/bin/singularity.apptainer" "$tmp/usr/bin/run-singularity.apptainer" /usr/bin/
    ln -sfn singularity.apptainer /usr/bin/singularity
    ln -sfn run-singularity.apptainer /usr/bin/run-singularity
    [[ -d $tmp/usr/share ]] && cp -a "$tmp/usr/share/." /usr/share/ 2>/dev/null
    rm -rf "$tmp"
    apptainer_ok || die "apptainer does not run after installation: $("$TB_APPTAINER" version 2>&1 | head -3)"
    echo "$key" >"$TB_APPTAINER_MARK"
}

install_apptainer() {
    if is_debian12; then
        install_apptainer_unpacked || return 1
    else
        install_apptainer_apt || return 1
    fi
    mkdir -p /var/lib/apptainer/mnt/session /var/lib/apptainer/mnt/source
    # Unprivileged containers mount SIF files with squashfuse: users need /dev/fuse.
    [[ -c /dev/fuse ]] || mknod -m 666 /dev/fuse c 10 229
    chmod 666 /dev/fuse
    log "apptainer $("$TB_APPTAINER" version 2>&1)"
}
