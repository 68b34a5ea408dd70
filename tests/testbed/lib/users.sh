# Test users alice, bob, carol (uids 2001..) in group hpcusers.
# shellcheck shell=bash

create_users() {
    getent group "$TB_GROUP" >/dev/null || groupadd -g "$TB_GROUP_GID" "$TB_GROUP"
    local i=0 u uid
    for u in "${TB_USERS[@]}"; do
        uid=$((TB_FIRST_UID + i)); i=$((i + 1))
        if ! id "$u" >/dev/null 2>&1; then
            getent group "$u" >/dev/null || groupadd -g "$uid" "$u"
            useradd -u "$uid" -g "$u" -G "$TB_GROUP" -d "/home/$u" -m -s /bin/bash "$u"
        fi
        id -nG "$u" | tr ' ' '\n' | grep -qx "$TB_GROUP" || usermod -aG "$TB_GROUP" "$u"
        # subordinate ids for 'apptainer build --fakeroot' (useradd adds them where login.defs
        # says so; users made otherwise get a range far above any uid in use)
        local sub=$((1000000000 + (uid - TB_FIRST_UID) * 65536))
        grep -q "^$u:" /etc/subuid 2>/dev/null || usermod --add-subuids "$sub-$((sub + 65535))" "$u"
        grep -q "^$u:" /etc/subgid 2>/dev/null || usermod --add-subgids "$sub-$((sub + 65535))" "$u"
        install -d -o "$u" -g "$u" -m 0700 "/home/$u"
        install -d -o "$u" -g "$u" -m 0700 "/home/$u/images"
    done
    # Shared pull cache: like /tmp (any user may add, only the owner may remove).
    install -d -m 1777 "$TB_PULL_CACHE"
    chmod 1777 "$TB_PULL_CACHE"
}
