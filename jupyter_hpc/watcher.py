"""One shared job-state poller per process.

Every spawner, REST handler and kernel provisioner of a process asks the same
:class:`JobWatcher` for job states instead of running its own ``squeue``. Each
interval the watcher runs **one** ``squeue --states=all`` (all jobs: a single
RPC that slurmctld answers from one job-table snapshot, also used for queue
positions) and, only for tracked ids that left squeue, **one** ``sacct``.

Status kinds (:class:`JobStatus.kind`):

- ``known``: Slurm answered and reported the job (``info`` is a :class:`JobInfo`).
- ``gone``: Slurm answered, the job is in neither squeue nor sacct (purged after
  ``MinJobAge``, or accounting disabled). Never reported while Slurm is unreachable.
- ``unknown``: not queried yet, or Slurm did not answer; ``info`` keeps the last
  known state. The poll interval doubles (up to ``max_interval``) while Slurm is
  unreachable and returns to ``interval`` after the first answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

from . import validate
from .cluster import AccountingUnavailable, SlurmClient, SlurmError, SlurmUnavailable
from .slurm import JobInfo

log = logging.getLogger(__name__)

KNOWN = "known"
GONE = "gone"
UNKNOWN = "unknown"


@dataclass
class JobStatus:
    """What the watcher knows about one job."""

    job_id: str
    kind: str = UNKNOWN  # known | gone | unknown
    info: Optional[JobInfo] = None  # current (known) or last known (unknown/gone) information
    updated: Optional[float] = None  # time.time() of the Slurm answer this status is based on
    error: Optional[str] = None  # why the state is unknown

    @property
    def state(self) -> str:
        """Slurm state (``PENDING``, ``RUNNING``, ``COMPLETED``...), ``GONE`` or ``UNKNOWN``."""
        if self.kind == GONE:
            return "GONE"
        if self.kind == UNKNOWN:
            return "UNKNOWN"
        return self.info.state if self.info else "UNKNOWN"

    @property
    def is_pending(self) -> bool:
        return self.kind == KNOWN and bool(self.info) and self.info.is_pending

    @property
    def is_running(self) -> bool:
        return self.kind == KNOWN and bool(self.info) and self.info.is_running

    @property
    def is_finished(self) -> bool:
        """True when the job is over for sure: a finished state, or gone."""
        return self.kind == GONE or (self.kind == KNOWN and bool(self.info) and self.info.is_finished)

    def to_dict(self) -> dict:
        return {
            "job_id": self.job_id,
            "kind": self.kind,
            "state": self.state,
            "info": self.info.to_dict() if self.info else None,
            "updated": self.updated,
            "error": self.error,
        }


@dataclass
class _Entry:
    status: JobStatus
    refs: int = 1
    final: bool = False  # a finished state from sacct: no further sacct needed


class JobWatcher:
    """Shared poller; get it with :meth:`instance`.

    ``query_all``: one ``squeue`` for all jobs per interval (default; also gives
    queue positions). With ``False`` only the tracked ids are queried.
    """

    _instance: Optional["JobWatcher"] = None

    def __init__(
        self,
        client: Optional[SlurmClient] = None,
        interval: float = 5.0,
        max_interval: float = 60.0,
        query_all: bool = True,
        use_sacct: bool = True,
    ):
        self.client = client or SlurmClient()
        self.interval = interval
        self.max_interval = max_interval
        self.query_all = query_all
        self.use_sacct = use_sacct
        self.counters: Dict[str, int] = {"polls": 0, "squeue": 0, "sacct": 0, "failures": 0}
        self._entries: Dict[str, _Entry] = {}
        self._on_end: Dict[str, List[Callable[[JobStatus], Any]]] = {}
        self._snapshot: Dict[str, JobInfo] = {}
        self._snapshot_time: Optional[float] = None
        self._accounting_disabled = False
        self._current_interval = interval
        self._task: Optional[asyncio.Task] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._wake: Optional[asyncio.Event] = None
        self._updated: Optional[asyncio.Event] = None
        self._loaded: Optional[asyncio.Event] = None
        self._stopped = False
        self._polling = False
        self.last_error: Optional[str] = None
        self.reachable: Optional[bool] = None

    # -- singleton -----------------------------------------------------------

    @classmethod
    def instance(cls, interval: Optional[float] = None, client: Optional[SlurmClient] = None, **kwargs) -> "JobWatcher":
        """The process-wide watcher (created on first call).

        A later call with a smaller ``interval`` shortens the shared interval;
        ``client``/``kwargs`` only apply when the watcher is created.
        """
        if cls._instance is None:
            if interval is not None:
                kwargs["interval"] = interval
            cls._instance = cls(client=client, **kwargs)
        elif interval is not None and interval < cls._instance.interval:
            cls._instance.interval = interval
            cls._instance._current_interval = min(cls._instance._current_interval, interval)
        return cls._instance

    @classmethod
    def clear_instance(cls) -> None:
        """Forget the process-wide watcher (stop it first)."""
        if cls._instance is not None:
            cls._instance.stop()
        cls._instance = None

    # -- tracking ------------------------------------------------------------

    def track(self, job_id: Any) -> JobStatus:
        """Watch ``job_id`` (reference counted) and make sure the poller runs; returns its status."""
        jid = validate.job_id(job_id)
        entry = self._entries.get(jid)
        if entry is None:
            entry = self._entries[jid] = _Entry(JobStatus(jid, error="not queried yet"))
            if jid in self._snapshot and self._snapshot_time is not None:
                entry.status = JobStatus(jid, KNOWN, self._snapshot[jid], self._snapshot_time)
            self._ensure_running(wake=True)
        else:
            entry.refs += 1
            self._ensure_running()
        return entry.status

    def untrack(self, job_id: Any) -> None:
        jid = validate.job_id(job_id)
        entry = self._entries.get(jid)
        if entry is None:
            return
        entry.refs -= 1
        if entry.refs <= 0:
            del self._entries[jid]
            self._on_end.pop(jid, None)

    def on_end(self, job_id: Any, callback: Callable[[JobStatus], Any]) -> None:
        """Call ``callback(status)`` once, in the event loop, right after the first poll that
        finds the tracked job ``job_id`` finished or gone (dropped when the job is untracked)."""
        jid = validate.job_id(job_id)
        self._on_end.setdefault(jid, []).append(callback)

    def _fire_ended(self) -> None:
        for jid in list(self._on_end):
            entry = self._entries.get(jid)
            if entry is None:
                self._on_end.pop(jid, None)
            elif entry.status.is_finished:
                for callback in self._on_end.pop(jid):
                    try:
                        callback(entry.status)
                    except Exception:  # noqa: BLE001 - one listener must not stop the watcher
                        log.exception("job end callback for %s failed", jid)

    def tracked(self) -> List[str]:
        return list(self._entries)

    def get(self, job_id: Any) -> JobStatus:
        """Latest status of ``job_id`` (``unknown`` when not tracked and not in the last snapshot)."""
        jid = validate.job_id(job_id)
        entry = self._entries.get(jid)
        if entry is not None:
            return entry.status
        if jid in self._snapshot:
            return JobStatus(jid, KNOWN, self._snapshot[jid], self._snapshot_time)
        return JobStatus(jid, UNKNOWN, error="not tracked")

    # -- snapshot views (query_all) -------------------------------------------

    def jobs(self, user: Optional[str] = None) -> List[JobInfo]:
        """All jobs of the last squeue (of ``user`` when given)."""
        return [j for j in self._snapshot.values() if user is None or j.user == user]

    def pending_by_partition(self) -> Dict[str, List[JobInfo]]:
        """Pending jobs of the last squeue per partition, in scheduling order (priority, then submit time)."""
        result: Dict[str, List[JobInfo]] = {}
        for job in self._snapshot.values():
            if job.is_pending and job.partition:
                # a job submitted to several partitions ("cpu,gpu") is listed in each
                for part in job.partition.split(","):
                    result.setdefault(part, []).append(job)
        for jobs in result.values():
            jobs.sort(key=lambda j: (-(j.priority or 0), j.submit_time or "", _id_key(j.job_id)))
        return result

    def queue_position(self, job_id: Any) -> Optional[int]:
        """1-based position of a pending job among pending jobs of its partition (``None`` if not pending)."""
        jid = validate.job_id(job_id)
        job = self._snapshot.get(jid)
        if job is None or not job.is_pending or not job.partition:
            return None
        queue = self.pending_by_partition().get(job.partition.split(",")[0], [])
        for i, j in enumerate(queue):
            if j.job_id == jid:
                return i + 1
        return None

    # -- waiting ---------------------------------------------------------------

    async def first_load(self, timeout: Optional[float] = None) -> None:
        """Wait until the first poll finished (successfully or not)."""
        self._ensure_running()
        if self._loaded.is_set():
            return
        await asyncio.wait_for(self._loaded.wait(), timeout)

    async def wait_for_update(self, timeout: Optional[float] = None) -> bool:
        """Wait for the next finished poll; ``False`` on timeout."""
        self._ensure_running()
        event = self._updated
        try:
            await asyncio.wait_for(event.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def refresh(self, timeout: Optional[float] = None) -> bool:
        """Poll now (instead of at the end of the interval) and wait for a poll that started after this call."""
        self._ensure_running()

        async def go():
            if self._polling:
                await self._updated.wait()  # that poll may have started before the caller's change
            event = self._updated
            self._wake.set()
            await event.wait()

        try:
            await asyncio.wait_for(go(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    # -- loop ------------------------------------------------------------------

    def _ensure_running(self, wake: bool = False) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            # called outside the event loop (e.g. from synchronous start-up code):
            # the loop starts on the next call made from within it
            return
        if self._loop is not loop or self._task is None or self._task.done():
            if self._loop is not loop:
                self._wake = asyncio.Event()
                self._updated = asyncio.Event()
                self._loaded = asyncio.Event()
            self._loop = loop
            self._stopped = False
            self._task = loop.create_task(self._run())
        elif wake:
            self._wake.set()

    def stop(self) -> None:
        """Stop polling (tests, shutdown). Tracked ids are kept; a later track() restarts the loop."""
        self._stopped = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._task = None

    async def _run(self) -> None:
        while not self._stopped:
            if self._entries:
                await self.poll()
            else:
                # nothing to watch: mark "loaded" so first_load() does not hang
                self._loaded.set()
            delay = self._current_interval if self._entries else max(self.interval, 1.0) * 10
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()

    async def poll(self) -> None:
        """One round: squeue (+ sacct for vanished ids). Called by the loop; usable directly in tests."""
        self._polling = True
        try:
            await self._poll()
        finally:
            self._polling = False

    async def _poll(self) -> None:
        self.counters["polls"] += 1
        now = time.time()
        ids = list(self._entries)
        try:
            self.counters["squeue"] += 1
            if self.query_all:
                found = await self.client.squeue()
            else:
                found = await self.client.squeue(ids)
        except (SlurmError, OSError) as e:
            self._failed(e)
            return
        except asyncio.CancelledError:
            raise
        self.reachable = True
        self.last_error = None
        self._current_interval = self.interval
        if self.query_all:
            self._snapshot = found
            self._snapshot_time = now
        else:
            self._snapshot = {k: v for k, v in found.items()}
            self._snapshot_time = now

        missing: List[str] = []
        for jid in ids:
            entry = self._entries.get(jid)
            if entry is None:
                continue
            if jid in found:
                entry.status = JobStatus(jid, KNOWN, found[jid], now)
                entry.final = False
            elif entry.final:
                entry.status.updated = now
            else:
                missing.append(jid)

        sacct_found: Dict[str, JobInfo] = {}
        if missing and self.use_sacct and not self._accounting_disabled:
            try:
                self.counters["sacct"] += 1
                sacct_found = await self.client.sacct(missing)
            except AccountingUnavailable as e:
                log.info("sacct unavailable (%s); vanished jobs are reported as gone", e.reason or e.stderr.strip())
                self._accounting_disabled = True
            except SlurmError as e:
                log.warning("sacct failed: %s", e)
            except asyncio.CancelledError:
                raise

        for jid in missing:
            entry = self._entries.get(jid)
            if entry is None:
                continue
            info = sacct_found.get(jid)
            if info is not None:
                entry.status = JobStatus(jid, KNOWN, info, now)
                entry.final = info.is_finished
            else:
                last = entry.status.info
                entry.status = JobStatus(jid, GONE, last, now)
        self._fire_ended()
        self._notify()

    def _failed(self, err: Exception) -> None:
        self.counters["failures"] += 1
        self.reachable = False
        self.last_error = str(err)
        unreachable = isinstance(err, SlurmUnavailable) or isinstance(err, OSError)
        log.warning("squeue failed (%s); job states unknown, retrying in %.0fs",
                    "unreachable" if unreachable else "error", min(self._current_interval * 2, self.max_interval))
        for jid, entry in self._entries.items():
            old = entry.status
            entry.status = JobStatus(jid, UNKNOWN, old.info, old.updated, error=str(err)[:500])
        self._current_interval = min(max(self._current_interval, self.interval) * 2, self.max_interval)
        self._notify()

    def _notify(self) -> None:
        self._loaded.set()
        event, self._updated = self._updated, asyncio.Event()
        event.set()


def _id_key(job_id: str):
    base, _, task = job_id.partition("_")
    return (int(base), int(task) if task else -1)


__all__ = ["JobWatcher", "JobStatus", "KNOWN", "GONE", "UNKNOWN"]
