"""The Binder demo (``binder/start``) as an ordinary user, beside the testbed's own Slurm.

carol runs ``binder/start jupyter server ...`` the way repo2docker runs it: the start script
brings up a single-node Slurm cluster of carol's own (her munged with its own key and socket,
her slurmctld and slurmd on free ports, SlurmUser = SlurmdUser = carol, state under a directory
of hers), installs the demo's image entry and kernelspecs, and executes the server.

Binder hosts have no unprivileged user namespaces, so Apptainer cannot run there. The session
gets the same condition for real: ``nouserns.py`` puts it into a user namespace in which no
further user namespace may be created. jupyter-hpc's ``auto`` runtime probe then finds that
``apptainer exec <image> true`` fails, and the REST API reports the host fallback; a cell job
and a kernel (through the provisioner) run as jobs of carol's cluster directly on the node.
At the end ``binder/cluster.sh down`` stops the three daemons.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import requests

from server_fixtures import UserServer, validate_schema, wait_cell

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

REPO = Path(__file__).resolve().parents[2]
START = REPO / "binder" / "start"
CLUSTER = REPO / "binder" / "cluster.sh"
NOUSERNS = Path(__file__).resolve().parent / "nouserns.py"
USER = "carol"
RUNUSER = shutil.which("runuser") or "/usr/sbin/runuser"
HOST_MESSAGE = "Containers unavailable on this host: commands run directly on the node"


class BinderServer(UserServer):
    """``binder/start jupyter server ...`` as ``user`` inside a session without user namespaces."""

    def __init__(self, user: str, venv: str, workdir: str):
        super().__init__(user, venv, root_dir=os.path.join(workdir, "work"), log_dir=workdir)
        self.workdir = workdir
        self.demo_dir = os.path.join(workdir, "demo")
        self.data_dir = os.path.join(workdir, "data")

    def user_env(self) -> dict:
        return {
            "PATH": f"{self.venv}/bin:/usr/local/bin:/usr/bin:/bin",
            "HOME": self.home,
            "USER": self.user,
            "LOGNAME": self.user,
            "LANG": "C.UTF-8",
            "JUPYTER_HPC_DEMO_DIR": self.demo_dir,
            "JUPYTER_DATA_DIR": self.data_dir,
        }

    def environment(self) -> dict:
        return dict(self.user_env(), JUPYTER_TOKEN=self.token)

    def command(self) -> list:
        return [
            RUNUSER, "-u", self.user, "--",
            f"{self.venv}/bin/python", str(NOUSERNS), str(START),
            f"{self.venv}/bin/jupyter", "server",
            "--no-browser", "--ip=127.0.0.1", f"--port={self.port}", "--port-retries=0",
            f"--ServerApp.root_dir={self.root_dir}",
            # The testbed venv has an editable install, which does not carry the
            # jupyter_server_config.d file that enables the extension.
            "--ServerApp.jpserver_extensions={'jupyter_hpc': True}",
            "--HPCExtension.watch_interval=1",
            # Job ids of this cluster start at 1 again each run: keep its job records apart.
            f"--HPCExtension.jobs_dir={self.workdir}/jobs",
            f"--HPCExtension.services_dir={self.workdir}/services",
        ]

    def start(self, timeout: float = 90) -> "BinderServer":
        return super().start(timeout)

    def as_user(self, argv, timeout: float = 60, **env) -> subprocess.CompletedProcess:
        """``argv`` as the user with the demo cluster's SLURM_CONF (outside the session)."""
        full = dict(self.user_env(), SLURM_CONF=os.path.join(self.demo_dir, "etc", "slurm.conf"), **env)
        return subprocess.run([RUNUSER, "-u", self.user, "--", *argv], env=full, cwd="/",
                              capture_output=True, text=True, timeout=timeout)


def _daemon_pids(demo_dir: str) -> dict:
    pids = {}
    for name in ("munged", "slurmctld", "slurmd"):
        try:
            pids[name] = int(Path(demo_dir, "run", f"{name}.pid").read_text().strip())
        except (OSError, ValueError):
            pass
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _user_processes(user: str, words) -> list:
    uid = pwd.getpwnam(user).pw_uid
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.stat(f"/proc/{pid}").st_uid != uid:
                continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(w in cmd for w in words):
            found.append(cmd)
    return found


