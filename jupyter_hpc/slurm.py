"""Pure Slurm helpers: build command lines and batch scripts, parse command output.

Nothing in this module runs a command. :mod:`jupyter_hpc.cluster` executes
the argv lists built here through :func:`jupyter_hpc.process.run` and hands
the output back to the parsers here.

The query formats were chosen to work unchanged on Slurm 22.05 (Debian 12)
and 24.11 (Debian 13): ``squeue -O`` with size ``0`` (printed whole, never cut
or padded) and a multi-character field terminator, ``sacct -P`` with the same
delimiter, ``sinfo -o`` with ``%`` letters that exist in every version since 20.x.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from . import validate
from .validate import ValidationError

#: Field terminator used in squeue/sacct/sinfo output. Several characters so that
#: a job name or comment containing ``|`` does not shift the columns.
DELIM = "|#~|"

#: Prefix of the Slurm comment set by jupyter-hpc on its own jobs.
COMMENT_PREFIX = "jupyter-hpc:"

# ---------------------------------------------------------------------------
# time / size helpers
# ---------------------------------------------------------------------------

_NULLS = {"", "N/A", "(null)", "None", "none", "Unknown", "n/a", "NONE"}


def _clean(value: Optional[str]) -> Optional[str]:
    """Map Slurm's many spellings of "nothing" to ``None``."""
    if value is None:
        return None
    value = value.strip()
    return None if value in _NULLS else value


def parse_duration(value: Optional[str]) -> Optional[int]:
    """Slurm duration (``MM:SS``, ``HH:MM:SS``, ``D-HH:MM:SS``, ``D-HH``, minutes) -> seconds.

    ``UNLIMITED``/``infinite`` -> ``None``; ``INVALID``/``N/A`` -> ``None``.
    Fractional seconds (sstat's ``00:00:00.010``) are truncated.
    """
    value = _clean(value)
    if value is None or value.upper() in ("UNLIMITED", "INFINITE", "INVALID", "NOT_SET", "PARTITION_LIMIT"):
        return None
    days = 0
    if "-" in value:
        d, _, value = value.partition("-")
        if not d.isdigit():
            return None
        days = int(d)
        parts = value.split(":")
        # D-HH, D-HH:MM, D-HH:MM:SS
        while len(parts) < 3:
            parts.append("0")
    else:
        parts = value.split(":")
        if len(parts) == 1:  # minutes
            parts = ["0", parts[0], "0"]
        elif len(parts) == 2:  # MM:SS
            parts = ["0"] + parts
    try:
        h, m, s = int(parts[0]), int(parts[1]), int(float(parts[2]))
    except (ValueError, IndexError):
        return None
    return ((days * 24 + h) * 60 + m) * 60 + s


def parse_minutes(value: Optional[str]) -> Optional[int]:
    """A Slurm time limit as whole minutes (``None`` when unlimited/unknown)."""
    seconds = parse_duration(value)
    return None if seconds is None else (seconds + 59) // 60


def parse_time(value: Optional[str]) -> Optional[str]:
    """Slurm timestamps (``2026-11-25T10:51:02``) are passed through; ``N/A``/``Unknown``/``None`` -> ``None``."""
    value = _clean(value)
    return value if value and value[0].isdigit() else None


_SIZE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([KMGTP]?)\Z", re.IGNORECASE)
_SIZE_MB = {"": 1 / (1024 * 1024), "K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024, "P": 1024**3}


def parse_size_mb(value: Optional[str], default_unit: str = "") -> Optional[float]:
    """``MaxRSS``-style sizes (``1234K``, ``2.5G``, ``1000`` bytes) -> megabytes."""
    value = _clean(value)
    if value is None:
        return None
    m = _SIZE.match(value)
    if not m:
        return None
    unit = (m.group(2) or default_unit).upper()
    return float(m.group(1)) * _SIZE_MB[unit]


def parse_exit_code(value: Optional[str]) -> Optional[int]:
    """``0:0`` / ``1:0`` / ``0:15`` (exit:signal) -> exit status, or 128+signal when killed."""
    value = _clean(value)
    if value is None:
        return None
    code, _, sig = value.partition(":")
    try:
        code_i = int(code)
        sig_i = int(sig) if sig else 0
    except ValueError:
        return None
    if code_i == 0 and sig_i:
        return 128 + sig_i
    return code_i


# ---------------------------------------------------------------------------
# GRES / TRES
# ---------------------------------------------------------------------------

#: Key used in GPU dicts for GPUs configured or requested without a type (``gpu:2``).
UNTYPED_GPU = "gpu"

_GRES_ITEM = re.compile(r"^(?:gres/|gres:)?(?P<name>[A-Za-z0-9_.-]+)(?::(?P<type>[A-Za-z0-9_.-]+))?(?::|=)(?P<count>[0-9]+)(?P<suffix>[KMGT]?)")


def _split_gres(text: str) -> List[str]:
    """Split ``gpu:a100:4(S:0-1),shard:8`` on commas outside parentheses."""
    items, depth, cur = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth = max(0, depth - 1)
        if ch == "," and depth == 0:
            items.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    items.append("".join(cur))
    return [i.strip() for i in items if i.strip()]


_COUNT_MULT = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_gres(text: Optional[str], name: str = "gpu") -> Dict[str, int]:
    """GPUs from a GRES or TRES string, as ``{type: count}``.

    Accepts node GRES (``gpu:tesla:2``, ``gpu:2``, ``gpu:a100:4(S:0-1)``),
    job requests (``gres:gpu:1``, ``gres/gpu:tesla=1``, ``gpu:tesla:1``) and TRES
    (``cpu=2,mem=1G,node=1,gres/gpu=2,gres/gpu:tesla=2``). GPUs without a type
    are counted under :data:`UNTYPED_GPU`. In TRES output Slurm lists both the
    total (``gres/gpu=2``) and the typed entries; the total is used only when no
    typed entry is present.
    """
    text = _clean(text)
    result: Dict[str, int] = {}
    if not text:
        return result
    untyped = 0
    for item in _split_gres(text):
        item = item.split("(", 1)[0]
        if "=" in item and not item.startswith(("gres/", "gres:")) and not item.startswith(name):
            continue  # cpu=2, mem=1G, node=1, billing=2
        m = _GRES_ITEM.match(item)
        if not m or m.group("name") != name:
            continue
        count = int(m.group("count")) * _COUNT_MULT[m.group("suffix").upper()]
        if m.group("type"):
            result[m.group("type")] = result.get(m.group("type"), 0) + count
        else:
            untyped += count
    if untyped and not result:
        result[UNTYPED_GPU] = untyped
    return result


def gpu_count(gpus: Mapping[str, int]) -> int:
    return sum(gpus.values())


# ---------------------------------------------------------------------------
# job requests -> sbatch
# ---------------------------------------------------------------------------

_PATH_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f]")


