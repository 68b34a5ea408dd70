"""Load: 20 concurrent spawns across 10 users plus 50 cell jobs on the 2-core testbed.

Every user of ``LOAD_USERS`` starts its default server and a named one at the same time,
while alice and bob submit 25 cell jobs each through their servers' REST API. Meanwhile a
sampler measures the hub's REST API (the hub's event loop must stay responsive). Each
server must become ready or stay cleanly pending (its job PENDING in Slurm); each cell
job must finish or stay pending. After everything is stopped no job may be left (orphans).

Figures: spawns ready/pending/failed, cells finished, p50/p99/max of ``/hub/api`` during the
load, time until all servers were ready, orphan jobs.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Dict, List, Optional, Tuple

import pytest

from conftest import HUB_START_TIMEOUT, IMAGE, JOB_NAME, jobs_named
from reliability_figures import percentile
from reliability_support import job_state, scancel

pytestmark = [pytest.mark.timeout(1200)]

NAMED = "second"
CELLS_PER_SERVER = 25
SPAWN_OPTIONS = {"image": IMAGE, "cpus": 1, "memory": "512M", "time": "00:30:00"}
CELL = {"image": IMAGE, "time": "00:05:00", "memory": "128M", "cpus": 1}
#: Longest wait for the servers: well below the hub's start_timeout, so that none is timed out by the
#: hub while it is still being waited for (a round of checking 20 servers can take many seconds).
SERVER_WAIT = HUB_START_TIMEOUT - 90
#: p99 latency of /hub/api that still counts as responsive on the 2-core testbed under full load.
HUB_API_P99_LIMIT_MS = 3000


def server_path(user: str, name: str) -> str:
    return f"/users/{user}/servers/{name}" if name else f"/users/{user}/server"


def server_model(hub, user: str, name: str) -> Optional[Dict[str, Any]]:
    return hub.user(user).get("servers", {}).get(name)


class Sampler(threading.Thread):
    """GET /hub/api/ and /hub/api/users/NAME in turn, every ``period`` seconds, recording latency."""

    def __init__(self, hub, user: str, period: float = 0.1):
        super().__init__(daemon=True)
        self.hub, self.user, self.period = hub, user, period
        self.samples: List[Tuple[str, float, int]] = []
        self.started: List[float] = []  # time.monotonic() of each sample's request
        self.stop_event = threading.Event()

    def run(self):
        import requests

        session = requests.Session()
        session.headers.update(self.hub.session.headers)
        paths = ("/", f"/users/{self.user}")
        i = 0
        while not self.stop_event.is_set():
            path = paths[i % 2]
            i += 1
            t = time.monotonic()
            try:
                status = session.get(self.hub.api_url + path, timeout=60).status_code
            except requests.RequestException:
                status = 0
            self.samples.append((path, (time.monotonic() - t) * 1000, status))
            self.started.append(t)
            self.stop_event.wait(self.period)

    def stop(self):
        self.stop_event.set()
        self.join(70)


def _classify(hub, user: str, name: str) -> Tuple[str, str]:
    """(ready | pending | starting | failed, detail) of one server."""
    s = server_model(hub, user, name)
    if s is None:
        return "failed", "the hub no longer lists it"
    if s.get("ready"):
        return "ready", s["state"].get("job_id", "")
    job = (s.get("state") or {}).get("job_id")
    if s.get("pending") == "spawn" and job and job_state(job) == "PENDING":
        return "pending", job
    return "starting", f"{s.get('pending')} job {job}"


def test_concurrent_spawns_and_cells(hub, load_users, alice_srv, bob_srv, figures):
    servers = [(u, n) for u in load_users for n in ("", NAMED)]
    assert len(servers) == 20
    sampler = Sampler(hub, load_users[0])
    sampler.start()
    time.sleep(1)
    t0 = time.monotonic()
    answers: Dict[Tuple[str, str], Any] = {}
    cells: Dict[str, Any] = {}

    def spawn(user, name):
        answers[(user, name)] = hub.api("POST", server_path(user, name), json={"user_options": SPAWN_OPTIONS},
                                        timeout=120)

    def submit(server, i):
        r = server.api("POST", "cells", dict(CELL, code=f"print('cell {i}')\n{i} * 2\n"), timeout=120)
        cells[f"{server.user}-{i}"] = (server, r)

    threads = [threading.Thread(target=spawn, args=sv) for sv in servers]
    threads += [threading.Thread(target=submit, args=(srv, i)) for srv in (alice_srv, bob_srv)
                for i in range(CELLS_PER_SERVER)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(150)
    submitted = time.monotonic() - t0
    refused = {k: (r.status_code, r.text[:200]) for k, r in answers.items() if r.status_code not in (201, 202)}
    cell_ids = {k: r.json()["job_id"] for k, (srv, r) in cells.items() if r.status_code == 201}
    cell_server = {cell_ids[k]: srv for k, (srv, r) in cells.items() if k in cell_ids}
    status: Dict[Tuple[str, str], Tuple[str, str]] = {}
    cell_states: Dict[str, str] = {}
    all_ready_after = None
    try:
        # servers: ready, or pending in Slurm; cells: done, or pending
        deadline = t0 + SERVER_WAIT
        while time.monotonic() < deadline:
            status = {sv: _classify(hub, *sv) for sv in servers}
            if all(st == "ready" for st, _ in status.values()):
                all_ready_after = time.monotonic() - t0
                break
            if any(st == "failed" for st, _ in status.values()):
                break
            time.sleep(2)
        cell_deadline = time.monotonic() + 120
        while time.monotonic() < cell_deadline:
            for jid, srv in cell_server.items():
                if cell_states.get(jid) in ("ok", "error"):
                    continue
                data = srv.api("GET", f"cells/{jid}", timeout=60).json()
                cell_states[jid] = data["status"] if data["done"] else data["state"]
            if all(v in ("ok", "error") for v in cell_states.values()):
                break
            time.sleep(2)
        load_seconds = time.monotonic() - t0
    finally:
        sampler.stop()
        stop_started = time.monotonic()
        stops = [threading.Thread(target=lambda sv=sv: hub.api("DELETE", server_path(*sv), timeout=120))
                 for sv in servers]
        for th in stops:
            th.start()
        for jid, srv in cell_server.items():
            if cell_states.get(jid) not in ("ok", "error"):
                srv.api("DELETE", f"cells/{jid}", timeout=60)
        for th in stops:
            th.join(150)
        gone = _wait_all_stopped(hub, servers, 120)
        stopped_after = time.monotonic() - stop_started
        orphans = [j for u in load_users for j in jobs_named(user=u)]
        orphans += [jid for jid in cell_server if job_state(jid) in ("PENDING", "RUNNING", "CONFIGURING")]
        scancel(orphans)

    latencies = [ms for _, ms, code in sampler.samples if code == 200]
    slowest = max(range(len(sampler.samples)), key=lambda i: sampler.samples[i][1]) if sampler.samples else None
    errors = [s for s in sampler.samples if s[2] != 200]
    root = [ms for path, ms, code in sampler.samples if path == "/" and code == 200]
    counts = {k: sum(1 for st, _ in status.values() if st == k) for k in ("ready", "pending", "starting", "failed")}
    cells_ok = sum(1 for v in cell_states.values() if v == "ok")
    cells_pending = sum(1 for v in cell_states.values() if v == "PENDING")
    figures.load.update({
        "spawns": len(servers),
        "spawns_ready": counts["ready"],
        "spawns_pending": counts["pending"],
        "spawns_failed": counts["failed"] + counts["starting"] + len(refused),
        "all_ready_s": round(all_ready_after, 1) if all_ready_after else None,
        "cells": len(cells),
        "cells_ok": cells_ok,
        "cells_pending": cells_pending,
        "requests_submitted_s": round(submitted, 1),
        "load_s": round(load_seconds, 1),
        "hub_api_samples": len(sampler.samples),
        "hub_api_p50_ms": round(percentile(latencies, 50) or 0),
        "hub_api_p99_ms": round(percentile(latencies, 99) or 0),
        "hub_api_max_ms": round(max(latencies)) if latencies else None,
        "hub_api_max_at_s": round(sampler.started[slowest] - t0, 1) if slowest is not None else None,
        "hub_api_root_p99_ms": round(percentile(root, 99) or 0),
        "hub_api_errors": len(errors),
        "stop_all_s": round(stopped_after, 1),
        "orphan_jobs": len(orphans),
    })
    assert not refused, refused
    unready = {sv: st for sv, st in status.items() if st[0] in ("failed", "starting")}
    assert not unready, _explain(hub, unready)
    assert counts["ready"] + counts["pending"] == len(servers), status
    assert len(cell_ids) == 2 * CELLS_PER_SERVER, {k: r.status_code for k, (s, r) in cells.items()}
    assert all(v in ("ok", "PENDING") for v in cell_states.values()), cell_states
    assert not errors, errors[:10]
    assert percentile(latencies, 99) <= HUB_API_P99_LIMIT_MS, figures.load
    assert gone, "servers still listed after stopping"
    assert orphans == [], orphans
    assert jobs_named(JOB_NAME, user=load_users[0]) == []


def _explain(hub, unready: Dict[Tuple[str, str], Tuple[str, str]]) -> str:
    """The servers that neither started nor stayed pending, each with what the hub logged about it."""
    try:
        with open(hub.log_path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError as e:
        lines = [f"(hub log unreadable: {e})"]
    parts = []
    for (user, name), (state, detail) in sorted(unready.items()):
        label = f"{user}:{name}" if name else user
        said = [ln[:400] for ln in lines
                if (ln.startswith("[E") or ln.startswith("[W")) and _mentions(ln, user, name)]
        parts.append(f"{label}: {state} ({detail})\n    " + "\n    ".join(said[-6:] or ["(nothing logged)"]))
    return "servers neither ready nor pending:\n" + "\n".join(parts)


def _mentions(line: str, user: str, name: str) -> bool:
    """Whether a hub log line is about the server ``user``/``name`` (a named server is user:name)."""
    if name:
        return f"{user}:{name}" in line or f"/users/{user}/servers/{name}" in line
    return any(f"{user}{end}" in line for end in (" ", "'", "/server ", "\n")) and f"{user}:" not in line


def _wait_all_stopped(hub, servers, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        models = [server_model(hub, u, n) for u, n in servers]
        if all(m is None or not (m.get("ready") or m.get("pending")) for m in models):
            return True
        time.sleep(1)
    return False
