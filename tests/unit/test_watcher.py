"""JobWatcher logic with an in-memory stand-in for SlurmClient (no cluster needed)."""

import asyncio

import pytest

from jupyter_hpc.cluster import AccountingUnavailable, SlurmUnavailable
from jupyter_hpc.slurm import JobInfo
from jupyter_hpc.watcher import GONE, KNOWN, UNKNOWN, JobWatcher


class FakeClient:
    def __init__(self):
        self.jobs = {}
        self.acct = {}
        self.down = False
        self.accounting = True
        self.squeue_calls = []
        self.sacct_calls = []

    async def squeue(self, job_ids=None, **kw):
        self.squeue_calls.append(None if job_ids is None else list(job_ids))
        if self.down:
            raise SlurmUnavailable(["squeue"], 1, "Unable to contact slurm controller", "", "")
        if job_ids is None:
            return dict(self.jobs)
        return {j: self.jobs[j] for j in job_ids if j in self.jobs}

    async def sacct(self, job_ids, **kw):
        self.sacct_calls.append(list(job_ids))
        if not self.accounting:
            raise AccountingUnavailable(["sacct"], 1, "Slurm accounting storage is disabled", "", "")
        return {j: self.acct[j] for j in job_ids if j in self.acct}


def job(jid, state="RUNNING", partition="cpu", priority=100, submit="2026-01-01T00:00:00", user="alice"):
    return JobInfo(jid, state=state, partition=partition, priority=priority, submit_time=submit, user=user)


@pytest.fixture
def fake():
    return FakeClient()


@pytest.fixture
def watcher(fake):
    w = JobWatcher(client=fake, interval=0.05, max_interval=0.4)
    yield w
    w.stop()


async def test_one_squeue_for_many_jobs(fake, watcher):
    for i in range(1, 51):
        fake.jobs[str(i)] = job(str(i))
        watcher.track(i)
    await watcher.first_load(5)
    before = watcher.counters["squeue"]
    assert await watcher.wait_for_update(5)
    assert watcher.counters["squeue"] - before == 1  # one query per round, whatever the number of jobs
    assert all(c is None for c in fake.squeue_calls)  # query_all: one squeue for everything
    st = watcher.get("7")
    assert st.kind == KNOWN and st.state == "RUNNING" and st.is_running


async def test_vanished_job_sacct_then_gone(fake, watcher):
    fake.jobs["1"] = job("1")
    fake.jobs["2"] = job("2")
    watcher.track("1")
    watcher.track("2")
    await watcher.first_load(5)
    del fake.jobs["1"], fake.jobs["2"]
    fake.acct["1"] = job("1", state="COMPLETED")
    await watcher.refresh(5)
    assert ["1", "2"] in fake.sacct_calls  # one sacct for all vanished ids
    assert watcher.get("1").kind == KNOWN and watcher.get("1").state == "COMPLETED" and watcher.get("1").is_finished
    assert watcher.get("2").kind == GONE and watcher.get("2").is_finished
    n = len(fake.sacct_calls)
    await watcher.refresh(5)
    assert len(fake.sacct_calls) == n + 1 and fake.sacct_calls[-1] == ["2"]  # finished from sacct: not asked again


async def test_accounting_disabled_means_gone_and_no_more_sacct(fake, watcher):
    fake.accounting = False
    fake.jobs["1"] = job("1")
    watcher.track("1")
    await watcher.first_load(5)
    del fake.jobs["1"]
    await watcher.refresh(5)
    assert watcher.get("1").kind == GONE and watcher.get("1").info.job_id == "1"
    calls = len(fake.sacct_calls)
    await watcher.refresh(5)
    assert len(fake.sacct_calls) == calls


async def test_unreachable_is_unknown_with_backoff(fake, watcher):
    fake.jobs["1"] = job("1")
    watcher.track("1")
    await watcher.first_load(5)
    fake.down = True
    await watcher.wait_for_update(5)
    st = watcher.get("1")
    assert st.kind == UNKNOWN and st.state == "UNKNOWN" and st.info.state == "RUNNING" and not st.is_finished
    assert watcher.reachable is False and "contact" in st.error
    for _ in range(4):
        await watcher.wait_for_update(5)
    assert watcher._current_interval == watcher.max_interval
    assert watcher.get("1").kind == UNKNOWN  # never "gone" while Slurm does not answer
    fake.down = False
    del fake.jobs["1"]
    await watcher.refresh(5)
    assert watcher.get("1").kind == GONE and watcher._current_interval == watcher.interval


