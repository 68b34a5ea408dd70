"""A small synchronous Python API for notebooks and scripts.

The same code paths as the REST API and ``%%hpc`` (:class:`~jupyter_hpc.celljob.CellJobManager`,
:class:`~jupyter_hpc.services.ServiceManager`), acting as the user the kernel
runs as; no Jupyter server is needed::

    from jupyter_hpc.api import HPC

    hpc = HPC()
    result = hpc.run("import torch; print(torch.__version__)", image="site:pytorch.sif",
                     partition="gpu", gpus=1, time="00:10:00")
    print(result.stdout)

    svc = hpc.start_service(["python3", "-m", "http.server", "{port}"], image="site:notebook.sif")
    svc = hpc.wait_service(svc["job_id"])      # svc["url"]: the proxy path in Jupyter
    hpc.stop_service(svc["job_id"])

Services started here are recorded in the same per-user directory the Jupyter
server reads (``~/.jupyter-hpc/services``), so the server's proxy
(``{base_url}jupyter-hpc/proxy/<job_id>/``) and the Lab sidebar show them.
"""

from __future__ import annotations

import os
import re
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from . import validate
from .magic import HPCMagicsRuntime, _run_async, _show_output

_PREFIX = re.compile(r"^/[A-Za-z0-9_.~/%+-]*/$")


def default_proxy_prefix() -> str:
    """``{base_url}jupyter-hpc/proxy/`` of the server this kernel belongs to.

    Under JupyterHub the single-user server's prefix is ``$JUPYTERHUB_SERVICE_PREFIX``
    (``/user/NAME/``); a plain ``jupyter lab`` serves from ``/`` unless configured otherwise
    (set ``JUPYTER_HPC_BASE_URL`` to its base URL then).
    """
    base = os.environ.get("JUPYTER_HPC_BASE_URL") or os.environ.get("JUPYTERHUB_SERVICE_PREFIX") or "/"
    if not base.endswith("/"):
        base += "/"
    prefix = base + "jupyter-hpc/proxy/"
    return prefix if _PREFIX.match(prefix) else "/jupyter-hpc/proxy/"


@dataclass
class CellResult:
    """A finished cell job: its Slurm state, ``ok``/``error`` and nbformat outputs."""

    job_id: str
    state: str
    status: Optional[str]
    outputs: List[dict] = field(default_factory=list)
    node: Optional[str] = None
    #: the run record: node, CPU model, CPU counts, exclusive (see ``GET cells/{id}``)
    run: Optional[Dict[str, Any]] = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def _stream(self, name: str) -> str:
        return "".join(o.get("text", "") for o in self.outputs
                       if o.get("output_type") == "stream" and o.get("name") == name)

    @property
    def stdout(self) -> str:
        return self._stream("stdout")

    @property
    def stderr(self) -> str:
        return self._stream("stderr")

    def display(self) -> None:
        """Show the outputs in the notebook (text, figures, errors) as ``%%hpc --wait`` does."""
        for out in self.outputs:
            _show_output(out)


