"""Run a command where Apptainer cannot start containers, as on Binder-like hosts.

``python3 nouserns.py COMMAND [ARG...]`` (as an ordinary user): enters a user
namespace of its own (the user's uid and gid mapped to themselves) in which no
further user namespace may be created (``/proc/sys/user/max_user_namespaces``
= 0 there), then executes COMMAND. Unprivileged Apptainer needs a user
namespace for every container, so inside it fails exactly as on hosts without
unprivileged user namespaces; everything else (Slurm, munge, Python) works.
"""

import ctypes
import os
import sys

CLONE_NEWUSER = 0x10000000


def main(argv):
    if not argv:
        raise SystemExit("usage: nouserns.py COMMAND [ARG...]")
    uid, gid = os.getuid(), os.getgid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWUSER) != 0:
        err = ctypes.get_errno()
        raise SystemExit(f"nouserns: unshare(CLONE_NEWUSER) failed: {os.strerror(err)}")
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"{uid} {uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"{gid} {gid} 1")
    with open("/proc/sys/user/max_user_namespaces", "w") as f:
        f.write("0")
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
