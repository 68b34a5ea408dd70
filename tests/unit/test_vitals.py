"""Job vitals: sstat/sacct/nvidia-smi parsing and the collector's rates, peaks and "unavailable" answers."""

from __future__ import annotations

import asyncio
from typing import List, Optional

import pytest

from jupyter_hpc import slurm, vitals
from jupyter_hpc.cluster import AccountingUnavailable
from jupyter_hpc.process import CommandResult
from jupyter_hpc.slurm import JobInfo


def running(job_id="7", gpus=None, cpus=2, tres="cpu=2,mem=1G,node=1,billing=2", elapsed=100, **kw) -> JobInfo:
    return JobInfo(job_id=job_id, name="jupyter-hpc-cell", user="alice", state="RUNNING", nodes="vm",
                   partition="cpu", elapsed=elapsed, time_limit=30, cpus=cpus, tres=tres, gpus=gpus or {},
                   comment="jupyter-hpc:kind=cell,image=site:notebook.sif", **kw)


SSTAT_22 = (
    "7.batch|00:00:10|307200K|150000K|1|600000K|cpu=00:00:20,energy=0,fs/disk=2332,mem=204800K,pages=0,vmem=500000K|"
    "cpu=00:00:20,energy=0,fs/disk=2332,mem=307200K,pages=0,vmem=600000K\n"
)


def test_sstat_tres_fields():
    argv = slurm.sstat_argv("7")
    fmt = [a for a in argv if a.startswith("--format=")][0]
    assert "TRESUsageInTot" in fmt and "TRESUsageInMax" in fmt
    st = slurm.parse_sstat(SSTAT_22, "7")
    assert st.total_cpu_seconds == 20
    assert st.rss_mb == pytest.approx(200.0)
    assert st.max_rss_mb == pytest.approx(300.0)
    assert st.gpu_util is None and st.gpu_mem_mb is None
    # two steps: current memory and CPU time add up, the peak is the largest
    two = SSTAT_22 + "7.0|00:01:00|2G|1G|4|3G|cpu=00:04:00,mem=1G,gres/gpuutil=55,gres/gpumem=2G|\n"
    st = slurm.parse_sstat(two, "7")
    assert st.total_cpu_seconds == 260 and st.rss_mb == pytest.approx(1224.0) and st.max_rss_mb == 2048
    assert st.gpu_util == 55 and st.gpu_mem_mb == 2048


def test_parse_tres_and_sacct_usage():
    assert slurm.parse_tres("cpu=2,mem=1G,node=1,gres/gpu=1") == {"cpu": "2", "mem": "1G", "node": "1",
                                                                  "gres/gpu": "1"}
    assert slurm.parse_tres(None) == {} and slurm.parse_tres("(null)") == {}
    usage = slurm.parse_sacct_usage("9|||COMPLETED\n9.batch|409600K|00:00:03|COMPLETED\n9.0|1G|00:01:00|COMPLETED\n")
    assert usage["peak_mb"] == 1024
    usage = slurm.parse_sacct_usage("9||01:02.500|COMPLETED\n9.batch|2M|00:00:03|COMPLETED\n")
    assert usage == {"peak_mb": 2.0, "cpu_seconds": 62.0}
    argv = slurm.sacct_usage_argv("9")
    assert argv[0] == "sacct" and "--jobs=9" in argv


def test_srun_probe_argv_is_validated():
    argv = slurm.srun_in_job_argv("12", ["nvidia-smi", "-L"], node="gpu01")
    assert argv[:3] == ["srun", "--jobid=12", "--overlap"] and "--nodelist=gpu01" in argv
    assert argv[-2:] == ["nvidia-smi", "-L"]
    with pytest.raises(ValueError):
        slurm.srun_in_job_argv("12; id", ["x"])
    with pytest.raises(ValueError):
        slurm.srun_in_job_argv("12", ["x"], node="-n1")


def test_parse_nvidia_smi():
    text = "0, NVIDIA A100-SXM4-40GB, 87, 30000, 40960\n1, NVIDIA A100-SXM4-40GB, [N/A], 0, 40960\ngarbage\n"
    devs = vitals.parse_nvidia_smi(text)
    assert [d["index"] for d in devs] == [0, 1]
    assert devs[0]["utilization"] == 87 and devs[1]["utilization"] is None
    summary = vitals.gpu_summary(devs)
    assert summary == {"utilization": 87.0, "memory_used_mb": 30000.0, "memory_total_mb": 81920.0}
    assert vitals.nvidia_smi_argv()[0] == "nvidia-smi"


