"""Cell jobs: run a piece of notebook code as a Slurm job inside an image.

Shared by the REST API (``POST cells``) and the ``%%hpc`` magic. Each cell job
gets a private directory ``<jobs_dir>/<uuid>/`` (mode 0700) holding

- ``code.py``        the cell source,
- ``outputs.jsonl``  nbformat outputs, one JSON object per line, appended while the cell runs
                     (written by :mod:`jupyter_hpc.cellrunner` inside the image),
- ``status.json``    written when the cell has finished (``ok`` / ``error``),
- ``slurm.out`` / ``slurm.err``  the job's own standard output and error,
- ``job.json``       what was submitted (job id, image, resources, working directory),
- ``run.json``       the run record, written by the job when it starts: node, CPU model,
                     CPU counts and whether the job had the node to itself (``exclusive``).

``<jobs_dir>/by-id/<job_id>`` is a symlink to the job's directory, so a job id
from the client is mapped to a directory without ever taking a path from it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from . import validate
from .jobscript import build_container_script, read_run_record
from .slurm import JobInfo, JobRequest, ended_state, make_comment
from .validate import ValidationError

log = logging.getLogger(__name__)

CELL_JOB_NAME = "jupyter-hpc-cell"
SERVICE_JOB_NAME = "jupyter-hpc-service"
RESOURCE_KEYS = ("partition", "time", "cpus", "memory", "gpus", "exclusive")
RUN_RECORD = "run.json"
_UUID = re.compile(r"^[0-9a-f]{32}$")

#: Environment variables passed on to ``sbatch`` (and so into the job); nothing else of the
#: server's environment (tokens, keys) reaches a job.
#: Variables Slurm sets for the GPUs it allocated, passed into the container.
GPU_ENV = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL")

SBATCH_ENV_KEEP = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "SLURM_CONF", "TMPDIR")


class NotFound(LookupError):
    """The job is unknown or not one of this user's cell jobs."""


def clean_env() -> Dict[str, str]:
    """The environment ``sbatch`` runs with (no secrets of the server)."""
    return {k: os.environ[k] for k in SBATCH_ENV_KEEP if k in os.environ}


async def job_request(
    slurm,
    raw: Dict[str, Any],
    *,
    defaults: Optional[Dict[str, Any]] = None,
    allowed_partitions: Sequence[str] = (),
    **fixed: Any,
) -> JobRequest:
    """Validate user resources against the live partitions and build a :class:`JobRequest`.

    ``raw`` may hold ``partition, time, cpus, memory, gpus, exclusive``; missing
    or ``None`` values come from ``defaults``. The partition must exist (and be in
    ``allowed_partitions`` when that is set); CPUs, memory, GPUs and time must fit
    one node of it. ``fixed``: trusted values (job name, paths, comment).
    """
    merged: Dict[str, Any] = {k: v for k, v in (defaults or {}).items() if k in RESOURCE_KEYS}
    for key in RESOURCE_KEYS:
        if raw.get(key) is not None and raw.get(key) != "":
            merged[key] = raw[key]
    partitions = await slurm.partitions()
    usable = [p for p in partitions if not allowed_partitions or p.name in allowed_partitions]
    if not usable:
        raise ValidationError("partition", "no partition is available")
    name = merged.get("partition")
    if name in (None, ""):
        chosen = next((p for p in usable if p.default), usable[0])
    else:
        validate.partition(name)
        validate.choice(name, [p.name for p in usable], "partition")
        chosen = next(p for p in usable if p.name == name)
    gpus = merged.get("gpus", 0)
    return JobRequest.validated(
        partition=chosen.name,
        time=merged.get("time"),
        cpus=merged.get("cpus"),
        memory=merged.get("memory"),
        gpus=gpus if gpus not in (None, "") else 0,
        exclusive=merged.get("exclusive", False),
        max_time_minutes=chosen.max_time_minutes,
        max_memory_mb=chosen.memory_mb or None,
        max_cpus=chosen.cpus or None,
        max_gpus=chosen.max_gpus(),
        **fixed,
    )