class HPC:
    """Cell jobs, services, images and partitions for the current user (synchronous calls)."""

    def __init__(self, config=None, proxy_prefix: Optional[str] = None, services_dir: str = "~/.jupyter-hpc/services"):
        from .services import ServiceManager

        self._rt = HPCMagicsRuntime(config=config)
        self.username = self._rt.username
        self.cells = self._rt.cells
        self.services = ServiceManager(cells=self.cells, services_dir=services_dir,
                                       proxy_prefix=proxy_prefix or default_proxy_prefix())

    # -- site ------------------------------------------------------------------------------

    def runtime(self) -> Dict[str, Any]:
        """How jobs run their commands: ``{"mode": "apptainer"|"host", "containers", "message", ...}``."""
        return _run_async(self.cells.runtime_info()).to_dict()

    def images(self) -> List[Dict[str, Any]]:
        """The images this user may run (as ``GET images``)."""
        return [img.to_dict() for img in _run_async(self._rt.catalog.list_images(self.username))]

    def partitions(self) -> List[Dict[str, Any]]:
        """Slurm partitions with per-node CPUs, memory and GPUs by type."""
        return [p.to_dict() for p in _run_async(self._rt.slurm.partitions())]

    # -- cell jobs ---------------------------------------------------------------------------

    def submit(self, code: str, image: str, cwd: Optional[str] = None, **resources: Any) -> str:
        """Submit ``code`` as a cell job in ``image``; returns the job id.

        ``resources``: ``partition, time, cpus, memory, gpus, exclusive`` (validated as for the
        REST API). ``cwd``: the job's working directory (default: the current directory).
        """
        body = dict(resources, code=code, image=image)
        workdir = os.path.realpath(cwd or os.getcwd())
        if not os.path.isdir(workdir):
            raise validate.ValidationError("cwd", f"{workdir} is not a directory")
        return _run_async(self.cells.submit(body, cwd=workdir))["job_id"]

    def state(self, job_id: str, since: int = 0) -> Dict[str, Any]:
        """``GET cells/{id}``: state and the outputs from index ``since``."""
        return _run_async(self.cells.state(job_id, since)).to_dict()

    def wait(self, job_id: str, timeout: Optional[float] = None, poll: float = 0.5,
             progress: bool = True) -> CellResult:
        """Wait until the cell job is done; with ``progress`` print its state changes."""
        deadline = None if timeout is None else time.monotonic() + timeout
        outputs: List[dict] = []
        since, last, node = 0, None, None
        while True:
            state = _run_async(self.cells.state(job_id, since))
            outputs.extend(state.outputs)
            since = state.next
            node = state.node or node
            if progress and state.state != last and not state.done:
                where = f" on {state.node}" if state.node else ""
                reason = f" ({state.reason})" if state.reason and state.state == "PENDING" else ""
                print(f"job {job_id}: {state.state}{where}{reason}", flush=True)
            last = state.state
            if state.done:
                if progress:
                    print(f"job {job_id}: {state.state}", flush=True)
                return CellResult(job_id, state.state, state.status, outputs, node, state.run)
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"cell job {job_id} did not finish within {timeout:g} s (state {state.state})")
            time.sleep(poll)

    def run(self, code: str, image: str, timeout: Optional[float] = None, progress: bool = True,
            **resources: Any) -> CellResult:
        """:meth:`submit` and :meth:`wait`."""
        job_id = self.submit(code, image, **resources)
        if progress:
            print(f"Submitted cell job {job_id} (image {image})", flush=True)
        return self.wait(job_id, timeout=timeout, progress=progress)

    def cancel(self, job_id: str) -> None:
        _run_async(self.cells.cancel(job_id))

    # -- services ----------------------------------------------------------------------------

    def start_service(self, command: Sequence[str], image: str, name: Optional[str] = None,
                      **resources: Any) -> Dict[str, Any]:
        """Start a web UI as a job (as ``POST services``; ``venv=NAME`` and ``instance=True`` too): ``{port}`` and ``{base_url}`` in
        ``command`` are replaced in the job. Returns the Service dict (``job_id``, ``url``, ...)."""
        body = dict(resources, command=list(command), image=image)
        if name:
            body["name"] = name
        return _run_async(self.services.start(body))

    def service(self, job_id: str) -> Dict[str, Any]:
        return _run_async(self.services.get(job_id))

    def wait_service(self, job_id: str, timeout: float = 300, poll: float = 0.5, listening: bool = True) -> Dict[str, Any]:
        """Wait until the service runs and has registered its port (``ready``) and, with
        ``listening``, until its program accepts connections there (the proxy URL then works)."""
        deadline = time.monotonic() + timeout
        while True:
            svc = self.service(job_id)
            if svc["ready"]:
                endpoint = self.service_endpoint(job_id) if listening else None
                if endpoint is None or _accepts(*endpoint):
                    return svc
            if svc["state"] not in ("PENDING", "CONFIGURING", "RUNNING", "UNKNOWN"):
                raise RuntimeError(f"service job {job_id} ended ({svc['state']}) before it was ready")
            if time.monotonic() > deadline:
                raise TimeoutError(f"service job {job_id} not ready within {timeout:g} s (state {svc['state']})")
            time.sleep(poll)

    def service_endpoint(self, job_id: str):
        """``(host, port)`` the proxy forwards to, or ``None`` while the service is not ready."""
        return _run_async(self.services.target(job_id))

    def stop_service(self, job_id: str) -> bool:
        return _run_async(self.services.stop(job_id))


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


__all__ = ["HPC", "CellResult", "default_proxy_prefix"]