def slurm_path(value: Any, field_name: str) -> str:
    """An absolute path for ``--output``/``--error``/``--chdir`` (Slurm ``%j``-style patterns allowed)."""
    if not isinstance(value, str) or not value:
        raise ValidationError(field_name, "must be a non-empty path")
    if len(value) > 1024:
        raise ValidationError(field_name, "is too long")
    if not value.startswith("/"):
        raise ValidationError(field_name, f"{value[:80]!r} must be an absolute path")
    if _PATH_FORBIDDEN.search(value) or not value.isascii():
        raise ValidationError(field_name, "contains control or non-ASCII characters")
    if "/../" in value + "/" or value.endswith("/.."):
        raise ValidationError(field_name, "must not contain '..'")
    return value


@dataclass
class JobRequest:
    """Resources and metadata of one batch job. Values are already validated.

    Build it with :meth:`validated` from untrusted input; the plain constructor
    trusts its arguments.
    """

    partition: Optional[str] = None
    account: Optional[str] = None
    time: Optional[str] = None  # HH:MM:00 / D-HH:MM:00
    cpus: Optional[int] = None  # --cpus-per-task
    memory: Optional[str] = None  # <N>M
    gpus: int = 0
    gpu_type: Optional[str] = None
    exclusive: bool = False
    job_name: Optional[str] = None
    output: Optional[str] = None
    error: Optional[str] = None
    workdir: Optional[str] = None
    comment: Optional[str] = None
    qos: Optional[str] = None
    reservation: Optional[str] = None
    constraint: Optional[str] = None
    nodes: int = 1

    @classmethod
    def validated(
        cls,
        *,
        partition: Any = None,
        account: Any = None,
        time: Any = None,
        cpus: Any = None,
        memory: Any = None,
        gpus: Any = 0,
        gpu_type: Any = None,
        exclusive: Any = False,
        job_name: Any = None,
        output: Any = None,
        error: Any = None,
        workdir: Any = None,
        comment: Any = None,
        qos: Any = None,
        reservation: Any = None,
        constraint: Any = None,
        nodes: Any = 1,
        max_time_minutes: Optional[int] = None,
        max_memory_mb: Optional[int] = None,
        max_cpus: Optional[int] = None,
        max_gpus: Optional[int] = None,
    ) -> "JobRequest":
        """Validate raw values (strings from forms/REST bodies, or ints) and build a request.

        Empty strings and ``None`` mean "site default" for optional fields.
        Raises :class:`~jupyter_hpc.validate.ValidationError` naming the field.
        """

        def opt(value, fn):
            if value is None or (isinstance(value, str) and value == ""):
                return None
            return fn(value)

        return cls(
            partition=opt(partition, validate.partition),
            account=opt(account, validate.account),
            time=opt(time, lambda v: validate.time_limit(v, max_time_minutes)),
            cpus=opt(cpus, lambda v: validate.cpus(v, max_cpus)),
            memory=opt(memory, lambda v: validate.memory(v, max_memory_mb)),
            gpus=opt(gpus, lambda v: validate.gpus(v, max_gpus)) or 0,
            gpu_type=opt(gpu_type, validate.gpu_type),
            exclusive=validate.boolean(exclusive if exclusive is not None else False, "exclusive"),
            job_name=opt(job_name, validate.job_name),
            output=opt(output, lambda v: slurm_path(v, "output")),
            error=opt(error, lambda v: slurm_path(v, "error")),
            workdir=opt(workdir, lambda v: slurm_path(v, "workdir")),
            comment=opt(comment, lambda v: validate.safe_text(v, "comment", 200)),
            qos=opt(qos, lambda v: validate.name(v, "qos")),
            reservation=opt(reservation, lambda v: validate.name(v, "reservation")),
            constraint=opt(constraint, lambda v: validate.name(v, "constraint")),
            nodes=opt(nodes, lambda v: validate.integer(v, "nodes", 1, 10000)) or 1,
        )

    @property
    def gres(self) -> Optional[str]:
        """The ``--gres`` value (``gpu:N`` or ``gpu:TYPE:N``), or ``None`` without GPUs."""
        if not self.gpus:
            return None
        return f"gpu:{self.gpu_type}:{self.gpus}" if self.gpu_type else f"gpu:{self.gpus}"

    def to_dict(self) -> dict:
        return asdict(self)


