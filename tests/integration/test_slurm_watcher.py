"""JobWatcher, port hand-off and SlurmClient error mapping against the real Slurm testbed."""

import asyncio
import os
import tempfile
import uuid

import pytest

from jupyter_hpc import jobscript, slurm
from jupyter_hpc.cluster import AccountingUnavailable, SlurmClient, SlurmUnavailable
from jupyter_hpc.watcher import GONE, KNOWN, UNKNOWN, JobWatcher

pytestmark = pytest.mark.integration


def name():
    return "watch-" + uuid.uuid4().hex[:8]


async def test_port_handoff_via_comment_and_watcher(tb, user_tmpdir, cancel_jobs):
    """The job records host:port in its comment with scontrol; one shared squeue sees it."""
    client = SlurmClient()
    d = user_tmpdir("alice")
    comment = slurm.make_comment(kind="service", image="site:notebook.sif")
    req = slurm.JobRequest.validated(partition=tb["CPU_PARTITION"], time="5", job_name=name(), comment=comment,
                                     output=os.path.join(d, "svc-%j.out"), workdir=d)
    script = jobscript.build_container_script(
        tb["NOTEBOOK_SIF"], ["python3", "-m", "http.server", "--bind", "0.0.0.0", "{port}"],
        port=True, comment=comment, port_range=(30000, 30999))
    jid = await client.submit(req, script, user="alice")
    cancel_jobs.append(jid)
    watcher = JobWatcher(client=client, interval=0.5)
    try:
        watcher.track(jid)
        await watcher.first_load(30)
        endpoint = None
        for _ in range(120):
            st = watcher.get(jid)
            if st.kind == KNOWN and st.info.endpoint:
                endpoint = st.info.endpoint
                break
            assert not st.is_finished, st
            await watcher.wait_for_update(5)
        assert endpoint is not None, "no host:port in the job comment"
        host, port = endpoint
        assert host == tb["SLURM_NODE"] and 30000 <= port <= 30999
        info = watcher.get(jid).info
        assert info.kind == "service" and info.meta["image"] == "site:notebook.sif"
        # the service inside the container answers on that port
        for _ in range(60):
            try:
                reader, writer = await asyncio.open_connection(host, port)
                writer.write(b"GET / HTTP/1.0\r\n\r\n")
                await writer.drain()
                data = await reader.read(100)
                writer.close()
                break
            except OSError:
                await asyncio.sleep(0.5)
        else:
            raise AssertionError("service did not answer")
        assert data.startswith(b"HTTP/1.0 200")
        assert await client.cancel(jid, user="alice") is True
        for _ in range(60):
            await watcher.wait_for_update(5)
            if watcher.get(jid).is_finished:
                break
        assert watcher.get(jid).state in ("CANCELLED", "GONE")
    finally:
        watcher.stop()


async def test_watcher_batches_queries(tb, cancel_jobs):
    client = SlurmClient()
    ids = []
    for _ in range(5):
        req = slurm.JobRequest.validated(partition=tb["CPU_PARTITION"], time="5", job_name=name(),
                                         output="/dev/null", workdir="/tmp")
        ids.append(await client.submit(req, slurm.batch_script([["sleep", "20"]]), user="bob"))
    cancel_jobs.extend(ids)
    watcher = JobWatcher(client=client, interval=0.3)
    try:
        for jid in ids:
            watcher.track(jid)
        await watcher.first_load(30)
        start = dict(watcher.counters)
        for _ in range(3):
            assert await watcher.wait_for_update(10)
        made = watcher.counters["squeue"] - start["squeue"]
        assert made == watcher.counters["polls"] - start["polls"]  # exactly one squeue per round for 5 jobs
        assert all(watcher.get(j).kind == KNOWN for j in ids)
        pending = watcher.pending_by_partition()
        for jid in ids:
            st = watcher.get(jid)
            if st.is_pending:
                assert jid in [j.job_id for j in pending[tb["CPU_PARTITION"]]]
                assert watcher.queue_position(jid) >= 1
    finally:
        watcher.stop()