@dataclass
class CellState:
    """What GET cells/{id} answers."""

    job_id: str
    state: str
    reason: Optional[str]
    node: Optional[str]
    outputs: List[dict]
    next: int
    done: bool
    status: Optional[str]
    job: Dict[str, Any] = field(default_factory=dict)
    #: the run record (:func:`jupyter_hpc.jobscript.read_run_record`); ``None`` before the job started
    run: Optional[Dict[str, Any]] = None

    def to_dict(self) -> dict:
        return {
            "job_id": self.job_id,
            "state": self.state,
            "reason": self.reason,
            "node": self.node,
            "outputs": self.outputs,
            "next": self.next,
            "done": self.done,
            "status": self.status,
            "run": self.run,
        }


def expand_home(path: str, home: str) -> str:
    """``~`` / ``~/...`` relative to ``home`` (of the given user, not of this process)."""
    if path == "~" or path.startswith("~/"):
        path = home + path[1:]
    return os.path.abspath(path)


def read_outputs(job_dir: str, since: int = 0) -> Tuple[List[dict], int]:
    """nbformat outputs ``since`` (an index) and the index to ask for next time.

    A last line without its newline is still being written and is left for later.
    """
    try:
        with open(os.path.join(job_dir, "outputs.jsonl"), "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return [], since
    lines = data.split(b"\n")
    complete = lines[:-1]  # after the last "\n" comes "" or a partial line
    outputs = []
    for line in complete[since:]:
        try:
            out = json.loads(line)
        except ValueError:
            out = {"output_type": "stream", "name": "stderr", "text": "[unreadable output line]\n"}
        outputs.append(out)
    return outputs, max(since, len(complete))


def read_status(job_dir: str) -> Optional[dict]:
    try:
        with open(os.path.join(job_dir, "status.json"), encoding="utf-8") as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return None


class CellJobManager:
    """Submits cell jobs and reads their outputs, for one user (the server's or the kernel's)."""

    def __init__(
        self,
        *,
        slurm,
        catalog,
        username: str,
        jobs_dir: str = "~/.jupyter-hpc/jobs",
        image_python: Sequence[str] = ("python3",),
        allowed_partitions: Sequence[str] = (),
        default_resources: Optional[Dict[str, Any]] = None,
        log: Optional[logging.Logger] = None,
        watcher=None,
        runtime=None,
    ):
        self.slurm = slurm
        #: :class:`~jupyter_hpc.runtime.ContainerRuntime`; ``None``: always Apptainer
        self.runtime = runtime
        #: shared :class:`~jupyter_hpc.watcher.JobWatcher` (server); ``None``: ask squeue directly
        self.watcher = watcher
        self._tracked: set = set()
        self.catalog = catalog
        self.username = validate.username(username)
        import pwd

        self.home = pwd.getpwnam(self.username).pw_dir
        self.jobs_dir = expand_home(jobs_dir, self.home)
        self.image_python = list(image_python)
        self.allowed_partitions = list(allowed_partitions)
        self.default_resources = dict(default_resources or {})
        self.log = log or logging.getLogger(__name__)
        self._states: Dict[str, Tuple[float, Optional[JobInfo]]] = {}

    # -- directories -------------------------------------------------------------------

    def _ensure_dirs(self) -> None:
        for d in (os.path.dirname(self.jobs_dir), self.jobs_dir, os.path.join(self.jobs_dir, "by-id")):
            os.makedirs(d, mode=0o700, exist_ok=True)
        os.chmod(self.jobs_dir, 0o700)

    def job_dir(self, job_id: Any) -> str:
        """The directory of one of this user's cell jobs; :class:`NotFound` otherwise."""
        job_id = validate.job_id(job_id)
        link = os.path.join(self.jobs_dir, "by-id", job_id)
        try:
            target = os.readlink(link)
        except OSError:
            raise NotFound(f"job {job_id} is not a cell job of {self.username}") from None
        name = os.path.basename(target.rstrip("/"))
        if not _UUID.match(name):
            raise NotFound(f"job {job_id} is not a cell job of {self.username}")
        return os.path.join(self.jobs_dir, name)

    def is_cell_job(self, job_id: str) -> bool:
        try:
            self.job_dir(job_id)
            return True
        except (NotFound, ValidationError):
            return False

    def cleanup(self, max_age_days: float) -> int:
        """Remove cell job directories (and their ``by-id`` links) older than ``max_age_days``.

        Returns the number of directories removed. Only names this module creates are touched.
        """
        import shutil

        if max_age_days <= 0 or not os.path.isdir(self.jobs_dir):
            return 0
        cutoff = time.time() - max_age_days * 86400
        removed = set()
        for name in os.listdir(self.jobs_dir):
            path = os.path.join(self.jobs_dir, name)
            if not _UUID.match(name) or os.path.islink(path) or not os.path.isdir(path):
                continue
            try:
                if os.stat(path).st_mtime >= cutoff:
                    continue
                marker = os.path.join(path, "status.json")
                if os.path.exists(marker) and os.stat(marker).st_mtime >= cutoff:
                    continue
            except OSError:
                continue
            shutil.rmtree(path, ignore_errors=True)
            removed.add(name)
        by_id = os.path.join(self.jobs_dir, "by-id")
        if os.path.isdir(by_id):
            for link in os.listdir(by_id):
                full = os.path.join(by_id, link)
                try:
                    target = os.path.basename(os.readlink(full).rstrip("/"))
                except OSError:
                    continue
                if target in removed or not os.path.isdir(os.path.join(self.jobs_dir, target)):
                    os.unlink(full)
        return len(removed)

    # -- submission --------------------------------------------------------------------

    async def resolve_image(self, image: Any):
        if not isinstance(image, str) or not image:
            raise ValidationError("image", "is required")
        if len(image) > 512 or any(c in image for c in "\n\r\x00"):
            raise ValidationError("image", "is not a valid image id")
        try:
            img = await self.catalog.resolve(image, self.username)
        except ValidationError as e:
            raise ValidationError("image", e.message) from None
        except (LookupError, OSError, ValueError) as e:
            raise ValidationError("image", f"unknown or unusable image {image[:100]!r}") from e
        path = getattr(img, "path", None)
        if not path:
            raise ValidationError("image", f"image {image[:100]!r} is not available locally; pull it first")
        return img

    def resolve_venv(self, name: Any) -> Optional[str]:
        """The real path of the user's venv ``name`` (:mod:`jupyter_hpc.venvs`); ``None`` for no venv."""
        if name in (None, ""):
            return None
        from . import venvs

        return venvs.resolve(self.home, name)

    def resolve_cwd(self, cwd: Any, root_dir: str) -> str:
        """A directory inside ``root_dir`` (``cwd`` is relative to it, as notebook paths are)."""
        if cwd in (None, ""):
            return os.path.realpath(root_dir)
        if not isinstance(cwd, str) or len(cwd) > 4096 or any(ord(c) < 32 for c in cwd):
            raise ValidationError("cwd", "is not a valid path")
        parts = cwd.replace("\\", "/").split("/")
        if ".." in parts:
            raise ValidationError("cwd", "must not contain '..'")
        path = validate.path_within(os.path.join(root_dir, cwd.lstrip("/")), [root_dir], "cwd")
        if os.path.isfile(path) or (path.endswith(".ipynb") and not os.path.exists(path)):
            # a notebook path (maybe not saved yet) means its directory
            path = validate.path_within(os.path.dirname(path), [root_dir], "cwd")
        if not os.path.isdir(path):
            raise ValidationError("cwd", f"{cwd[:200]!r} is not a directory")
        return path

    async def submit(self, body: Dict[str, Any], *, cwd: str) -> Dict[str, Any]:
        """Validate ``body`` (code, image, resources), submit, and return ``{"job_id", "dir", "runtime"}``.

        ``cwd`` is an already resolved directory (see :meth:`resolve_cwd`).
        Nothing is submitted when any value is refused.
        """
        code = body.get("code")
        if not isinstance(code, str):
            raise ValidationError("code", "must be a string")
        if "\x00" in code:
            raise ValidationError("code", "must not contain NUL characters")
        image = await self.resolve_image(body.get("image"))
        venv = self.resolve_venv(body.get("venv"))
        token = uuid.uuid4().hex
        job_dir = os.path.join(self.jobs_dir, token)
        req = await job_request(
            self.slurm,
            body,
            defaults=self.default_resources,
            allowed_partitions=self.allowed_partitions,
            job_name=CELL_JOB_NAME,
            output=os.path.join(job_dir, "slurm.out"),
            error=os.path.join(job_dir, "slurm.err"),
            workdir=cwd,
            comment=make_comment(kind="cell", image=comment_value(image.id)),
        )
        mode = await self.runtime_mode(image)
        self._ensure_dirs()
        os.mkdir(job_dir, 0o700)
        with open(os.open(os.path.join(job_dir, "code.py"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w",
                  encoding="utf-8") as f:
            f.write(code)
        argv = self.image_python + ["-m", "jupyter_hpc.cellrunner", job_dir]
        script = build_container_script(
            image.path, argv, nv=bool(req.gpus), pwd=cwd, env_names=GPU_ENV, node_info=False, runtime=mode,
            exclusive=req.exclusive, record_file=os.path.join(job_dir, RUN_RECORD), venv=venv, ch_run=self.ch_run,
        )
        job_id = await self.slurm.submit(req, script, env=clean_env())
        meta = {
            "job_id": job_id,
            "image": image.id,
            "cwd": cwd,
            "submitted": time.time(),
            "runtime": mode,
            "venv": body.get("venv") if venv else None,
            "resources": {k: getattr(req, k) for k in ("partition", "time", "cpus", "memory", "gpus", "exclusive")},
        }
        with open(os.open(os.path.join(job_dir, "job.json"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w",
                  encoding="utf-8") as f:
            json.dump(meta, f)
        self._link_job(job_id, token)
        self.log.info("cell job %s submitted (image %s, dir %s)", job_id, image.id, job_dir)
        return {"job_id": job_id, "dir": job_dir, "runtime": mode}

    def _link_job(self, job_id: str, token: str) -> None:
        """``by-id/<job_id>`` -> ``../<token>``. A link already there belongs to an earlier job
        with the same id (Slurm numbers again after a state reset or wrap-around of
        ``MaxJobId``): the new job replaces it."""
        link = os.path.join(self.jobs_dir, "by-id", job_id)
        tmp = os.path.join(self.jobs_dir, "by-id", f".{job_id}.{token}")
        os.symlink(os.path.join("..", token), tmp)
        os.replace(tmp, link)

    async def runtime_info(self):
        """The :class:`~jupyter_hpc.runtime.RuntimeInfo` jobs of this user get (``None``: no runtime set)."""
        if self.runtime is None:
            return None
        return await self.runtime.resolve(self.catalog, self.username)

    async def runtime_mode(self, image: Any = None) -> str:
        """``apptainer``, ``charliecloud`` or ``host`` (containers unavailable): how the next job
        (with ``image``, whose own runtime choice applies, see :func:`jupyter_hpc.runtime.for_image`)
        runs its command."""
        from .runtime import for_image

        info = await self.runtime_info()
        return for_image(info.mode if info is not None else "apptainer", image)

    @property
    def ch_run(self) -> str:
        """Charliecloud's ``ch-run`` command (:attr:`jupyter_hpc.runtime.ContainerRuntime.ch_run`)."""
        return getattr(self.runtime, "ch_run", None) or "ch-run"

    # -- state -------------------------------------------------------------------------

    async def job_info(self, job_id: str, max_age: float = 1.0) -> Optional[JobInfo]:
        """This user's job as squeue reports it (``None`` once Slurm has forgotten it)."""
        if self.watcher is not None and max_age > 0:
            info = await self._watched(job_id)
            if info is not False:
                return info
        now = time.monotonic()
        cached = self._states.get(job_id)
        if cached and now - cached[0] < max_age:
            return cached[1]
        jobs = await self.slurm.squeue(job_ids=[job_id])
        info = jobs.get(job_id)
        if info is not None and info.user and info.user != self.username:
            info = None
        self._states[job_id] = (now, info)
        if len(self._states) > 1000:
            for key, (t, _) in list(self._states.items()):
                if now - t > 60:
                    del self._states[key]
        return info

    async def _watched(self, job_id: str):
        """The job from the shared watcher; ``False`` when the watcher cannot tell."""
        from .watcher import GONE, KNOWN

        if job_id not in self._tracked:
            self.watcher.track(job_id)
            self._tracked.add(job_id)
        status = self.watcher.get(job_id)
        if status.updated is None:
            await self.watcher.refresh(timeout=15)
            status = self.watcher.get(job_id)
        if status.kind == KNOWN and status.info is not None:
            info = status.info
            if info.user and info.user != self.username:
                return None
            if info.is_finished:
                self._untrack(job_id)
            return info
        if status.kind == GONE:
            self._untrack(job_id)
            return None
        return False

    def _untrack(self, job_id: str) -> None:
        if job_id in self._tracked:
            self._tracked.discard(job_id)
            self.watcher.untrack(job_id)

    async def state(self, job_id: Any, since: int = 0) -> CellState:
        """Outputs from index ``since`` and the job's state; :class:`NotFound` if not ours."""
        job_dir = self.job_dir(job_id)
        job_id = validate.job_id(job_id)
        since = validate.integer(since, "since", 0, 10**9)
        status = read_status(job_dir)
        info = None
        if status is None:
            info = await self.job_info(job_id)
            if info is None or info.is_finished:
                # The cell may have finished between the two looks.
                status = read_status(job_dir)
        # Read outputs after the status so that a finished cell's outputs are complete.
        outputs, nxt = read_outputs(job_dir, since)
        run = read_run_record(os.path.join(job_dir, RUN_RECORD))
        if status is not None:
            if self.watcher is not None:
                self._untrack(job_id)
            ok = status.get("status") == "ok"
            return CellState(job_id, "COMPLETED" if ok else "FAILED", None, run.get("node") if run else None,
                             outputs, nxt, True, "ok" if ok else "error", run=run)
        if info is None or info.is_finished:
            # Ended without a status file: cancelled, timed out, killed, or failed to start.
            state = info.state if info is not None else "ENDED"
            tail = _err_tail(job_dir)
            state = ended_state(state, tail)
            outputs2, nxt = read_outputs(job_dir, nxt)
            outputs.extend(outputs2)
            # The explanation is not stored in the file, so it comes with every later call.
            outputs.append(self._end_error(job_dir, state, tail))
            reason = info.reason if info else None
            if state == "OUT_OF_MEMORY":
                reason = "OutOfMemory"
            return CellState(job_id, state, reason, info.node if info else None,
                             outputs, nxt, True, "error", run=run)
        state, reason = info.state, info.reason
        if info.is_pending and os.path.exists(os.path.join(job_dir, "outputs.jsonl")):
            # The runner has started: the job state seen by the watcher is older than that.
            state, reason = "RUNNING", None
        return CellState(job_id, state, reason, info.node, outputs, nxt, False, None, run=run)

    def _end_error(self, job_dir: str, state: str, tail: Optional[str] = None) -> dict:
        if tail is None:
            tail = _err_tail(job_dir)
        if state == "OUT_OF_MEMORY":
            limit = _meta(job_dir).get("resources", {}).get("memory")
            lines = [
                "The cell job ran out of memory: Slurm stopped it because it used more than the "
                + (f"{limit} " if limit else "")
                + "it asked for. Ask for more memory (Memory in the run dialog, --mem for %%hpc) "
                "or make the cell use less."
            ]
        else:
            lines = [f"The cell job ended ({state}) before the cell finished."]
        if tail.strip():
            lines += ["Job error output (last lines):"] + tail.strip().splitlines()[-20:]
        return {"output_type": "error", "ename": "OutOfMemory" if state == "OUT_OF_MEMORY" else "CellJobEnded",
                "evalue": state, "traceback": lines}

    def forget(self, job_id: str) -> None:
        """Drop the cached state of a job (after cancelling it)."""
        self._states.pop(job_id, None)

    async def cancel(self, job_id: Any) -> None:
        self.job_dir(job_id)
        await self.slurm.cancel(validate.job_id(job_id))
        self._states.pop(job_id, None)


def _err_tail(job_dir: str, size: int = 4000) -> str:
    """The last ``size`` bytes of the job's ``slurm.err`` ("" when missing)."""
    try:
        with open(os.path.join(job_dir, "slurm.err"), "rb") as f:
            f.seek(0, os.SEEK_END)
            end = f.tell()
            f.seek(max(0, end - size))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _meta(job_dir: str) -> Dict[str, Any]:
    """``job.json`` of a cell job (``{}`` when missing or unreadable)."""
    try:
        with open(os.path.join(job_dir, "job.json"), encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def comment_value(value: str) -> str:
    """Keep only characters allowed in a jupyter-hpc comment value."""
    return re.sub(r"[^A-Za-z0-9_.:+/@-]", "_", value)[:200]