def sbatch_argv(req: JobRequest, sbatch: str = "sbatch", extra: Sequence[str] = ()) -> List[str]:
    """``sbatch --parsable ...``; the batch script is read from standard input.

    Every value is re-checked here (defence in depth: a :class:`JobRequest`
    built without :meth:`JobRequest.validated` still cannot inject options).
    ``extra``: site-configured additional options, passed verbatim.
    """
    argv = [sbatch, "--parsable"]
    if req.job_name:
        argv.append("--job-name=" + validate.job_name(req.job_name))
    if req.partition:
        argv.append("--partition=" + validate.partition(req.partition))
    if req.account:
        argv.append("--account=" + validate.account(req.account))
    if req.qos:
        argv.append("--qos=" + validate.name(req.qos, "qos"))
    if req.reservation:
        argv.append("--reservation=" + validate.name(req.reservation, "reservation"))
    if req.constraint:
        argv.append("--constraint=" + validate.name(req.constraint, "constraint"))
    if req.time:
        argv.append("--time=" + validate.time_limit(req.time))
    argv.append(f"--nodes={validate.integer(req.nodes or 1, 'nodes', 1, 10000)}")
    argv.append("--ntasks=1")
    if req.cpus:
        argv.append(f"--cpus-per-task={validate.cpus(req.cpus)}")
    if req.memory:
        argv.append("--mem=" + validate.memory(req.memory))
    if req.gpus:
        validate.gpus(req.gpus)
        if req.gpu_type:
            validate.gpu_type(req.gpu_type)
        argv.append("--gres=" + req.gres)
    if req.exclusive:
        argv.append("--exclusive")
    if req.output:
        argv.append("--output=" + slurm_path(req.output, "output"))
    if req.error:
        argv.append("--error=" + slurm_path(req.error, "error"))
    if req.workdir:
        argv.append("--chdir=" + slurm_path(req.workdir, "workdir"))
    if req.comment:
        argv.append("--comment=" + validate.safe_text(req.comment, "comment", 200))
    argv.extend(str(e) for e in extra)
    return argv


class Line(str):
    """A fixed batch-script line written by jupyter-hpc itself.

    Only code in this package creates these, from constants; never wrap text
    that came from a user. Everything else in a script is an argv list that
    :func:`batch_script` quotes with :func:`shlex.join`.
    """


ScriptItem = Union[Line, Sequence[str]]


def render(item: ScriptItem) -> str:
    if isinstance(item, Line):
        return str(item)
    if isinstance(item, str):
        raise TypeError("batch script commands must be argv lists or Line objects, not plain strings")
    return shlex.join([str(a) for a in item])


def batch_script(
    commands: Iterable[ScriptItem],
    *,
    exports: Optional[Mapping[str, str]] = None,
    directives: Sequence[str] = (),
    shell: str = "/bin/bash",
    strict: bool = True,
) -> str:
    """Compose a batch script from argv lists and fixed :class:`Line` objects.

    - ``commands``: argv lists (quoted with :func:`shlex.join`) or :class:`Line`.
    - ``exports``: ``{NAME: value}`` written as ``export NAME=<quoted value>``
      (names validated with :func:`validate.env_name`; do not put secrets here:
      the script is stored by slurmctld - pass secrets in the job environment).
    - ``directives``: ``#SBATCH`` option values (e.g. ``--signal=B:TERM@60``);
      each must be a single token without whitespace or newlines.
    """
    out = [f"#!{shell}"]
    for d in directives:
        if not isinstance(d, str) or not d.startswith("--") or re.search(r"[\s\x00-\x1f]", d):
            raise ValidationError("directive", f"{str(d)[:60]!r} is not a single sbatch option")
        out.append(f"#SBATCH {d}")
    if strict:
        out.append("set -euo pipefail")
    for name, value in (exports or {}).items():
        out.append(f"export {validate.env_name(name)}={shlex.quote(str(value))}")
    for item in commands:
        out.append(render(item))
    return "\n".join(out) + "\n"


def parse_sbatch(stdout: str) -> str:
    """``sbatch --parsable`` prints ``JOBID`` or ``JOBID;CLUSTER``."""
    for line in reversed((stdout or "").strip().splitlines()):
        token = line.strip().split(";", 1)[0]
        if re.fullmatch(r"[0-9]+(_[0-9]+)?", token):
            return token
    raise ValueError(f"could not find a job id in sbatch output: {stdout[:200]!r}")


def scancel_argv(job_id: Any, scancel: str = "scancel", signal: Optional[str] = None) -> List[str]:
    argv = [scancel]
    if signal:
        if not re.fullmatch(r"[A-Z0-9]{1,10}", signal):
            raise ValidationError("signal", f"{signal!r} is not a signal name")
        argv.append("--signal=" + signal)
    argv.append(validate.job_id(job_id))
    return argv


def scontrol_comment_argv(job_id: Any, comment: str, scontrol: str = "scontrol") -> List[str]:
    """``scontrol update JobId=N Comment=...`` (a user may change their own job's comment)."""
    return [
        scontrol,
        "update",
        "JobId=" + validate.job_id(job_id),
        "Comment=" + validate.safe_text(comment, "comment", 200),
    ]


# ---------------------------------------------------------------------------
# comments: jupyter-hpc metadata on its own jobs
# ---------------------------------------------------------------------------

_COMMENT_KEY = re.compile(r"^[a-z][a-z0-9_]{0,31}\Z")
_COMMENT_VALUE = re.compile(r"^[A-Za-z0-9_.:+/@-]{0,200}\Z")
_HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,252}\Z")


def make_comment(**fields: Any) -> str:
    """Build a jupyter-hpc job comment: ``jupyter-hpc:kind=cell,image=site:notebook.sif``.

    Keys ``[a-z0-9_]``, values ``[A-Za-z0-9_.:+/@-]`` (``None`` values are skipped).
    """
    parts = []
    for key, value in fields.items():
        if value is None:
            continue
        value = str(value)
        if not _COMMENT_KEY.match(key):
            raise ValidationError("comment", f"bad key {key!r}")
        if not _COMMENT_VALUE.match(value):
            raise ValidationError("comment", f"{value[:60]!r} may contain only letters, digits and _.:+/@-")
        parts.append(f"{key}={value}")
    return COMMENT_PREFIX + ",".join(parts)


