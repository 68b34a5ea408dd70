"""Helpers for the server-extension tests.

- :func:`openapi_spec` / :func:`validate_schema`: check JSON answers against the component
  schemas of ``docs/openapi.yaml`` with ``jsonschema`` (OpenAPI 3.0 ``nullable`` is turned into
  JSON-Schema ``null`` types).
- :class:`UserServer`: a real ``jupyter server`` started as a test user (``runuser``) from the
  testbed venv, with the token passed in the environment; ``api()``/``url()`` helpers.
- :func:`server_for`: start one per user and module (used by module-scoped fixtures).
"""

from __future__ import annotations

import copy
import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[2]
OPENAPI = REPO / "docs" / "openapi.yaml"


# -- schema -------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def openapi_spec() -> Dict[str, Any]:
    import yaml

    return yaml.safe_load(OPENAPI.read_text())


def _to_jsonschema(node: Any) -> Any:
    if isinstance(node, dict):
        out = {k: _to_jsonschema(v) for k, v in node.items() if k != "nullable"}
        if node.get("nullable"):
            if "type" in out:
                t = out["type"]
                out["type"] = [t, "null"] if isinstance(t, str) else list(t) + ["null"]
            elif "oneOf" in out:
                out["oneOf"] = list(out["oneOf"]) + [{"type": "null"}]
            if "enum" in out and None not in out["enum"]:
                out["enum"] = list(out["enum"]) + [None]
        return out
    if isinstance(node, list):
        return [_to_jsonschema(v) for v in node]
    return node


@lru_cache(maxsize=1)
def _root() -> Dict[str, Any]:
    spec = copy.deepcopy(openapi_spec())
    return {"components": _to_jsonschema(spec["components"])}


def validate_schema(data: Any, name: str) -> None:
    """Assert that ``data`` matches ``#/components/schemas/<name>`` (AssertionError otherwise)."""
    import jsonschema

    root = _root()
    schema = dict(root, **{"$ref": f"#/components/schemas/{name}"})
    try:
        jsonschema.validate(data, schema)
    except jsonschema.ValidationError as e:
        raise AssertionError(f"answer does not match schema {name}: {e.message} at {list(e.absolute_path)}") from None


# -- real servers -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class UserServer:
    """A jupyter server (with jupyter-hpc enabled) running as ``user``."""

    def __init__(self, user: str, venv: str, root_dir: Optional[str] = None, log_dir: str = "/tmp",
                 extra_args: Sequence[str] = ("--HPCExtension.proxy_cache_seconds=0",)):
        self.user = user
        self.venv = venv
        pw = pwd.getpwnam(user)
        self.home = pw.pw_dir
        self.root_dir = root_dir or pw.pw_dir
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.base_url = "/"
        self.log_path = os.path.join(log_dir, f"jhpc-server-{user}-{self.port}.log")
        self.proc: Optional[subprocess.Popen] = None
        self.extra_args = list(extra_args)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return f"{self.origin}{self.base_url}{path.lstrip('/')}"

    def environment(self) -> Dict[str, str]:
        """The server's environment (the token included)."""
        return {
            "PATH": f"{self.venv}/bin:/usr/local/bin:/usr/bin:/bin",
            "HOME": self.home,
            "USER": self.user,
            "LOGNAME": self.user,
            "LANG": "C.UTF-8",
            "JUPYTER_TOKEN": self.token,
        }

    def command(self) -> List[str]:
        """The ``jupyter server`` command line, run as the user."""
        return [
            shutil.which("runuser") or "/usr/sbin/runuser", "-u", self.user, "--",
            f"{self.venv}/bin/jupyter", "server",
            "--no-browser", "--ip=127.0.0.1", f"--port={self.port}", "--port-retries=0",
            f"--ServerApp.root_dir={self.root_dir}",
            "--ServerApp.jpserver_extensions={'jupyter_hpc': True}",
            "--HPCExtension.watch_interval=1",
        ] + self.extra_args

    def start(self, timeout: float = 60) -> "UserServer":
        """Start :meth:`command` and wait until jupyter-hpc's API answers."""
        log = open(self.log_path, "wb")
        os.chmod(self.log_path, 0o600)
        self.proc = subprocess.Popen(self.command(), env=self.environment(), stdout=log, stderr=subprocess.STDOUT,
                                     cwd="/", start_new_session=True)
        deadline = time.monotonic() + timeout
        import requests

        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server for {self.user} exited: {self.log_tail()}")
            try:
                r = requests.get(self.url("jupyter-hpc/api/partitions"), headers=self.headers(), timeout=5)
                if r.status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"server for {self.user} did not answer: {self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def headers(self, token: Optional[str] = None) -> Dict[str, str]:
        return {"Authorization": f"token {token or self.token}"}

    def api(self, method: str, path: str, body: Any = None, token: Optional[str] = None, **kwargs):
        import requests

        headers = self.headers(token)
        data = None
        if body is not None:
            data = body if isinstance(body, (str, bytes)) else json.dumps(body)
            headers["Content-Type"] = "application/json"
        return requests.request(method, self.url("jupyter-hpc/api/" + path.lstrip("/")), data=data,
                                headers=headers, timeout=kwargs.pop("timeout", 60), **kwargs)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        # runuser forwards SIGTERM to the server.
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def server_for(user: str, venv: str, **kwargs) -> UserServer:
    return UserServer(user, venv, **kwargs).start()


