"""Fixtures for kernel provisioner tests on the real testbed.

- ``kernelspecs``: HPC kernelspecs installed for alice with the real CLI
  (``runuser -u alice -- jupyter hpc kernelspec install ...``) into
  ``/home/alice/.local/share/jupyter/kernels``; removed afterwards.
- ``alice_server``: a real ``jupyter server`` running as alice (token in the
  environment variable ``JUPYTER_TOKEN``, never on its command line), with
  :class:`ServerClient` helpers for the REST API and the kernel websocket.
- :class:`KernelChannels`: one websocket to ``/api/kernels/<id>/channels``
  speaking the Jupyter messaging protocol (JSON frames with ``channel``).

Every job a test sees is recorded and cancelled at the end, so a failing test
leaves nothing in the queue.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import time
import uuid
from typing import Any, Dict, List, Optional, Tuple

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

ALICE = "alice"
KERNEL_DIR = "/home/alice/.local/share/jupyter/kernels"
CONNECTION_DIR = "/home/alice/.jupyter-hpc/kernels"
PREFIX = "jhpc-test-"


def venv_bin(tb: Dict[str, str], name: str) -> str:
    return os.path.join(tb.get("VENV", "/opt/jupyter-hpc/venv"), "bin", name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def install_kernelspec(tb: Dict[str, str], name: str, *args: str) -> Dict[str, Any]:
    """Install a kernelspec for alice through ``jupyter hpc kernelspec install``."""
    argv = ["runuser", "-u", ALICE, "--", venv_bin(tb, "jupyter"), "hpc", "kernelspec", "install",
            "--name", name, *args]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd="/",
                         env={**os.environ, "HOME": "/home/alice"})
    assert out.returncode == 0, f"kernelspec install failed: {out.stdout}{out.stderr}"
    with open(os.path.join(KERNEL_DIR, name, "kernel.json")) as f:
        return json.load(f)


@pytest.fixture(scope="session")
def kernelspecs(tb):
    image = tb["NOTEBOOK_SIF"]
    cpu_part, gpu_part = tb.get("CPU_PARTITION", "cpu"), tb.get("GPU_PARTITION", "gpu")
    broken_dir = f"/home/alice/{PREFIX}images"
    subprocess.run(["runuser", "-u", ALICE, "--", "mkdir", "-p", broken_dir], check=True, cwd="/")
    broken = os.path.join(broken_dir, "broken.sif")
    subprocess.run(["runuser", "-u", ALICE, "--", "sh", "-c", "echo 'not an image' > " + broken],
                   check=True, cwd="/")
    names = {
        "cpu": (PREFIX + "cpu", ["--image", image, "--partition", cpu_part, "--time", "00:15:00",
                                 "--mem", "512M", "--display-name", "Test kernel (CPU job)"]),
        "gpu": (PREFIX + "gpu", ["--image", image, "--partition", gpu_part, "--gpus", "1",
                                 "--time", "00:15:00", "--mem", "512M"]),
        "short": (PREFIX + "short", ["--image", image, "--partition", cpu_part, "--time", "1", "--mem", "512M"]),
        "missing": (PREFIX + "missing", ["--image", "/opt/jupyter-hpc/images/no-such-image.sif", "--no-check-image",
                                         "--partition", cpu_part, "--time", "00:05:00", "--mem", "256M"]),
        "broken": (PREFIX + "broken", ["--image", broken, "--partition", cpu_part, "--time", "00:05:00",
                                       "--mem", "256M"]),
        "nopartition": (PREFIX + "nopartition", ["--image", image, "--partition", "no-such-partition",
                                                 "--time", "00:05:00"]),
    }
    specs = {key: {"name": name, "spec": install_kernelspec(tb, name, *args)} for key, (name, args) in names.items()}
    yield specs
    for name, _ in names.values():
        shutil.rmtree(os.path.join(KERNEL_DIR, name), ignore_errors=True)
    shutil.rmtree(broken_dir, ignore_errors=True)


class KernelChannels:
    """A websocket to a kernel through jupyter_server."""

    def __init__(self, conn, kernel_id: str, session: str):
        self.conn = conn
        self.kernel_id = kernel_id
        self.session = session
        self.received: List[Dict[str, Any]] = []

    def _msg(self, msg_type: str, content: Dict[str, Any], channel: str) -> Dict[str, Any]:
        return {
            "header": {"msg_id": uuid.uuid4().hex, "msg_type": msg_type, "session": self.session,
                       "username": ALICE, "date": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime()),
                       "version": "5.3"},
            "parent_header": {},
            "metadata": {},
            "content": content,
            "channel": channel,
            "buffers": [],
        }

    async def send(self, msg_type: str, content: Dict[str, Any], channel: str = "shell") -> str:
        msg = self._msg(msg_type, content, channel)
        await self.conn.write_message(json.dumps(msg))
        return msg["header"]["msg_id"]

    async def recv(self, timeout: float) -> Dict[str, Any]:
        raw = await asyncio.wait_for(self.conn.read_message(), timeout)
        if raw is None:
            raise ConnectionError("kernel websocket closed")
        msg = json.loads(raw)
        self.received.append(msg)
        return msg

    async def wait_for(self, predicate, timeout: float) -> Dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise asyncio.TimeoutError(f"no matching message within {timeout} s")
            msg = await self.recv(left)
            if predicate(msg):
                return msg

    async def kernel_info(self, timeout: float = 60) -> Dict[str, Any]:
        msg_id = await self.send("kernel_info_request", {})
        reply = await self.wait_for(lambda m: m.get("parent_header", {}).get("msg_id") == msg_id
                                    and m["header"]["msg_type"] == "kernel_info_reply", timeout)
        return reply["content"]

    async def start_execute(self, code: str) -> str:
        return await self.send("execute_request", {"code": code, "silent": False, "store_history": False,
                                                   "user_expressions": {}, "allow_stdin": False,
                                                   "stop_on_error": True})

    async def finish_execute(self, msg_id: str, timeout: float = 60) -> Tuple[Dict[str, Any], str]:
        """Wait for the execute_reply and the idle status of ``msg_id``; returns (reply content, stdout)."""
        out: List[str] = []
        reply: Optional[Dict[str, Any]] = None
        idle = False
        deadline = time.monotonic() + timeout
        while reply is None or not idle:
            left = deadline - time.monotonic()
            if left <= 0:
                raise asyncio.TimeoutError(f"execution did not finish within {timeout} s")
            msg = await self.recv(left)
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            mtype = msg["header"]["msg_type"]
            if mtype == "stream" and msg["content"].get("name") == "stdout":
                out.append(msg["content"]["text"])
            elif mtype == "execute_reply":
                reply = msg["content"]
            elif mtype == "status" and msg["content"].get("execution_state") == "idle":
                idle = True
        return reply, "".join(out)

    async def execute(self, code: str, timeout: float = 60) -> Tuple[Dict[str, Any], str]:
        return await self.finish_execute(await self.start_execute(code), timeout)

    async def wait_busy(self, msg_id: str, timeout: float = 30) -> None:
        await self.wait_for(lambda m: m.get("parent_header", {}).get("msg_id") == msg_id
                            and m["header"]["msg_type"] == "status"
                            and m["content"].get("execution_state") == "busy", timeout)

    def close(self) -> None:
        self.conn.close()


class ServerClient:
    """REST + websocket access to alice's jupyter_server."""

    def __init__(self, port: int, token: str, log_path: str):
        self.port = port
        self.token = token
        self.log_path = log_path
        self.base = f"http://127.0.0.1:{port}"
        self.http = AsyncHTTPClient()
        self.job_ids: List[str] = []  # every kernel job seen, cancelled after the test

    def headers(self) -> Dict[str, str]:
        return {"Authorization": f"token {self.token}"}

    async def request(self, method: str, path: str, body: Optional[Dict[str, Any]] = None,
                      timeout: float = 300) -> Tuple[int, Any]:
        req = HTTPRequest(self.base + path, method=method, headers=self.headers(),
                          body=json.dumps(body) if body is not None else (b"" if method == "POST" else None),
                          request_timeout=timeout, allow_nonstandard_methods=True)
        try:
            resp = await self.http.fetch(req, raise_error=False)
        except HTTPClientError as e:  # pragma: no cover - raise_error=False
            resp = e.response
        text = resp.body.decode() if resp.body else ""
        try:
            data = json.loads(text) if text else None
        except ValueError:
            data = text
        return resp.code, data

    async def start_kernel(self, name: str, timeout: float = 300) -> Tuple[int, Any]:
        return await self.request("POST", "/api/kernels", {"name": name}, timeout=timeout)

    async def channels(self, kernel_id: str) -> KernelChannels:
        session = uuid.uuid4().hex
        url = f"ws://127.0.0.1:{self.port}/api/kernels/{kernel_id}/channels?session_id={session}"
        conn = await websocket_connect(HTTPRequest(url, headers=self.headers()))
        return KernelChannels(conn, kernel_id, session)

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""