def parse_comment(comment: Optional[str]) -> Dict[str, str]:
    """Inverse of :func:`make_comment`; ``{}`` for comments not written by jupyter-hpc.

    The legacy/short hand-off form ``jupyter-hpc:HOST:PORT`` yields ``{"host", "port"}``.
    """
    comment = _clean(comment)
    if not comment or not comment.startswith(COMMENT_PREFIX):
        return {}
    body = comment[len(COMMENT_PREFIX):]
    result: Dict[str, str] = {}
    if "=" not in body:
        host, _, port = body.rpartition(":")
        if _HOST.match(host or "") and port.isdigit():
            result = {"host": host, "port": port}
        return result
    for part in body.split(","):
        key, sep, value = part.partition("=")
        if sep and _COMMENT_KEY.match(key) and _COMMENT_VALUE.match(value):
            result[key] = value
    return result


# ---------------------------------------------------------------------------
# job information
# ---------------------------------------------------------------------------

PENDING_STATES = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "CONFIGURING"}
RUNNING_STATES = {"RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "RESIZING"}
FINISHED_STATES = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "OUT_OF_MEMORY",
    "NODE_FAIL",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
    "REVOKED",
    "SPECIAL_EXIT",
}

#: Pending reasons that do not go away by waiting, with advice for the user.
BLOCKING_REASONS = {
    "PartitionConfig": "The request does not fit the partition (CPUs, memory or GPUs per node). Ask for less.",
    "PartitionNodeLimit": "More nodes than the partition allows. Ask for fewer nodes.",
    "PartitionTimeLimit": "The time limit is longer than the partition allows. Ask for less time.",
    "PartitionDown": "The partition is down. Pick another partition or ask the administrators.",
    "PartitionInactive": "The partition is inactive. Pick another partition.",
    "BadConstraints": "No node has the requested features or resources.",
    "InvalidAccount": "The account is not valid. Use an account you belong to.",
    "InvalidQOS": "The QOS is not valid for this account.",
    "AssocMaxJobsLimit": "Your account has reached its maximum number of jobs.",
    "QOSMaxWallDurationPerJobLimit": "The time limit exceeds what your QOS allows. Ask for less time.",
    "DependencyNeverSatisfied": "A job this one depends on failed.",
    "JobHeldAdmin": "An administrator holds this job.",
    "ReqNodeNotAvail": "A required node is not available (down, drained or reserved).",
}

_STATE_ABBREV = {
    "PD": "PENDING",
    "R": "RUNNING",
    "CG": "COMPLETING",
    "CD": "COMPLETED",
    "F": "FAILED",
    "CA": "CANCELLED",
    "TO": "TIMEOUT",
    "OOM": "OUT_OF_MEMORY",
    "NF": "NODE_FAIL",
    "PR": "PREEMPTED",
    "BF": "BOOT_FAIL",
    "DL": "DEADLINE",
    "S": "SUSPENDED",
    "ST": "STOPPED",
    "CF": "CONFIGURING",
    "RQ": "REQUEUED",
    "RH": "REQUEUE_HOLD",
    "RV": "REVOKED",
    "SE": "SPECIAL_EXIT",
    "SO": "STAGE_OUT",
    "RS": "RESIZING",
    "RD": "RESV_DEL_HOLD",
    "RF": "REQUEUE_FED",
    "SI": "SIGNALING",
}


def normalize_state(value: Optional[str]) -> str:
    """``CANCELLED by 1000`` -> ``CANCELLED``; ``PD`` -> ``PENDING``; ``RUNNING+`` -> ``RUNNING``."""
    value = _clean(value)
    if not value:
        return "UNKNOWN"
    word = value.split()[0].rstrip("+*").upper()
    return _STATE_ABBREV.get(word, word)


@dataclass
class JobInfo:
    """One job as squeue or sacct reports it. Missing values are ``None``."""

    job_id: str
    name: Optional[str] = None
    user: Optional[str] = None
    state: str = "UNKNOWN"
    reason: Optional[str] = None
    nodes: Optional[str] = None
    partition: Optional[str] = None
    elapsed: Optional[int] = None  # seconds
    time_limit: Optional[int] = None  # minutes; None = unlimited/unknown
    start_time: Optional[str] = None  # ISO-like Slurm time; estimated while pending
    submit_time: Optional[str] = None
    end_time: Optional[str] = None
    exit_code: Optional[int] = None
    gpus: Dict[str, int] = field(default_factory=dict)
    tres: Optional[str] = None
    comment: Optional[str] = None
    work_dir: Optional[str] = None
    stdout: Optional[str] = None
    stderr: Optional[str] = None
    cpus: Optional[int] = None
    priority: Optional[int] = None
    account: Optional[str] = None
    source: str = "squeue"  # or "sacct"

    @property
    def is_pending(self) -> bool:
        return self.state in PENDING_STATES

    @property
    def is_running(self) -> bool:
        return self.state in RUNNING_STATES

    @property
    def is_finished(self) -> bool:
        return self.state in FINISHED_STATES

    @property
    def gpu_count(self) -> int:
        return gpu_count(self.gpus)

    @property
    def pending_problem(self) -> Optional[str]:
        """A message when the job is pending for a reason that waiting will not fix, else ``None``."""
        if not self.is_pending or not self.reason:
            return None
        reason = self.reason.strip("()").split(",")[0].strip()
        return BLOCKING_REASONS.get(reason)

    @property
    def meta(self) -> Dict[str, str]:
        """jupyter-hpc metadata from the comment (see :func:`make_comment`)."""
        return parse_comment(self.comment)

    @property
    def kind(self) -> Optional[str]:
        return self.meta.get("kind")

    @property
    def endpoint(self) -> Optional[Tuple[str, int]]:
        """``(host, port)`` recorded by the job's port hand-off, or ``None`` before it ran."""
        meta = self.meta
        host, port = meta.get("host"), meta.get("port")
        if not host or not port or not _HOST.match(host) or not port.isdigit():
            return None
        port_i = int(port)
        if not 0 < port_i < 65536:
            return None
        return host, port_i

    @property
    def node(self) -> Optional[str]:
        """The first node of the allocation (``None`` while pending)."""
        if not self.nodes or self.is_pending:
            return None
        return expand_nodelist(self.nodes)[0] if self.nodes else None

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(
            is_pending=self.is_pending,
            is_running=self.is_running,
            is_finished=self.is_finished,
            gpu_count=self.gpu_count,
            kind=self.kind,
            endpoint=list(self.endpoint) if self.endpoint else None,
            pending_problem=self.pending_problem,
        )
        return d


