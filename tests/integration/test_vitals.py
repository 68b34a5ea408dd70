"""Live job vitals on the real testbed: a cell job in the real notebook image allocates memory and
burns CPU while alice's real jupyter server reports its vitals (sstat with jobacct_gather/linux);
GPU vitals on the fake-GRES node are reported unavailable; %hpc jobs / %hpc stats in IPython."""

from __future__ import annotations

import os
import pwd
import re
import time

import pytest

from server_fixtures import server_for, validate_schema

IMAGE = "site:notebook.sif"
#: Seconds between two refreshes of the vitals (the testbed gathers every 2 s: JobAcctGatherFrequency=task=2).
REFRESH = 2.0
GROWTH_MB = 300

# Allocates a little, waits for a trigger file, then allocates GROWTH_MB more and burns CPU for a while.
MEMORY_CELL = r'''
import os, time
def touch(n):
    buf = bytearray(n * 2**20)
    for i in range(0, len(buf), 4096):
        buf[i] = 1
    return buf
keep = [touch(30)]
print("baseline", flush=True)
trigger = {trigger!r}
while not os.path.exists(trigger):
    time.sleep(0.1)
keep.append(touch({growth}))
print("grown", flush=True)
t = time.time()
x = 0
while time.time() - t < 12:
    x += 1
time.sleep(120)
'''


@pytest.fixture(scope="module")
def alice(testbed):
    server = server_for("alice", testbed["VENV"], extra_args=("--HPCExtension.vitals_min_window=1",))
    yield server
    server.stop()


def submit(server, code, **extra):
    body = {"code": code, "image": IMAGE, "time": "00:10:00", "memory": "1G", "cpus": 1}
    body.update(extra)
    r = server.api("POST", "cells", body)
    assert r.status_code == 201, r.text
    return r.json()["job_id"]


def stats(server, job_id):
    r = server.api("GET", f"jobs/{job_id}/stats")
    assert r.status_code == 200, r.text
    data = r.json()
    validate_schema(data, "JobStats")
    return data


def wait_for(predicate, timeout, interval=0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"condition not met in {timeout}s; last: {last}")


def test_memory_growth_seen_within_two_refreshes(alice, cancel_jobs, user_tmpdir, run_as, testbed):
    tmp = user_tmpdir("alice")
    trigger = os.path.join(tmp, "grow")
    job_id = submit(alice, MEMORY_CELL.format(trigger=trigger, growth=GROWTH_MB))
    cancel_jobs.append(job_id)

    # running, and sstat sees the baseline allocation
    def baseline():
        v = stats(alice, job_id)
        return v if v["state"] == "RUNNING" and v["memory"]["available"] and v["memory"]["current_mb"] >= 30 else None

    first = wait_for(baseline, 90)
    assert first["cpu"]["available"] and first["cpu"]["cpus"] == 1 and first["cpu"]["source"] == "sstat"
    assert first["memory"]["requested_mb"] == 1024
    assert first["time"]["limit_s"] == 600 and first["time"]["elapsed_s"] is not None
    assert first["gpu"] == {"available": False, "reason": "the job has no GPUs", "count": 0, "devices": []}
    time.sleep(REFRESH)
    before = stats(alice, job_id)["memory"]["current_mb"]

    # the same job in the all-jobs answer the sidebar polls
    r = alice.api("GET", "vitals")
    assert r.status_code == 200, r.text
    validate_schema(r.json(), "Vitals")
    assert job_id in {v["job_id"] for v in r.json()["jobs"]}

    run_as("alice", ["touch", trigger], check=True)
    seen = []
    for refresh in (1, 2):
        time.sleep(REFRESH)
        v = stats(alice, job_id)
        seen.append(v["memory"]["current_mb"])
        if v["memory"]["current_mb"] >= before + 0.8 * GROWTH_MB:
            break
    else:
        raise AssertionError(f"memory {before} MB did not grow by {GROWTH_MB} MB within two refreshes: {seen}")
    print(f"\nvitals: memory {before:.0f} MB -> {seen[-1]:.0f} MB after {refresh} refresh(es) of {REFRESH:.0f} s")
    assert v["memory"]["peak_mb"] >= v["memory"]["current_mb"]

    # the busy loop shows as CPU load (sampling window 1 s in this server)
    def busy():
        c = stats(alice, job_id)["cpu"]
        return c if c["cores_used"] is not None and c["cores_used"] > 0.4 else None

    cpu = wait_for(busy, 12, interval=1.0)
    assert 0 < cpu["percent"] <= 150
    print(f"vitals: CPU {cpu['percent']:.0f}% of 1 CPU during the busy loop, CPU time {cpu['cpu_seconds']} s")


