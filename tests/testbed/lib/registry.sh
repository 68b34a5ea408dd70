# Local OCI registry (Debian's docker-registry) on 127.0.0.1:5000 without auth,
# holding demo/tiny:latest (busybox) built with umoci and pushed with skopeo.
# shellcheck shell=bash

TB_REGISTRY_LOG=$TB_LOG_DIR/registry.log
TB_REGISTRY_USER=docker-registry

registry_running() { pid_alive "$TB_REGISTRY_PID"; }
registry_answers() { curl -fsS --max-time 2 "http://$TB_REGISTRY_ADDR/v2/" >/dev/null; }

# The packaged config without its `auth:` block, bound to localhost, own storage.
write_registry_conf() {
    local src=/etc/docker/registry/config.yml tmp
    tmp=$(mktemp)
    [[ -f $src ]] || die "$src missing (docker-registry package)"
    awk -v addr="$TB_REGISTRY_ADDR" -v dir="$TB_REGISTRY_DIR" '
        /^[^ #]/             { skip = ($1 == "auth:") }
        skip                 { next }
        /^  addr:/           { print "  addr: " addr; next }
        /^    rootdirectory:/ { print "    rootdirectory: " dir; next }
        { print }' "$src" >"$tmp"
    grep -q "addr: $TB_REGISTRY_ADDR" "$tmp" || die "unexpected layout of $src"
    install -d -m 0755 "$(dirname "$TB_REGISTRY_CONF")"
    cmp -s "$tmp" "$TB_REGISTRY_CONF" || install -m 0644 "$tmp" "$TB_REGISTRY_CONF"
    rm -f "$tmp"
}

registry_start() {
    if registry_running && registry_answers; then return 0; fi
    kill_pidfile "$TB_REGISTRY_PID"
    local user=root
    id "$TB_REGISTRY_USER" >/dev/null 2>&1 && user=$TB_REGISTRY_USER
    install -d -o "$user" -m 0755 "$TB_REGISTRY_DIR"
    setsid runuser -u "$user" -- /usr/bin/docker-registry serve "$TB_REGISTRY_CONF" \
        >>"$TB_REGISTRY_LOG" 2>&1 </dev/null &
    echo $! >"$TB_REGISTRY_PID"
    wait_for 20 registry_answers || { tail -5 "$TB_REGISTRY_LOG" >&2; return 1; }
}

registry_down() { kill_pidfile "$TB_REGISTRY_PID"; }

tiny_pushed() {
    skopeo inspect --tls-verify=false "$TB_TINY_REF" 2>/dev/null | grep -q '"org.jupyter-hpc.title"'
}

push_tiny_image() {
    local layout=$TB_BUILD_CACHE/tmp/oci-tiny bundle=$TB_BUILD_CACHE/tmp/oci-tiny-bundle
    rm -rf "$layout" "$bundle"
    {
        umoci init --layout "$layout" &&
        umoci new --image "$layout:latest" &&
        umoci unpack --rootless --image "$layout:latest" "$bundle" &&
        make_busybox_rootfs "$bundle/rootfs" &&
        umoci repack --image "$layout:latest" "$bundle" &&
        umoci config --image "$layout:latest" --config.cmd /bin/sh \
            --config.env PATH=/usr/local/bin:/usr/bin:/bin \
            --config.label "org.jupyter-hpc.title=Tiny busybox" \
            --config.label "org.jupyter-hpc.description=busybox from the local registry" \
            --config.label "org.jupyter-hpc.gpu=false" &&
        skopeo copy --dest-tls-verify=false "oci:$layout:latest" "$TB_TINY_REF"
    } >>"$TB_LOG_DIR/registry-push.log" 2>&1 || { tail -10 "$TB_LOG_DIR/registry-push.log" >&2; return 1; }
    rm -rf "$layout" "$bundle"
}

# demo/notebook:latest: the notebook image (the sandbox's root filesystem) as an OCI
# image in the registry, so that tests can push it on as a user and run jobs from a
# docker:// reference. Labelled with the build key; pushed again when that changes.
notebook_pushed() {
    skopeo inspect --tls-verify=false "$TB_NOTEBOOK_REF" 2>/dev/null | grep -q "\"org.jupyter-hpc.build\": \"$1\""
}

push_notebook_image() {
    local key=$1 layout=$TB_BUILD_CACHE/tmp/oci-notebook bundle=$TB_BUILD_CACHE/tmp/oci-notebook-bundle
    notebook_pushed "$key" && return 0
    log "pushing $TB_NOTEBOOK_REF ($key)"
    rm -rf "$layout" "$bundle"
    {
        umoci init --layout "$layout" &&
        umoci new --image "$layout:latest" &&
        umoci unpack --rootless --image "$layout:latest" "$bundle" &&
        cp -a "$TB_SANDBOX_DIR/." "$bundle/rootfs/" &&
        rm -rf "$bundle/rootfs/.singularity.d" "$bundle/rootfs/.exec" "$bundle/rootfs/.run" \
            "$bundle/rootfs/.shell" "$bundle/rootfs/.test" "$bundle/rootfs/environment" "$bundle/rootfs/singularity" &&
        umoci repack --image "$layout:latest" "$bundle" &&
        umoci config --image "$layout:latest" --config.cmd /bin/bash \
            --config.env PATH=/opt/env/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
            --config.env VIRTUAL_ENV=/opt/env \
            --config.label "org.jupyter-hpc.title=Python notebook (registry)" \
            --config.label "org.jupyter-hpc.description=The notebook image from the site registry" \
            --config.label "org.jupyter-hpc.gpu=false" \
            --config.label "org.jupyter-hpc.build=$key" &&
        skopeo copy --dest-tls-verify=false "oci:$layout:latest" "$TB_NOTEBOOK_REF"
    } >>"$TB_LOG_DIR/registry-push.log" 2>&1 || { tail -10 "$TB_LOG_DIR/registry-push.log" >&2; return 1; }
    rm -rf "$layout" "$bundle"
}

# An ordinary user can pull from the plain-HTTP registry.
verify_pull_as_alice() {
    local dir
    dir=$(runuser -u alice -- mktemp -d /tmp/tb-pull.XXXXXX)
    (cd / && runuser -u alice -- "$TB_APPTAINER" -s pull --disable-cache --no-https "$dir/tiny.sif" "$TB_TINY_REF" &&
        runuser -u alice -- "$TB_APPTAINER" -s exec "$dir/tiny.sif" /bin/true) >>"$TB_LOG_DIR/registry-push.log" 2>&1
    local rc=$?
    rm -rf "$dir"
    ((rc == 0)) || { tail -10 "$TB_LOG_DIR/registry-push.log" >&2; return 1; }
}

registry_up() {
    write_registry_conf
    registry_start || return 1
    if ! tiny_pushed; then
        log "pushing $TB_TINY_REF"
        push_tiny_image || return 1
        verify_pull_as_alice || return 1
    fi
}
