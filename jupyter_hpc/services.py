"""Services: web UIs started from an image as Slurm jobs and reached through the proxy.

A service is a batch job (name ``jupyter-hpc-service``, comment
``jupyter-hpc:kind=service,...``) whose script picks a free port on the node
and records ``host=NODE,port=PORT`` in the job's comment (see
:mod:`jupyter_hpc.jobscript`). Inside the image the command is started through
this module's launcher (``python3 -m jupyter_hpc.services ARGV...``), which

- replaces ``{port}`` and ``{base_url}`` in the argv,
- sets ``JUPYTER_HPC_BASE_URL`` (``/<base>/jupyter-hpc/proxy/<job_id>/``) and ``PORT``,
- and ``exec``s the command (no shell).

The server records each service it started in ``<services_dir>/<job_id>.json``
(mode 0600). The proxy only forwards to a job that is this user's, running,
marked ``kind=service``, recorded there, and whose registered host is its node.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

from . import validate
from .celljob import SERVICE_JOB_NAME, comment_value, expand_home, clean_env, job_request
from .jobscript import build_container_script, instance_for_job
from .slurm import JobInfo, make_comment
from .validate import ValidationError

log = logging.getLogger(__name__)

BASE_URL_PLACEHOLDER = "{base_url}"
PORT_PLACEHOLDER = "{port}"
MAX_ARGS = 256
MAX_ARG_LEN = 4096
_PREFIX = re.compile(r"^/[A-Za-z0-9_.~/%+-]*/$")


def validate_command(command: Any) -> List[str]:
    """A service command: a non-empty list of strings without control characters."""
    if not isinstance(command, list) or not command:
        raise ValidationError("command", "must be a non-empty list of strings (an argv)")
    if len(command) > MAX_ARGS:
        raise ValidationError("command", f"has more than {MAX_ARGS} elements")
    out = []
    for i, arg in enumerate(command):
        if not isinstance(arg, str):
            raise ValidationError("command", f"element {i} is not a string")
        if len(arg) > MAX_ARG_LEN:
            raise ValidationError("command", f"element {i} is longer than {MAX_ARG_LEN} characters")
        if any(ord(c) < 32 or ord(c) == 127 for c in arg):
            raise ValidationError("command", f"element {i} contains control characters (newline, tab, ...)")
        out.append(arg)
    if not out[0] or out[0].startswith("-"):
        raise ValidationError("command", "the program must be a name or path, not an option")
    return out


class ServiceManager:
    """Starts, lists and stops this user's services."""

    def __init__(
        self,
        *,
        cells,
        services_dir: str = "~/.jupyter-hpc/services",
        proxy_prefix: str = "/jupyter-hpc/proxy/",
        default_time: str = "01:00:00",
        log: Optional[logging.Logger] = None,
    ):
        self.cells = cells
        self.slurm = cells.slurm
        self.username = cells.username
        self.services_dir = expand_home(services_dir, cells.home)
        if not _PREFIX.match(proxy_prefix):
            raise ValueError(f"proxy prefix {proxy_prefix!r} is not a URL path ending in '/'")
        self.proxy_prefix = proxy_prefix
        self.default_time = default_time
        self.log = log or logging.getLogger(__name__)

    # -- records ---------------------------------------------------------------------

    def _record_path(self, job_id: str) -> str:
        return os.path.join(self.services_dir, validate.job_id(job_id) + ".json")

    def record(self, job_id: Any) -> Optional[dict]:
        """What was recorded when this server started the service, or ``None``."""
        try:
            with open(self._record_path(job_id), encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError, ValidationError):
            return None
        return data if isinstance(data, dict) else None

    def _records(self) -> Dict[str, dict]:
        out = {}
        try:
            names = os.listdir(self.services_dir)
        except OSError:
            return out
        for name in names:
            job_id = name[:-5] if name.endswith(".json") else ""
            if re.fullmatch(r"[0-9]{1,12}", job_id):
                rec = self.record(job_id)
                if rec is not None:
                    out[job_id] = rec
        return out

    def url(self, job_id: str) -> str:
        return f"{self.proxy_prefix}{job_id}/"

    # -- operations ------------------------------------------------------------------

    async def start(self, body: Dict[str, Any]) -> dict:
        """Validate and submit a service; returns the Service dict."""
        command = validate_command(body.get("command"))
        name = body.get("name")
        if name in (None, ""):
            name = re.sub(r"[^A-Za-z0-9_.+-]", "_", os.path.basename(command[0]))[:64] or "service"
            name = name.lstrip("-.") or "service"
        name = validate.name(name, "name")
        image = await self.cells.resolve_image(body.get("image"))
        venv = self.cells.resolve_venv(body.get("venv"))
        instance = validate.boolean(body.get("instance", False), "instance")
        raw = dict(body)
        if raw.get("time") in (None, ""):
            raw["time"] = self.default_time
        req = await job_request(
            self.slurm,
            raw,
            defaults=self.cells.default_resources,
            allowed_partitions=self.cells.allowed_partitions,
            job_name=SERVICE_JOB_NAME,
            workdir=self.cells.home,
            output=os.path.join(self.services_dir, "%j.out"),
            error=os.path.join(self.services_dir, "%j.err"),
        )
        comment = make_comment(kind="service", name=name, image=comment_value(image.id))
        argv = self.cells.image_python + ["-m", "jupyter_hpc.services"] + command
        mode = await self.cells.runtime_mode(image)
        if instance and mode == "host":
            raise ValidationError("instance", "Apptainer instances need containers; they cannot run on this host")
        if instance and mode != "apptainer":
            raise ValidationError("instance", f"Apptainer instances need the Apptainer runtime; {image.id} runs "
                                              f"with {mode}. Start the service without 'instance'.")
        script = build_container_script(
            image.path,
            argv,
            nv=bool(req.gpus),
            port=True,
            comment=comment,
            exports={"JUPYTER_HPC_PROXY_PREFIX": self.proxy_prefix},
            env_names=("SLURM_JOB_ID", "CUDA_VISIBLE_DEVICES"),
            runtime=mode,
            exclusive=req.exclusive,
            venv=venv,
            instance=instance,
            ch_run=self.cells.ch_run,
        )
        os.makedirs(os.path.dirname(self.services_dir), mode=0o700, exist_ok=True)
        os.makedirs(self.services_dir, mode=0o700, exist_ok=True)
        os.chmod(self.services_dir, 0o700)
        req.comment = comment
        job_id = await self.slurm.submit(req, script, env=clean_env())
        record = {"job_id": job_id, "name": name, "image": image.id, "command": command, "created": time.time(),
                  "runtime": mode}
        if instance:
            record["instance"] = instance_for_job(job_id)
        fd = os.open(self._record_path(job_id), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "w", encoding="utf-8") as f:
            json.dump(record, f)
        self.log.info("service %s (%s) submitted as job %s", name, image.id, job_id)
        return {"job_id": job_id, "name": name, "state": "PENDING", "node": None, "url": self.url(job_id),
                "image": image.id, "command": command, "ready": False, "instance": record.get("instance")}

    async def list(self) -> List[dict]:
        records = self._records()
        if not records:
            return []
        jobs = await self.slurm.squeue(user=self.username)
        out = []
        for job_id, rec in sorted(records.items(), key=lambda kv: int(kv[0]), reverse=True):
            info = jobs.get(job_id)
            if info is None:
                continue  # finished long ago; Slurm forgot it
            out.append(self.describe(job_id, rec, info))
        return out

    def describe(self, job_id: str, rec: dict, info: Optional[JobInfo]) -> dict:
        return {
            "job_id": job_id,
            "name": rec.get("name"),
            "state": info.state if info else "UNKNOWN",
            "node": info.node if info else None,
            "url": self.url(job_id),
            "image": rec.get("image"),
            "command": rec.get("command"),
            "ready": bool(info and info.is_running and self.endpoint_of(info)),
            "instance": rec.get("instance") if isinstance(rec.get("instance"), str) else None,
        }

    async def get(self, job_id: Any) -> dict:
        job_id = validate.job_id(job_id)
        rec = self.record(job_id)
        if rec is None:
            raise LookupError(f"job {job_id} is not a service of {self.username}")
        info = await self.cells.job_info(job_id, max_age=0)
        return self.describe(job_id, rec, info)

    async def instance(self, job_id: Any) -> dict:
        """The Apptainer instance of a running service job, as ``apptainer instance list --json NAME``
        reports it inside the job (an overlapping step on the job's node, as the user).

        ``{"job_id", "instance", "running", "instances": [{"instance", "pid", "img", ...}]}``;
        :class:`LookupError` when the job is not a service started as an instance.
        """
        from .apptainer import instance_list_argv, parse_instance_list

        job_id = validate.job_id(job_id)
        rec = self.record(job_id)
        if rec is None or not isinstance(rec.get("instance"), str):
            raise LookupError(f"job {job_id} is not a service of {self.username} running as an Apptainer instance")
        name = instance_for_job(job_id)
        info = await self.cells.job_info(job_id, max_age=0)
        if info is None or not info.is_running:
            return {"job_id": job_id, "instance": name, "running": False, "instances": []}
        res = await self.slurm.run_in_job(job_id, instance_list_argv(name, apptainer=getattr(self.cells.catalog, "apptainer", "apptainer")), node=info.node)
        found = [i for i in parse_instance_list(res.stdout) if i.get("instance") == name]
        keep = ("instance", "pid", "img", "ip", "logOutPath", "logErrPath")
        return {"job_id": job_id, "instance": name, "running": bool(found),
                "instances": [{k: i.get(k) for k in keep if k in i} for i in found]}

    async def stop(self, job_id: Any) -> bool:
        job_id = validate.job_id(job_id)
        if self.record(job_id) is None:
            raise LookupError(f"job {job_id} is not a service of {self.username}")
        return await self.slurm.cancel(job_id)

    # -- proxy target ----------------------------------------------------------------

    def endpoint_of(self, info: JobInfo):
        """``(host, port)`` of a service job when every ownership condition holds, else ``None``."""
        if info is None or not info.is_running:
            return None
        if info.user != self.username or info.kind != "service":
            return None
        endpoint = info.endpoint
        node = info.node
        if endpoint is None or not node:
            return None
        host, port = endpoint
        if host.split(".")[0] != node.split(".")[0]:
            return None  # the job may only point at its own node
        return host, port

    async def target(self, job_id: Any):
        """The ``(host, port)`` the proxy may forward to for ``job_id``; ``None`` if it may not."""
        job_id = validate.job_id(job_id)
        if self.record(job_id) is None:
            return None
        info = await self.cells.job_info(job_id, max_age=0)
        return self.endpoint_of(info) if info is not None else None




