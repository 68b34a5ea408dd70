"""Other users: bob tries to read, cancel, proxy and attach to what alice runs.

alice has a running cell job, a service (web UI with HTTP and websocket), a kernel
started by the provisioner, a server spawned by the hub (with a kernel in it) and a
private image. bob tries every way in that the project offers - his own jupyter server's
REST API and proxy, his token on alice's server, the hub (API and proxy to her server),
the ``%%hpc`` magic, a kernelspec, and plain access on the node (files, kernel ports,
Slurm commands). Figure: successful cross-user accesses (must be 0).
"""

from __future__ import annotations

import json
import os
import pwd
import re
import subprocess
import threading
import time
import urllib.parse
from typing import Any, Callable, Dict

import pytest
import requests

from conftest import IMAGE
from reliability_support import (MAGIC_HARNESS, PROVISIONER_HARNESS, ensure_servers, hub_login, job_state,
                                 run_harness, scancel, user_token, ws_status)

pytestmark = [pytest.mark.timeout(600)]

SECRET = "alice-secret-7f3a"
KERNELSPEC = "jhrel-xuser"
ALICE_PRIVATE = "/home/alice/images/alice-private.sif"

BOB_ZMQ_CLIENT = """
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


def _kernel_job(kernel_id: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["squeue", "--noheader", "--user=alice", "--format=%i|%k"], capture_output=True,
                             text=True, timeout=60).stdout
        for line in out.splitlines():
            jid, _, comment = line.strip().partition("|")
            if f"kernel={kernel_id}" in comment:
                return jid
        time.sleep(0.5)
    raise AssertionError(f"no Slurm job for alice's kernel {kernel_id}")


@pytest.fixture(scope="module")
def alice_things(tb, hub, alice_srv):
    """alice's running cell job, service, provisioner kernel and hub server (started together)."""
    from kernel_fixtures import install_kernelspec
    from server_fixtures import start_service

    things: Dict[str, Any] = {}
    errors = []

    def hub_server():
        try:
            things["server_job"] = ensure_servers(hub, ["alice"])["alice"]
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(f"hub server: {e}")

    spawn = threading.Thread(target=hub_server)
    spawn.start()
    r = alice_srv.api("POST", "cells", {"code": f"print({SECRET!r}, flush=True)\nimport time\ntime.sleep(540)\n",
                                        "image": IMAGE, "time": "00:10:00", "memory": "256M"})
    assert r.status_code == 201, r.text
    things["cell"] = r.json()["job_id"]
    install_kernelspec(tb, KERNELSPEC, "--image", tb["NOTEBOOK_SIF"], "--partition", tb["CPU_PARTITION"],
                       "--time", "00:10:00", "--mem", "512M")
    r = alice_srv.api("GET", "partitions")  # warm the server before the kernel start
    r = requests.post(alice_srv.url("api/kernels"), json={"name": KERNELSPEC}, headers=alice_srv.headers(),
                      timeout=180)
    assert r.status_code == 201, r.text
    things["kernel_id"] = r.json()["id"]
    things["service"] = start_service(alice_srv)["job_id"]
    things["kernel"] = _kernel_job(things["kernel_id"])
    spawn.join(200)
    assert not errors, errors
    # a kernel inside alice's hub server
    r = hub.session.post(f"{hub.url}/user/alice/api/kernels", json={}, timeout=120)
    assert r.status_code == 201, r.text[:300]
    things["hub_kernel_id"] = r.json()["id"]
    deadline = time.monotonic() + 60
    while job_state(things["cell"]) != "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.5)
    yield things
    requests.delete(alice_srv.url(f"api/kernels/{things['kernel_id']}"), headers=alice_srv.headers(), timeout=60)
    hub.session.delete(f"{hub.url}/user/alice/api/kernels/{things['hub_kernel_id']}", timeout=60)
    scancel([things["cell"], things["service"], things["kernel"]])
    subprocess.run(["rm", "-rf", f"/home/alice/.local/share/jupyter/kernels/{KERNELSPEC}"], check=False)


#: tries that ended in an exception on bob's side (listed, so that a broken try is seen)
ERRORS = []


def attempt(figures, what: str, fn: Callable[[], bool]) -> None:
    """One cross-user try; ``fn`` returns True when bob got through."""
    try:
        ok = bool(fn())
    except Exception as e:  # noqa: BLE001 - an error on bob's side is not an access
        ok = False
        ERRORS.append(f"{what}: {type(e).__name__}: {str(e)[:200]}")
    figures.cross(what, ok)