async def test_queue_positions(fake, watcher):
    fake.jobs.update({
        "10": job("10", "PENDING", "cpu", 100, "2026-01-01T00:00:02"),
        "11": job("11", "PENDING", "cpu", 100, "2026-01-01T00:00:01"),
        "12": job("12", "PENDING", "cpu", 500, "2026-01-01T00:00:03"),
        "13": job("13", "PENDING", "gpu", 100),
        "14": job("14", "RUNNING", "cpu"),
        "15": job("15", "PENDING", "cpu,gpu", 50),
    })
    watcher.track("10")
    await watcher.first_load(5)
    pend = watcher.pending_by_partition()
    assert [j.job_id for j in pend["cpu"]] == ["12", "11", "10", "15"]
    assert [j.job_id for j in pend["gpu"]] == ["13", "15"]
    assert watcher.queue_position("10") == 3 and watcher.queue_position("14") is None
    assert {j.job_id for j in watcher.jobs(user="alice")} == set(fake.jobs)


async def test_untrack_and_idle(fake, watcher):
    fake.jobs["1"] = job("1")
    watcher.track("1")
    watcher.track("1")
    await watcher.first_load(5)
    watcher.untrack("1")
    assert watcher.tracked() == ["1"]
    watcher.untrack("1")
    assert watcher.tracked() == []
    await asyncio.sleep(0.1)
    n = watcher.counters["squeue"]
    await asyncio.sleep(0.3)
    assert watcher.counters["squeue"] == n  # nothing tracked: no queries
    assert watcher.get("1").kind == KNOWN  # still answered from the last snapshot
    assert watcher.get("999").kind == UNKNOWN


async def test_instance_is_shared():
    JobWatcher.clear_instance()
    try:
        a = JobWatcher.instance(interval=5)
        b = JobWatcher.instance(interval=2)
        assert a is b and a.interval == 2
    finally:
        JobWatcher.clear_instance()


async def test_query_only_tracked(fake):
    w = JobWatcher(client=fake, interval=0.05, query_all=False)
    try:
        fake.jobs["1"] = job("1")
        w.track("1")
        await w.first_load(5)
        assert fake.squeue_calls[0] == ["1"]
    finally:
        w.stop()


def test_status_dict():
    w = JobWatcher(client=FakeClient())
    st = w.get("5")
    assert st.to_dict()["kind"] == UNKNOWN


def test_track_outside_event_loop_starts_later(fake):
    w = JobWatcher(client=fake, interval=0.05)
    fake.jobs["3"] = job("3")
    assert w.track("3").kind == UNKNOWN  # no loop running: nothing started yet

    async def later():
        await w.first_load(5)
        await w.wait_for_update(5)
        return w.get("3").kind

    try:
        assert asyncio.run(later()) == KNOWN
    finally:
        w.stop()


async def test_on_end_fires_once_when_the_job_ends(fake, watcher):
    fake.jobs["1"] = job("1")
    fake.jobs["2"] = job("2")
    for jid in ("1", "2", "3"):
        watcher.track(jid)
    ended = []
    watcher.on_end("1", lambda st: ended.append((st.job_id, st.state)))
    watcher.on_end("2", lambda st: ended.append((st.job_id, st.state)))
    watcher.on_end("3", lambda st: 1 / 0)  # a failing listener does not stop the others
    await watcher.refresh(5)
    assert ended == []
    fake.jobs["1"] = job("1", state="CANCELLED")
    await watcher.refresh(5)
    assert ("1", "CANCELLED") in ended
    del fake.jobs["2"]
    await watcher.refresh(5)
    await watcher.refresh(5)
    assert sorted(ended) == [("1", "CANCELLED"), ("2", "GONE")]  # once each


async def test_on_end_dropped_with_untrack(fake, watcher):
    fake.jobs["1"] = job("1")
    watcher.track("1")
    ended = []
    watcher.on_end("1", ended.append)
    watcher.untrack("1")
    watcher.track("1")
    fake.jobs["1"] = job("1", state="COMPLETED")
    await watcher.refresh(5)
    assert ended == []