async def test_finished_job_without_accounting_becomes_gone(tb):
    """Accounting is disabled on the testbed: sacct fails with a typed error; a purged id is 'gone'."""
    client = SlurmClient()
    if tb.get("SACCT_AVAILABLE") == "0":
        with pytest.raises(AccountingUnavailable):
            await client.sacct(["1"])
    watcher = JobWatcher(client=client, interval=0.3)
    try:
        watcher.track("999999999")  # never existed: not in squeue, not in sacct
        await watcher.first_load(30)
        await watcher.wait_for_update(10)
        st = watcher.get("999999999")
        assert st.kind == GONE and st.is_finished
    finally:
        watcher.stop()


async def test_unreachable_controller_is_unknown_not_gone(tb):
    """Real Slurm tools with a configuration pointing at a port nobody listens on."""
    conf_dir = tempfile.mkdtemp(prefix="jhpc-conf-")
    src = tb.get("SLURM_CONF", "/etc/slurm/slurm.conf")
    lines = [l for l in open(src).read().splitlines() if not l.startswith(("SlurmctldPort", "MessageTimeout"))]
    lines += ["SlurmctldPort=9", "MessageTimeout=2"]
    conf = os.path.join(conf_dir, "slurm.conf")
    with open(conf, "w") as f:
        f.write("\n".join(lines) + "\n")
    for extra in ("gres.conf", "cgroup.conf"):
        p = os.path.join(os.path.dirname(src), extra)
        if os.path.exists(p):
            os.symlink(p, os.path.join(conf_dir, extra))
    broken = SlurmClient(env={"SLURM_CONF": conf}, query_timeout=60)
    try:
        with pytest.raises(SlurmUnavailable):
            await broken.squeue()
        good = SlurmClient()
        req = slurm.JobRequest.validated(partition=tb["CPU_PARTITION"], time="5", job_name=name(),
                                         output="/dev/null", workdir="/tmp")
        jid = await good.submit(req, slurm.batch_script([["sleep", "1"]]), user="alice")
        watcher = JobWatcher(client=broken, interval=0.2, max_interval=0.8)
        try:
            watcher.track(jid)
            await watcher.first_load(60)
            await watcher.wait_for_update(60)
            st = watcher.get(jid)
            assert st.kind == UNKNOWN and st.state == "UNKNOWN" and not st.is_finished
            assert watcher.counters["failures"] >= 1 and watcher.reachable is False
            assert watcher._current_interval > watcher.interval  # backing off
            # controller reachable again: state known right away
            watcher.client = good
            await watcher.refresh(60)
            assert watcher.get(jid).kind in (KNOWN, GONE)
        finally:
            watcher.stop()
    finally:
        import shutil

        shutil.rmtree(conf_dir, ignore_errors=True)


async def test_real_output_shapes(tb, cancel_jobs, run_as):
    """squeue parses the live output of this Slurm version (22.05 or 24.11), odd job names included."""
    client = SlurmClient()
    # a job submitted by other tools may have any name: submit it with plain sbatch
    res = run_as("alice", ["sbatch", "--parsable", "--job-name=a|b c", "--partition=" + tb["GPU_PARTITION"],
                           "--gres=gpu:" + tb["GPU_TYPE"] + ":1", "--time=2",
                           "--comment=" + slurm.make_comment(kind="probe"),
                           "--output=/tmp/jhpc-probe-%j.out", "--chdir=/tmp"],
                 input="#!/bin/bash\nsleep 10\n")
    assert res.returncode == 0, res.stderr
    jid = slurm.parse_sbatch(res.stdout)
    cancel_jobs.append(jid)
    jobs = await client.squeue([jid])
    info = jobs[jid]
    assert info.name == "a|b c" and info.user == "alice" and info.partition == tb["GPU_PARTITION"]
    assert info.time_limit == 2 and info.kind == "probe" and info.gpus == {tb["GPU_TYPE"]: 1}
    assert info.stdout == f"/tmp/jhpc-probe-{jid}.out" and info.work_dir == "/tmp"
    assert info.submit_time and (info.is_pending or info.is_running or info.is_finished)
    mine = await client.squeue(user="alice")
    assert jid in mine and mine[jid].name == "a|b c"
    stats = await client.job_stats(jid, user="alice")
    assert stats is None or stats.job_id == jid
    await client.cancel(jid, user="alice")
    if os.path.exists(f"/tmp/jhpc-probe-{jid}.out"):
        os.unlink(f"/tmp/jhpc-probe-{jid}.out")
