"""Image builds: a user builds a SIF file from a definition file or a sandbox directory, as a
Slurm batch job, into their own image directory (``~/images``, the first of
:attr:`jupyter_hpc.images.ImageCatalog.user_dirs`).

- definition file: ``apptainer build --fakeroot DEST.partial DEF`` (``--fakeroot`` needs
  entries for the user in ``/etc/subuid`` and ``/etc/subgid`` and the ``newuidmap`` helpers
  on the compute nodes; Apptainer reports clearly when they are missing);
- sandbox directory: ``apptainer build DEST.partial DIR/`` (no fakeroot: only ``mksquashfs``).

The image appears under its final name only when the build succeeded (``mv`` of the partial
file); a failed build leaves nothing behind. The job's comment is
``jupyter-hpc:kind=build,image=user:NAME.sif``; its log (Apptainer's output) is the job's
output, readable through ``GET jobs/{id}/output`` like any other job of the user.
Sources are resolved (symlinks followed) and must lie inside the directories the caller
allows (the server's root directory); the image name is checked against an allow-list.
"""

from __future__ import annotations

import os
import re
import shlex
import uuid
from typing import Any, Dict, List, Optional, Sequence

from . import apptainer as _apptainer
from . import slurm, validate
from .slurm import Line
from .validate import ValidationError

BUILD_JOB_NAME = "jupyter-hpc-build"
_IMAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,59}\.sif$")
#: Largest definition file accepted (Apptainer reads it whole).
MAX_DEFINITION_BYTES = 1024 * 1024


def image_name(value: Any) -> str:
    """``NAME.sif`` (``.sif`` appended when missing): letters, digits, ``_ . + -``."""
    if isinstance(value, str) and value and not value.endswith(".sif"):
        value = value + ".sif"
    if not isinstance(value, str) or not _IMAGE_NAME.fullmatch(value):
        raise ValidationError("name", f"{str(value)[:64]!r} is not an image name (letters, digits, '_', '.', '+', "
                                      "'-', ending in .sif)")
    return value


def check_source(path: Any, kind: str, roots: Sequence[str]) -> str:
    """The real path of a definition file (``kind="definition"``) or sandbox directory
    (``kind="sandbox"``) inside ``roots``."""
    if kind not in ("definition", "sandbox"):
        raise ValidationError("source", "must be a definition file or a sandbox directory")
    real = validate.path_within(path, roots, kind)
    real = _apptainer.check_path(real, kind)
    if kind == "definition":
        if not os.path.isfile(real):
            raise ValidationError(kind, f"{str(path)[:200]!r} is not a file")
        if os.path.getsize(real) > MAX_DEFINITION_BYTES:
            raise ValidationError(kind, f"the definition file is larger than {MAX_DEFINITION_BYTES} bytes")
    else:
        if not os.path.isdir(real):
            raise ValidationError(kind, f"{str(path)[:200]!r} is not a directory")
        if not os.path.isdir(os.path.join(real, ".singularity.d")) and not os.path.isdir(os.path.join(real, "bin")):
            raise ValidationError(kind, f"{str(path)[:200]!r} does not look like a container root file system")
    return real


def build_script(dest: str, source: str, *, kind: str, fakeroot: Optional[bool] = None,
                 apptainer: str = "apptainer", token: Optional[str] = None) -> str:
    """The build job's batch script.

    ``fakeroot``: default ``True`` for definition files, ``False`` for sandboxes. The SIF is
    written to ``DIR/.NAME.partial-TOKEN`` and renamed to ``dest`` when the build succeeded.
    """
    dest = _apptainer.check_path(dest, "destination")
    source = _apptainer.check_path(source, kind)
    if kind not in ("definition", "sandbox"):
        raise ValidationError("source", "must be a definition file or a sandbox directory")
    if fakeroot is None:
        fakeroot = kind == "definition"
    directory, name = os.path.split(dest)
    token = token or uuid.uuid4().hex[:12]
    if not re.fullmatch(r"[0-9a-f]{1,32}", token):
        raise ValidationError("token", "must be hex")
    partial = os.path.join(directory, f".{name}.partial-{token}")
    src = source.rstrip("/") + "/" if kind == "sandbox" else source
    lines: List[slurm.ScriptItem] = [
        Line(f"trap {shlex.quote('rm -rf -- ' + shlex.quote(partial))} EXIT"),
        Line(f"printf 'jupyter-hpc: build %s from %s %s on %s\\n' {shlex.quote(name)} {kind} "
             f"{shlex.quote(source)} \"$(hostname -s)\""),
        _apptainer.build_argv(partial, src, fakeroot=bool(fakeroot), apptainer=apptainer),
        ["chmod", "0644", "--", partial],
        ["mv", "-f", "--", partial, dest],
        Line(f"printf 'jupyter-hpc: built %s\\n' {shlex.quote(dest)}"),
    ]
    return slurm.batch_script(lines)