def expand_nodelist(nodelist: str) -> List[str]:
    """Expand simple Slurm host lists: ``n[01-03,07],gpu1`` -> ``[n01, n02, n03, n07, gpu1]``."""
    result: List[str] = []
    items, depth, cur = [], 0, []
    for ch in nodelist:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "," and depth == 0:
            items.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    items.append("".join(cur))
    for item in filter(None, (i.strip() for i in items)):
        m = re.fullmatch(r"([^\[]*)\[([^\]]+)\](.*)", item)
        if not m:
            result.append(item)
            continue
        prefix, ranges, suffix = m.groups()
        for r in ranges.split(","):
            lo, _, hi = r.partition("-")
            if hi and lo.isdigit() and hi.isdigit():
                width = len(lo)
                for n in range(int(lo), int(hi) + 1):
                    result.append(f"{prefix}{n:0{width}d}{suffix}")
            else:
                result.append(f"{prefix}{lo}{suffix}")
    return result


# squeue -O fields (name, JobInfo attribute). All exist in Slurm 22.05 and 24.11.
SQUEUE_FIELDS: List[Tuple[str, str]] = [
    ("JobArrayId", "job_id"),
    ("Name", "name"),
    ("UserName", "user"),
    ("State", "state"),
    ("Reason", "reason"),
    ("NodeList", "nodes"),
    ("Partition", "partition"),
    ("TimeUsed", "elapsed"),
    ("TimeLimit", "time_limit"),
    ("StartTime", "start_time"),
    ("SubmitTime", "submit_time"),
    ("EndTime", "end_time"),
    ("tres-per-node", "gres"),
    ("tres-alloc", "tres"),
    ("Comment", "comment"),
    ("WorkDir", "work_dir"),
    ("StdOut", "stdout"),
    ("StdErr", "stderr"),
    ("exit_code", "exit_code"),
    ("NumCPUs", "cpus"),
    ("PriorityLong", "priority"),
    ("Account", "account"),
]


def squeue_format() -> str:
    return ",".join(f"{name}:0{DELIM}" for name, _ in SQUEUE_FIELDS)


def squeue_argv(
    job_ids: Optional[Iterable[Any]] = None,
    user: Optional[str] = None,
    squeue: str = "squeue",
    states: str = "all",
    partitions: Optional[Iterable[str]] = None,
) -> List[str]:
    """``squeue --noheader --states=all -O <fixed format>`` for some jobs, a user, or everything.

    Note: Slurm answers ``Invalid job id specified`` (exit 1) when a *single*
    requested id is no longer known; :func:`is_invalid_job_error` recognises that.
    """
    argv = [squeue, "--noheader", "--array", "--states=" + states, "--Format=" + squeue_format()]
    if job_ids is not None:
        ids = [validate.job_id(j) for j in job_ids]
        if ids:
            argv.append("--jobs=" + ",".join(ids))
    if user:
        argv.append("--user=" + validate.username(user))
    if partitions:
        argv.append("--partition=" + ",".join(validate.partition(p) for p in partitions))
    return argv


#: What slurmstepd (jobacct_gather's OverMemoryKill) and the cgroup plugins write to a
#: job's stderr when it is killed for using more memory than it asked for.
_MEMORY_KILL = re.compile(
    r"exceeded (?:job )?memory limit|Detected \d+ oom[-_ ]kill event|oom[-_]kill event|Out Of Memory",
    re.IGNORECASE,
)


def memory_exceeded(stderr: Optional[str]) -> bool:
    """Whether a job's stderr says Slurm killed it for exceeding its memory limit.

    With cgroups the job simply ends ``OUT_OF_MEMORY``; without them (jobacct_gather
    ``OverMemoryKill``) it ends ``FAILED``/``CANCELLED`` and only slurmstepd's
    ``Exceeded job memory limit`` line tells why.
    """
    return bool(stderr) and bool(_MEMORY_KILL.search(stderr))


def ended_state(state: str, stderr: Optional[str]) -> str:
    """The end state to report: ``OUT_OF_MEMORY`` when the stderr says so, else ``state``."""
    if state in ("FAILED", "CANCELLED", "NODE_FAIL", "ENDED") and memory_exceeded(stderr):
        return "OUT_OF_MEMORY"
    return state


def is_invalid_job_error(stderr: str) -> bool:
    return "Invalid job id" in (stderr or "")


def _records(text: str, nfields: int, delim: str = DELIM, terminated: bool = True) -> List[List[str]]:
    """Split delimiter-terminated records; tolerant to newlines inside values."""
    if not text or not text.strip():
        return []
    if not terminated:
        return [line.split(delim) for line in text.splitlines() if line.strip()]
    tokens = text.split(delim)
    tail = tokens.pop()  # after the last terminator: "\n" or ""
    records = []
    for i in range(0, len(tokens) - len(tokens) % nfields, nfields):
        rec = tokens[i:i + nfields]
        rec[0] = rec[0].lstrip("\r\n")
        records.append(rec)
    if tail.strip() or len(tokens) % nfields:
        # A line that does not fit (e.g. a warning printed by squeue): ignore it.
        pass
    return records


