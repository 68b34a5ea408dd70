"""User Python environments on the shared filesystem, layered on an image.

A user adds Python packages without rebuilding an image: a virtual environment
``~/.jupyter-hpc/venvs/NAME`` is created *with the image's own Python*
(``python3 -c CREATE_SCRIPT PATH`` inside ``apptainer exec IMAGE``) with
``--system-site-packages`` and ``pip``, plus a ``.pth`` file naming the image's
site-packages directories, so everything the image carries (jupyter-hpc,
ipykernel, numpy, ...) stays importable and packages installed into the venv come
first. Jobs use it through :func:`jupyter_hpc.jobscript.build_container_script`
(``venv=PATH``): the directory is bound into the container, ``VIRTUAL_ENV`` is set
and ``PATH`` starts with ``PATH/bin``; cell jobs (``venv`` option), kernels
(provisioner option ``venv``) and spawned servers (spawn option ``venv``) take
a venv *name*.

Only venvs inside the user's own venv directory are used: the name is checked
against an allow-list and the path is resolved (symlinks followed) and must stay
inside ``~/.jupyter-hpc/venvs``. A venv only works with the image (Python
version) it was made with; ``.jupyter-hpc-venv.json`` in the venv records it.
"""

from __future__ import annotations

import json
import os
import stat
import re
import shutil
import time
from typing import Any, Dict, List, Optional, Sequence

from . import apptainer as _apptainer
from . import validate
from .validate import ValidationError

#: The user's venv directory, relative to the home directory.
VENV_DIR = os.path.join(".jupyter-hpc", "venvs")
#: Written into each venv created here: image id and path, Python version, creation time.
META_FILE = ".jupyter-hpc-venv.json"
_VENV_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

#: Run by the image's Python; argv[1] is the venv path. Fixed text: no user value is part of it.
CREATE_SCRIPT = r"""
import json, os, site, sys, venv
path = sys.argv[1]
image_sites = [p for p in site.getsitepackages() if os.path.isdir(p)]
venv.EnvBuilder(system_site_packages=True, with_pip=True, symlinks=True).create(path)
ver = "python%d.%d" % sys.version_info[:2]
sp = os.path.join(path, "lib", ver, "site-packages")
with open(os.path.join(sp, "_jupyter_hpc_image.pth"), "w") as f:
    f.write("".join(p + "\n" for p in image_sites))
print(json.dumps({"python": "%d.%d.%d" % sys.version_info[:3], "site_packages": sp,
                  "image_site_packages": image_sites}))
""".strip()


def venv_name(value: Any) -> str:
    """A venv name: letters, digits, ``_ . -``, at most 64 characters, not starting with ``.`` or ``-``."""
    if not isinstance(value, str) or not _VENV_NAME.fullmatch(value) or value in (".", ".."):
        raise ValidationError("venv", f"{str(value)[:64]!r} is not a venv name (letters, digits, '_', '.', '-')")
    return value


def venv_root(home: str) -> str:
    """``HOME/.jupyter-hpc/venvs``."""
    return os.path.join(home, VENV_DIR)


def resolve(home: str, name: Any) -> str:
    """The real path of the user's existing venv ``name``; :class:`ValidationError` otherwise.

    The path is resolved (symlinks followed) and must lie inside the user's venv
    directory and look like a venv (``pyvenv.cfg``, ``bin/python3``).
    """
    name = venv_name(name)
    root = venv_root(home)
    path = validate.path_within(os.path.join(root, name), [root], "venv")
    if path == os.path.realpath(root):
        raise ValidationError("venv", "is not a venv")
    if not (os.path.isfile(os.path.join(path, "pyvenv.cfg")) and os.path.lexists(os.path.join(path, "bin", "python3"))):
        raise ValidationError("venv", f"there is no venv {name!r}; create it with "
                                      f"'jupyter hpc venv create {name} --image IMAGE'")
    return _apptainer.check_path(path, "venv")


def create_argv(image: str, path: str, *, apptainer: str = "apptainer", python: Sequence[str] = ("python3",),
                runtime: str = "apptainer") -> List[str]:
    """The argv that creates the venv ``path`` with the image's Python.

    ``apptainer exec --cleanenv --bind DIR IMAGE python3 -c CREATE_SCRIPT PATH`` (``DIR``: the
    venv's parent directory, read-write); with ``runtime="host"`` the Python on the node.
    """
    path = _apptainer.check_path(path, "venv")
    parent = os.path.dirname(path.rstrip("/"))
    argv = list(python) + ["-c", CREATE_SCRIPT, path]
    return _apptainer.command_argv(image, argv, runtime=runtime, binds=[(parent, parent, "rw")],
                                   cleanenv=True, apptainer=apptainer)