class FakeSlurm:
    """Answers of real sstat/sacct/srun runs, replayed (the collector's command layer)."""

    def __init__(self, stats: List[Optional[slurm.JobStats]], probe: Optional[CommandResult] = None,
                 sacct_error: bool = True):
        self.stats = list(stats)
        self.probe = probe
        self.probes = 0
        self.sacct_error = sacct_error

    async def job_stats(self, job_id, user=None):
        return self.stats.pop(0) if len(self.stats) > 1 else self.stats[0]

    async def job_usage(self, job_id, user=None):
        if self.sacct_error:
            raise AccountingUnavailable(["sacct"], 1, "Slurm accounting storage is disabled")
        return {"peak_mb": 512.0, "cpu_seconds": 30.0}

    async def run_in_job(self, job_id, argv, node=None, user=None):
        self.probes += 1
        return self.probe


def stats(cpu: float, rss_k: int, max_k: int) -> slurm.JobStats:
    text = (f"7.batch|00:00:01|{max_k}K|{rss_k}K|1|0|cpu={int(cpu) // 60:02d}:{int(cpu) % 60:02d},mem={rss_k}K|\n")
    return slurm.parse_sstat(text, "7")


def test_collector_cpu_rate_and_memory_peak():
    fake = FakeSlurm([stats(50, 102400, 102400), stats(50, 102400, 102400), stats(56, 409600, 409600),
                      stats(56, 204800, 409600)])
    c = vitals.VitalsCollector(fake, min_window=0.0)
    info = running(elapsed=100)

    async def go():
        first = await c.vitals(info)
        assert first["cpu"]["available"] and first["cpu"]["cpu_seconds"] == 50
        # first sample: average since the job started, 50 s of CPU in 100 s on 2 CPUs
        assert first["cpu"]["cores_used"] == pytest.approx(0.5) and first["cpu"]["percent"] == pytest.approx(25.0)
        assert first["memory"]["current_mb"] == 100 and first["memory"]["requested_mb"] == 1024
        await asyncio.sleep(0.05)
        await c.vitals(info)
        await asyncio.sleep(0.05)
        third = await c.vitals(info)
        assert third["memory"]["current_mb"] == 400 and third["memory"]["peak_mb"] == 400
        assert third["cpu"]["cores_used"] > 1  # 6 CPU seconds in a fraction of a second
        fourth = await c.vitals(info)
        assert fourth["memory"]["current_mb"] == 200 and fourth["memory"]["peak_mb"] == 400
        assert fourth["gpu"] == {"available": False, "reason": "the job has no GPUs", "count": 0, "devices": []}
        assert fourth["time"] == {"elapsed_s": 100, "limit_s": 1800, "fraction": pytest.approx(0.0556, abs=1e-3)}

    asyncio.run(go())


def test_collector_reports_unavailable_without_gathering():
    # jobacct_gather/none: sstat answers zeros and a garbage CPU time
    none = slurm.parse_sstat("7.batch|213503982334-14:25:51|0|0|0|0\n", "7")
    c = vitals.VitalsCollector(FakeSlurm([none]))
    v = asyncio.run(c.vitals(running()))
    assert v["cpu"]["available"] is False and "jobacct_gather" in v["cpu"]["reason"]
    assert v["memory"]["available"] is False and v["memory"]["current_mb"] is None
    assert v["memory"]["requested_mb"] == 1024


def test_collector_finished_job_without_accounting():
    c = vitals.VitalsCollector(FakeSlurm([None]))
    done = running()
    done.state = "COMPLETED"
    v = asyncio.run(c.vitals(done))
    assert v["memory"]["available"] is False and v["memory"]["reason"] == vitals.NO_ACCOUNTING
    # with accounting
    c = vitals.VitalsCollector(FakeSlurm([None], sacct_error=False))
    v = asyncio.run(c.vitals(done))
    assert v["memory"] == {"available": True, "reason": None, "current_mb": None, "peak_mb": 512.0,
                           "requested_mb": 1024.0, "source": "sacct"}