def _ids(things):
    return {"cell": things["cell"], "service": things["service"], "kernel": things["kernel"],
            "server": things["server_job"]}


def _get(server, path, token=None, **kw):
    headers = server.headers(token) if token != "" else {}
    return requests.get(server.url(path), headers=headers, timeout=60, allow_redirects=False, **kw)


def _leaks(r: requests.Response) -> bool:
    return r.status_code == 200 and SECRET in r.text


def test_bob_through_his_own_server(alice_things, bob_srv, figures):
    for kind, jid in _ids(alice_things).items():
        for method, path in (("GET", f"jobs/{jid}"), ("GET", f"jobs/{jid}/stats"), ("GET", f"cells/{jid}"),
                             ("GET", f"services/{jid}")):
            attempt(figures, f"bob's server: {method} {path} ({kind})",
                    lambda: bob_srv.api(method, path).status_code == 200)
        for stream in ("stdout", "stderr"):
            attempt(figures, f"bob's server: GET jobs/{jid}/output?stream={stream} ({kind})",
                    lambda: (lambda r: r.status_code == 200 and bool(r.json().get("data")))(
                        bob_srv.api("GET", f"jobs/{jid}/output?stream={stream}")))
        for method, path in (("DELETE", f"jobs/{jid}"), ("DELETE", f"cells/{jid}"), ("DELETE", f"services/{jid}")):
            attempt(figures, f"bob's server: {method} {path} ({kind})",
                    lambda: bob_srv.api(method, path).status_code in (200, 202))
        attempt(figures, f"bob's server: proxy HTTP to job {jid} ({kind})",
                lambda: _get(bob_srv, f"jupyter-hpc/proxy/{jid}/x").status_code == 200)
        attempt(figures, f"bob's server: proxy websocket to job {jid} ({kind})",
                lambda: ws_status(f"ws://127.0.0.1:{bob_srv.port}/jupyter-hpc/proxy/{jid}/ws",
                                  [f"Authorization: token {bob_srv.token}"]) == 101)
    ids = set(_ids(alice_things).values())
    attempt(figures, "bob's server: GET jobs lists alice's jobs",
            lambda: bool(ids & {j["id"] for j in bob_srv.api("GET", "jobs").json()["jobs"]}))
    attempt(figures, "bob's server: GET services lists alice's service",
            lambda: bool(ids & {s["job_id"] for s in bob_srv.api("GET", "services").json()["services"]}))
    # alice's private image
    attempt(figures, "bob's server: GET images lists alice's private image",
            lambda: any(i["owner"] == "alice" or (i.get("path") or "").startswith("/home/alice")
                        for i in bob_srv.api("GET", "images").json()["images"]))
    for image in ("user:alice-private.sif", ALICE_PRIVATE, "/home/bob/../alice/images/alice-private.sif"):
        quoted = urllib.parse.quote(image, safe="")
        attempt(figures, f"bob's server: GET images/{image}",
                lambda: bob_srv.api("GET", f"images/{quoted}").status_code == 200)
        for path, body in (("cells", {"code": "print(1)", "image": image, "time": "00:05:00"}),
                           ("services", {"image": image, "command": ["python3", "-m", "http.server", "{port}"],
                                         "time": "00:05:00"})):
            def submit(path=path, body=body):
                r = bob_srv.api("POST", path, body)
                if r.status_code == 201:
                    scancel([r.json()["job_id"]])
                return r.status_code == 201
            attempt(figures, f"bob's server: POST {path} with image {image}", submit)
    for cwd in ("../alice", "/../alice", "/home/alice", "~alice"):
        def in_alice_home(cwd=cwd):
            r = bob_srv.api("POST", "cells", {"code": "print(1)", "image": IMAGE, "cwd": cwd, "time": "00:05:00"})
            if r.status_code == 201:
                scancel([r.json()["job_id"]])
            return r.status_code == 201
        attempt(figures, f"bob's server: POST cells with cwd {cwd}", in_alice_home)


def _forge(user: str, relpath: str, content: str = "", link: str = "") -> str:
    """Create a file (or symlink) under the user's home as that user; returns its path."""
    home = pwd.getpwnam(user).pw_dir
    path = os.path.join(home, relpath)
    subprocess.run(["runuser", "-u", user, "--", "mkdir", "-p", os.path.dirname(path)], check=True, cwd="/")
    if link:
        subprocess.run(["runuser", "-u", user, "--", "ln", "-sfn", link, path], check=True, cwd="/")
    else:
        subprocess.run(["runuser", "-u", user, "--", "tee", path], input=content, text=True, capture_output=True,
                       check=True, cwd="/")
    return path