@pytest.fixture(scope="module")
def binder(testbed):
    pw = pwd.getpwnam(USER)
    # A short path: the munge socket lives below it.
    workdir = tempfile.mkdtemp(prefix="jhpc-binder-", dir="/tmp")
    for d in (workdir, os.path.join(workdir, "work")):
        os.makedirs(d, exist_ok=True)
        os.chown(d, pw.pw_uid, pw.pw_gid)
        os.chmod(d, 0o700)
    images_dir = os.path.join(pw.pw_dir, "images")
    made_images_dir = not os.path.exists(images_dir)
    demo_image = os.path.join(images_dir, "binder-env")
    made_demo_image = not os.path.exists(demo_image)
    server = BinderServer(USER, testbed["VENV"], workdir)
    started = time.monotonic()
    try:
        server.start()
        server.startup_seconds = time.monotonic() - started
        yield server
    finally:
        server.stop()
        pids = _daemon_pids(server.demo_dir)
        down = server.as_user([str(CLUSTER), "down"])
        if made_demo_image:
            shutil.rmtree(demo_image, ignore_errors=True)
        if made_images_dir:
            shutil.rmtree(images_dir, ignore_errors=True)
        time.sleep(0.5)
        leftovers = [f"{name} ({pid})" for name, pid in pids.items() if _alive(pid)]
        leftovers += _user_processes(USER, [workdir])
        for pid in pids.values():
            if _alive(pid):
                os.kill(pid, 9)
        shutil.rmtree(workdir, ignore_errors=True)
        assert down.returncode == 0, down.stderr
        assert len(pids) == 3, pids
        assert not leftovers, f"processes of the demo cluster still run: {leftovers}"


def test_start_brings_up_users_own_cluster(binder, testbed):
    assert binder.startup_seconds < 60
    conf = os.path.join(binder.demo_dir, "etc", "slurm.conf")
    text = Path(conf).read_text()
    assert f"SlurmUser={USER}" in text and f"SlurmdUser={USER}" in text
    assert f"AuthInfo=socket={binder.demo_dir}/run/munge.socket" in text
    ports = {line.split("=")[0]: int(line.split("=")[1]) for line in text.splitlines()
             if line.startswith(("SlurmctldPort=", "SlurmdPort="))}
    assert not {6817, 6818} & set(ports.values()), ports
    daemons = {name: _user_processes(USER, [f"/usr/sbin/{name}"]) for name in ("munged", "slurmctld", "slurmd")}
    assert all(daemons.values()), daemons

    info = binder.as_user(["sinfo", "--noheader", "--format=%P %a %T %G"])
    assert info.returncode == 0, info.stderr
    lines = info.stdout.split("\n")
    assert any(line.startswith("cpu* up idle") for line in lines), info.stdout
    assert any(line.startswith("gpu up") and "gpu:" in line for line in lines), info.stdout

    out = os.path.join(binder.workdir, "work", "check.out")
    name = "binder-check-" + uuid.uuid4().hex[:8]
    sub = binder.as_user(["sbatch", "--parsable", f"--job-name={name}", f"--output={out}", "--partition=gpu",
                          "--gres=gpu:1", "--wrap",
                          "id -un; echo gpus=$CUDA_VISIBLE_DEVICES; cat /proc/sys/user/max_user_namespaces"])
    assert sub.returncode == 0, sub.stderr
    job_id = sub.stdout.strip().split(";")[0]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = binder.as_user(["squeue", "--noheader", "--states=all", f"--jobs={job_id}", "--format=%T"]).stdout
        if state.strip() == "COMPLETED":
            break
        time.sleep(0.5)
    assert state.strip() == "COMPLETED", state
    assert Path(out).read_text().split() == [USER, "gpus=0", "0"]
    # The testbed's own cluster never saw that job.
    testbed_jobs = subprocess.run(["squeue", "--noheader", "--states=all", f"--name={name}", "--format=%i"],
                                  capture_output=True, text=True, timeout=60)
    assert testbed_jobs.returncode == 0 and testbed_jobs.stdout.strip() == ""


def test_runtime_reports_host_fallback(binder):
    r = binder.api("GET", "images")
    assert r.status_code == 200, r.text
    data = r.json()
    runtime = data["runtime"]
    validate_schema(runtime, "Runtime")
    assert runtime["mode"] == "host" and runtime["configured"] == "auto" and runtime["containers"] is False
    assert runtime["message"] == HOST_MESSAGE
    assert "user namespace" in runtime["reason"], runtime
    ids = {img["id"]: img for img in data["images"]}
    assert ids["user:binder-env"]["title"] == "Binder environment (no container)"
    for name in ("hpc-cpu", "hpc-gpu"):
        assert os.path.isfile(os.path.join(binder.data_dir, "kernels", name, "kernel.json"))