def test_gpu_probe_without_nvidia_smi_is_unavailable_and_cached():
    missing = CommandResult(["srun"], 2, "", "slurmstepd: error: execve(): nvidia-smi: No such file or directory\n"
                                            "srun: error: vm: task 0: Exited with exit code 2\n")
    fake = FakeSlurm([stats(1, 1024, 1024)], probe=missing)
    c = vitals.VitalsCollector(fake)
    info = running(gpus={"tesla": 1})

    async def go():
        v = await c.vitals(info)
        assert v["gpu"]["available"] is False and "nvidia-smi is not installed" in v["gpu"]["reason"]
        assert v["gpu"]["count"] == 1 and v["gpu"]["devices"] == []
        await c.vitals(info)
        assert fake.probes == 1  # a failed probe is not repeated at every refresh

    asyncio.run(go())


def test_gpu_probe_with_real_answer():
    ok = CommandResult(["srun"], 0, "0, Tesla V100, 42, 1000, 16000\n", "")
    c = vitals.VitalsCollector(FakeSlurm([stats(1, 1024, 1024)], probe=ok))
    v = asyncio.run(c.vitals(running(gpus={"tesla": 1})))
    assert v["gpu"]["available"] and v["gpu"]["utilization"] == 42 and v["gpu"]["source"] == "nvidia-smi"
    off = vitals.VitalsCollector(FakeSlurm([stats(1, 1024, 1024)], probe=ok), gpu_probe=False)
    v = asyncio.run(off.vitals(running(gpus={"tesla": 1})))
    assert v["gpu"]["available"] is False and "vitals_gpu_probe" in v["gpu"]["reason"]


def test_slurm_gpu_accounting_is_used_first():
    text = "7.batch|00:00:01|1024K|1024K|1|0|cpu=00:01,mem=1024K,gres/gpuutil=70,gres/gpumem=3G|\n"
    fake = FakeSlurm([slurm.parse_sstat(text, "7")])
    v = asyncio.run(vitals.VitalsCollector(fake).vitals(running(gpus={"tesla": 1})))
    assert v["gpu"]["available"] and v["gpu"]["source"] == "sstat" and v["gpu"]["utilization"] == 70
    assert fake.probes == 0


def test_text_output():
    fake = FakeSlurm([stats(50, 102400, 204800)])
    v = asyncio.run(vitals.VitalsCollector(fake).vitals(running()))
    cols = vitals.summary_line(v)
    assert cols["memory"] == "100M (peak 200M)" and cols["time"] == "00:01:40/00:30:00" and cols["gpu"] == "-"
    text = "\n".join(vitals.describe(v))
    assert "memory: 100M now, peak 200M of 1.0G requested" in text and "gpu:    unavailable" in text


def test_magic_jobs_table():
    from jupyter_hpc.magic import jobs_table

    fake = FakeSlurm([stats(50, 102400, 204800)])
    info = running()
    v = asyncio.run(vitals.VitalsCollector(fake).vitals(info))
    pending = JobInfo(job_id="8", name="x", user="alice", state="PENDING", time_limit=60, elapsed=0)
    rows = jobs_table([(info, v), (pending, None)])
    assert rows[0][6:] == ("TIME/LIMIT", "CPU", "MEMORY (PEAK)", "GPU")
    assert rows[1][0] == "7" and rows[1][8] == "100M (peak 200M)"
    assert rows[2][0] == "8" and rows[2][6] == "00:00:00/01:00:00" and rows[2][7] == ""


def test_answers_match_the_openapi_schema():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
    from server_fixtures import validate_schema

    ok = CommandResult(["srun"], 0, "0, Tesla V100, 42, 1000, 16000\n", "")
    answers = [
        asyncio.run(vitals.VitalsCollector(FakeSlurm([stats(50, 102400, 204800)], probe=ok)).vitals(
            running(gpus={"tesla": 1}))),
        asyncio.run(vitals.VitalsCollector(FakeSlurm([None])).vitals(running())),
        asyncio.run(vitals.VitalsCollector(FakeSlurm([None])).vitals(
            JobInfo(job_id="9", state="PENDING", user="alice", time_limit=None))),
    ]
    for a in answers:
        validate_schema(a, "JobStats")
    validate_schema({"jobs": answers, "sampled_at": 1.0}, "Vitals")