def read_meta(path: str) -> Dict[str, Any]:
    try:
        with open(os.path.join(path, META_FILE), encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def describe(home: str, name: str) -> Dict[str, Any]:
    """``{"name", "path", "image", "image_path", "python", "created"}`` of an existing venv."""
    path = resolve(home, name)
    meta = read_meta(path)
    return {
        "name": name,
        "path": path,
        "image": meta.get("image") if isinstance(meta.get("image"), str) else None,
        "image_path": meta.get("image_path") if isinstance(meta.get("image_path"), str) else None,
        "python": meta.get("python") if isinstance(meta.get("python"), str) else None,
        "created": meta.get("created") if isinstance(meta.get("created"), (int, float)) else None,
    }


def list_venvs(home: str) -> List[Dict[str, Any]]:
    """The user's venvs (entries that are not valid venvs inside the directory are left out)."""
    root = venv_root(home)
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return []
    out = []
    for name in names:
        try:
            out.append(describe(home, name))
        except ValidationError:
            continue
    return out


def venv_names(home: str, limit: int = 200) -> List[str]:
    """Names of the user's venvs, looked at without opening any file (safe for a root process).

    An entry counts when it is a real directory (not a symlink) with a regular
    ``pyvenv.cfg``; at most ``limit`` names, sorted.
    """
    root = venv_root(home)
    try:
        if not stat.S_ISDIR(os.lstat(root).st_mode):
            return []
        names = sorted(os.listdir(root))
    except OSError:
        return []
    out: List[str] = []
    for name in names:
        try:
            venv_name(name)
            if not stat.S_ISDIR(os.lstat(os.path.join(root, name)).st_mode):
                continue
            if not stat.S_ISREG(os.lstat(os.path.join(root, name, "pyvenv.cfg")).st_mode):
                continue
        except (OSError, ValidationError):
            continue
        out.append(name)
        if len(out) >= limit:
            break
    return out


async def create(home: str, name: Any, image_id: str, image_path: str, *, apptainer: str = "apptainer",
                 python: Sequence[str] = ("python3",), runtime: str = "apptainer", user: Optional[str] = None,
                 timeout: float = 600) -> Dict[str, Any]:
    """Create the venv ``name`` with the Python of ``image_path``; refuses an existing name.

    Runs as this process's user (``user``: through :func:`jupyter_hpc.process.run`'s
    prefix when the caller is root). A failed creation leaves nothing behind.
    """
    from .process import CommandError, run

    name = venv_name(name)
    root = venv_root(home)
    os.makedirs(root, mode=0o700, exist_ok=True)
    path = os.path.join(os.path.realpath(root), name)
    if os.path.lexists(path):
        raise ValidationError("venv", f"a venv {name!r} exists already")
    argv = create_argv(image_path, path, apptainer=apptainer, python=python, runtime=runtime)
    try:
        res = await run(argv, timeout=timeout, user=user, env=_clean_env())
    except CommandError as e:
        shutil.rmtree(path, ignore_errors=True)
        detail = (e.stderr or str(e)).strip().splitlines()[-5:]
        raise ValidationError("venv", "creating the venv failed: " + " | ".join(detail)) from None
    try:
        info = json.loads(res.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        info = {}
    meta = {"image": image_id, "image_path": image_path, "python": info.get("python"), "created": time.time()}
    with open(os.open(os.path.join(path, META_FILE), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), "w") as f:
        json.dump(meta, f)
    return describe(home, name)


def remove(home: str, name: Any) -> None:
    """Delete the user's venv ``name`` (only a directory inside the venv directory)."""
    path = resolve(home, name)
    if os.path.islink(os.path.join(venv_root(home), name)):
        os.unlink(os.path.join(venv_root(home), name))
        return
    shutil.rmtree(path)


def _clean_env() -> Dict[str, str]:
    keep = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "TMPDIR")
    return {k: os.environ[k] for k in keep if k in os.environ}


__all__ = ["VENV_DIR", "CREATE_SCRIPT", "venv_name", "venv_root", "resolve", "create_argv", "describe",
           "list_venvs", "create", "remove"]