def user_image_dir(catalog, username: str, home: str) -> str:
    """The user's image directory (the first ``user_dirs`` template), created (0700) when missing."""
    templates = list(getattr(catalog, "user_dirs", None) or ["{home}/images"])
    path = templates[0].replace("{username}", username).replace("{home}", home)
    path = _apptainer.check_path(path, "image directory")
    if not os.path.isdir(path):
        os.makedirs(path, mode=0o700, exist_ok=True)
    real = os.path.realpath(path)
    if os.stat(real).st_uid != os.getuid():
        raise ValidationError("name", "the image directory is not yours")
    return real


async def submit(cells, body: Dict[str, Any], roots: Sequence[str], *, apptainer: str = "apptainer") -> Dict[str, Any]:
    """Validate a build request and submit the build job (``cells``: the user's
    :class:`~jupyter_hpc.celljob.CellJobManager`, for Slurm, the catalog and the resources).

    ``body``: ``name``, exactly one of ``definition`` / ``sandbox`` (paths inside ``roots``;
    relative ones are taken relative to the first root), optional ``fakeroot``, ``force`` and
    resources. Returns ``{"job_id", "image", "path", "kind", "fakeroot"}``.
    """
    from .celljob import clean_env, job_request

    name = image_name(body.get("name"))
    given = [k for k in ("definition", "sandbox") if body.get(k) not in (None, "")]
    if len(given) != 1:
        raise ValidationError("definition", "give exactly one of definition (a file) or sandbox (a directory)")
    kind = given[0]
    raw = body[kind]
    if not isinstance(raw, str):
        raise ValidationError(kind, "must be a path")
    if not raw.startswith("/"):
        if ".." in raw.replace("\\", "/").split("/"):
            raise ValidationError(kind, "must not contain '..'")
        raw = os.path.join(roots[0], raw)
    source = check_source(raw, kind, roots)
    fakeroot = body.get("fakeroot")
    fakeroot = validate.boolean(fakeroot, "fakeroot") if fakeroot is not None else kind == "definition"
    force = validate.boolean(body.get("force", False), "force")
    directory = user_image_dir(cells.catalog, cells.username, cells.home)
    dest = os.path.join(directory, name)
    if os.path.lexists(dest) and not force:
        raise FileExistsError(f"the image {name} exists already; pass force to replace it")
    if os.path.islink(dest):
        raise ValidationError("name", f"{name} is a symbolic link")
    logs = os.path.join(cells.home, ".jupyter-hpc", "builds")
    os.makedirs(logs, mode=0o700, exist_ok=True)
    raw_res = {k: body.get(k) for k in ("partition", "time", "cpus", "memory")}
    if raw_res.get("time") in (None, ""):
        raw_res["time"] = "00:30:00"
    req = await job_request(
        cells.slurm, raw_res, defaults=cells.default_resources, allowed_partitions=cells.allowed_partitions,
        job_name=BUILD_JOB_NAME, output=os.path.join(logs, "%j.log"), workdir=directory,
        comment=slurm.make_comment(kind="build", image="user:" + name),
    )
    req.gpus = 0
    script = build_script(dest, source, kind=kind, fakeroot=fakeroot, apptainer=apptainer)
    job_id = await cells.slurm.submit(req, script, env=clean_env())
    return {"job_id": job_id, "image": "user:" + name, "path": dest, "kind": kind, "fakeroot": fakeroot,
            "log": os.path.join(logs, f"{job_id}.log")}


__all__ = ["BUILD_JOB_NAME", "image_name", "check_source", "build_script", "user_image_dir", "submit"]
