"""Sharing a service's web UI through JupyterHub, on the real testbed.

A real JupyterHub 6 (with configurable-http-proxy) runs the ``jupyter-hpc-share`` managed service
(as ``nobody``) and starts alice's single-user server (jupyterhub-singleuser with the jupyter-hpc
server extension, from the testbed venv). alice starts two real service jobs (a tornado app with
HTTP, upload, download and websocket, inside the real notebook image) and shares one with bob.
bob and carol log in to the hub with their own passwords, as a browser would (OAuth to the service).

Checked: bob reaches the shared service over HTTP (upload/download) and websocket; he reaches
neither alice's server nor her other service nor a job of hers that registered a port as a
notebook server; carol, to whom nothing is shared, never gets through; a group share lets bob in
and not carol; after revoke and after the job ends bob gets 403/404 (and his open websocket is
closed); every visit is logged with the user name. A server started without JupyterHub reports
sharing as unavailable.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import subprocess
import time

import pytest
import requests
import websocket

from hub_fixtures import HubProcess, free_port
from server_fixtures import server_for, validate_schema, write_service_app

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]

SHARE = "jupyter-hpc-share"
PREFIX = f"/services/{SHARE}/"

SHARE_HUB_CONFIG = r'''
venv = "{venv}"
c.JupyterHub.spawner_class = "localprocess"
c.Spawner.cmd = [venv + "/bin/jupyterhub-singleuser"]
c.Spawner.args = ["--ServerApp.jpserver_extensions={{'jupyter_hpc': True}}", "--HPCExtension.watch_interval=1",
                  "--HPCExtension.proxy_cache_seconds=0"]
c.Spawner.environment = {{
    "JUPYTER_HPC_SHARE_URL": "http://127.0.0.1:{share_port}/services/jupyter-hpc-share/",
    "PATH": venv + "/bin:/usr/local/bin:/usr/bin:/bin",
}}
c.JupyterHub.services.append({{
    "name": "jupyter-hpc-share",
    "url": "http://127.0.0.1:{share_port}",
    "command": [venv + "/bin/python", "-m", "jupyter_hpc.share", "--ShareService.sweep_interval=2",
                "--ShareService.target_cache_seconds=1", "--ShareService.group_cache_seconds=1"],
    "user": "nobody",
    "cwd": "/",
    "oauth_no_confirm": True,
}})
c.JupyterHub.load_roles.extend([
    # single-user servers register shares with their own token
    {{"name": "server", "scopes": ["users:activity!user", "access:servers!server",
                                  "access:services!service=jupyter-hpc-share"]}},
    {{"name": "jupyter-hpc-share", "scopes": ["read:users:name", "read:groups"], "services": ["jupyter-hpc-share"]}},
    {{"name": "test-share-tokens", "scopes": ["tokens"], "services": ["test-admin"]}},
])
c.JupyterHub.extra_user_scopes = {{"access:services!service=jupyter-hpc-share"}}
c.JupyterHub.load_groups = {{"team": {{"users": ["bob"]}}}}
'''


@pytest.fixture(scope="module")
def hub(testbed, tmp_path_factory):
    share_port = free_port()
    h = HubProcess(str(tmp_path_factory.mktemp("sharehub")), poll_interval=10,
                   spawner_config=SHARE_HUB_CONFIG.format(venv=testbed["VENV"], share_port=share_port))
    h.start()
    try:
        r = h.spawn("alice")
        assert r.status_code in (201, 202), r.text
        h.wait_ready("alice", timeout=90)
        yield h
    finally:
        try:
            if h.server("alice") is not None:
                h.stop_server("alice")
        except Exception as e:  # noqa: BLE001 - teardown goes on
            print(f"teardown: {e}")
        h.stop()


def ext(hub, method, path, **kw):
    """alice's jupyter-hpc REST API through the hub (admin token with access to her server)."""
    kw.setdefault("timeout", 60)
    return hub.session.request(method, f"{hub.url}/user/alice/jupyter-hpc/api/{path}", **kw)


def start_service(hub, name):
    app = write_service_app("alice")
    r = ext(hub, "POST", "services", json={"image": "site:notebook.sif", "command": ["python3", app, "--port={port}"],
                                           "name": name, "time": "00:15:00", "memory": "1G"})
    assert r.status_code == 201, r.text
    return r.json()["job_id"]


def wait_ready(hub, job_id, timeout=120):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = hub.session.get(f"{hub.url}/user/alice/jupyter-hpc/proxy/{job_id}/ready", timeout=30)
        if last.status_code == 200:
            return
        time.sleep(0.5)
    raise AssertionError(f"service {job_id} not reachable: {last.status_code if last else None}")


