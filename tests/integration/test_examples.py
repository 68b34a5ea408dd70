"""The example notebooks (``examples/notebooks``), executed as alice with nbclient on the testbed.

- ``matmul-scaling.ipynb``: CPU and GPU benchmark batch jobs in ``pytorch.sif``; results table
  and scaling plot. Sizes are bounded for small machines (``JUPYTER_HPC_MATMUL_SIZES``).
- ``web-service.ipynb``: a web UI started as a service job, reached through a real Jupyter
  server's proxy while the notebook waits before its clean-up cell.
- ``gpu-kernel.ipynb``: the notebook's kernel is a Slurm job on the ``gpu`` partition inside
  ``pytorch.sif`` (kernel provisioner, kernelspec installed with ``jupyter hpc kernelspec install``).

The testbed's GPUs are Slurm GRES without NVIDIA devices, so the notebooks must say CPU-only.
Executed notebooks are kept under ``artifacts/examples/``.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import requests

from server_fixtures import server_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "examples" / "notebooks"
RUNNER = Path(__file__).resolve().parent / "notebook_runner.py"
ARTIFACTS = REPO / "artifacts" / "examples"
USER = "alice"
RUNUSER = shutil.which("runuser") or "/usr/sbin/runuser"
KERNEL_DIR = f"/home/{USER}/.local/share/jupyter/kernels"


@pytest.fixture(scope="module")
def pytorch_sif(testbed) -> str:
    path = testbed.get("PYTORCH_SIF") or os.path.join(testbed.get("IMAGE_DIR", "/opt/jupyter-hpc/images"),
                                                        "pytorch.sif")
    if not os.path.isfile(path):
        pytest.skip(f"{path} is missing: the testbed builds it only from a CPU torch wheel in /opt/wheels "
                    "(tests/testbed/lib/torch.sh)")
    return path


@pytest.fixture
def workdir():
    """A directory of alice's for the notebooks and their job outputs."""
    pw = pwd.getpwnam(USER)
    path = tempfile.mkdtemp(prefix="jhpc-examples-", dir=pw.pw_dir)
    os.chown(path, pw.pw_uid, pw.pw_gid)
    os.chmod(path, 0o700)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def user_env(venv: str, **extra) -> dict:
    pw = pwd.getpwnam(USER)
    env = {"PATH": f"{venv}/bin:/usr/local/bin:/usr/bin:/bin", "HOME": pw.pw_dir, "USER": USER, "LOGNAME": USER,
           "LANG": "C.UTF-8"}
    env.update(extra)
    return env


def runner_argv(venv: str, name: str, workdir: str, *extra: str) -> list:
    pw = pwd.getpwnam(USER)
    src = os.path.join(workdir, name)
    shutil.copy(NOTEBOOKS / name, src)
    os.chown(src, pw.pw_uid, pw.pw_gid)
    return [RUNUSER, "-u", USER, "--", f"{venv}/bin/python", str(RUNNER), src,
            os.path.join(workdir, "out-" + name), "--cwd", workdir, *extra]


def read_result(workdir: str, name: str):
    import nbformat

    path = os.path.join(workdir, "out-" + name)
    nb = nbformat.read(path, as_version=4)  # multi-line strings joined
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, ARTIFACTS / name)
    return nb


def outputs_of(nb) -> list:
    return [o for cell in nb["cells"] if cell["cell_type"] == "code" for o in cell.get("outputs", [])]


def text_of(nb) -> str:
    parts = []
    for o in outputs_of(nb):
        if o["output_type"] == "stream":
            parts.append(o["text"])
        elif o["output_type"] == "error":
            parts.append("\n".join(o["traceback"]))
    return "".join(parts)


def test_matmul_scaling_notebook(testbed, pytorch_sif, workdir, wait_job):
    env = user_env(testbed["VENV"], JUPYTER_HPC_MATMUL_SIZES="2048,4096", JUPYTER_HPC_MATMUL_REPEATS="3",
                   JUPYTER_HPC_DEMO_IMAGE="site:" + os.path.basename(pytorch_sif))
    started = time.monotonic()
    proc = subprocess.run(runner_argv(testbed["VENV"], "matmul-scaling.ipynb", workdir), env=env, cwd="/",
                          capture_output=True, text=True, timeout=300)
    seconds = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    nb = read_result(workdir, "matmul-scaling.ipynb")
    text = text_of(nb)
    assert seconds < 180, f"the notebook took {seconds:.0f} s"
    assert "Jobs run inside Apptainer images (site:pytorch.sif)." in text, text
    assert "benchmark jobs: cpu, cuda" in text
    assert re.search(rf"cpu job ran on {testbed['SLURM_NODE']} in {re.escape(pytorch_sif)}: torch \S+\+cpu", text), text
    # Slurm gave the GPU job a (fake) GPU; the container sees no CUDA device and says so.
    assert "cuda job: no CUDA device visible to this job: CPU-only" in text
    assert "CPU-only: no GPU figures" in text
    rows = re.findall(r"^cpu\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+1\.0x$", text, re.M)
    assert {int(n) for n, _, _ in rows} == {2048, 4096}, text
    assert all(float(g) > 0 and float(s) > 0 for _, s, g in rows)
    assert not re.search(r"^cuda\s+\d+", text, re.M)
    html = [o["data"]["text/html"] for o in outputs_of(nb) if "text/html" in o.get("data", {})]
    assert html and "<td>cpu</td><td>4096</td>" in html[0]
    pngs = [o for o in outputs_of(nb) if "image/png" in o.get("data", {})]
    assert len(pngs) == 1 and len(pngs[0]["data"]["image/png"]) > 5000
    results = json.loads(Path(workdir, "matmul-results.json").read_text())
    assert {r["n"] for r in results["results"]} == {2048, 4096}
    assert results["devices"]["cuda"]["cuda_available"] is False
    assert results["devices"]["cuda"]["cuda_visible_devices"] in [str(i) for i in range(int(testbed.get("GPU_COUNT", 2)))]
    (ARTIFACTS / "matmul-results.json").write_text(json.dumps(dict(results, notebook_seconds=seconds), indent=1))