def _int(value: Optional[str]) -> Optional[int]:
    value = _clean(value)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _job_from_values(values: Mapping[str, Optional[str]], source: str) -> JobInfo:
    gres = values.get("gres")
    tres = _clean(values.get("tres"))
    gpus = parse_gres(tres) or parse_gres(gres)
    state_raw = values.get("state")
    return JobInfo(
        job_id=(values.get("job_id") or "").strip(),
        name=_clean(values.get("name")),
        user=_clean(values.get("user")),
        state=normalize_state(state_raw),
        reason=_clean(values.get("reason")),
        nodes=_clean(values.get("nodes")),
        partition=_clean(values.get("partition")),
        elapsed=parse_duration(values.get("elapsed")),
        time_limit=parse_minutes(values.get("time_limit")),
        start_time=parse_time(values.get("start_time")),
        submit_time=parse_time(values.get("submit_time")),
        end_time=parse_time(values.get("end_time")),
        exit_code=parse_exit_code(values.get("exit_code")),
        gpus=gpus,
        tres=tres,
        comment=_clean(values.get("comment")),
        work_dir=_clean(values.get("work_dir")),
        stdout=_clean(values.get("stdout")),
        stderr=_clean(values.get("stderr")),
        cpus=_int(values.get("cpus")),
        priority=_int(values.get("priority")),
        account=_clean(values.get("account")),
        source=source,
    )


def expand_output_pattern(path: Optional[str], info: "JobInfo") -> Optional[str]:
    """Replace Slurm filename patterns (``%j %J %A %a %u %x %N %%``) in an ``--output`` path.

    squeue on Slurm 22.05 reports StdOut unexpanded (``/tmp/out-%j.txt``).
    """
    if not path or "%" not in path:
        return path
    base, _, task = info.job_id.partition("_")
    node = None
    if info.nodes and not info.is_pending:
        node = expand_nodelist(info.nodes)[0]
    repl = {
        "j": base,
        "J": base,
        "A": base,
        "a": task or "4294967294",
        "u": info.user or "%u",
        "x": info.name or "%x",
        "N": node or "%N",
        "n": "0",
        "t": "0",
        "s": "batch",
        "%": "%",
    }

    def sub(m: "re.Match") -> str:
        pad, letter = m.group(1), m.group(2)
        value = repl.get(letter)
        if value is None:
            return m.group(0)
        if pad and value.isdigit():
            value = value.zfill(int(pad))
        return value

    return re.sub(r"%([0-9]?)([jJAauxNnts%])", sub, path)


def parse_squeue(text: str, fields: Sequence[Tuple[str, str]] = SQUEUE_FIELDS) -> Dict[str, JobInfo]:
    """Parse the output of :func:`squeue_argv` into ``{job_id: JobInfo}`` (insertion = squeue order)."""
    jobs: Dict[str, JobInfo] = {}
    for rec in _records(text, len(fields)):
        values = {attr: rec[i] for i, (_, attr) in enumerate(fields)}
        info = _job_from_values(values, "squeue")
        info.stdout = expand_output_pattern(info.stdout, info)
        info.stderr = expand_output_pattern(info.stderr, info)
        if re.fullmatch(r"[0-9]+(_[0-9]+)?", info.job_id):
            jobs[info.job_id] = info
    return jobs


# sacct fields. Accounting may be disabled (testbed): sacct then fails, callers cope.
SACCT_FIELDS: List[Tuple[str, str]] = [
    ("JobID", "job_id"),
    ("JobName", "name"),
    ("User", "user"),
    ("State", "state"),
    ("Reason", "reason"),
    ("NodeList", "nodes"),
    ("Partition", "partition"),
    ("Elapsed", "elapsed"),
    ("Timelimit", "time_limit"),
    ("Start", "start_time"),
    ("Submit", "submit_time"),
    ("End", "end_time"),
    ("AllocTRES", "tres"),
    ("ExitCode", "exit_code"),
    ("WorkDir", "work_dir"),
    ("Comment", "comment"),
    ("AllocCPUS", "cpus"),
    ("Account", "account"),
]


def sacct_argv(job_ids: Iterable[Any], sacct: str = "sacct", user: Optional[str] = None) -> List[str]:
    """``sacct -X -n -P`` for the given jobs (allocation lines only)."""
    ids = [validate.job_id(j) for j in job_ids]
    if not ids:
        raise ValidationError("job id", "at least one job id is needed")
    argv = [
        sacct,
        "--noheader",
        "--parsable2",
        "--allocations",
        "--delimiter=" + DELIM,
        "--format=" + ",".join(name for name, _ in SACCT_FIELDS),
        "--jobs=" + ",".join(ids),
    ]
    if user:
        argv.append("--user=" + validate.username(user))
    return argv


def parse_sacct(text: str, fields: Sequence[Tuple[str, str]] = SACCT_FIELDS) -> Dict[str, JobInfo]:
    """Parse ``sacct -P --delimiter=DELIM`` output (one line per job; ``.batch`` steps skipped)."""
    jobs: Dict[str, JobInfo] = {}
    for rec in _records(text, len(fields), terminated=False):
        if len(rec) < len(fields):
            continue
        if len(rec) > len(fields):  # delimiter inside a value: keep the known columns
            rec = rec[: len(fields)]
        values = {attr: rec[i] for i, (_, attr) in enumerate(fields)}
        if "." in values["job_id"]:
            continue
        info = _job_from_values(values, "sacct")
        if re.fullmatch(r"[0-9]+(_[0-9]+)?", info.job_id):
            jobs[info.job_id] = info
    return jobs


def is_accounting_disabled(stderr: str) -> bool:
    s = (stderr or "").lower()
    return "accounting storage is disabled" in s or ("slurmdbd" in s and "connect" in s)


# ---------------------------------------------------------------------------
# partitions
# ---------------------------------------------------------------------------

