"""Live vitals of running jobs: CPU, memory, time used and GPUs, as Slurm reports them.

One :class:`VitalsCollector` per process (server extension, magic) turns what
Slurm says into one JSON-ready dict per job (schema ``JobStats`` in
``docs/openapi.yaml``):

- **CPU**: ``sstat`` CPU time of all steps (``TRESUsageInTot`` ``cpu``). The load
  (``cores_used``, ``percent`` of the allocated CPUs) is the CPU time used between
  two samples at least :attr:`VitalsCollector.min_window` seconds apart, or the
  average since the job started for the first sample.
- **Memory**: memory in use now (``TRESUsageInTot`` ``mem``) and the peak
  (``MaxRSS`` from ``sstat``, or from ``sacct`` for finished jobs when Slurm keeps
  accounting), plus the memory the job asked for.
- **Time**: elapsed time and time limit from ``squeue``.
- **GPUs**: Slurm's own GPU accounting (``gres/gpuutil``, ``gres/gpumem``, when
  Slurm was built with NVML) or ``nvidia-smi`` run as an extra step inside the
  job's allocation (``srun --overlap``), so it sees exactly the job's GPUs.

Every block says ``available: false`` with a ``reason`` when Slurm cannot tell:
nothing is estimated or made up. Pure helpers (:func:`parse_nvidia_smi`,
:func:`build_vitals`) are unit-tested; the collector runs commands through
:class:`jupyter_hpc.cluster.SlurmClient`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Tuple

from . import slurm
from .slurm import JobInfo, JobStats

log = logging.getLogger(__name__)

NVIDIA_SMI_QUERY = "index,name,utilization.gpu,memory.used,memory.total"

NO_GATHERING = (
    "Slurm collects no usage data for jobs on this cluster "
    "(JobAcctGatherType=jobacct_gather/none); ask the administrators to enable jobacct_gather/linux or cgroup"
)
NO_ACCOUNTING = "job accounting (sacct/slurmdbd) is not available on this cluster"


def nvidia_smi_argv(nvidia_smi: str = "nvidia-smi") -> List[str]:
    return [nvidia_smi, "--query-gpu=" + NVIDIA_SMI_QUERY, "--format=csv,noheader,nounits"]


def _number(text: str) -> Optional[float]:
    text = text.strip()
    if re.fullmatch(r"[0-9]+(\.[0-9]+)?", text):
        return float(text)
    return None  # "[N/A]", "[Not Supported]", ...


def parse_nvidia_smi(text: str) -> List[Dict[str, Any]]:
    """``nvidia-smi --query-gpu=index,name,utilization.gpu,memory.used,memory.total --format=csv,noheader,nounits``."""
    devices = []
    for line in (text or "").splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 5 or not parts[0].isdigit():
            continue
        devices.append({
            "index": int(parts[0]),
            "name": parts[1][:100],
            "utilization": _number(parts[2]),
            "memory_used_mb": _number(parts[3]),
            "memory_total_mb": _number(parts[4]),
        })
    return devices


def _sum(values: Iterable[Optional[float]]) -> Optional[float]:
    present = [v for v in values if v is not None]
    return float(sum(present)) if present else None


def gpu_summary(devices: List[Dict[str, Any]]) -> Dict[str, Optional[float]]:
    utils = [d["utilization"] for d in devices if d.get("utilization") is not None]
    return {
        "utilization": round(sum(utils) / len(utils), 1) if utils else None,
        "memory_used_mb": _sum(d.get("memory_used_mb") for d in devices),
        "memory_total_mb": _sum(d.get("memory_total_mb") for d in devices),
    }


def requested_memory_mb(info: JobInfo) -> Optional[float]:
    """Memory allocated to the job (``mem=`` of squeue's ``tres-alloc``), in MB."""
    value = slurm.parse_tres(info.tres).get("mem")
    return slurm.parse_size_mb(value, default_unit="M") if value else None


def stats_usable(stats: Optional[JobStats]) -> bool:
    """Whether sstat reported real numbers (not the zeros/garbage of jobacct_gather/none)."""
    if stats is None:
        return False
    return bool(
        stats.total_cpu_seconds is not None
        or stats.cpu_seconds is not None
        or (stats.max_rss_mb or 0) > 0
        or (stats.rss_mb or 0) > 0
    )


def cpu_seconds_of(stats: JobStats) -> Optional[float]:
    if stats.total_cpu_seconds is not None:
        return float(stats.total_cpu_seconds)
    if stats.cpu_seconds is not None:
        return float(stats.cpu_seconds) * max(1, stats.tasks or 1)
    return None


def unavailable(reason: str, **extra: Any) -> Dict[str, Any]:
    out: Dict[str, Any] = {"available": False, "reason": reason}
    out.update(extra)
    return out


def time_block(info: JobInfo) -> Dict[str, Any]:
    elapsed = info.elapsed if info.elapsed is not None else None
    limit = info.time_limit * 60 if info.time_limit is not None else None
    fraction = None
    if elapsed is not None and limit:
        fraction = round(min(1.0, elapsed / limit), 4)
    return {"elapsed_s": elapsed, "limit_s": limit, "fraction": fraction}


def build_vitals(
    info: JobInfo,
    stats: Optional[JobStats],
    *,
    sampled_at: float,
    cores_used: Optional[float] = None,
    peak_mb: Optional[float] = None,
    gpu: Optional[Dict[str, Any]] = None,
    stats_reason: Optional[str] = None,
    finished_usage: Optional[Dict[str, Optional[float]]] = None,
    finished_reason: Optional[str] = None,
) -> Dict[str, Any]:
    """The ``JobStats`` answer for one job from already collected pieces (pure)."""
    cpus = info.cpus
    requested = requested_memory_mb(info)
    out: Dict[str, Any] = {
        "job_id": info.job_id,
        "name": info.name,
        "kind": info.kind if info.kind in ("cell", "service", "kernel", "server") else "other",
        "state": info.state,
        "node": info.node,
        "sampled_at": round(sampled_at, 3),
        "time": time_block(info),
    }
    if info.is_running and stats_usable(stats):
        assert stats is not None
        seconds = cpu_seconds_of(stats)
        if seconds is None:
            out["cpu"] = unavailable("sstat reported no CPU time for this job", cpus=cpus)
        else:
            percent = None
            if cores_used is not None and cpus:
                percent = round(100.0 * cores_used / cpus, 1)
            out["cpu"] = {"available": True, "reason": None, "cpus": cpus, "cpu_seconds": round(seconds, 2),
                          "cores_used": round(cores_used, 3) if cores_used is not None else None,
                          "percent": percent, "source": "sstat"}
        current = stats.rss_mb
        if current is None and stats.ave_rss_mb is not None:
            current = stats.ave_rss_mb * max(1, stats.tasks or 1)
        peak = max([v for v in (stats.max_rss_mb, current, peak_mb) if v is not None], default=None)
        out["memory"] = {"available": True, "reason": None,
                         "current_mb": round(current, 1) if current is not None else None,
                         "peak_mb": round(peak, 1) if peak is not None else None,
                         "requested_mb": requested, "source": "sstat"}
    elif info.is_running:
        reason = stats_reason or NO_GATHERING
        out["cpu"] = unavailable(reason, cpus=cpus)
        out["memory"] = unavailable(reason, current_mb=None, peak_mb=None, requested_mb=requested)
    elif finished_usage is not None and (finished_usage.get("peak_mb") is not None
                                         or finished_usage.get("cpu_seconds") is not None):
        seconds = finished_usage.get("cpu_seconds")
        out["cpu"] = {"available": seconds is not None, "reason": None if seconds is not None else "sacct reported no CPU time",
                      "cpus": cpus, "cpu_seconds": seconds, "cores_used": None, "percent": None, "source": "sacct"}
        peak = finished_usage.get("peak_mb")
        out["memory"] = {"available": peak is not None, "reason": None if peak is not None else "sacct reported no memory use",
                         "current_mb": None, "peak_mb": peak, "requested_mb": requested, "source": "sacct"}
    else:
        reason = finished_reason or ("the job is not running yet" if info.is_pending else "the job is not running")
        out["cpu"] = unavailable(reason, cpus=cpus)
        out["memory"] = unavailable(reason, current_mb=None, peak_mb=None, requested_mb=requested)
    if gpu is None:
        gpu = unavailable("the job has no GPUs" if not info.gpu_count else "the job is not running",
                          count=info.gpu_count, devices=[])
    out["gpu"] = gpu
    return out


@dataclass
class _JobState:
    """What the collector remembers between two samples of one job."""

    sample: Optional[Tuple[float, float]] = None  # (monotonic time, cpu seconds)
    rate: Optional[float] = None  # cores used over the last window
    peak_mb: Optional[float] = None
    gpu: Optional[Dict[str, Any]] = None
    gpu_at: float = 0.0
    seen: float = field(default_factory=time.monotonic)


class VitalsCollector:
    """Samples the vitals of running jobs; keeps just enough state for rates and peaks.

    ``slurm`` is a :class:`jupyter_hpc.cluster.SlurmClient` whose commands run as the
    jobs' user (the single-user server or the kernel), so only their own jobs are seen.
    """

    def __init__(
        self,
        slurm_client,
        *,
        gpu_probe: bool = True,
        gpu_interval: float = 15.0,
        gpu_failure_interval: float = 300.0,
        min_window: float = 3.0,
        nvidia_smi: str = "nvidia-smi",
        max_parallel: int = 8,
        logger: Optional[logging.Logger] = None,
    ):
        self.slurm = slurm_client
        self.gpu_probe = gpu_probe
        self.gpu_interval = gpu_interval
        self.gpu_failure_interval = gpu_failure_interval
        self.min_window = min_window
        self.nvidia_smi = nvidia_smi
        self.log = logger or log
        self._jobs: Dict[str, _JobState] = {}
        self.max_parallel = max(1, max_parallel)
        self._sem: Optional[asyncio.Semaphore] = None
        self._sem_loop = None
        self._sacct_ok: Optional[bool] = None

    # -- one job -------------------------------------------------------------------

    def _semaphore(self) -> asyncio.Semaphore:
        # one per event loop: the magic runs each call on a fresh loop
        loop = asyncio.get_running_loop()
        if self._sem is None or self._sem_loop is not loop:
            self._sem, self._sem_loop = asyncio.Semaphore(self.max_parallel), loop
        return self._sem

    async def vitals(self, info: JobInfo) -> Dict[str, Any]:
        """The vitals of one job (``JobStats`` schema)."""
        async with self._semaphore():
            return await self._vitals(info)

    async def _vitals(self, info: JobInfo) -> Dict[str, Any]:
        state = self._jobs.setdefault(info.job_id, _JobState())
        state.seen = time.monotonic()
        if not info.is_running:
            usage, reason = None, None
            if info.is_finished:
                usage, reason = await self._finished_usage(info.job_id)
            return build_vitals(info, None, sampled_at=time.time(), finished_usage=usage, finished_reason=reason,
                                peak_mb=state.peak_mb)
        stats_reason = None
        try:
            stats = await self.slurm.job_stats(info.job_id)
        except Exception as e:  # noqa: BLE001 - one failing sstat must not hide the other jobs' vitals
            self.log.warning("sstat for job %s failed: %s", info.job_id, e)
            stats, stats_reason = None, f"sstat did not answer for this job: {str(e)[:200]}"
        now = time.monotonic()
        cores_used = None
        if stats_usable(stats):
            seconds = cpu_seconds_of(stats)
            if seconds is not None:
                cores_used = self._rate(state, now, seconds, info)
            current = stats.rss_mb if stats.rss_mb is not None else stats.ave_rss_mb
            for value in (current, stats.max_rss_mb):
                if value is not None:
                    state.peak_mb = max(state.peak_mb or 0, value)
        elif stats is None and stats_reason is None:
            stats_reason = ("sstat reports nothing for this job yet (it may have just started), "
                            "or Slurm collects no usage data on this cluster")
        gpu = await self._gpu(info, stats, state)
        return build_vitals(info, stats, sampled_at=time.time(), cores_used=cores_used, peak_mb=state.peak_mb,
                            gpu=gpu, stats_reason=stats_reason)

    def _rate(self, state: _JobState, now: float, seconds: float, info: JobInfo) -> Optional[float]:
        if state.sample is None:
            state.sample = (now, seconds)
            if info.elapsed:
                state.rate = seconds / info.elapsed
            return state.rate
        t0, s0 = state.sample
        if seconds < s0:  # a step ended: its CPU time left the sum
            state.sample = (now, seconds)
            return state.rate
        if now - t0 >= self.min_window:
            state.rate = (seconds - s0) / (now - t0)
            state.sample = (now, seconds)
        return state.rate

    async def _finished_usage(self, job_id: str):
        if self._sacct_ok is False:
            return None, NO_ACCOUNTING
        from .cluster import AccountingUnavailable

        try:
            usage = await self.slurm.job_usage(job_id)
        except AccountingUnavailable:
            self._sacct_ok = False
            return None, NO_ACCOUNTING
        except Exception as e:  # noqa: BLE001 - reported as unavailable
            return None, f"sacct failed: {str(e)[:200]}"
        self._sacct_ok = True
        return usage, None

    async def _gpu(self, info: JobInfo, stats: Optional[JobStats], state: _JobState) -> Dict[str, Any]:
        count = info.gpu_count
        if not count:
            return unavailable("the job has no GPUs", count=0, devices=[])
        if stats is not None and (stats.gpu_util is not None or stats.gpu_mem_mb is not None):
            return {"available": True, "reason": None, "count": count, "utilization": stats.gpu_util,
                    "memory_used_mb": stats.gpu_mem_mb, "memory_total_mb": None, "devices": [],
                    "source": "sstat"}
        if not self.gpu_probe:
            return unavailable("Slurm reports no GPU usage and GPU probing is off "
                               "(c.HPCExtension.vitals_gpu_probe)", count=count, devices=[])
        now = time.monotonic()
        if state.gpu is not None:
            ttl = self.gpu_interval if state.gpu.get("available") else self.gpu_failure_interval
            if now - state.gpu_at < ttl:
                return state.gpu
        state.gpu = await self._probe_gpu(info)
        state.gpu_at = now
        return state.gpu

    async def _probe_gpu(self, info: JobInfo) -> Dict[str, Any]:
        count = info.gpu_count
        node = info.node
        try:
            result = await self.slurm.run_in_job(info.job_id, nvidia_smi_argv(self.nvidia_smi), node=node)
        except Exception as e:  # noqa: BLE001 - reported as unavailable
            return unavailable(f"could not run nvidia-smi in the job: {str(e)[:200]}", count=count, devices=[])
        text = (result.stderr or "") + (result.stdout or "")
        if result.returncode != 0:
            low = text.lower()
            if "no such file" in low or "not found" in low or "execve" in low:
                reason = f"nvidia-smi is not installed on node {node}: no real GPUs to measure"
            elif "nvidia-smi has failed" in low or "couldn't communicate" in low:
                reason = f"nvidia-smi on node {node} finds no NVIDIA driver: no real GPUs to measure"
            else:
                reason = f"nvidia-smi in the job failed: {text.strip()[-200:]}"
            return unavailable(reason, count=count, devices=[])
        devices = parse_nvidia_smi(result.stdout)
        if not devices:
            return unavailable(f"nvidia-smi on node {node} lists no GPUs for this job", count=count, devices=[])
        out = {"available": True, "reason": None, "count": count, "devices": devices, "source": "nvidia-smi"}
        out.update(gpu_summary(devices))
        return out

    # -- several jobs ---------------------------------------------------------------

    async def many(self, infos: Iterable[JobInfo]) -> List[Dict[str, Any]]:
        infos = list(infos)
        results = await asyncio.gather(*(self.vitals(i) for i in infos))
        self.forget_old()
        return list(results)

    def forget_old(self, max_age: float = 3600.0) -> None:
        now = time.monotonic()
        for job_id in [j for j, s in self._jobs.items() if now - s.seen > max_age]:
            del self._jobs[job_id]

    def forget(self, job_id: str) -> None:
        self._jobs.pop(job_id, None)


def format_mb(value: Optional[float]) -> str:
    if value is None:
        return "-"
    if value >= 1024:
        return f"{value / 1024:.1f}G"
    return f"{value:.0f}M"


def format_seconds(value: Optional[float]) -> str:
    if value is None:
        return "-"
    value = int(value)
    days, rest = divmod(value, 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    text = f"{h:02d}:{m:02d}:{s:02d}"
    return f"{days}-{text}" if days else text


def summary_line(v: Dict[str, Any]) -> Dict[str, str]:
    """Short text columns for tables (``%hpc jobs``)."""
    cpu = v.get("cpu") or {}
    mem = v.get("memory") or {}
    gpu = v.get("gpu") or {}
    t = v.get("time") or {}
    if cpu.get("available"):
        cpu_text = f"{cpu['percent']:.0f}%" if cpu.get("percent") is not None else "?"
    else:
        cpu_text = "n/a"
    if mem.get("available"):
        mem_text = f"{format_mb(mem.get('current_mb'))} (peak {format_mb(mem.get('peak_mb'))})"
    else:
        mem_text = "n/a"
    limit = format_seconds(t.get("limit_s")) if t.get("limit_s") else "unlimited"
    time_text = f"{format_seconds(t.get('elapsed_s'))}/{limit}"
    if gpu.get("available"):
        util = gpu.get("utilization")
        gpu_text = f"{util:.0f}%" if util is not None else "?"
        if gpu.get("memory_used_mb") is not None:
            gpu_text += f" {format_mb(gpu['memory_used_mb'])}"
    elif gpu.get("count"):
        gpu_text = "n/a"
    else:
        gpu_text = "-"
    return {"cpu": cpu_text, "memory": mem_text, "time": time_text, "gpu": gpu_text}


def describe(v: Dict[str, Any]) -> List[str]:
    """Human-readable lines for one job (``%hpc stats JOBID``)."""
    lines = [f"job {v['job_id']} ({v.get('name') or '-'}, {v.get('kind')}): {v.get('state')}"
             + (f" on {v['node']}" if v.get("node") else "")]
    t = v.get("time") or {}
    limit = format_seconds(t.get("limit_s")) if t.get("limit_s") else "unlimited"
    frac = f" ({100 * t['fraction']:.0f}% of the limit)" if t.get("fraction") is not None else ""
    lines.append(f"  time:   {format_seconds(t.get('elapsed_s'))} of {limit}{frac}")
    cpu = v.get("cpu") or {}
    if cpu.get("available"):
        load = (f"{cpu['cores_used']:.2f} of {cpu.get('cpus') or '?'} CPUs busy ({cpu['percent']:.0f}%)"
                if cpu.get("cores_used") is not None and cpu.get("percent") is not None else "load not known yet")
        lines.append(f"  cpu:    {load}; CPU time {format_seconds(cpu.get('cpu_seconds'))} [{cpu.get('source')}]")
    else:
        lines.append(f"  cpu:    unavailable: {cpu.get('reason')}")
    mem = v.get("memory") or {}
    requested = f" of {format_mb(mem.get('requested_mb'))} requested" if mem.get("requested_mb") else ""
    if mem.get("available"):
        lines.append(f"  memory: {format_mb(mem.get('current_mb'))} now, peak {format_mb(mem.get('peak_mb'))}"
                     f"{requested} [{mem.get('source')}]")
    else:
        lines.append(f"  memory: unavailable{requested}: {mem.get('reason')}")
    gpu = v.get("gpu") or {}
    if gpu.get("available"):
        util = gpu.get("utilization")
        lines.append(f"  gpu:    {gpu.get('count')} GPU(s), utilisation "
                     f"{'-' if util is None else f'{util:.0f}%'}, memory {format_mb(gpu.get('memory_used_mb'))}"
                     f" of {format_mb(gpu.get('memory_total_mb'))} [{gpu.get('source')}]")
        for d in gpu.get("devices") or []:
            lines.append(f"          #{d['index']} {d['name']}: {d.get('utilization')}% "
                         f"{format_mb(d.get('memory_used_mb'))}/{format_mb(d.get('memory_total_mb'))}")
    else:
        lines.append(f"  gpu:    unavailable: {gpu.get('reason')}")
    return lines
