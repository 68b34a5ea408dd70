"""Async Slurm client: the one place that runs Slurm commands.

Builds argv lists with :mod:`jupyter_hpc.slurm`, runs them with
:func:`jupyter_hpc.process.run` and maps failures to three error types:

- :class:`SlurmUnavailable` - slurmctld did not answer (timeout, connection
  refused, "Unable to contact slurm controller"); retry later.
- :class:`SlurmRequestError` - Slurm refused the request itself (unknown
  partition/account, impossible resources); the message says what to change.
- :class:`SlurmError` - any other failure.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any, Dict, Iterable, List, Mapping, Optional

from traitlets import Bool, Dict as TDict, Float, List as TList, Unicode
from traitlets.config import Configurable

from . import slurm, validate
from .process import RUNUSER_PREFIX, CommandError, CommandNotFound, CommandTimeout, run
from .slurm import JobInfo, JobRequest, JobStats, Partition

log = logging.getLogger(__name__)


class SlurmError(CommandError):
    """A Slurm command failed."""

    @classmethod
    def from_error(cls, err: CommandError, reason: str = "") -> "SlurmError":
        return cls(err.argv, err.returncode, err.stderr, err.stdout, reason or err.reason)


class SlurmUnavailable(SlurmError):
    """slurmctld (or slurmdbd for sacct) did not answer; the state of jobs is unknown."""


class SlurmRequestError(SlurmError):
    """Slurm refused a request because of its values. ``message`` says what to do; ``field`` names the input."""

    def __init__(self, argv, returncode, stderr="", stdout="", reason="", field: str = "", message: str = ""):
        self.field = field
        self.message = message
        super().__init__(argv, returncode, stderr, stdout, reason)

    def __str__(self) -> str:
        return self.message or super().__str__()


class AccountingUnavailable(SlurmError):
    """sacct cannot answer: accounting storage is disabled or slurmdbd is unreachable."""


#: stderr fragments meaning "the controller did not answer".
UNAVAILABLE_PATTERNS = (
    "unable to contact slurm controller",
    "socket timed out",
    "connection refused",
    "slurm_receive_msg",
    "zero bytes were transmitted or received",
    "unable to establish connection",
    "communication connection failure",
    "slurmctld not responding",
    "slurm backup controller in standby mode",
    "send/recv operation failed",
    "munge",
    "authentication failure",
    "couldn't load specified plugin",
)

#: stderr fragment -> (field, advice) for requests Slurm refused.
REQUEST_ERRORS = (
    ("invalid partition name specified", "partition",
     "Slurm does not know this partition. Pick one of the partitions listed by the cluster."),
    ("invalid account or account/partition combination", "account",
     "This account may not be used (with this partition). Use an account you belong to."),
    ("invalid account", "account", "Slurm does not know this account. Use an account you belong to."),
    ("invalid qos specification", "qos", "This QOS does not exist or may not be used with this account."),
    ("requested node configuration is not available", "resources",
     "No node in this partition has that many CPUs, that much memory or those GPUs. Ask for less or pick another partition."),
    ("invalid generic resource (gres) specification", "gpus",
     "This GPU type or count is not available in the partition. Check the GPU types the partition offers."),
    ("invalid gres specification", "gpus",
     "This GPU type or count is not available in the partition. Check the GPU types the partition offers."),
    ("memory specification can not be satisfied", "memory",
     "No node has that much memory. Ask for less memory."),
    ("requested time limit is invalid", "time",
     "The time limit is longer than the partition allows. Ask for less time."),
    ("job violates accounting/qos policy", "resources",
     "The request exceeds a limit of your account or QOS. Ask for fewer resources or less time."),
    ("more processors requested than permitted", "cpus", "More CPUs than the partition allows. Ask for fewer CPUs."),
    ("node count specification invalid", "nodes", "The node count is not possible in this partition."),
    ("invalid feature specification", "constraint", "No node has this feature."),
    ("requested reservation is invalid", "reservation", "This reservation does not exist or is not yours."),
    ("access/permission denied", "partition", "You may not use this partition or account."),
    ("user's group not permitted to use this partition", "partition", "You may not use this partition."),
)


def classify(err: CommandError, *, request: bool = False) -> SlurmError:
    """Turn a :class:`CommandError` from a Slurm command into the right :class:`SlurmError` subclass."""
    if isinstance(err, SlurmError):
        return err
    text = f"{err.stderr}\n{err.stdout}".lower()
    if isinstance(err, CommandTimeout):
        return SlurmUnavailable(err.argv, err.returncode, err.stderr, err.stdout,
                                err.reason or "timed out: the Slurm controller did not answer")
    if isinstance(err, CommandNotFound):
        return SlurmError.from_error(err)
    if request:
        for pattern, field, advice in REQUEST_ERRORS:
            if pattern in text:
                detail = (err.stderr or err.stdout).strip().splitlines()
                first = detail[-1] if detail else pattern
                return SlurmRequestError(err.argv, err.returncode, err.stderr, err.stdout,
                                         field=field, message=f"{advice} (Slurm said: {first.strip()})")
    if "accounting storage is disabled" in text or ("slurmdbd" in text and ("connect" in text or "problem talking" in text)):
        return AccountingUnavailable.from_error(err)
    if any(p in text for p in UNAVAILABLE_PATTERNS):
        return SlurmUnavailable.from_error(err)
    return SlurmError.from_error(err)


class SlurmClient(Configurable):
    """Submit, cancel and query Slurm jobs through the command-line tools."""

    sbatch = Unicode("sbatch", help="sbatch command (name on PATH or absolute path).").tag(config=True)
    squeue_cmd = Unicode("squeue", help="squeue command (name on PATH or absolute path).").tag(config=True)
    sacct_cmd = Unicode("sacct", help="sacct command (name on PATH or absolute path).").tag(config=True)
    sinfo_cmd = Unicode("sinfo", help="sinfo command (name on PATH or absolute path).").tag(config=True)
    scancel_cmd = Unicode("scancel", help="scancel command (name on PATH or absolute path).").tag(config=True)
    sstat_cmd = Unicode("sstat", help="sstat command (name on PATH or absolute path).").tag(config=True)
    scontrol_cmd = Unicode("scontrol", help="scontrol command (name on PATH or absolute path).").tag(config=True)
    srun_cmd = Unicode(
        "srun",
        help="srun command (name on PATH or absolute path); runs short probes such as nvidia-smi inside a "
        "running job's allocation (srun --jobid=N --overlap).",
    ).tag(config=True)
    probe_timeout = Float(20.0, help="Seconds to wait for a probe run inside a job (srun --overlap).").tag(config=True)

    submit_timeout = Float(60.0, help="Seconds to wait for sbatch before giving up (the job may still be created).").tag(config=True)
    query_timeout = Float(30.0, help="Seconds to wait for squeue/sinfo/sacct/sstat/scancel.").tag(config=True)
    partitions_ttl = Float(30.0, help="Seconds a partition list from sinfo is reused.").tag(config=True)

    user_prefix = TList(
        Unicode(),
        default_value=list(RUNUSER_PREFIX),
        help="argv prefix to run a command as another user; '{username}' is replaced. "
        "Default runuser (hub running as root); use ['sudo', '-n', '-E', '-u', '{username}', '--'] "
        "for a non-root hub with a sudoers rule.",
    ).tag(config=True)
    run_as_user = Bool(
        True,
        help="Run sbatch/scancel as the job's user when a user is given (needed when the caller is root). "
        "Disable when the process already runs as the user (single-user server).",
    ).tag(config=True)
    sbatch_extra_args = TList(
        Unicode(),
        help="Extra options added to every sbatch command line (site policy, e.g. ['--qos=interactive']).",
    ).tag(config=True)
    env = TDict(
        help="Environment variables for every Slurm command (e.g. SLURM_CONF). Merged over the process environment.",
    ).tag(config=True)
    submit_env_keep = TList(
        Unicode(),
        default_value=["PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "SLURM_CONF"],
        help="Variables of this process's environment passed to sbatch (and so to the job). Everything else "
        "of this process's environment (e.g. the hub's secrets) is not propagated to jobs.",
    ).tag(config=True)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._partitions: Optional[List[Partition]] = None
        self._partitions_at = 0.0
        self._partitions_lock = asyncio.Lock()
        #: number of commands run, by command name (for benchmarks and tests)
        self.counters: Dict[str, int] = {}

    # -- plumbing ---------------------------------------------------------

    def _user(self, user: Optional[str]) -> Optional[str]:
        if not user or not self.run_as_user:
            return None
        return validate.username(user)

    def _env(self, env: Optional[Mapping[str, str]]) -> Optional[Dict[str, str]]:
        if env is None and not self.env:
            return None
        merged = dict(os.environ)
        merged.update(self.env)
        if env is not None:
            merged.update(env)
        return merged

    async def _run(self, argv: List[str], *, timeout: float, user: Optional[str] = None,
                   input: Optional[str] = None, env: Optional[Mapping[str, str]] = None,
                   request: bool = False, check: bool = True):
        name = argv[0].rsplit("/", 1)[-1]
        self.counters[name] = self.counters.get(name, 0) + 1
        try:
            run_user = self._user(user)
            return await run(argv, timeout=timeout, input=input, env=self._env(env), user=run_user,
                             user_prefix=self.user_prefix, check=check, cwd="/" if run_user else None)
        except CommandError as e:
            raise classify(e, request=request) from None

    # -- jobs --------------------------------------------------------------

    async def submit(self, req: JobRequest, script: str, user: Optional[str] = None,
                     env: Optional[Mapping[str, str]] = None, cwd: Optional[str] = None) -> str:
        """Submit ``script`` (sent on stdin) with the resources of ``req``; returns the job id.

        sbatch's environment - and so the job's (sbatch's default ``--export=ALL``) -
        is the variables named in :attr:`submit_env_keep` taken from this process,
        plus :attr:`env`, plus ``env``. Pass secrets in ``env``, never in the script.
        ``cwd``: directory sbatch starts in (default ``/`` when running as ``user``);
        set ``req.workdir`` for the job's working directory.
        """
        argv = slurm.sbatch_argv(req, sbatch=self.sbatch, extra=self.sbatch_extra_args)
        full_env = {k: os.environ[k] for k in self.submit_env_keep if k in os.environ}
        full_env.update(self.env)
        if env:
            full_env.update(env)
        run_user = self._user(user)
        name = "sbatch"
        self.counters[name] = self.counters.get(name, 0) + 1
        try:
            result = await run(argv, timeout=self.submit_timeout, input=script, env=full_env,
                               user=run_user, user_prefix=self.user_prefix,
                               cwd=cwd if cwd is not None else ("/" if run_user else None))
        except CommandError as e:
            raise classify(e, request=True) from None
        try:
            return slurm.parse_sbatch(result.stdout)
        except ValueError as e:
            raise SlurmError(argv, result.returncode, result.stderr, result.stdout, str(e)) from None

    async def cancel(self, job_id: Any, user: Optional[str] = None, signal: Optional[str] = None) -> bool:
        """Cancel a job (as ``user``). ``True`` when scancel accepted it; ``False`` when Slurm said the
        job already finished or is unknown (Slurm 22.05 accepts unknown ids silently: ``True``).
        Raises :class:`SlurmRequestError` (field ``job``) for another user's job.
        """
        argv = slurm.scancel_argv(job_id, scancel=self.scancel_cmd, signal=signal)
        result = await self._run(argv, timeout=self.query_timeout, user=user, check=False)
        text = (result.stderr or "").lower()
        if result.returncode == 0 and not text.strip():
            return True
        if "invalid job id" in text or "already completing or completed" in text or "job has already finished" in text:
            return False
        if "access/permission denied" in text:
            raise SlurmRequestError(result.argv, result.returncode, result.stderr, result.stdout, field="job",
                                    message=f"Job {validate.job_id(job_id)} is not yours to cancel.")
        if result.returncode != 0 or "error" in text:
            raise classify(CommandError(result.argv, result.returncode, result.stderr, result.stdout))
        return True

    async def squeue(self, job_ids: Optional[Iterable[Any]] = None, user: Optional[str] = None,
                     states: str = "all", as_user: Optional[str] = None) -> Dict[str, JobInfo]:
        """Jobs known to slurmctld (all, some ids, or one user's), keyed by job id.

        Unknown ids are simply absent (Slurm's "Invalid job id" is not an error here).
        ``as_user`` runs squeue as that user (for sites with ``PrivateData=jobs``).
        """
        ids = list(job_ids) if job_ids is not None else None
        if ids is not None and not ids:
            return {}
        argv = slurm.squeue_argv(ids, user=user, squeue=self.squeue_cmd, states=states)
        try:
            result = await self._run(argv, timeout=self.query_timeout, user=as_user)
        except SlurmError as e:
            if not isinstance(e, SlurmUnavailable) and slurm.is_invalid_job_error(e.stderr):
                return {}
            raise
        return slurm.parse_squeue(result.stdout)

    async def job(self, job_id: Any, use_sacct: bool = True) -> Optional[JobInfo]:
        """One job from squeue, else from sacct (``None`` when neither knows it)."""
        jobs = await self.squeue([job_id])
        jid = validate.job_id(job_id)
        if jid in jobs:
            return jobs[jid]
        if use_sacct:
            try:
                return (await self.sacct([jid])).get(jid)
            except AccountingUnavailable:
                return None
        return None

    async def sacct(self, job_ids: Iterable[Any], user: Optional[str] = None) -> Dict[str, JobInfo]:
        """Finished (and running) jobs from accounting. Raises :class:`AccountingUnavailable` when disabled."""
        ids = list(job_ids)
        if not ids:
            return {}
        argv = slurm.sacct_argv(ids, sacct=self.sacct_cmd, user=user)
        result = await self._run(argv, timeout=self.query_timeout)
        return slurm.parse_sacct(result.stdout)

    async def partitions(self, max_age: Optional[float] = None) -> List[Partition]:
        """Partitions from sinfo, cached for ``max_age`` seconds (default :attr:`partitions_ttl`)."""
        max_age = self.partitions_ttl if max_age is None else max_age
        async with self._partitions_lock:
            if self._partitions is not None and time.monotonic() - self._partitions_at < max_age:
                return self._partitions
            result = await self._run(slurm.sinfo_argv(self.sinfo_cmd), timeout=self.query_timeout)
            self._partitions = slurm.parse_sinfo(result.stdout)
            self._partitions_at = time.monotonic()
            return self._partitions

    async def partition(self, name: Optional[str] = None) -> Partition:
        """One partition by name (the default partition when ``name`` is empty).

        Raises :class:`SlurmRequestError` (field ``partition``) for an unknown name.
        """
        parts = await self.partitions()
        if not name:
            for p in parts:
                if p.default:
                    return p
            if parts:
                return parts[0]
        for p in parts:
            if p.name == name:
                return p
        names = ", ".join(p.name for p in parts) or "(none)"
        raise SlurmRequestError(["sinfo"], None, field="partition",
                                message=f"Unknown partition {str(name)[:64]!r}. Available partitions: {names}.")

    async def check_request(self, req: JobRequest) -> Partition:
        """Check ``req`` against the live partition limits; raises :class:`validate.ValidationError`.

        Returns the partition the job will run in.
        """
        part = await self.partition(req.partition)
        if req.partition and req.partition != part.name:
            raise validate.ValidationError("partition", f"unknown partition {req.partition!r}")
        if not part.is_up:
            raise validate.ValidationError("partition", f"partition {part.name!r} is {part.state}")
        if req.cpus and part.cpus and req.cpus > part.cpus:
            raise validate.ValidationError("cpus", f"partition {part.name!r} has at most {part.cpus} CPUs per node")
        if req.memory and part.memory_mb:
            if validate.memory_mb(req.memory) > part.memory_mb:
                raise validate.ValidationError("memory", f"partition {part.name!r} has at most {part.memory_mb}M per node")
        if req.gpus:
            available = part.max_gpus(req.gpu_type)
            if req.gpus > available:
                what = f"{req.gpu_type!r} GPUs" if req.gpu_type else "GPUs"
                if not part.gpus:
                    msg = f"partition {part.name!r} has no GPUs"
                else:
                    types = ", ".join(f"{t}: {c}" for t, c in part.gpus.items())
                    msg = f"partition {part.name!r} has at most {available} {what} per node ({types})"
                raise validate.ValidationError("gpus", msg)
        if req.time and part.max_time_minutes is not None:
            if validate.time_limit_minutes(req.time) > part.max_time_minutes:
                raise validate.ValidationError(
                    "time", f"partition {part.name!r} allows at most {validate.format_minutes(part.max_time_minutes)}")
        return part

    async def job_stats(self, job_id: Any, user: Optional[str] = None) -> Optional[JobStats]:
        """Live CPU/memory use from sstat; ``None`` when sstat has nothing (not running, gathering off)."""
        argv = slurm.sstat_argv(job_id, sstat=self.sstat_cmd)
        try:
            result = await self._run(argv, timeout=self.query_timeout, user=user, check=False)
        except SlurmUnavailable:
            raise
        if result.returncode != 0:
            text = result.stderr.lower()
            if any(p in text for p in UNAVAILABLE_PATTERNS):
                raise classify(CommandError(result.argv, result.returncode, result.stderr, result.stdout))
            return None
        return slurm.parse_sstat(result.stdout, validate.job_id(job_id))

    async def job_usage(self, job_id: Any, user: Optional[str] = None) -> Dict[str, Optional[float]]:
        """Peak memory and CPU time of a (finished) job from accounting: ``{"peak_mb", "cpu_seconds"}``.

        Raises :class:`AccountingUnavailable` when Slurm keeps no accounting (no slurmdbd).
        """
        argv = slurm.sacct_usage_argv(job_id, sacct=self.sacct_cmd)
        result = await self._run(argv, timeout=self.query_timeout, user=user)
        return slurm.parse_sacct_usage(result.stdout)

    async def run_in_job(self, job_id: Any, argv: List[str], node: Optional[str] = None,
                         user: Optional[str] = None):
        """Run ``argv`` as an overlapping step of a running job; the :class:`CommandResult` (not checked)."""
        full = slurm.srun_in_job_argv(job_id, argv, srun=self.srun_cmd, node=node, timeout_s=int(self.probe_timeout))
        return await self._run(full, timeout=self.probe_timeout, user=user, check=False)

    async def set_comment(self, job_id: Any, comment: str, user: Optional[str] = None) -> None:
        """``scontrol update JobId=N Comment=...`` (as ``user``)."""
        argv = slurm.scontrol_comment_argv(job_id, comment, scontrol=self.scontrol_cmd)
        await self._run(argv, timeout=self.query_timeout, user=user)

    async def ping(self) -> bool:
        """True when slurmctld answers ``scontrol ping`` as UP."""
        try:
            result = await self._run([self.scontrol_cmd, "ping"], timeout=self.query_timeout, check=False)
        except SlurmUnavailable:
            return False
        return "UP" in result.stdout


__all__ = [
    "SlurmClient",
    "SlurmError",
    "SlurmUnavailable",
    "SlurmRequestError",
    "AccountingUnavailable",
    "classify",
]
