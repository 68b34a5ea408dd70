"""Host paths that let jupyter-hpc work from inside a container.

A notebook server that runs inside an Apptainer image still needs the site's
Slurm client (to list, submit and cancel jobs) and Apptainer (to inspect and
pull images). Sites make them available by binding the host's installation
into the container read-only: the commands, their libraries, the Slurm
configuration, the munge socket, and the account files Slurm resolves its
users with. :func:`detect_paths` finds these paths on the host it runs on
(the hub host, which shares the cluster's installation); the spawner binds
them at the same places inside the server's container.

Pure functions of the file system; nothing is executed.
"""

from __future__ import annotations

import glob
import os
import shutil
import sysconfig
from typing import Callable, Iterable, List, Optional

SLURM_COMMANDS = ("sbatch", "squeue", "scancel", "sinfo", "scontrol", "sstat", "sacct")
APPTAINER_COMMANDS = ("apptainer", "mksquashfs", "unsquashfs")
ACCOUNT_FILES = ("/etc/passwd", "/etc/group")
MUNGE_SOCKET_DIRS = ("/run/munge", "/var/run/munge")


def _lib_dirs() -> List[str]:
    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    dirs = []
    for base in ("/usr/lib",):
        if multiarch:
            dirs.append(os.path.join(base, multiarch))
    dirs += ["/usr/lib64", "/lib64", "/usr/lib"]
    return dirs


def _first_existing(paths: Iterable[str], exists: Callable[[str], bool]) -> Optional[str]:
    for p in paths:
        if exists(p):
            return p
    return None


def detect_paths(
    *,
    slurm: bool = True,
    apptainer: bool = True,
    which: Callable[[str], Optional[str]] = shutil.which,
    exists: Callable[[str], bool] = os.path.exists,
    glob_: Callable[[str], List[str]] = glob.glob,
    environ: Optional[dict] = None,
) -> List[str]:
    """Existing host paths to bind (read-only, same path) so that Slurm and Apptainer work inside a container.

    ``which``, ``exists``, ``glob_`` and ``environ`` default to the real
    system; tests pass their own.
    """
    environ = os.environ if environ is None else environ
    found: List[str] = []
    seen = set()

    def add(path: Optional[str]) -> None:
        # /lib and /usr/lib may be the same directory: bind each file once
        if not path or not exists(path):
            return
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            found.append(path)

    libs = _lib_dirs()
    if slurm:
        for cmd in SLURM_COMMANDS:
            add(which(cmd))
        conf = environ.get("SLURM_CONF") or ""
        add(os.path.dirname(conf) if conf.startswith("/") else None)
        add(_first_existing(("/etc/slurm", "/etc/slurm-llnl"), exists))
        add(_first_existing(MUNGE_SOCKET_DIRS, exists))
        for d in libs:
            for name in ("slurm-wlm", "slurm"):
                add(os.path.join(d, name))
            for pattern in ("libslurm*.so*", "libmunge.so*"):
                for p in sorted(glob_(os.path.join(d, pattern))):
                    add(p)
        for p in ACCOUNT_FILES:
            add(p)
    if apptainer:
        for cmd in APPTAINER_COMMANDS:
            add(which(cmd))
        add("/etc/apptainer")
        for d in libs + ["/usr/libexec"]:
            add(os.path.join(d, "apptainer"))
    return found


__all__ = ["detect_paths", "SLURM_COMMANDS", "APPTAINER_COMMANDS"]