def test_bob_with_forged_records(alice_things, bob_srv, figures):
    """bob plants records of alice's jobs in his own directories: his server still refuses."""
    svc, cell = alice_things["service"], alice_things["cell"]
    made = [
        _forge("bob", f".jupyter-hpc/services/{svc}.json", json.dumps({"job_id": svc, "name": "x", "image": IMAGE})),
        _forge("bob", ".jupyter-hpc/jobs/0123456789abcdef0123456789abcdef/outputs.jsonl", ""),
        _forge("bob", f".jupyter-hpc/jobs/by-id/{cell}", link="../0123456789abcdef0123456789abcdef"),
    ]
    try:
        attempt(figures, f"forged service record: proxy HTTP to {svc}",
                lambda: _get(bob_srv, f"jupyter-hpc/proxy/{svc}/x").status_code == 200)
        attempt(figures, f"forged service record: proxy websocket to {svc}",
                lambda: ws_status(f"ws://127.0.0.1:{bob_srv.port}/jupyter-hpc/proxy/{svc}/ws",
                                  [f"Authorization: token {bob_srv.token}"]) == 101)
        attempt(figures, f"forged service record: GET services/{svc} shows alice's node",
                lambda: (lambda r: r.status_code == 200 and r.json().get("node") is not None)(
                    bob_srv.api("GET", f"services/{svc}")))
        attempt(figures, f"forged service record: DELETE services/{svc}",
                lambda: bob_srv.api("DELETE", f"services/{svc}").status_code in (200, 202)
                and job_state(svc) != "RUNNING")
        attempt(figures, f"forged service record: GET jobs/{svc}/output",
                lambda: _leaks(bob_srv.api("GET", f"jobs/{svc}/output")))
        attempt(figures, f"forged cell link: GET cells/{cell}", lambda: _leaks(bob_srv.api("GET", f"cells/{cell}")))
        attempt(figures, f"forged cell link: DELETE cells/{cell}",
                lambda: bob_srv.api("DELETE", f"cells/{cell}").status_code == 202 and job_state(cell) != "RUNNING")
        attempt(figures, f"forged cell link: GET jobs/{cell}/output",
                lambda: _leaks(bob_srv.api("GET", f"jobs/{cell}/output")))
    finally:
        subprocess.run(["rm", "-rf", "/home/bob/.jupyter-hpc/services/" + f"{svc}.json",
                        "/home/bob/.jupyter-hpc/jobs/0123456789abcdef0123456789abcdef",
                        f"/home/bob/.jupyter-hpc/jobs/by-id/{cell}"], check=False)
    assert made


def test_bob_token_on_alice_server(alice_things, alice_srv, bob_srv, figures):
    cell, svc, kid = alice_things["cell"], alice_things["service"], alice_things["kernel_id"]
    for who, token in (("bob's token", bob_srv.token), ("no token", ""), ("a made-up token", "0" * 32)):
        for path in ("jupyter-hpc/api/jobs", f"jupyter-hpc/api/jobs/{cell}", f"jupyter-hpc/api/cells/{cell}",
                     f"jupyter-hpc/api/jobs/{cell}/output", "jupyter-hpc/api/services", "jupyter-hpc/api/images",
                     f"jupyter-hpc/proxy/{svc}/x", "api/kernels", f"api/kernels/{kid}"):
            attempt(figures, f"{who} on alice's server: GET {path}",
                    lambda: _get(alice_srv, path, token).status_code == 200)
        headers = {"Authorization": f"token {token}"} if token else {}
        for method, path, body in (("DELETE", f"jupyter-hpc/api/jobs/{cell}", None),
                                   ("DELETE", f"jupyter-hpc/api/services/{svc}", None),
                                   ("POST", "jupyter-hpc/api/cells", {"code": "print(1)", "image": IMAGE}),
                                   ("POST", f"api/kernels/{kid}/interrupt", {}),
                                   ("DELETE", f"api/kernels/{kid}", None)):
            def write(method=method, path=path, body=body, headers=headers):
                r = requests.request(method, alice_srv.url(path), json=body, headers=headers, timeout=60,
                                     allow_redirects=False)
                if r.status_code == 201 and path.endswith("cells"):
                    scancel([r.json()["job_id"]])
                return r.status_code in (200, 201, 202, 204)
            attempt(figures, f"{who} on alice's server: {method} {path}", write)
        ws_headers = [f"Authorization: token {token}"] if token else []
        for path in (f"jupyter-hpc/proxy/{svc}/ws", f"api/kernels/{kid}/channels"):
            attempt(figures, f"{who} on alice's server: websocket {path}",
                    lambda: ws_status(f"ws://127.0.0.1:{alice_srv.port}/{path}", ws_headers) == 101)