@pytest.fixture(scope="module")
def jobs(hub, testbed):
    """Two services of alice, a job of alice that registered a port like a notebook server, a job of bob."""
    ids = {"shared": start_service(hub, "shared-ui"), "other": start_service(hub, "private-ui")}
    port = free_port()
    pw = pwd.getpwnam("alice")
    app = write_service_app("alice")
    node = testbed["SLURM_NODE"]
    out = subprocess.run(
        ["runuser", "-u", "alice", "--", "sbatch", "--parsable", "--chdir=/tmp", "--output=/dev/null",
         "--time=10", "--job-name=jupyterhub", f"--comment=jupyter-hpc:kind=server,host={node},port={port}",
         f"--wrap={testbed['VENV']}/bin/python {app} --port={port}"],
        capture_output=True, text=True, check=True, cwd="/",
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": pw.pw_dir})
    ids["server"] = out.stdout.strip().split(";")[0]
    out = subprocess.run(["runuser", "-u", "bob", "--", "sbatch", "--parsable", "--chdir=/tmp", "--output=/dev/null",
                          "--time=10", "--wrap=sleep 300"], capture_output=True, text=True, check=True, cwd="/")
    ids["bob"] = out.stdout.strip().split(";")[0]
    try:
        wait_ready(hub, ids["shared"])
        wait_ready(hub, ids["other"])
        yield ids
    finally:
        subprocess.run(["scancel", *ids.values()], capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def bob(hub):
    return hub.login("bob")[0]


@pytest.fixture(scope="module")
def carol(hub):
    return hub.login("carol")[0]


def share_url(hub, owner, job_id, path=""):
    return f"{hub.url}{PREFIX}{owner}/{job_id}/{path}"


def visit(session, url, **kw):
    """GET as a browser does (following the OAuth redirects through the hub)."""
    kw.setdefault("timeout", 60)
    return session.get(url, **kw)


def ws_status(hub, session, owner, job_id, path="ws", token=None):
    """(status, connection): 101 and an open connection when the handshake succeeded."""
    url = f"ws://127.0.0.1:{hub.port}{PREFIX}{owner}/{job_id}/{path}"
    cookies = "; ".join(f"{c.name}={c.value}" for c in session.cookies
                        if (PREFIX.startswith(c.path) or c.path.startswith(PREFIX.rstrip("/")))) if session else ""
    headers = [f"Authorization: token {token}"] if token else []
    try:
        conn = websocket.create_connection(url, cookie=cookies or None, header=headers, timeout=30)
    except websocket.WebSocketBadStatusException as e:
        return e.status_code, None
    return 101, conn


def user_token(hub, name):
    r = hub.api("POST", f"/users/{name}/tokens", json={"scopes": [f"access:services!service={SHARE}"],
                                                         "note": "test-share", "expires_in": 600})
    assert r.status_code == 201, r.text
    return r.json()["token"]


def share_api(hub, method, path, token, **kw):
    kw.setdefault("timeout", 60)
    return requests.request(method, f"{hub.url}{PREFIX}api/{path}", headers={"Authorization": f"token {token}"},
                            **kw)


def test_sharing_available_under_the_hub(hub):
    r = ext(hub, "GET", "sharing?fresh=1")
    assert r.status_code == 200, r.text
    validate_schema(r.json(), "Sharing")
    assert r.json()["available"] is True and r.json()["service_url"] == PREFIX


def test_share_with_bob_http_upload_download_and_websocket(hub, jobs, bob):
    sid = jobs["shared"]
    r = ext(hub, "GET", f"services/{sid}/shares")
    assert r.status_code == 200 and r.json()["shared"] is False, r.text
    r = ext(hub, "PUT", f"services/{sid}/shares", json={"users": ["bob"]})
    assert r.status_code == 200, r.text
    share = r.json()
    validate_schema(share, "Share")
    assert share["shared"] and share["users"] == ["bob"] and share["url"] == f"{PREFIX}alice/{sid}/"
    r = ext(hub, "GET", "shares")
    assert r.status_code == 200 and [s["job_id"] for s in r.json()["shares"]] == [sid]

    # bob, logged in to the hub with his own password, opens the link like a browser
    r = visit(bob, share_url(hub, "alice", sid, "some/page?x=1&token=stolen"))
    assert r.status_code == 200, (r.status_code, r.url, r.text[:300])
    info = r.json()
    assert info["path"] == "/some/page" and info["query"] == "x=1"  # a token in the URL is not passed on
    assert info["authorization"] is None
    assert not info["cookie"] or not re.search(r"jupyterhub|service-|_xsrf", info["cookie"]), info["cookie"]
    assert info["prefix"] == f"{PREFIX}alice/{sid}"
    # download and upload through the share
    r = visit(bob, share_url(hub, "alice", sid, "big?mb=20"))
    assert r.status_code == 200 and len(r.content) == 20 * 1024 * 1024
    body = os.urandom(8 * 1024 * 1024)
    r = bob.post(share_url(hub, "alice", sid, "upload"), data=body, timeout=60,
                 headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 200, r.text[:300]
    assert r.json() == {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    # websocket with bob's service login
    status, conn = ws_status(hub, bob, "alice", sid)
    assert status == 101
    conn.send("hello")
    assert conn.recv() == "echo:hello"
    conn.close()
    # the hub's page of the service lists it for bob
    r = visit(bob, f"{hub.url}{PREFIX}")
    assert r.status_code == 200 and f"alice/{sid}/" in r.text


def test_bob_reaches_nothing_else_of_alice(hub, jobs, bob):
    sid = jobs["shared"]
    # alice's notebook server, its files and its proxy
    for path in ("user/alice/api/contents", "user/alice/lab", f"user/alice/jupyter-hpc/proxy/{sid}/",
                 "user/alice/jupyter-hpc/api/jobs"):
        r = visit(bob, f"{hub.url}/{path}", allow_redirects=True)
        assert r.status_code in (403, 404), (path, r.status_code, r.url)
    # her other service, a job that registered a port like a notebook server, made-up targets
    for job_id in (jobs["other"], jobs["server"], jobs["bob"], "999999999"):
        assert visit(bob, share_url(hub, "alice", job_id, "x")).status_code == 404, job_id
        assert ws_status(hub, bob, "alice", job_id)[0] == 404, job_id
    for bad in ("alice/1;id/", "alice/..%2F..%2Fhub/", "Alice/1/", "-alice/1/", "bob/" + jobs["bob"] + "/"):
        r = visit(bob, f"{hub.url}{PREFIX}{bad}")
        assert r.status_code in (403, 404), (bad, r.status_code)
    # the share under another owner's name does not exist
    assert visit(bob, share_url(hub, "carol", sid, "x")).status_code == 404
    # no login: a browser is sent to the hub, a websocket is refused
    r = requests.get(share_url(hub, "alice", sid, "x"), allow_redirects=False, timeout=30)
    assert r.status_code == 302 and "/hub/api/oauth2/authorize" in r.headers["Location"]
    assert ws_status(hub, None, "alice", sid)[0] == 403


def test_share_api_checks_ownership_and_names(hub, jobs):
    alice_token = user_token(hub, "alice")
    # the share service itself re-checks with Slurm and the hub
    r = share_api(hub, "PUT", f"shares/{jobs['bob']}", alice_token, json={"users": ["carol"]})
    assert r.status_code == 403, r.text
    r = share_api(hub, "PUT", f"shares/{jobs['server']}", alice_token, json={"users": ["bob"]})
    assert r.status_code == 409 and "not a jupyter-hpc service" in r.json()["message"], r.text
    r = share_api(hub, "PUT", f"shares/{jobs['other']}", alice_token, json={"users": ["nosuchuser"]})
    assert r.status_code == 400 and r.json()["field"] == "users", r.text
    r = share_api(hub, "PUT", f"shares/{jobs['other']}", alice_token, json={"groups": ["nosuchgroup"]})
    assert r.status_code == 400 and r.json()["field"] == "groups", r.text
    r = share_api(hub, "PUT", f"shares/{jobs['other']}", alice_token, json={"users": ["bob;id"]})
    assert r.status_code == 400, r.text
    assert share_api(hub, "GET", "shares", "not-a-token").status_code == 403
    # through alice's server: validation and unknown services
    r = ext(hub, "PUT", f"services/{jobs['shared']}/shares", json={"users": ["../bob"]})
    assert r.status_code == 400 and r.json()["field"] == "users"
    r = ext(hub, "PUT", f"services/{jobs['server']}/shares", json={"users": ["bob"]})
    assert r.status_code == 404  # not one of the services this server started
    # carol cannot change or see alice's share with her own token
    carol_token = user_token(hub, "carol")
    r = share_api(hub, "PUT", f"shares/{jobs['shared']}", carol_token, json={"users": ["carol"]})
    assert r.status_code == 403, r.text
    r = share_api(hub, "DELETE", f"shares/{jobs['shared']}", carol_token)
    assert r.status_code == 404
    r = share_api(hub, "GET", "shares", carol_token)
    assert r.status_code == 200 and r.json() == {"shares": [], "shared_with_me": []}


def test_carol_never_gets_through(hub, jobs, carol):
    sid = jobs["shared"]
    r = visit(carol, share_url(hub, "alice", sid, "x"))
    assert r.status_code == 403, (r.status_code, r.text[:200])
    assert ws_status(hub, carol, "alice", sid)[0] == 403
    assert visit(carol, share_url(hub, "alice", jobs["other"], "x")).status_code == 404
    assert carol.post(share_url(hub, "alice", sid, "upload"), data=b"x", timeout=30).status_code == 403


def test_group_share(hub, jobs, bob, carol):
    sid = jobs["shared"]
    r = ext(hub, "PUT", f"services/{sid}/shares", json={"groups": ["team"]})
    assert r.status_code == 200 and r.json()["users"] == [] and r.json()["groups"] == ["team"], r.text
    assert visit(bob, share_url(hub, "alice", sid, "x")).status_code == 200  # bob is in "team"
    assert visit(carol, share_url(hub, "alice", sid, "x")).status_code == 403
    assert ws_status(hub, carol, "alice", sid)[0] == 403


def test_revoke(hub, jobs, bob):
    sid = jobs["shared"]
    r = ext(hub, "PUT", f"services/{sid}/shares", json={"users": ["bob"]})
    assert r.status_code == 200
    status, conn = ws_status(hub, bob, "alice", sid)
    assert status == 101
    r = ext(hub, "DELETE", f"services/{sid}/shares")
    assert r.status_code == 200 and r.json()["shared"] is False, r.text
    assert visit(bob, share_url(hub, "alice", sid, "x")).status_code == 404
    assert ws_status(hub, bob, "alice", sid)[0] == 404
    # the websocket bob had open is closed by the revoke
    conn.settimeout(10)
    with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
        conn.send("still there?")
        conn.recv()
        conn.recv()
    assert ext(hub, "DELETE", f"services/{sid}/shares").status_code == 404


def test_share_ends_with_the_job(hub, jobs, bob, wait_job):
    sid = jobs["other"]
    r = ext(hub, "PUT", f"services/{sid}/shares", json={"users": ["bob"]})
    assert r.status_code == 200, r.text
    assert visit(bob, share_url(hub, "alice", sid, "x")).status_code == 200
    subprocess.run(["scancel", sid], check=True, timeout=60)  # the job ends (not through the API)
    wait_job(sid, timeout=60)
    deadline = time.monotonic() + 15
    codes = []
    while time.monotonic() < deadline:
        codes.append(visit(bob, share_url(hub, "alice", sid, "x")).status_code)
        if codes[-1] == 404:
            break
        time.sleep(0.5)
    assert codes[-1] == 404, codes
    time.sleep(3)  # one sweep
    r = ext(hub, "GET", "shares")
    assert sid not in [s["job_id"] for s in r.json()["shares"]]
    r = ext(hub, "PUT", f"services/{sid}/shares", json={"users": ["bob"]})
    assert r.status_code in (404, 409), r.text


def test_every_visit_is_logged_with_the_user(hub, jobs):
    log = open(hub.log_path, errors="replace").read()
    sid = jobs["shared"]
    assert re.search(rf"share access: user=bob owner=alice job={sid} GET {re.escape(PREFIX)}alice/{sid}/some/page",
                     log), log[-3000:]
    assert re.search(rf"share access: user=bob owner=alice job={sid} websocket", log)
    assert re.search(rf"share access refused \(403\): user=carol owner=alice job={sid}", log)
    assert re.search(rf"share access refused \(404\): user=bob owner=alice job={jobs['other']}", log)
    assert re.search(rf"share access ended: user=bob owner=alice job={sid} websocket closed \(share revoked\)", log)


def test_sharing_unavailable_without_jupyterhub(testbed):
    server = server_for("alice", testbed["VENV"])
    try:
        r = server.api("GET", "sharing")
        assert r.status_code == 200
        validate_schema(r.json(), "Sharing")
        assert r.json()["available"] is False and "JupyterHub" in r.json()["reason"]
        r = server.api("PUT", "services/12345/shares", {"users": ["bob"]})
        assert r.status_code == 501 and "JupyterHub" in r.json()["message"]
        assert server.api("GET", "shares").status_code == 501
    finally:
        server.stop()
