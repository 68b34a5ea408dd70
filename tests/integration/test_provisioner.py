"""Kernels as Slurm jobs, end to end: a real jupyter_server as alice, kernelspecs
installed by ``jupyter hpc kernelspec install``, kernels started with
``POST /api/kernels`` and used over the server's websocket
``/api/kernels/<id>/channels``; ipykernel runs inside the real notebook.sif in
a real Slurm job.
"""

import asyncio
import json
import os
import re
import stat
import subprocess
import time

import pytest

from kernel_fixtures import (  # noqa: F401  (fixtures)
    ALICE,
    CONNECTION_DIR,
    alice_server,
    job_fields,
    job_state,
    kernelspecs,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]

FINISHED = {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "GONE"}

REPORT = (
    "import json, os, socket\n"
    "print(json.dumps({'host': socket.gethostname(), 'container': os.environ.get('APPTAINER_CONTAINER'),\n"
    "                  'job': os.environ.get('SLURM_JOB_ID'), 'gpus': os.environ.get('CUDA_VISIBLE_DEVICES'),\n"
    "                  'cwd': os.getcwd()}))\n"
)


BOB_CLIENT = """
import json, secrets, sys
from queue import Empty
from jupyter_client import BlockingKernelClient
kc = BlockingKernelClient(ip=sys.argv[1], key=secrets.token_hex(32).encode(), transport="tcp",
                          signature_scheme="hmac-sha256")
kc.load_connection_info(json.loads(sys.argv[2]))
kc.start_channels()
kc.kernel_info()
try:
    kc.get_shell_msg(timeout=5)
    print("got a reply")
except Empty:
    print("no reply")
kc.stop_channels()
"""


async def report(ch):
    reply, out = await ch.execute(REPORT, timeout=60)
    assert reply["status"] == "ok", reply
    return json.loads(out.strip().splitlines()[-1])


async def wait_finished(job_id, timeout=60.0):
    deadline = time.monotonic() + timeout
    state = job_state(job_id)
    while state not in FINISHED:
        assert time.monotonic() < deadline, f"job {job_id} still {state} after {timeout} s"
        await asyncio.sleep(0.5)
        state = job_state(job_id)
    return state


def connection_file(kernel_id):
    return os.path.join(CONNECTION_DIR, f"hpc-kernel-{kernel_id}.json")


