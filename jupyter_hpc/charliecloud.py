"""Pure Charliecloud helpers: the ``ch-run`` argv and image checks.

Charliecloud (``ch-run``) is the second container runtime behind
:func:`jupyter_hpc.jobscript.build_container_script`. It runs *directory*
images (an unpacked root filesystem: ``ch-convert``/``ch-image`` output, or an
Apptainer sandbox directory) in an unprivileged user namespace; SIF files and
registry references are Apptainer's.

Differences from Apptainer that the job script takes care of:

- The host environment passes into the container (Charliecloud's documented
  behaviour), so secrets in the job environment reach the command without
  ever appearing on a command line. Variables that would make the image run
  host software (``PATH``, ``LD_LIBRARY_PATH``, ``PYTHON*``, ``VIRTUAL_ENV``,
  ``CONDA*``) are unset, ``PATH`` gets the image's standard value, then the
  image's own ``/ch/environment`` applies when it has one
  (``--set-env=IMAGE/ch/environment``).
- Bind destinations must already exist in the image (0.31 cannot create mount
  points in a read-only image): the script binds each one that exists and says
  which it skipped. Home directories come with ``--home`` (host ``$HOME`` at
  ``/home/$USER``). Binding the host's ``/etc/passwd``/``/etc/group`` (the
  spawner's host tools: Slurm resolves its ``SlurmUser``) adds ``--no-passwd``.
- An Apptainer sandbox run with ``ch-run`` gets its ``/.singularity.d/env``
  scripts sourced in front of the command (:data:`ENV_WRAP`), as Apptainer would.
- No ``--nv``: ``/dev`` is the host's, so the allocated GPU devices are
  visible; the driver libraries go into the image once with
  ``ch-fromhost --nvidia IMAGE`` (done by whoever provides the image).
- No instances and no SCIF apps: services run as a plain process of the job.

Written against Charliecloud 0.31 (Debian 12 package ``charliecloud-runtime``).
"""

from __future__ import annotations

import os
from typing import Any, List, Optional, Sequence

from .apptainer import check_path
from .validate import ValidationError

#: Variables removed from the passed-through host environment before the image's own.
UNSET_ENV = ("PATH", "LD_LIBRARY_PATH", "LD_PRELOAD", "PYTHON*", "VIRTUAL_ENV", "CONDA*", "APPTAINER*",
             "SINGULARITY*")

#: Runs ``"$@"`` after sourcing an Apptainer sandbox's ``/.singularity.d/env`` scripts (as
#: Apptainer does), then puts a user venv (``JHPC_VENV``, see :func:`venv_argv`) back in front.
#: A fixed script: the command follows as separate arguments.
ENV_WRAP = (
    "/bin/sh", "-c",
    'for f in /.singularity.d/env/*.sh; do if [ -r "$f" ]; then . "$f"; fi; done; '
    'if [ -n "${JHPC_VENV:-}" ]; then VIRTUAL_ENV=$JHPC_VENV; PATH=$JHPC_VENV/bin:$PATH; '
    'export VIRTUAL_ENV PATH; fi; exec "$@"',
    "jhpc-env",
)

#: ``PATH`` inside the container before ``/ch/environment`` (Debian's default for users).
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: Image file endings that are never Charliecloud directory images.
_FILE_IMAGES = (".sif", ".simg", ".sqfs", ".squashfs", ".tar", ".tar.gz", ".tgz")


def check_image(value: Any) -> str:
    """An image ``ch-run`` can run: the absolute path of a directory image.

    Refuses registry references and single-file images with a message that says
    what to do instead.
    """
    if isinstance(value, str) and "://" in value:
        raise ValidationError(
            "image",
            f"Charliecloud runs directory images; {value[:120]!r} is a registry reference. "
            "Convert it once with ch-convert (or ch-image pull) into an image directory, "
            "or run it with the Apptainer runtime.",
        )
    path = check_path(value, "image")
    if path.lower().endswith(_FILE_IMAGES):
        raise ValidationError(
            "image",
            f"Charliecloud runs directory images; {os.path.basename(path)!r} is a single-file image. "
            "Choose a directory image, or run this one with the Apptainer runtime.",
        )
    return path.rstrip("/") or "/"