def test_cell_job_runs_on_the_node(binder):
    code = ("import json, os, sys\n"
            "print(json.dumps({'job': os.environ.get('SLURM_JOB_ID'), 'container': os.environ.get('APPTAINER_CONTAINER'),\n"
            "                  'python': sys.executable, 'userns': open('/proc/sys/user/max_user_namespaces').read().strip()}))\n")
    r = binder.api("POST", "cells", {"code": code, "image": "user:binder-env", "time": "00:05:00", "memory": "512M"})
    assert r.status_code == 201, r.text + binder.log_tail()
    job_id = r.json()["job_id"]
    outputs, last, _ = wait_cell(binder, job_id, timeout=90)
    assert last["status"] == "ok", outputs
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    report = json.loads(text.strip().splitlines()[-1])
    assert report["job"] == job_id and report["container"] is None and report["userns"] == "0"
    assert report["python"].startswith(binder.venv)
    err = binder.api("GET", f"jobs/{job_id}/output?stream=stderr").json()["data"]
    assert "jupyter-hpc: runtime=host image=" in err and "starting container" not in err


def test_kernel_runs_as_job_on_the_node(binder):
    import websocket

    r = requests.post(binder.url("api/kernels"), json={"name": "hpc-cpu"}, headers=binder.headers(), timeout=120)
    assert r.status_code == 201, r.text
    kernel_id = r.json()["id"]
    try:
        session = uuid.uuid4().hex
        ws = websocket.create_connection(
            f"ws://127.0.0.1:{binder.port}/api/kernels/{kernel_id}/channels?session_id={session}",
            header=[f"Authorization: token {binder.token}"], timeout=60)
        msg_id = uuid.uuid4().hex
        ws.send(json.dumps({
            "header": {"msg_id": msg_id, "msg_type": "execute_request", "session": session, "username": USER,
                       "date": "", "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": "import os; print(os.environ.get('SLURM_JOB_ID'), "
                                "os.environ.get('APPTAINER_CONTAINER'), os.environ.get('SLURM_JOB_PARTITION'))",
                        "silent": False, "store_history": False, "user_expressions": {}, "allow_stdin": False},
        }))
        # Shell and iopub are separate channels: wait for the reply and for the idle status.
        out, reply, idle = "", None, False
        deadline = time.monotonic() + 60
        while (reply is None or not idle) and time.monotonic() < deadline:
            m = json.loads(ws.recv())
            if m.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = m["header"]["msg_type"]
            if kind == "stream":
                out += m["content"]["text"]
            elif kind == "execute_reply":
                reply = m["content"]
            elif kind == "status" and m["content"].get("execution_state") == "idle":
                idle = True
        ws.close()
        assert reply and reply["status"] == "ok", reply
        job, container, partition = out.split()
        assert job.isdigit() and container == "None" and partition == "cpu"
        jobs = binder.api("GET", "jobs").json()["jobs"]
        assert any(j["id"] == job and j["kind"] == "kernel" for j in jobs), jobs
    finally:
        requests.delete(binder.url(f"api/kernels/{kernel_id}"), headers=binder.headers(), timeout=60)


def test_service_through_the_proxy(binder):
    """A web UI as a job of carol's cluster, directly on the node, reached through the proxy."""
    site = os.path.join(binder.root_dir, "site")
    subprocess.run([RUNUSER, "-u", USER, "--", "mkdir", "-p", site], check=True, cwd="/")
    subprocess.run([RUNUSER, "-u", USER, "--", "tee", os.path.join(site, "index.html")], input="binder demo page\n",
                   text=True, capture_output=True, check=True, cwd="/")
    r = binder.api("POST", "services", {"image": "user:binder-env", "name": "demo-web", "time": "00:05:00",
                                        "command": ["python3", "-m", "http.server", "{port}", "--bind", "0.0.0.0",
                                                    "--directory", site]})
    assert r.status_code == 201, r.text + binder.log_tail()
    job_id = r.json()["job_id"]
    try:
        deadline = time.monotonic() + 90
        page = None
        while time.monotonic() < deadline:
            page = requests.get(binder.url(f"jupyter-hpc/proxy/{job_id}/"), headers=binder.headers(), timeout=30)
            if page.status_code == 200:
                break
            time.sleep(0.5)
        assert page is not None and page.status_code == 200 and page.text == "binder demo page\n", page.text[:300]
        err = binder.api("GET", f"jobs/{job_id}/output?stream=stderr").json()["data"]
        assert "jupyter-hpc: runtime=host" in err
    finally:
        assert binder.api("DELETE", f"services/{job_id}").status_code == 202