# -- launcher (runs inside the image) ----------------------------------------------------


def substitute(argv: Sequence[str], port: str, base_url: str) -> List[str]:
    return [a.replace(PORT_PLACEHOLDER, port).replace(BASE_URL_PLACEHOLDER, base_url) for a in argv]


def launch(argv: Sequence[str], environ: Optional[Dict[str, str]] = None) -> List[str]:
    """Prepare the service's argv and environment (``environ`` is updated in place)."""
    environ = os.environ if environ is None else environ
    job_id = environ.get("SLURM_JOB_ID", "")
    prefix = environ.get("JUPYTER_HPC_PROXY_PREFIX", "/jupyter-hpc/proxy/")
    port = environ.get("PORT", "")
    if not re.fullmatch(r"[0-9]{1,12}", job_id) or not re.fullmatch(r"[0-9]{1,5}", port):
        raise SystemExit("jupyter-hpc service launcher: SLURM_JOB_ID and PORT must be set")
    base_url = f"{prefix}{job_id}/"
    environ["JUPYTER_HPC_BASE_URL"] = base_url
    environ["JUPYTER_HPC_PORT"] = port
    return substitute(argv, port, base_url)


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        raise SystemExit("usage: python -m jupyter_hpc.services COMMAND [ARG...]")
    final = launch(argv)
    print(f"jupyter-hpc: service base_url={os.environ['JUPYTER_HPC_BASE_URL']} port={os.environ['PORT']}",
          file=sys.stderr, flush=True)
    os.execvp(final[0], final)


if __name__ == "__main__":
    main()