def test_gpu_vitals_unavailable_without_real_gpus(alice, cancel_jobs, testbed):
    job_id = submit(alice, "import time; time.sleep(120)", partition=testbed["GPU_PARTITION"], gpus=1)
    cancel_jobs.append(job_id)
    v = wait_for(lambda: (lambda s: s if s["state"] == "RUNNING" else None)(stats(alice, job_id)), 60)
    gpu = v["gpu"]
    assert gpu["available"] is False and gpu["count"] == 1 and gpu["devices"] == []
    assert "nvidia-smi" in gpu["reason"], gpu
    assert gpu.get("utilization") is None and gpu.get("memory_used_mb") is None  # nothing invented
    # the probe result is reused, not re-run at every refresh
    t0 = time.monotonic()
    assert stats(alice, job_id)["gpu"]["reason"] == gpu["reason"]
    assert time.monotonic() - t0 < 5


def test_vitals_of_other_and_unknown_jobs(alice, run_as, cancel_jobs, testbed):
    out = run_as("bob", ["sbatch", "--parsable", "--chdir=/tmp", "--output=/dev/null", "--time=2",
                         "--wrap=sleep 60"], check=True).stdout.strip()
    bob_job = out.split(";")[0]
    cancel_jobs.append(bob_job)
    r = alice.api("GET", f"jobs/{bob_job}/stats")
    assert r.status_code == 403, r.text
    assert alice.api("GET", "jobs/999999999/stats").status_code == 404
    assert alice.api("GET", "jobs/1;id/stats").status_code == 400
    r = alice.api("GET", "vitals")
    assert bob_job not in {v["job_id"] for v in r.json()["jobs"]}


MAGIC = r'''
ip = get_ipython()
ip.run_line_magic("load_ext", "jupyter_hpc")
ip.run_line_magic("hpc", "jobs")
ip.run_line_magic("hpc", "stats {job_id}")
ip.run_line_magic("hpc", "stats 999999999")
'''


def test_magics_show_vitals(alice, cancel_jobs, testbed, run_as):
    job_id = submit(alice, "x = bytearray(60 * 2**20)\nfor i in range(0, len(x), 4096): x[i] = 1\n"
                           "import time; time.sleep(120)")
    cancel_jobs.append(job_id)
    wait_for(lambda: (lambda s: s if s["memory"]["available"] and s["memory"]["current_mb"] > 50 else None)(
        stats(alice, job_id)), 90)
    pw = pwd.getpwnam("alice")
    script = os.path.join(pw.pw_dir, f"jhpc-vitals-magic-{job_id}.py")
    with open(script, "w") as f:
        f.write(MAGIC.format(job_id=job_id))
    os.chown(script, pw.pw_uid, pw.pw_gid)
    try:
        proc = run_as("alice", [f"{testbed['VENV']}/bin/ipython", "--no-banner", "--colors=nocolor", script],
                      timeout=120, cwd=pw.pw_dir, env={"HOME": pw.pw_dir})
    finally:
        os.unlink(script)
    out = proc.stdout + proc.stderr
    assert re.search(r"^JOBID\s+NAME\s+KIND\s+STATE.*TIME/LIMIT\s+CPU\s+MEMORY \(PEAK\)\s+GPU", out, re.M), out
    row = re.search(rf"^{job_id}\s+jupyter-hpc-cell\s+cell\s+RUNNING\s.*$", out, re.M)
    assert row and re.search(r"\d+M \(peak \d+M\)", row.group(0)), out
    assert f"job {job_id} (jupyter-hpc-cell, cell): RUNNING" in out
    assert re.search(r"memory: \d+M now, peak \d+M of 1.0G requested \[sstat\]", out), out
    assert "gpu:    unavailable: the job has no GPUs" in out
    assert "%hpc: job id: job 999999999 is not known to Slurm" in out


# -- the sidebar in a real browser (same Lab fixture as tests/integration/test_ui.py) ---------------

from test_ui import ARTIFACTS, lab, labextension, run_ui, venv  # noqa: E402,F401 - pytest fixtures


def test_sidebar_shows_live_vitals_chart(lab):
    """A running job gets a live memory chart that grows; Share is disabled without JupyterHub."""
    out = run_ui(lab, "vitals")
    assert (ARTIFACTS / "50-vitals-chart.png").is_file()
    growth = re.search(r"sidebar memory (\S+) MiB -> (\S+) MiB", out)
    print(f"\n{growth.group(0) if growth else out[-500:]}")