@dataclass
class Partition:
    """A partition as sinfo reports it, aggregated over its node groups.

    ``cpus``, ``memory_mb`` and ``gpus`` are per-node maxima (the most a
    single-node job can ask for); ``*_total`` sum over nodes.
    """

    name: str
    default: bool = False
    state: str = "up"
    nodes: int = 0
    cpus: int = 0
    memory_mb: int = 0
    max_time_minutes: Optional[int] = None  # None = unlimited
    gpus: Dict[str, int] = field(default_factory=dict)
    nodes_idle: int = 0
    cpus_total: int = 0
    cpus_idle: int = 0
    gpus_total: Dict[str, int] = field(default_factory=dict)
    node_states: Dict[str, int] = field(default_factory=dict)

    @property
    def is_up(self) -> bool:
        return self.state.lower().rstrip("*") == "up"

    def max_gpus(self, gpu_type: Optional[str] = None) -> int:
        """Most GPUs one node offers (of ``gpu_type``, or of any type)."""
        if gpu_type:
            return self.gpus.get(gpu_type, 0)
        return max(self.gpus.values(), default=0) if len(self.gpus) > 1 else sum(self.gpus.values())

    @property
    def gpu_types(self) -> List[str]:
        return sorted(t for t in self.gpus if t != UNTYPED_GPU)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "default": self.default,
            "state": self.state,
            "nodes": self.nodes,
            "cpus": self.cpus,
            "memory_mb": self.memory_mb,
            "max_time_minutes": self.max_time_minutes,
            "gpus": dict(self.gpus),
            "nodes_idle": self.nodes_idle,
            "cpus_total": self.cpus_total,
            "cpus_idle": self.cpus_idle,
            "gpus_total": dict(self.gpus_total),
            "node_states": dict(self.node_states),
        }


# %P partition (with '*' on the default), %a availability, %D node count, %c CPUs per node,
# %C CPUs A/I/O/T, %m memory per node (MB), %l max time, %G GRES per node, %T node state.
SINFO_FORMAT = DELIM.join(["%P", "%a", "%D", "%c", "%C", "%m", "%l", "%G", "%T"]) + DELIM


def sinfo_argv(sinfo: str = "sinfo") -> List[str]:
    return [sinfo, "--noheader", "--format=" + SINFO_FORMAT]


def _num(value: str) -> int:
    m = re.match(r"^\s*([0-9]+)", value or "")
    return int(m.group(1)) if m else 0


def parse_sinfo(text: str) -> List[Partition]:
    """Aggregate ``sinfo`` node-group lines into one :class:`Partition` per partition (sinfo order)."""
    parts: Dict[str, Partition] = {}
    for rec in _records(text, 9):
        name_raw, avail, nodes, cpn, cpus, mem, tlimit, gres, state = [r.strip() for r in rec]
        default = name_raw.endswith("*")
        name = name_raw.rstrip("*")
        if not name:
            continue
        p = parts.get(name)
        if p is None:
            p = parts[name] = Partition(name=name, default=default, state=avail or "unknown")
            p.max_time_minutes = parse_minutes(tlimit)
        p.default = p.default or default
        n = _num(nodes)
        p.nodes += n
        node_state = normalize_node_state(state)
        p.node_states[node_state] = p.node_states.get(node_state, 0) + n
        usable = node_state in ("idle", "mixed", "allocated", "completing")
        if node_state == "idle":
            p.nodes_idle += n
        a_i_o_t = [_num(x) for x in cpus.split("/")] if "/" in cpus else []
        if len(a_i_o_t) == 4:
            p.cpus_total += a_i_o_t[3]
            p.cpus_idle += a_i_o_t[1]
        if usable or not p.cpus:
            p.cpus = max(p.cpus, _num(cpn))
            p.memory_mb = max(p.memory_mb, _num(mem))
        node_gpus = parse_gres(gres)
        for t, c in node_gpus.items():
            if usable or t not in p.gpus:
                p.gpus[t] = max(p.gpus.get(t, 0), c)
            p.gpus_total[t] = p.gpus_total.get(t, 0) + c * n
    return list(parts.values())


def normalize_node_state(state: str) -> str:
    """``idle*`` / ``mix`` / ``alloc`` / ``drained`` -> ``idle``/``mixed``/``allocated``/``drained``..."""
    s = (state or "unknown").strip().lower().rstrip("*~#!%$@^-+")
    return {"mix": "mixed", "alloc": "allocated", "comp": "completing", "drng": "draining",
            "drain": "drained", "resv": "reserved", "maint": "maint", "down": "down",
            "idle": "idle", "inval": "invalid", "fail": "fail", "futr": "future"}.get(s, s)


# ---------------------------------------------------------------------------
# sstat (live job vitals)
# ---------------------------------------------------------------------------

SSTAT_FIELDS = ["JobID", "AveCPU", "MaxRSS", "AveRSS", "NTasks", "MaxVMSize", "TRESUsageInTot", "TRESUsageInMax"]

#: Largest believable CPU time: without job accounting gathering sstat prints garbage
#: such as ``213503982334-14:25:51``.
_MAX_CPU_SECONDS = 10 * 366 * 86400


def sstat_argv(job_id: Any, sstat: str = "sstat") -> List[str]:
    """``sstat -P`` for all steps of a running job (``|``-separated: sstat has no ``--delimiter``)."""
    return [
        sstat,
        "--noheader",
        "--parsable2",
        "--allsteps",
        "--format=" + ",".join(SSTAT_FIELDS),
        "--jobs=" + validate.job_id(job_id),
    ]


def parse_tres(text: Optional[str]) -> Dict[str, str]:
    """``cpu=00:01:02,mem=1016K,vmem=4376K,gres/gpumem=2G`` -> ``{"cpu": "00:01:02", "mem": "1016K", ...}``."""
    text = _clean(text)
    result: Dict[str, str] = {}
    if not text:
        return result
    for item in text.split(","):
        key, sep, value = item.partition("=")
        key = key.strip()
        if sep and key and value.strip():
            result[key] = value.strip()
    return result


def tres_memory_mb(tres: Mapping[str, str], key: str = "mem") -> Optional[float]:
    """A TRES memory value (``1016K``, ``2G``, ``12345`` bytes) in megabytes."""
    return parse_size_mb(tres.get(key), default_unit="")


