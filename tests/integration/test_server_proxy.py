"""Services and the owner-checked proxy: a real web service (HTTP + websocket) runs in the notebook
image as alice's Slurm job; alice reaches it through her server's proxy, bob does not."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import time

import pytest
import requests
import websocket

from server_fixtures import big_body, server_for, start_service, validate_schema


@pytest.fixture(scope="module")
def alice(testbed):
    server = server_for("alice", testbed["VENV"])
    yield server
    server.stop()


@pytest.fixture(scope="module")
def bob(testbed):
    server = server_for("bob", testbed["VENV"])
    yield server
    server.stop()


@pytest.fixture(scope="module")
def service(alice):
    svc = start_service(alice)
    yield svc
    subprocess.run(["scancel", svc["job_id"]], capture_output=True, timeout=60)


def ws_url(server, path):
    return f"ws://127.0.0.1:{server.port}{server.base_url}{path.lstrip('/')}"


def ws_status(server, path, token):
    """Status of a websocket handshake (101 when it opened)."""
    headers = [f"Authorization: token {token}"] if token else []
    try:
        conn = websocket.create_connection(ws_url(server, path), header=headers, timeout=30)
    except websocket.WebSocketBadStatusException as e:
        return e.status_code
    conn.close()
    return 101


def test_service_reachable_for_owner(alice, service):
    job_id = service["job_id"]
    assert service["url"] == f"/jupyter-hpc/proxy/{job_id}/"
    r = requests.get(alice.url(f"jupyter-hpc/proxy/{job_id}/some/page?x=1"), headers=alice.headers(),
                     cookies={"other": "kept"}, timeout=30)
    assert r.status_code == 200, r.text
    info = r.json()
    assert info["path"] == "/some/page" and info["query"] == "x=1"
    assert info["base_url"] == f"/jupyter-hpc/proxy/{job_id}/"
    assert info["port_env"] and info["port_env"].isdigit()
    assert info["authorization"] is None  # the Jupyter token is not passed on
    assert info["cookie"] == "other=kept"
    assert info["prefix"] == f"/jupyter-hpc/proxy/{job_id}"

    conn = websocket.create_connection(ws_url(alice, f"jupyter-hpc/proxy/{job_id}/ws"),
                                       header=[f"Authorization: token {alice.token}"], timeout=30)
    conn.send("ping")
    assert conn.recv() == "echo:ping"
    conn.close()

    r = alice.api("GET", "services")
    assert r.status_code == 200
    listed = {s["job_id"]: s for s in r.json()["services"]}
    validate_schema(listed[job_id], "Service")
    assert listed[job_id]["state"] == "RUNNING" and listed[job_id]["ready"] is True
    r = alice.api("GET", f"jobs/{job_id}")
    assert r.json()["kind"] == "service"


def test_downloads_stream_and_redirects_stay_under_the_proxy(alice, service):
    job_id = service["job_id"]
    url = alice.url(f"jupyter-hpc/proxy/{job_id}/big")
    with requests.get(url, params={"mb": "3"}, headers=alice.headers(), stream=True, timeout=60) as r:
        assert r.status_code == 200
        # streamed through byte for byte: the service's Content-Length is kept
        assert r.headers["Content-Length"] == str(3 * 1024 * 1024)
        body = b"".join(r.iter_content(256 * 1024))
    assert body == big_body(3)

    r = requests.get(alice.url(f"jupyter-hpc/proxy/{job_id}/moved"), headers=alice.headers(),
                     allow_redirects=False, timeout=30)
    assert r.status_code == 302
    assert r.headers["Location"] == f"/jupyter-hpc/proxy/{job_id}/some/target?from=moved"


def test_downloads_arrive_intact_for_slow_and_for_vanished_readers(alice, service):
    """A reader slower than the service gets every byte in order (the proxy holds the download
    to the reader's pace); a reader that leaves mid-download does not break the next request."""
    job_id = service["job_id"]
    url = alice.url(f"jupyter-hpc/proxy/{job_id}/big")
    pieces = []
    with requests.get(url, params={"mb": "6"}, headers=alice.headers(), stream=True, timeout=120) as r:
        assert r.status_code == 200
        for piece in r.iter_content(64 * 1024):
            pieces.append(piece)
            if len(pieces) % 4 == 0:
                time.sleep(0.02)
    assert b"".join(pieces) == big_body(6)

    for _ in range(3):
        with requests.get(url, params={"mb": "40"}, headers=alice.headers(), stream=True, timeout=60) as r:
            assert r.status_code == 200
            next(r.iter_content(256 * 1024))
        # leaving the with-block closes the connection with most of the body unread
    with requests.get(url, params={"mb": "2"}, headers=alice.headers(), timeout=60) as r:
        assert r.status_code == 200 and r.content == big_body(2)
    r = requests.get(alice.url(f"jupyter-hpc/proxy/{job_id}/after-vanished"), headers=alice.headers(), timeout=30)
    assert r.status_code == 200 and r.json()["path"] == "/after-vanished"


def test_requests_reuse_kept_alive_connections_to_the_service(alice, service):
    """Successive GETs through the proxy arrive over one connection (the service sees one peer
    port); a POST in between is sent on a new connection and the GETs go on working."""
    job_id = service["job_id"]
    session = requests.Session()
    session.headers.update(alice.headers())
    peers = []
    for i in range(8):
        r = session.get(alice.url(f"jupyter-hpc/proxy/{job_id}/keepalive/{i}"), timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["path"] == f"/keepalive/{i}"
        peers.append(tuple(r.json()["peer"]))
    assert len(set(peers)) == 1, peers
    r = session.post(alice.url(f"jupyter-hpc/proxy/{job_id}/upload"), data=b"x" * 10, timeout=30)
    assert r.status_code == 200 and r.json()["size"] == 10
    r = session.get(alice.url(f"jupyter-hpc/proxy/{job_id}/keepalive/after-post"), timeout=30)
    assert r.status_code == 200, r.text


def test_service_refused_for_others(alice, bob, service):
    job_id = service["job_id"]
    path = f"jupyter-hpc/proxy/{job_id}/some/page"
    # bob, through his own server
    assert requests.get(bob.url(path), headers=bob.headers(), timeout=30).status_code == 404
    assert ws_status(bob, f"jupyter-hpc/proxy/{job_id}/ws", bob.token) in (403, 404)
    # bob's token on alice's server, or no token at all
    r = requests.get(alice.url(path), headers=bob.headers(), timeout=30, allow_redirects=False)
    assert r.status_code in (302, 403)
    assert ws_status(alice, f"jupyter-hpc/proxy/{job_id}/ws", bob.token) == 403
    assert ws_status(alice, f"jupyter-hpc/proxy/{job_id}/ws", None) == 403
    # bob forging a service record for alice's job in his own directory changes nothing
    pw = pwd.getpwnam("bob")
    d = os.path.join(pw.pw_dir, ".jupyter-hpc", "services")
    subprocess.run(["runuser", "-u", "bob", "--", "mkdir", "-p", d], check=True)
    subprocess.run(["runuser", "-u", "bob", "--", "tee", os.path.join(d, f"{job_id}.json")],
                   input=json.dumps({"job_id": job_id, "name": "x"}), text=True, capture_output=True, check=True)
    try:
        assert requests.get(bob.url(path), headers=bob.headers(), timeout=30).status_code == 404
        assert ws_status(bob, f"jupyter-hpc/proxy/{job_id}/ws", bob.token) in (403, 404)
        assert bob.api("DELETE", f"jobs/{job_id}").status_code == 403
    finally:
        subprocess.run(["runuser", "-u", "bob", "--", "rm", "-f", os.path.join(d, f"{job_id}.json")])


def test_proxy_refuses_other_targets(alice, testbed, service):
    node = testbed["SLURM_NODE"]
    r = alice.api("GET", f"jobs/{service['job_id']}")
    for path in ("jupyter-hpc/proxy/999999999/", "jupyter-hpc/proxy/127.0.0.1:22/",
                 f"jupyter-hpc/proxy/{node}:22/", "jupyter-hpc/proxy/1;id/", "jupyter-hpc/proxy/-1/",
                 "jupyter-hpc/proxy/..%2F..%2Fapi/"):
        r = requests.get(alice.url(path), headers=alice.headers(), timeout=30, allow_redirects=False)
        assert r.status_code in (403, 404), (path, r.status_code)
        assert ws_status(alice, path + "ws", alice.token) in (403, 404), path
    # a cell job of alice's is not a service
    r = alice.api("POST", "cells", {"code": "import time; time.sleep(60)", "image": "site:notebook.sif",
                                    "time": "00:05:00"})
    assert r.status_code == 201
    cell = r.json()["job_id"]
    try:
        assert requests.get(alice.url(f"jupyter-hpc/proxy/{cell}/"), headers=alice.headers(),
                            timeout=30).status_code == 404
    finally:
        alice.api("DELETE", f"jobs/{cell}")
    # jupyter-server-proxy's own arbitrary host:port route does not reach the node either
    port = requests.get(alice.url(f"jupyter-hpc/proxy/{service['job_id']}/x"), headers=alice.headers(),
                        timeout=30).json()["port_env"]
    for target in (f"{node}:{port}", f"10.255.255.1:{port}"):
        r = requests.get(alice.url(f"proxy/{target}/x"), headers=alice.headers(), timeout=30)
        assert r.status_code in (403, 404), (target, r.status_code)


def test_stopped_service_is_refused(alice, testbed, wait_job):
    svc = start_service(alice)
    job_id = svc["job_id"]
    r = alice.api("DELETE", f"services/{job_id}")
    assert r.status_code == 202
    wait_job(job_id, timeout=60)
    path = f"jupyter-hpc/proxy/{job_id}/x"
    assert requests.get(alice.url(path), headers=alice.headers(), timeout=30).status_code == 404
    assert ws_status(alice, f"jupyter-hpc/proxy/{job_id}/ws", alice.token) == 404