def all_command_lines():
    lines = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    lines.append(f.read().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                pass
    return lines


async def test_kernel_lifecycle_through_server(tb, alice_server, kernelspecs, run_as):
    server = alice_server
    t0 = time.monotonic()
    code, kernel = await server.start_kernel(kernelspecs["cpu"]["name"])
    started = time.monotonic() - t0
    assert code == 201, (code, kernel, server.log()[-3000:])
    kid = kernel["id"]
    ch = await server.channels(kid)
    try:
        info = await ch.kernel_info()
        assert info["status"] == "ok" and info["language_info"]["name"] == "python"
        first = await report(ch)
        job = first["job"]
        server.job_ids.append(job)
        # runs in a Slurm job, inside the image, on the node
        assert first["container"] == tb["NOTEBOOK_SIF"]
        assert first["host"] == tb["SLURM_NODE"]
        assert first["cwd"] == "/home/alice"
        fields = job_fields(job)
        assert fields["JobState"] == "RUNNING" and fields["UserId"].startswith("alice(")
        assert fields["JobName"] == "jupyter-kernel"
        assert fields.get("Comment", "").startswith("jupyter-hpc:kind=kernel,kernel=" + kid)
        assert f"submitted Slurm job {job}" in server.log()
        print(f"kernel start through the server: {started:.2f} s")

        # the connection file: alice's only, key nowhere on a command line or in the script
        path = connection_file(kid)
        st = os.stat(path)
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == int(run_as(ALICE, ["id", "-u"]).stdout)
        with open(path) as f:
            conn = json.load(f)
        assert all(conn[p] > 0 for p in ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port"))
        key = conn["key"]
        assert len(key) >= 32
        bob = run_as("bob", ["cat", path])
        assert bob.returncode != 0 and "Permission denied" in bob.stderr
        # bob knows the node and the ports (they are no secret) but not the key: the kernel ignores him
        bob = run_as("bob", [tb["PYTHON"], "-c", BOB_CLIENT, tb["SLURM_NODE"], json.dumps(
            {p: conn[p] for p in ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")})],
            timeout=60)
        assert bob.stdout.strip() == "no reply", (bob.stdout, bob.stderr)
        assert key not in run_as("bob", ["cat", "/proc/self/environ"]).stdout
        assert not [line for line in all_command_lines() if key in line]
        script = subprocess.run(["scontrol", "write", "batch_script", job, "-"], capture_output=True, text=True,
                                timeout=60)
        assert script.returncode == 0 and "ipykernel_launcher" in script.stdout
        assert key not in script.stdout and path in script.stdout

        # interrupt: a cell sleeping 600 s is interrupted, the kernel survives in the same job
        msg_id = await ch.start_execute("import time; time.sleep(600)")
        await ch.wait_busy(msg_id)
        await asyncio.sleep(1)
        t1 = time.monotonic()
        code, _ = await server.request("POST", f"/api/kernels/{kid}/interrupt")
        assert code == 204
        reply, _ = await ch.finish_execute(msg_id, timeout=20)
        assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt"
        assert time.monotonic() - t1 < 10
        again = await report(ch)
        assert again["job"] == job

        # restart: a fresh kernel in a new job; the old job ends
        code, _ = await server.request("POST", f"/api/kernels/{kid}/restart")
        assert code == 200, server.log()[-3000:]
        ch.close()
        ch = await server.channels(kid)
        await ch.kernel_info()
        restarted = await report(ch)
        server.job_ids.append(restarted["job"])
        assert restarted["job"] != job
        assert await wait_finished(job) in FINISHED
        assert os.path.exists(path)
        reply, out = await ch.execute("x = 41\nprint(x + 1)")
        assert out.strip() == "42"
    finally:
        ch.close()

    # shutdown: the job ends, the connection file is gone, nothing is left in the queue
    code, _ = await server.request("DELETE", f"/api/kernels/{kid}")
    assert code == 204
    assert await wait_finished(restarted["job"], timeout=30) in FINISHED
    assert not os.path.exists(path)
    code, kernels = await server.request("GET", "/api/kernels")
    assert kid not in [k["id"] for k in kernels]


async def test_gpu_kernel_job_has_gpu(tb, alice_server, kernelspecs):
    server = alice_server
    code, kernel = await server.start_kernel(kernelspecs["gpu"]["name"])
    assert code == 201, (code, kernel, server.log()[-3000:])
    kid = kernel["id"]
    ch = await server.channels(kid)
    try:
        rep = await report(ch)
        server.job_ids.append(rep["job"])
        fields = job_fields(rep["job"])
        assert fields["Partition"] == tb.get("GPU_PARTITION", "gpu")
        assert "gres/gpu" in fields.get("TRES", "") or "gpu" in fields.get("TresPerNode", ""), fields
        squeue = subprocess.run(["squeue", "--noheader", "--jobs", rep["job"], "-O", "tres-per-node:60,tres-alloc:200"],
                                capture_output=True, text=True, timeout=60).stdout
        assert "gres/gpu" in squeue or "gpu:1" in squeue, squeue
        assert rep["gpus"] not in (None, ""), "CUDA_VISIBLE_DEVICES must reach the container"
        # --nv was used for the container
        script = subprocess.run(["scontrol", "write", "batch_script", rep["job"], "-"], capture_output=True,
                                text=True, timeout=60).stdout
        assert "apptainer exec --nv" in script
    finally:
        ch.close()
    code, _ = await server.request("DELETE", f"/api/kernels/{kid}")
    assert code == 204
    assert await wait_finished(rep["job"], timeout=30) in FINISHED


@pytest.mark.parametrize(
    "which, expected",
    [
        ("missing", "no-such-image.sif: no such file or directory"),
        ("broken", "image format not recognized"),
        ("nopartition", "partition"),
    ],
)
async def test_failing_kernel_job_reports_its_error_fast(alice_server, kernelspecs, which, expected):
    server = alice_server
    before = set(subprocess.run(["squeue", "--noheader", "--user", ALICE, "--format=%i"], capture_output=True,
                                text=True, timeout=60).stdout.split())
    t0 = time.monotonic()
    code, body = await server.start_kernel(kernelspecs[which]["name"], timeout=60)
    elapsed = time.monotonic() - t0
    assert code == (400 if which == "nopartition" else 500), (code, body)
    message = body.get("message", "") if isinstance(body, dict) else str(body)
    assert expected in message.lower() or expected in message, message
    assert elapsed < 10, f"error took {elapsed:.1f} s"
    print(f"{which}: error after {elapsed:.2f} s: {message!r}")
    for log in re.findall(r"\((/[^()\s]+\.log)\)", message):
        assert log.startswith(CONNECTION_DIR + "/hpc-kernel-")
        os.unlink(log)  # the job output kept for the user
    # no kernel left behind: not in the server, no new job still queued or running
    code, kernels = await server.request("GET", "/api/kernels")
    assert kernels == []
    after = subprocess.run(["squeue", "--noheader", "--user", ALICE, "--states=PENDING,RUNNING",
                            "--name=jupyter-kernel", "--format=%i"], capture_output=True, text=True,
                           timeout=60).stdout.split()
    assert not set(after) - before
    assert not [f for f in os.listdir(CONNECTION_DIR) if f.endswith(".json")
                and os.path.getmtime(os.path.join(CONNECTION_DIR, f)) > time.time() - elapsed - 5]


async def test_kernel_at_time_limit_shows_dead(tb, alice_server, kernelspecs):
    """A job ending at its time limit makes the kernel dead (not hung, not silently restarted)."""
    server = alice_server
    code, kernel = await server.start_kernel(kernelspecs["short"]["name"])
    assert code == 201, (code, kernel, server.log()[-3000:])
    kid = kernel["id"]
    ch = await server.channels(kid)
    rep = await report(ch)
    job = rep["job"]
    server.job_ids.append(job)
    try:
        msg = await ch.wait_for(lambda m: m["header"]["msg_type"] == "status"
                                and m["content"].get("execution_state") in ("dead", "restarting"), timeout=240)
        assert msg["content"]["execution_state"] == "dead"
    finally:
        ch.close()
    assert job_state(job) == "TIMEOUT"
    deadline = time.monotonic() + 20
    while True:
        code, kernels = await server.request("GET", "/api/kernels")
        if kid not in [k["id"] for k in kernels]:
            break
        assert time.monotonic() < deadline, kernels
        await asyncio.sleep(1)
    assert not os.path.exists(connection_file(kid))
    assert f"Kernel {kid} died: its Slurm job {job} reached its time limit (TIMEOUT" in server.log()


async def test_pending_kernel_waits_for_its_job(tb, alice_server, kernelspecs, run_as):
    """While the node's GPUs are taken the kernel's job pends; the server log says so, and the
    kernel comes up as soon as the GPUs are free."""
    server = alice_server
    gpus = int(tb.get("GPU_COUNT", "2"))
    gres = f"gpu:{tb['GPU_TYPE']}:{gpus}" if tb.get("GPU_TYPE") else f"gpu:{gpus}"
    blocker = run_as(ALICE, ["sbatch", "--parsable", "--partition", tb.get("GPU_PARTITION", "gpu"),
                             "--gres", gres, "--time", "5", "--mem", "64M", "--output", "/dev/null",
                             "--job-name", "jhpc-test-blocker", "--wrap", "sleep 300"])
    assert blocker.returncode == 0, blocker.stderr
    blocker_id = blocker.stdout.strip().split(";")[0]
    server.job_ids.append(blocker_id)
    deadline = time.monotonic() + 120
    while job_state(blocker_id) != "RUNNING":
        assert time.monotonic() < deadline, f"blocker job {blocker_id} did not start"
        await asyncio.sleep(0.5)

    t0 = time.monotonic()
    start = asyncio.ensure_future(server.start_kernel(kernelspecs["gpu"]["name"]))
    deadline = time.monotonic() + 60
    while "is pending (" not in server.log():
        assert time.monotonic() < deadline, server.log()[-3000:]
        assert not start.done(), start.result()
        await asyncio.sleep(0.3)
    await asyncio.sleep(2)
    assert not start.done()
    assert "waiting for job" in server.log()
    pending_for = time.monotonic() - t0
    subprocess.run(["scancel", blocker_id], check=True, timeout=60)
    code, kernel = await asyncio.wait_for(start, 120)
    assert code == 201, (code, kernel)
    assert time.monotonic() - t0 > pending_for
    ch = await server.channels(kernel["id"])
    try:
        rep = await report(ch)
        server.job_ids.append(rep["job"])
        assert rep["gpus"]
    finally:
        ch.close()
    code, _ = await server.request("DELETE", f"/api/kernels/{kernel['id']}")
    assert code == 204
    assert await wait_finished(rep["job"], timeout=30) in FINISHED


SIGNAL_CLIENT = """
import asyncio, json, os, signal, sys, time
from jupyter_client.manager import AsyncKernelManager

async def main():
    km = AsyncKernelManager(kernel_name=sys.argv[1])
    await km.start_kernel(cwd=os.path.expanduser("~"))
    kc = km.client()
    kc.start_channels()
    result = {"job": km.provisioner.job_id}
    try:
        await kc.wait_for_ready(timeout=60)
        kc.execute("import time; time.sleep(600)")
        await asyncio.sleep(2)
        t0 = time.monotonic()
        await km.provisioner.send_signal(signal.SIGINT)
        reply = await kc.get_shell_msg(timeout=20)
        result["interrupt"] = [reply["content"]["status"], reply["content"].get("ename"), time.monotonic() - t0]
        reply = await kc.execute_interactive("print('still here')", timeout=30)
        result["after"] = reply["content"]["status"]
        result["alive"] = await km.is_alive()
    finally:
        kc.stop_channels()
        await km.shutdown_kernel()
    print(json.dumps(result))

asyncio.run(main())
"""


def test_send_signal_interrupts_through_scancel(tb, kernelspecs, run_as):
    """send_signal(SIGINT) (interrupt_mode "signal") reaches the kernel through
    ``scancel --signal=INT --full``: the cell is interrupted, the kernel lives on."""
    out = run_as(ALICE, [tb["PYTHON"], "-c", SIGNAL_CLIENT, kernelspecs["cpu"]["name"]],
                 env={"HOME": "/home/alice"}, cwd="/home/alice", timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    status, ename, seconds = result["interrupt"]
    assert (status, ename) == ("error", "KeyboardInterrupt") and seconds < 10
    assert result["after"] == "ok" and result["alive"] is True
    assert job_state(result["job"]) in FINISHED