@dataclass
class JobStats:
    """What sstat reports about a running job, summed or maximised over its steps.

    ``cpu_seconds``: the largest AveCPU of a step (kept for compatibility);
    ``total_cpu_seconds``: CPU time of all tasks of all steps (TRESUsageInTot ``cpu``);
    ``rss_mb``: memory in use now, summed over steps (TRESUsageInTot ``mem``);
    ``max_rss_mb``: the largest task peak (MaxRSS); ``gpu_util``/``gpu_mem_mb``: Slurm's
    own GPU accounting (``gres/gpuutil``, ``gres/gpumem``, only with NVML-enabled Slurm).
    """

    job_id: str
    cpu_seconds: Optional[float] = None  # AveCPU of the biggest step
    max_rss_mb: Optional[float] = None
    ave_rss_mb: Optional[float] = None
    max_vmsize_mb: Optional[float] = None
    tasks: Optional[int] = None
    steps: List[str] = field(default_factory=list)
    total_cpu_seconds: Optional[float] = None
    rss_mb: Optional[float] = None
    gpu_util: Optional[float] = None
    gpu_mem_mb: Optional[float] = None

    def to_dict(self) -> dict:
        return asdict(self)


def _add(a: Optional[float], b: Optional[float]) -> Optional[float]:
    if b is None:
        return a
    return (a or 0) + b


def parse_sstat(text: str, job_id: str = "") -> Optional[JobStats]:
    """Aggregate sstat step lines; ``None`` when sstat reported nothing (e.g. gathering disabled)."""
    stats: Optional[JobStats] = None
    for rec in _records(text, len(SSTAT_FIELDS), delim="|", terminated=False):
        if len(rec) < 6:
            continue
        step, avecpu, maxrss, aversa, ntasks, maxvm = rec[:6]
        tot = parse_tres(rec[6]) if len(rec) > 6 else {}
        if stats is None:
            stats = JobStats(job_id=job_id or step.split(".")[0])
        stats.steps.append(step)
        cpu = parse_duration(avecpu)
        if cpu is not None and cpu < _MAX_CPU_SECONDS:
            stats.cpu_seconds = max(stats.cpu_seconds or 0, cpu)
        for attr, raw in (("max_rss_mb", maxrss), ("ave_rss_mb", aversa), ("max_vmsize_mb", maxvm)):
            v = parse_size_mb(raw, default_unit="")
            if v is not None:
                setattr(stats, attr, max(getattr(stats, attr) or 0, v))
        t = _int(ntasks)
        if t is not None:
            stats.tasks = (stats.tasks or 0) + t
        total_cpu = parse_duration(tot.get("cpu"))
        if total_cpu is not None and total_cpu < _MAX_CPU_SECONDS:
            stats.total_cpu_seconds = _add(stats.total_cpu_seconds, total_cpu)
        stats.rss_mb = _add(stats.rss_mb, tres_memory_mb(tot))
        util = tot.get("gres/gpuutil")
        if util is not None and re.fullmatch(r"[0-9]+(\.[0-9]+)?", util):
            stats.gpu_util = max(stats.gpu_util or 0, float(util))
        stats.gpu_mem_mb = _add(stats.gpu_mem_mb, tres_memory_mb(tot, "gres/gpumem"))
    return stats


def sacct_usage_argv(job_id: Any, sacct: str = "sacct") -> List[str]:
    """``sacct`` peak memory and CPU time of every step of a job (needs slurmdbd)."""
    return [
        sacct,
        "--noheader",
        "--parsable2",
        "--format=JobID,MaxRSS,TotalCPU,State",
        "--jobs=" + validate.job_id(job_id),
    ]


def parse_sacct_usage(text: str) -> Dict[str, Optional[float]]:
    """``{"peak_mb", "cpu_seconds"}`` from :func:`sacct_usage_argv` output (max / sum over steps)."""
    peak: Optional[float] = None
    cpu: Optional[float] = None
    for rec in _records(text, 4, delim="|", terminated=False):
        if len(rec) < 3:
            continue
        rss = parse_size_mb(rec[1], default_unit="")
        if rss is not None:
            peak = max(peak or 0, rss)
        if "." not in rec[0]:
            # the job line carries the total CPU time of all steps
            seconds = parse_duration(rec[2])
            if seconds is not None and seconds < _MAX_CPU_SECONDS:
                cpu = float(seconds)
    return {"peak_mb": peak, "cpu_seconds": cpu}


def srun_in_job_argv(job_id: Any, argv: Sequence[str], srun: str = "srun", node: Optional[str] = None,
                     timeout_s: int = 20) -> List[str]:
    """Run ``argv`` as an extra step inside a running job's allocation (sharing its CPUs, memory, GPUs)."""
    out = [
        srun,
        "--jobid=" + validate.job_id(job_id),
        "--overlap",
        # only these variables of the caller reach the step (never its tokens)
        "--export=PATH,HOME,USER,LANG",
        "--nodes=1",
        "--ntasks=1",
        "--quiet",
        "--job-name=jupyter-hpc-vitals",
        f"--time={max(1, (int(timeout_s) + 59) // 60)}",
    ]
    if node:
        if not _HOST.match(node):
            raise ValidationError("node", f"{node[:60]!r} is not a node name")
        out.append("--nodelist=" + node)
    return out + list(argv)


__all__ = [
    "memory_exceeded",
    "ended_state",
    "DELIM",
    "COMMENT_PREFIX",
    "UNTYPED_GPU",
    "JobRequest",
    "JobInfo",
    "JobStats",
    "Partition",
    "Line",
    "sbatch_argv",
    "batch_script",
    "parse_sbatch",
    "squeue_argv",
    "parse_squeue",
    "sacct_argv",
    "parse_sacct",
    "sinfo_argv",
    "parse_sinfo",
    "scancel_argv",
    "scontrol_comment_argv",
    "sstat_argv",
    "parse_sstat",
    "parse_tres",
    "sacct_usage_argv",
    "parse_sacct_usage",
    "srun_in_job_argv",
    "make_comment",
    "parse_comment",
    "parse_gres",
    "parse_duration",
    "parse_minutes",
    "normalize_state",
    "expand_nodelist",
    "slurm_path",
    "expand_output_pattern",
    "is_invalid_job_error",
    "is_accounting_disabled",
]