def job_fields(job_id: str) -> Dict[str, str]:
    """``scontrol show job`` as a dict (``{}`` when Slurm no longer knows the job)."""
    out = subprocess.run(["scontrol", "show", "job", "--oneliner", str(job_id)], capture_output=True,
                         text=True, timeout=60)
    fields: Dict[str, str] = {}
    for token in out.stdout.split():
        key, sep, value = token.partition("=")
        if sep and key not in fields:
            fields[key] = value
    return fields


def job_state(job_id: str) -> str:
    return job_fields(job_id).get("JobState", "GONE")


@pytest.fixture
def alice_server(tb, kernelspecs, tmp_path):
    """jupyter_server as alice on a free port; yields a :class:`ServerClient`."""
    token = secrets.token_hex(24)
    port = free_port()
    log_path = str(tmp_path / "server.log")
    pw = pwd.getpwnam(ALICE)
    env = {
        "PATH": os.path.dirname(venv_bin(tb, "python")) + ":/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        "HOME": pw.pw_dir,
        "USER": ALICE,
        "LOGNAME": ALICE,
        "LANG": "C.UTF-8",
        "JUPYTER_TOKEN": token,
        "SLURM_CONF": tb.get("SLURM_CONF", "/etc/slurm/slurm.conf"),
    }
    argv = ["runuser", "-u", ALICE, "--", venv_bin(tb, "jupyter"), "server", "--no-browser",
            "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
            f"--ServerApp.root_dir={pw.pw_dir}", "--ServerApp.log_level=INFO",
            "--SlurmApptainerProvisioner.watcher_interval=1.0"]
    log = open(log_path, "w")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=pw.pw_dir)
    client = ServerClient(port, token, log_path)
    deadline = time.monotonic() + 60
    import urllib.request

    while True:
        if proc.poll() is not None:
            raise AssertionError(f"jupyter server exited: {client.log()[-3000:]}")
        try:
            req = urllib.request.Request(client.base + "/api/status", headers=client.headers())
            with urllib.request.urlopen(req, timeout=5) as resp:
                if resp.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            proc.terminate()
            raise AssertionError(f"jupyter server did not answer: {client.log()[-3000:]}")
        time.sleep(0.3)
    try:
        yield client
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
        for jid in client.job_ids:
            subprocess.run(["scancel", jid], capture_output=True, timeout=60)