def environment_file(image: str) -> str:
    """The image's own environment file (Charliecloud convention): ``IMAGE/ch/environment``."""
    return os.path.join(check_image(image), "ch", "environment")


def base_argv(
    *,
    ch_run: str = "ch-run",
    home: bool = True,
    private_tmp: bool = False,
    writable: bool = False,
    unset: Sequence[str] = UNSET_ENV,
    path: str = DEFAULT_PATH,
) -> List[str]:
    """The options of ``ch-run`` up to (not including) the image's environment, a venv
    (:func:`venv_argv`), binds, ``--cd``, the image and the command."""
    argv = [ch_run]
    if home:
        argv.append("--home")
    if private_tmp:
        argv.append("--private-tmp")
    if writable:
        argv.append("--write")
    for pattern in unset:
        argv.append(f"--unset-env={pattern}")
    if not isinstance(path, str) or not path or any(ord(c) < 32 for c in path) or path.startswith("-"):
        raise ValidationError("PATH", "must be a non-empty list of directories")
    argv.append(f"--set-env=PATH={path}")
    return argv


def venv_argv(venv: str) -> List[str]:
    """``--set-env`` options that put ``venv/bin`` first on the image's ``PATH``.

    ``$PATH`` is expanded by ``ch-run`` itself (after ``/ch/environment``), not by a shell.
    """
    venv = check_path(venv, "venv").rstrip("/")
    if not venv:
        raise ValidationError("venv", "must not be /")
    return [f"--set-env=VIRTUAL_ENV={venv}", f"--set-env=PATH={venv}/bin:$PATH", f"--set-env=JHPC_VENV={venv}"]


def command_argv(image: str, argv: Sequence[str], *, pwd: Optional[str] = None) -> List[str]:
    """``[--cd PWD] IMAGE -- ARGV...``: the tail of a ``ch-run`` command line."""
    if not argv:
        raise ValidationError("command", "must not be empty")
    out: List[str] = []
    if pwd:
        out.append("--cd=" + check_path(pwd, "pwd"))
    return out + [check_image(image), "--"] + [str(a) for a in argv]


def exec_argv(image: str, argv: Sequence[str], *, pwd: Optional[str] = None, ch_run: str = "ch-run",
              home: bool = True, writable: bool = False, venv: Optional[str] = None,
              env_file: Optional[str] = None, wrap: Sequence[str] = ()) -> List[str]:
    """A complete ``ch-run`` command without binds (one-off commands such as creating a venv).

    ``env_file``: the image's environment file (:func:`environment_file`) to apply; the
    caller checks that it exists (a job script checks on the node instead). ``wrap``:
    words put in front of the command (:data:`ENV_WRAP` for Apptainer sandboxes).
    """
    head = base_argv(ch_run=ch_run, home=home, writable=writable)
    if env_file:
        head.append("--set-env=" + check_path(env_file, "environment file"))
    if venv:
        head += venv_argv(venv)
    return head + command_argv(image, list(wrap) + list(argv), pwd=pwd)


def apptainer_env_dir(image: str) -> str:
    """``IMAGE/.singularity.d/env``: an Apptainer sandbox's environment scripts."""
    return os.path.join(check_image(image), ".singularity.d", "env")


def probe_argv(image: str, ch_run: str = "ch-run") -> List[str]:
    """``ch-run IMAGE -- true``: whether Charliecloud containers can run here at all."""
    return [ch_run, check_image(image), "--", "true"]


def is_image_dir(path: str) -> bool:
    """Whether ``path`` looks like a Charliecloud image directory (``ch/`` metadata, a root filesystem)."""
    return (os.path.isdir(os.path.join(path, "ch")) and os.path.isdir(os.path.join(path, "etc"))
            and os.path.isdir(os.path.join(path, "usr")))


def metadata_file(path: str) -> str:
    """``IMAGE/ch/metadata.json``: labels and environment written by ``ch-image``."""
    return os.path.join(path, "ch", "metadata.json")


__all__ = [
    "UNSET_ENV",
    "ENV_WRAP",
    "apptainer_env_dir",
    "DEFAULT_PATH",
    "check_image",
    "environment_file",
    "base_argv",
    "venv_argv",
    "command_argv",
    "exec_argv",
    "probe_argv",
    "is_image_dir",
    "metadata_file",
]