def test_bob_through_the_hub(alice_things, hub, figures):
    token = user_token(hub, "bob")
    auth = {"Authorization": f"token {token}"}
    kid = alice_things["hub_kernel_id"]
    for method, path in (("GET", "/users/alice"), ("GET", "/users/alice/server/progress"),
                         ("POST", "/users/alice/server"), ("DELETE", "/users/alice/server"),
                         ("POST", "/users/alice/tokens"), ("GET", "/users/alice/tokens")):
        attempt(figures, f"bob's hub token: {method} /hub/api{path}",
                lambda: requests.request(method, hub.api_url + path, headers=auth, json={}, timeout=60,
                                         allow_redirects=False).status_code in (200, 201, 202, 204))
    for method, path in (("GET", "api/status"), ("GET", "api/kernels"), ("POST", "api/kernels"),
                         ("GET", f"api/kernels/{kid}"), ("DELETE", f"api/kernels/{kid}"),
                         ("GET", "jupyter-hpc/api/jobs"), ("POST", "api/terminals"), ("GET", "api/contents")):
        attempt(figures, f"bob's hub token: {method} /user/alice/{path}",
                lambda: requests.request(method, f"{hub.url}/user/alice/{path}", headers=auth, json={},
                                         timeout=60, allow_redirects=False).status_code in (200, 201, 204))
    for path in (f"api/kernels/{kid}/channels", "terminals/websocket/1"):
        attempt(figures, f"bob's hub token: websocket /user/alice/{path}",
                lambda: ws_status(f"ws://127.0.0.1:{hub.port}/user/alice/{path}", [f"Authorization: token {token}"])
                == 101)
    # bob's browser session, following every redirect (hub login, OAuth)
    session, _ = hub_login(hub, "bob")
    for path in ("api/status", "lab", "jupyter-hpc/api/jobs"):
        def browse(path=path):
            r = session.get(f"{hub.url}/user/alice/{path}", timeout=60)
            return r.status_code == 200 and "/user/alice/" in r.url and "bob" not in r.url
        attempt(figures, f"bob's browser session: GET /user/alice/{path}", browse)
    # alice's server still answers her (through the admin's access)
    assert hub.server_get("alice", "api/status").status_code == 200