def run_script_as(user: str, interpreter: List[str], script: str, args: Tuple[str, ...] = (),
                  timeout: float = 200, env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    """Run a Python/IPython ``script`` as ``user`` from a file in the user's home (removed after).

    ``interpreter``: e.g. ``[VENV/bin/python]`` or ``[VENV/bin/ipython, "--no-banner", "--colors=nocolor"]``.
    """
    pw = pwd.getpwnam(user)
    path = os.path.join(pw.pw_dir, f"jhpc-test-{secrets.token_hex(4)}.py")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with open(fd, "w") as f:
        f.write(script)
    os.chown(path, pw.pw_uid, pw.pw_gid)
    try:
        return subprocess.run(["runuser", "-u", user, "--", *interpreter, path, *args], capture_output=True,
                              text=True, timeout=timeout, cwd=pw.pw_dir,
                              env={**os.environ, "HOME": pw.pw_dir, **(env or {})})
    finally:
        os.unlink(path)


#: Starts the kernel ``argv[1]`` with jupyter_client (its provisioner), runs ``argv[2]``, prints its stdout.
KERNEL_SCRIPT = r'''
import sys
from jupyter_client.manager import start_new_kernel
km, kc = start_new_kernel(kernel_name=sys.argv[1], startup_timeout=120)
try:
    out = []
    kc.execute_interactive(sys.argv[2], output_hook=lambda m: out.append(m["content"].get("text", "")), timeout=60)
    print("".join(out), end="")
finally:
    kc.stop_channels()
    km.shutdown_kernel(now=True)
'''


def kernel_output(user: str, tb: Dict[str, str], kernel_name: str, code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a kernel of ``kernel_name`` that ``user`` starts with jupyter_client."""
    return run_script_as(user, [venv_bin(tb, "python")], KERNEL_SCRIPT, (kernel_name, code))


def ipython_output(user: str, tb: Dict[str, str], script: str, timeout: float = 200,
                   env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    """Run an IPython ``script`` (``get_ipython()`` available) as ``user``."""
    return run_script_as(user, [venv_bin(tb, "ipython"), "--no-banner", "--colors=nocolor"], script,
                         timeout=timeout, env=env)
