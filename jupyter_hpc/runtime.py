"""Where jobs run their commands: inside Apptainer images, or directly on the node.

:class:`ContainerRuntime` is one site-wide setting (``c.ContainerRuntime.mode``,
or the environment variable ``JUPYTER_HPC_CONTAINER_RUNTIME`` for every process
of a session: server, kernels, ``%%hpc``):

- ``apptainer`` (default): every job runs ``apptainer exec ... IMAGE ARGV``.
- ``charliecloud``: every job runs ``ch-run ... IMAGE -- ARGV`` (directory images
  only; see :mod:`jupyter_hpc.charliecloud`).
- ``host``: every job runs ``ARGV`` directly on its node; the image only names
  the software the user chose. For machines without a container runtime.
- ``auto``: probe once per process - the ``apptainer`` command must exist and
  ``apptainer exec IMAGE true`` must succeed with :attr:`ContainerRuntime.probe_image`
  (default: the first image of the catalog with a local copy). When either fails
  (typically: no unprivileged user namespaces, or no Apptainer at all) jobs
  run on the host, and the REST API (``GET images`` -> ``runtime``), the Lab
  sidebar and ``%%hpc`` say so with :data:`HOST_MESSAGE`.

Whatever the site's mode, an image can ask for its runtime
(``org.jupyter-hpc.runtime`` label; Charliecloud image directories always run with
Charliecloud): :func:`for_image` gives the runtime a job with that image uses.
Only ``host`` (containers unavailable) overrides the image's choice.

The probe runs as the process's own user (the single-user server, the kernel),
which is also the user whose jobs run the containers. The batch scripts for
either runtime come from :func:`jupyter_hpc.jobscript.build_container_script`.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, Optional, Tuple

from traitlets import CaselessStrEnum, Float, Unicode, default
from traitlets.config import Configurable

from . import apptainer as _apptainer
from .process import CommandError, run

log = logging.getLogger(__name__)

MODES = ("auto", "apptainer", "charliecloud", "host")
CONTAINER_RUNTIMES = ("apptainer", "charliecloud")
ENV_MODE = "JUPYTER_HPC_CONTAINER_RUNTIME"
HOST_MESSAGE = "Containers unavailable on this host: commands run directly on the node"


@dataclass
class RuntimeInfo:
    """The runtime jobs use: ``mode`` is ``apptainer``, ``charliecloud`` or ``host``."""

    mode: str
    configured: str
    reason: str = ""
    probe_image: Optional[str] = None

    @property
    def containers(self) -> bool:
        return self.mode in CONTAINER_RUNTIMES

    @property
    def message(self) -> Optional[str]:
        return None if self.containers else HOST_MESSAGE

    def to_dict(self) -> Dict[str, Any]:
        return {
            "mode": self.mode,
            "configured": self.configured,
            "containers": self.containers,
            "message": self.message,
            "reason": self.reason or None,
            "probe_image": self.probe_image,
        }


class ContainerRuntime(Configurable):
    """Chooses between Apptainer, Charliecloud and running commands directly on the node (see the module docs)."""

    mode = CaselessStrEnum(
        MODES,
        help=(
            "How jobs run their command. 'apptainer': inside the chosen image with apptainer exec. "
            "'charliecloud': inside the chosen image with ch-run (directory images only; SIF files "
            "are refused with a message). Images that name their runtime (label "
            "org.jupyter-hpc.runtime, Charliecloud image directories) use it in any mode but 'host'. "
            "'host': directly on the node, without a container (the image is only a label); for "
            "machines where containers cannot run. 'auto': probe once per process with "
            "'apptainer exec <probe_image> true' and use 'host' when that fails or apptainer is "
            "missing. Default: the environment variable JUPYTER_HPC_CONTAINER_RUNTIME when set, "
            "else 'apptainer'."
        ),
    ).tag(config=True)

    @default("mode")
    def _default_mode(self) -> str:
        value = os.environ.get(ENV_MODE, "").strip().lower()
        if value and value not in MODES:
            log.warning("%s=%r is not one of %s; using 'apptainer'", ENV_MODE, value[:40], ", ".join(MODES))
        return value if value in MODES else "apptainer"

    apptainer = Unicode("apptainer", help="apptainer command used by the 'auto' probe.").tag(config=True)

    ch_run = Unicode(
        "ch-run",
        help="Charliecloud's ch-run command (name on PATH or absolute path) for jobs whose image runs "
        "with Charliecloud.",
    ).tag(config=True)

    probe_image = Unicode(
        "",
        help=(
            "Image (absolute path of a SIF file or sandbox directory) the 'auto' probe runs "
            "'true' in. Empty: the first image with a local copy in the image catalog "
            "(site images first)."
        ),
    ).tag(config=True)

    probe_timeout = Float(60.0, help="Seconds allowed for the 'auto' probe.").tag(config=True)

    #: Definitive probe results of this process, by (apptainer command, probe image setting).
    _probed: ClassVar[Dict[Tuple[str, str], RuntimeInfo]] = {}

    @classmethod
    def clear_cache(cls) -> None:
        cls._probed.clear()

    def cached(self) -> Optional[RuntimeInfo]:
        """The answer :meth:`resolve` would give without running anything, if known."""
        if self.mode != "auto":
            return self._fixed()
        return self._probed.get((self.apptainer, self.probe_image))

    def _fixed(self) -> RuntimeInfo:
        reason = f"ContainerRuntime.mode is {self.mode!r}"
        return RuntimeInfo(mode=self.mode, configured=self.mode, reason=reason)

    async def resolve(self, catalog=None, username: Optional[str] = None) -> RuntimeInfo:
        """The runtime for jobs of this process (probing once in ``auto`` mode).

        ``catalog``/``username``: where the probe finds an image when
        :attr:`probe_image` is empty.
        """
        if self.mode != "auto":
            return self._fixed()
        key = (self.apptainer, self.probe_image)
        known = self._probed.get(key)
        if known is not None:
            return known
        info, final = await self._probe(catalog, username)
        if final:
            self._probed[key] = info
            log.info("container runtime: %s (%s)", info.mode, info.reason)
        return info

    async def _probe(self, catalog, username: Optional[str]) -> Tuple[RuntimeInfo, bool]:
        command = self.apptainer
        if not (shutil.which(command) if "/" not in command else os.access(command, os.X_OK)):
            return RuntimeInfo("host", "auto", f"{command}: command not found"), True
        image = self.probe_image or await self._first_image(catalog, username)
        if not image:
            # Nothing to probe with: assume containers work, and look again next time.
            return RuntimeInfo("apptainer", "auto", "no image to probe with yet"), False
        try:
            argv = _apptainer.probe_argv(image, apptainer=command)
        except ValueError as e:
            return RuntimeInfo("apptainer", "auto", f"probe image refused: {e}", image), False
        try:
            await run(argv, timeout=self.probe_timeout, cwd="/")
        except CommandError as e:
            return RuntimeInfo("host", "auto", _failure_reason(e), image), True
        return RuntimeInfo("apptainer", "auto", f"'apptainer exec {image} true' works", image), True

    @staticmethod
    async def _first_image(catalog, username: Optional[str]) -> Optional[str]:
        if catalog is None:
            return None
        try:
            images = await catalog.list_images(username)
        except Exception as e:  # noqa: BLE001 - a catalog problem only means: no probe image
            log.warning("container runtime probe: cannot list images: %s", e)
            return None
        for img in images:
            # Charliecloud images do not tell whether Apptainer works
            if getattr(img, "path", None) and getattr(img, "runtime", None) != "charliecloud":
                return img.path
        return None


def for_image(mode: str, image: Any) -> str:
    """The runtime a job with ``image`` uses when this process's runtime is ``mode``
    (:func:`choose` with the image's own choice, ``image.runtime``)."""
    return choose(mode, getattr(image, "runtime", None))


def choose(mode: str, wanted: Optional[str]) -> str:
    """``host`` stays ``host`` (no containers here); otherwise ``wanted``
    (``apptainer``/``charliecloud``) wins over the site's ``mode``."""
    if mode == "host":
        return "host"
    if wanted in CONTAINER_RUNTIMES:
        return wanted
    return mode


def _failure_reason(error: CommandError) -> str:
    """The telling line of a failed probe (Apptainer's ERROR/FATAL line first)."""
    lines = [ln.strip() for ln in (error.stderr or error.stdout or "").splitlines() if ln.strip()]
    for ln in lines:
        if "ERROR" in ln or "FATAL" in ln:
            text = ln
            break
    else:
        text = lines[-1] if lines else (error.reason or f"exit status {error.returncode}")
    # Apptainer colours its messages: keep plain text.
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)
    text = "".join(ch for ch in text if ord(ch) >= 32)
    return f"'{' '.join(error.argv[:2])} ... true' failed: {text[:300]}"


__all__ = ["ContainerRuntime", "RuntimeInfo", "MODES", "CONTAINER_RUNTIMES", "ENV_MODE", "HOST_MESSAGE",
           "for_image", "choose"]