def big_body(mb: int) -> bytes:
    """What the service's ``/big?mb=N`` answers."""
    return b"".join(b"%08d" % i * (1024 * 1024 // 8) for i in range(mb))


def wait_cell(server: UserServer, job_id: str, timeout: float = 120, since: int = 0):
    """Poll GET cells/{id} until done; returns (all outputs, last answer, answers)."""
    outputs = []
    answers = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = server.api("GET", f"cells/{job_id}?since={since}")
        assert r.status_code == 200, r.text
        data = r.json()
        validate_schema(data, "CellState")
        answers.append(data)
        outputs.extend(data["outputs"])
        since = data["next"]
        if data["done"]:
            return outputs, data, answers
        time.sleep(0.3)
    raise AssertionError(f"cell job {job_id} not done after {timeout}s; last answer {answers[-1:]}")


# -- a small web service (HTTP + websocket) run inside the image -----------------------------------

SERVICE_APP = r'''
import json, os, sys
from tornado import ioloop, web, websocket

port = int(sys.argv[1].split("=", 1)[1])


class Info(web.RequestHandler):
    def get(self, path):
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps({
            "path": self.request.path,
            "query": self.request.query,
            "base_url": os.environ.get("JUPYTER_HPC_BASE_URL"),
            "port_env": os.environ.get("PORT"),
            "authorization": self.request.headers.get("Authorization"),
            "cookie": self.request.headers.get("Cookie"),
            "prefix": self.request.headers.get("X-Forwarded-Prefix"),
            "peer": list(self.request.connection.context.address or ()),
        }))


class Big(web.RequestHandler):
    async def get(self):
        # MiB number i is "%08d" % i repeated: a piece out of place or overwritten shows
        mb = int(self.get_argument("mb", "1"))
        self.set_header("Content-Type", "application/octet-stream")
        self.set_header("Content-Length", str(mb * 1024 * 1024))
        for i in range(mb):
            self.write(b"%08d" % i * (1024 * 1024 // 8))
            await self.flush()


class Moved(web.RequestHandler):
    def get(self):
        self.redirect("/some/target?from=moved")


class Upload(web.RequestHandler):
    def post(self):
        import hashlib
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps({"size": len(self.request.body),
                               "sha256": hashlib.sha256(self.request.body).hexdigest()}))


class Echo(websocket.WebSocketHandler):
    def check_origin(self, origin):
        return True

    def on_message(self, message):
        self.write_message("echo:" + message)


app = web.Application([(r"/ws", Echo), (r"/big", Big), (r"/moved", Moved), (r"/upload", Upload), (r"(/.*)", Info)])
app.listen(port, address="0.0.0.0")
print("listening on", port, flush=True)
ioloop.IOLoop.current().start()
'''


def write_service_app(user: str) -> str:
    """Write :data:`SERVICE_APP` into the user's home (owned by the user); returns its path."""
    pw = pwd.getpwnam(user)
    d = os.path.join(pw.pw_dir, "jhpc-test-service")
    os.makedirs(d, mode=0o700, exist_ok=True)
    os.chown(d, pw.pw_uid, pw.pw_gid)
    path = os.path.join(d, "app.py")
    with open(path, "w") as f:
        f.write(SERVICE_APP)
    os.chown(path, pw.pw_uid, pw.pw_gid)
    os.chmod(path, 0o600)
    return path


def start_service(server: UserServer, image: str = "site:notebook.sif", timeout: float = 120) -> Dict[str, Any]:
    """Start the test service through the API and wait until the proxy reaches it."""
    import requests

    app = write_service_app(server.user)
    r = server.api("POST", "services", {"image": image, "command": ["python3", app, "--port={port}"],
                                        "name": "testweb", "time": "00:15:00", "memory": "1G"})
    assert r.status_code == 201, r.text
    service = r.json()
    validate_schema(service, "Service")
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = requests.get(server.url(f"jupyter-hpc/proxy/{service['job_id']}/ready"),
                            headers=server.headers(), timeout=30)
        if last.status_code == 200:
            return service
        time.sleep(0.5)
    raise AssertionError(f"service {service} not reachable: {last.status_code if last else None} "
                         f"{last.text[:300] if last else ''}")