def test_bob_on_the_node(alice_things, tb, figures, run_as):
    """Files, kernel ports and Slurm commands, as bob on the (single) node."""
    home = "/home/alice"
    link = f"{home}/.jupyter-hpc/jobs/by-id/{alice_things['cell']}"
    cell_dir = os.path.normpath(os.path.join(os.path.dirname(link), os.readlink(link)))
    targets = [f"{home}/images/alice-private.sif", f"{home}/.jupyter-hpc/services/{alice_things['service']}.out",
               f"{home}/.jupyter-hpc/kernels/hpc-kernel-{alice_things['kernel_id']}.json",
               f"{home}/.jupyter-hpc/servers/jupyterhub-server-{alice_things['server_job']}.log"]
    targets += [os.path.join(cell_dir, name) for name in ("outputs.jsonl", "slurm.out", "code.py")]
    for path in targets:
        attempt(figures, f"bob on the node: read {path}",
                lambda: run_as("bob", ["cat", path], timeout=30).returncode == 0)
    for path in (f"{home}/images", f"{home}/.jupyter-hpc/jobs"):
        attempt(figures, f"bob on the node: list {path}",
                lambda: run_as("bob", ["ls", path], timeout=30).returncode == 0)
    # the kernel's ports are no secret, its key is: bob's messages are ignored
    with open(f"{home}/.jupyter-hpc/kernels/hpc-kernel-{alice_things['kernel_id']}.json") as f:
        conn = json.load(f)
    ports = {p: conn[p] for p in ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")}
    attempt(figures, "bob on the node: talk to alice's kernel without its key",
            lambda: run_as("bob", [tb["PYTHON"], "-c", BOB_ZMQ_CLIENT, tb["SLURM_NODE"], json.dumps(ports)],
                           timeout=60).stdout.strip() != "no reply")
    for kind, jid in _ids(alice_things).items():
        attempt(figures, f"bob on the node: scancel {jid} ({kind})",
                lambda: run_as("bob", ["scancel", jid], timeout=60).returncode == 0 and job_state(jid) != "RUNNING")
    svc = alice_things["service"]
    attempt(figures, f"bob on the node: point alice's service {svc} at another port (scontrol update Comment)",
            lambda: run_as("bob", ["scontrol", "update", f"JobId={svc}",
                                   "Comment=jupyter-hpc:kind=service,host=localhost,port=22"], timeout=60).returncode
            == 0)


def test_bob_magic_and_kernelspec(alice_things, tb, figures, user_tmpdir):
    cell = alice_things["cell"]
    payload = [{"kind": "raw", "line": f"output {cell}"}, {"kind": "raw", "line": f"cancel {cell}"},
               {"kind": "raw", "line": "jobs"},
               {"kind": "raw", "line": f"--image={ALICE_PRIVATE} --time=00:05:00", "code": "print(1)"},
               {"kind": "raw", "line": "--image=user:alice-private.sif --time=00:05:00", "code": "print(1)"}]
    results = run_harness("bob", user_tmpdir("bob"), MAGIC_HARNESS, payload,
                          argv0=[f"{tb['VENV']}/bin/ipython", "--no-banner", "--colors=nocolor", "--quick"])
    texts = [r["text"] for r in results]
    figures.cross(f"bob's %hpc output {cell}", SECRET in texts[0])
    figures.cross(f"bob's %hpc cancel {cell}", "cancel requested" in texts[1] or job_state(cell) != "RUNNING")
    figures.cross("bob's %hpc jobs lists alice's jobs", any(j in texts[2] for j in _ids(alice_things).values()))
    for text, image in zip(texts[3:], (ALICE_PRIVATE, "user:alice-private.sif")):
        m = re.search(r"Submitted cell job (\d+)", text)
        if m:
            scancel([m.group(1)])
        figures.cross(f"bob's %%hpc with image {image}", bool(m))
    work = user_tmpdir("bob")
    base = {"partition": tb["CPU_PARTITION"], "time": "00:05:00", "memory": "256M"}
    payload = [{"kind": "metadata", "config": dict(base, image=image)}
               for image in (ALICE_PRIVATE, "user:alice-private.sif", "/home/bob/../alice/images/alice-private.sif")]
    results = run_harness("bob", work, PROVISIONER_HARNESS, payload, argv0=[tb["PYTHON"]],
                          extra_env={"JUPYTER_PATH": os.path.join(work, "share", "jupyter"),
                                     "JUPYTER_RUNTIME_DIR": os.path.join(work, "runtime")})
    for case, res in zip(payload, results):
        figures.cross(f"bob's kernelspec with image {case['config']['image']}", res["started"])


def test_alice_still_has_everything(alice_things, alice_srv, hub, figures):
    """After all of bob's tries alice's jobs run, her service answers her, her kernel too."""
    for kind, jid in _ids(alice_things).items():
        assert job_state(jid) == "RUNNING", (kind, jid, job_state(jid))
    r = requests.get(alice_srv.url(f"jupyter-hpc/proxy/{alice_things['service']}/x"), headers=alice_srv.headers(),
                     timeout=60)
    assert r.status_code == 200, r.text[:300]
    # the websocket checks above can succeed: alice's own token opens both
    own = [f"Authorization: token {alice_srv.token}"]
    assert ws_status(f"ws://127.0.0.1:{alice_srv.port}/jupyter-hpc/proxy/{alice_things['service']}/ws", own) == 101
    assert ws_status(f"ws://127.0.0.1:{alice_srv.port}/api/kernels/{alice_things['kernel_id']}/channels", own) == 101
    comment = subprocess.run(["squeue", "--noheader", "-j", alice_things["service"], "--format=%k"],
                             capture_output=True, text=True, timeout=60).stdout
    # bob's tries to re-point alice's service (e.g. at sshd on port 22) left its registration as it was
    ports = re.findall(r"\bport=(\d+)\b", comment)
    assert len(ports) == 1 and ports[0] != "22" and "host=localhost" not in comment, comment
    r = alice_srv.api("GET", f"cells/{alice_things['cell']}")
    assert r.status_code == 200 and SECRET in json.dumps(r.json()["outputs"]), r.text[:500]
    assert hub.server("alice")["ready"]
    assert figures.cross_succeeded == 0, figures.cross_failures
    assert not ERRORS, ERRORS