def demo_services() -> set:
    """Job ids of alice's services named demo-web (the notebook's)."""
    out = subprocess.run(["squeue", "--noheader", "--states=all", f"--user={USER}", "--format=%i %k"],
                         capture_output=True, text=True, timeout=60)
    return {line.split()[0] for line in out.stdout.splitlines() if "kind=service,name=demo-web," in line}


def test_web_service_notebook(testbed, workdir, wait_job):
    before = demo_services()
    server = server_for(USER, testbed["VENV"])
    proc = subprocess.Popen(runner_argv(testbed["VENV"], "web-service.ipynb", workdir, "--pause-at-tag", "cleanup"),
                            env=user_env(testbed["VENV"]), cwd="/", stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    job_id = None
    try:
        seen = []
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            seen.append(line)
            if not line or line.strip() == "PAUSED":
                break
        assert seen[-1].strip() == "PAUSED", "the runner did not pause:\n" + "".join(seen)
        nb = read_result(workdir, "web-service.ipynb")
        text = text_of(nb)
        m = re.search(r"service job (\d+) is ready on (\S+) at (/jupyter-hpc/proxy/\d+/)", text)
        assert m, text
        job_id, node, url = m.groups()
        assert node == testbed["SLURM_NODE"] and url == f"/jupyter-hpc/proxy/{job_id}/"
        assert "-> 200 jupyter-hpc demo service" in text
        # The running Jupyter server proxies the service the kernel started.
        r = requests.get(server.url(url.lstrip("/")), headers=server.headers(), timeout=30)
        assert r.status_code == 200 and "<h1>jupyter-hpc demo service</h1>" in r.text, r.text[:300]
        services = {s["job_id"]: s for s in server.api("GET", "services").json()["services"]}
        assert services[job_id]["name"] == "demo-web" and services[job_id]["ready"] is True
        proc.stdin.write("go on\n")
        proc.stdin.flush()
        rest, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, rest
        text = text_of(read_result(workdir, "web-service.ipynb"))
        assert f"service job {job_id}: stop requested" in text
        assert wait_job(job_id, timeout=60) in ("CANCELLED", "GONE")
        r = requests.get(server.url(url.lstrip("/")), headers=server.headers(), timeout=30)
        assert r.status_code == 404
    finally:
        if proc.poll() is None:
            proc.kill()
        # Whatever happened, no service of this run is left running.
        for leftover in (demo_services() - before) | ({job_id} if job_id else set()):
            subprocess.run(["scancel", leftover], capture_output=True, timeout=60)
        server.stop()


def test_gpu_kernel_notebook(testbed, pytorch_sif, workdir, wait_job):
    name = "jhpc-test-example-gpu"
    install = subprocess.run(
        [RUNUSER, "-u", USER, "--", f"{testbed['VENV']}/bin/jupyter", "hpc", "kernelspec", "install",
         "--name", name, "--image", pytorch_sif, "--partition", testbed.get("GPU_PARTITION", "gpu"), "--gpus", "1",
         "--time", "00:10:00", "--mem", "2G", "--display-name", "PyTorch (Slurm job, 1 GPU)"],
        env=user_env(testbed["VENV"]), cwd="/", capture_output=True, text=True, timeout=120)
    assert install.returncode == 0, install.stderr
    text, job, proc = "", None, None
    try:
        proc = subprocess.run(runner_argv(testbed["VENV"], "gpu-kernel.ipynb", workdir, "--kernel", name),
                              env=user_env(testbed["VENV"]), cwd="/", capture_output=True, text=True, timeout=300)
        if os.path.exists(os.path.join(workdir, "out-gpu-kernel.ipynb")):
            text = text_of(read_result(workdir, "gpu-kernel.ipynb"))
            job = re.search(r"^SLURM_JOB_ID: (\d+)$", text, re.M)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    finally:
        shutil.rmtree(os.path.join(KERNEL_DIR, name), ignore_errors=True)
        if job and (proc is None or proc.returncode != 0):
            subprocess.run(["scancel", job.group(1)], capture_output=True, timeout=60)
    assert job, text
    job_id = job.group(1)
    assert f"node: {testbed['SLURM_NODE']}" in text
    assert f"SLURM_JOB_PARTITION: {testbed.get('GPU_PARTITION', 'gpu')}" in text
    # Slurm hands out one of the node's (fake) GPUs: which one depends on the other jobs.
    gpu = re.search(r"^CUDA_VISIBLE_DEVICES: (\d+)$", text, re.M).group(1)
    assert f"container: {pytorch_sif}" in text
    assert f"CPU-only: Slurm allocated GPU(s) '{gpu}' to this job, but no CUDA device is visible" in text
    assert re.search(r"2048x2048 matmul on cpu: [\d.]+ s, [\d.]+ GFLOP/s", text), text
    # Shutting the kernel down ended its job.
    assert wait_job(job_id, timeout=60) in ("CANCELLED", "COMPLETED", "GONE")
