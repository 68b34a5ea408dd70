"""Faults: the Slurm daemons, jobs, images, the hub and the registry fail under running servers.

- a server job and a cell job cancelled from outside (``scancel`` by the admin): the hub and
  the REST API notice within one poll interval;
- slurmctld stopped for 30 s and restarted: servers stay up, requests get clear errors;
- slurmd killed (SIGKILL) and restarted: the jobs on the node keep running;
- an image deleted while a spawn is pending: the spawn fails with a clear message, no job left;
- the hub restarted with servers running: all of them are still there afterwards;
- the registry down when a pull starts, and going down during a pull: clear errors.

Figures: servers lost (must be 0), time to notice a dead job, the errors users see. Every
daemon stopped here is restarted in a ``finally`` block.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import threading
import time
from typing import Dict, List, Tuple

import pytest
import requests

from conftest import DEAD_REF, DEAD_REGISTRY_PORT, HUB_POLL_INTERVAL, IMAGE, SERVER_WATCH_INTERVAL, jobs_named
from reliability_support import ensure_servers, job_state, message_of, scancel, wait_state

pytestmark = [pytest.mark.timeout(600)]

TESTBED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "testbed", "testbed.sh")
SLURMD_PID = "/run/slurmd.pid"
USERS = ("alice", "bob", "carol")
#: Slack for one squeue round trip of the watcher and this test's own sampling on the 2-core testbed.
NOTICE_SLACK = 0.5
CELL = {"image": IMAGE, "time": "00:10:00", "memory": "256M", "cpus": 1}


def slurm_answers() -> bool:
    try:
        out = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return False
    return "UP" in out.stdout


def node_ok() -> bool:
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, timeout=30).stdout
    states = {s.strip().rstrip("*") for s in out.split()}
    return bool(states) and states <= {"idle", "mixed", "allocated", "completing"}


def wait_for(predicate, timeout: float, interval: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def start_slurmctld() -> None:
    subprocess.run(["bash", TESTBED, "start-slurmctld"], check=True, timeout=180, capture_output=True)
    assert wait_for(slurm_answers, 60), "slurmctld did not come back"


def start_slurmd() -> None:
    try:
        with open(SLURMD_PID) as f:
            os.kill(int(f.read().strip()), 0)
        return  # already running
    except (OSError, ValueError):
        pass
    subprocess.run(["/usr/sbin/slurmd"], check=True, timeout=60, capture_output=True)
    assert wait_for(lambda: os.path.exists(SLURMD_PID), 20), "slurmd did not start"


FINISHED = {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
            "DEADLINE", "GONE"}


def notice_time(hub, user: str, job: str, timeout: float = 120) -> Tuple[float, float]:
    """Cancel ``job`` (the user's server) from outside; returns (seconds from the job's end in Slurm
    to the hub dropping the server, seconds from the scancel to that).

    The job ends some time after scancel (processes get SIGTERM; Slurm reports it COMPLETING
    meanwhile): a dead job is one Slurm reports finished. Its end is taken as the last time
    squeue still showed it unfinished (so the figure is an upper bound)."""
    alive: List[float] = []  # times at which squeue still showed the job unfinished
    finished = threading.Event()

    def watch_slurm():
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            t = time.monotonic()
            if job_state(job) in FINISHED:
                finished.set()
                return
            alive.append(t)
            time.sleep(0.05)

    subprocess.run(["scancel", job], check=True, timeout=60)
    t0 = time.monotonic()
    th = threading.Thread(target=watch_slurm, daemon=True)
    th.start()
    assert wait_for(lambda: hub.server(user) is None, timeout, 0.05), hub.server(user)
    noticed = time.monotonic()
    th.join(timeout)
    assert finished.is_set(), f"Slurm never reported job {job} finished"
    last_alive = max([t for t in alive if t <= noticed] or [t0])
    return noticed - last_alive, noticed - t0


def servers_of(hub, users) -> Dict[str, str]:
    """{user: job id} of the users whose server the hub reports ready."""
    out = {}
    for user in users:
        s = hub.server(user)
        if s and s.get("ready"):
            out[user] = s["state"]["job_id"]
    return out


def count_lost(hub, before: Dict[str, str], what: str, figures) -> List[str]:
    """Servers that were ready before a fault and are gone, replaced or unreachable now."""
    lost = []
    for user, job_id in before.items():
        s = hub.server(user)
        if not (s and s.get("ready") and s["state"]["job_id"] == job_id):
            lost.append(f"{user} (job {job_id}): {s}")
            continue
        r = hub.server_get(user, "api/status", timeout=60)
        if r.status_code != 200:
            lost.append(f"{user} (job {job_id}): api/status through the proxy answered {r.status_code}")
    figures.lost(len(lost))
    if lost:
        figures.note(f"lost after {what}: {lost}")
    return lost


@pytest.fixture(scope="module")
def servers(hub):
    return ensure_servers(hub, USERS)


# -- Slurm daemons ------------------------------------------------------------------------------------


def _probe(results: dict, key: str, fn) -> threading.Thread:
    """Run ``fn()`` in a thread; store (value or exception, seconds) under ``key``."""
    def run():
        t = time.monotonic()
        try:
            value = fn()
        except Exception as e:  # noqa: BLE001 - reported by the test
            value = e
        results[key] = (value, time.monotonic() - t)

    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th


def test_slurmctld_down_for_30_seconds(hub, servers, alice_srv, load_users, figures):
    """Servers stay up and reachable; the REST API and spawns fail with clear messages; after the
    restart nothing is lost, nothing of the failed spawn is left, and a dead job is noticed again."""
    before = servers_of(hub, USERS)
    assert set(before) == set(USERS), before
    spawn_user = load_users[1]
    probes: dict = {}
    subprocess.run(["bash", TESTBED, "stop-slurmctld"], check=True, timeout=180, capture_output=True)
    t0 = time.monotonic()
    try:
        threads = [
            _probe(probes, "jobs", lambda: alice_srv.api("GET", "jobs", timeout=120)),
            _probe(probes, "cells", lambda: alice_srv.api("POST", "cells", dict(CELL, code="print(1)"), timeout=120)),
            _probe(probes, "spawn", lambda: hub.spawn(spawn_user, {"image": IMAGE})),
        ]
        checks = 0
        while time.monotonic() - t0 < 30:
            for user, job_id in before.items():
                s = hub.server(user)
                assert s and s["ready"] and s["state"]["job_id"] == job_id, (user, s, hub.log_tail())
            assert hub.server_get("alice", "api/status").status_code == 200
            checks += 1
            time.sleep(2)
        for th in threads:
            th.join(90)
    finally:
        start_slurmctld()
    figures.note(f"slurmctld was down for {time.monotonic() - t0:.0f} s")
    assert checks >= 10, checks
    for key in ("jobs", "cells"):
        r, seconds = probes[key]
        assert isinstance(r, requests.Response), probes
        figures.error_message(f"slurmctld down: {'GET jobs' if key == 'jobs' else 'POST cells'} (REST)",
                              f"HTTP {r.status_code} after {seconds:.0f} s: {message_of(r)}")
        assert r.status_code in (502, 503) and "Slurm" in message_of(r), (key, r.status_code, r.text)
    r, seconds = probes["spawn"]
    assert isinstance(r, requests.Response), probes
    if r.status_code >= 400:
        spawn_message = message_of(r)
    else:  # still starting when the hub answered: its progress ends with the failure
        events: list = []
        _progress(hub, spawn_user, events, timeout=120).join(150)
        spawn_message = (events[-1] if events else {}).get("message", "")
    figures.error_message("slurmctld down: spawn", gist(spawn_message))
    assert "slurm" in spawn_message.lower(), spawn_message
    # back: servers untouched, nothing of the failed spawn left, the REST API answers
    lost = count_lost(hub, before, "slurmctld outage", figures)
    assert not lost, lost
    assert wait_for(lambda: hub.server(spawn_user) is None, 60), hub.server(spawn_user)
    assert jobs_named(user=spawn_user) == []
    assert alice_srv.api("GET", "jobs").status_code == 200
    # a server job ending right after the restart: the hub's watcher may still be backing off
    # from the failed squeue calls (its interval doubles while Slurm does not answer)
    after_end, after_scancel = notice_time(hub, "carol", before["carol"])
    figures.notice("server job ended right after the slurmctld restart (hub)", after_end)
    figures.note(f"server job cancelled right after the slurmctld restart: dropped {after_scancel:.1f} s after scancel")


def test_slurmd_killed_and_restarted(hub, servers, alice_srv, figures):
    before = servers_of(hub, ("alice", "bob"))
    assert set(before) == {"alice", "bob"}
    with open(SLURMD_PID) as f:
        pid = int(f.read().strip())
    os.kill(pid, signal.SIGKILL)
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < 15:
            for user in before:
                assert hub.server(user)["ready"], user
                assert hub.server_get(user, "api/status").status_code == 200, user
            time.sleep(2)
    finally:
        start_slurmd()
    assert wait_for(node_ok, 60), subprocess.run(["sinfo", "-N"], capture_output=True, text=True).stdout
    time.sleep(2 * HUB_POLL_INTERVAL)
    lost = count_lost(hub, before, "slurmd restart", figures)
    assert not lost, lost
    # the node takes new work again
    r = alice_srv.api("POST", "cells", dict(CELL, code="print('after slurmd restart')"))
    assert r.status_code == 201, r.text
    job = r.json()["job_id"]
    assert wait_state(job, ("COMPLETED", "FAILED", "CANCELLED", "GONE"), 120) == "COMPLETED"


# -- the hub -----------------------------------------------------------------------------------------


def test_hub_restart_with_servers_running(hub, servers, figures):
    before = servers_of(hub, ("alice", "bob"))
    assert set(before) == {"alice", "bob"}, before
    t0 = time.monotonic()
    hub.restart()
    restarted = time.monotonic() - t0
    figures.note(f"hub restart took {restarted:.1f} s with {len(before)} servers running")
    lost = count_lost(hub, before, "hub restart", figures)
    assert not lost, lost


# -- jobs cancelled from outside -------------------------------------------------------------------


def test_server_job_cancelled_from_outside(hub, servers, figures):
    """scancel by the admin: the hub drops the server within one poll interval."""
    job = ensure_servers(hub, ["bob"])["bob"]
    noticed, after_scancel = notice_time(hub, "bob", job)
    figures.notice("server job cancelled from outside (hub)", noticed, HUB_POLL_INTERVAL)
    figures.note(f"server job cancelled from outside: dropped {after_scancel:.1f} s after scancel")
    assert noticed <= HUB_POLL_INTERVAL + NOTICE_SLACK, f"noticed {noticed:.1f} s after the job ended"
    assert job not in jobs_named(user="bob")


def test_cell_job_cancelled_from_outside(alice_srv, figures):
    r = alice_srv.api("POST", "cells", dict(CELL, code="print('started', flush=True)\nimport time\ntime.sleep(300)\n"))
    assert r.status_code == 201, r.text
    job = r.json()["job_id"]
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            data = alice_srv.api("GET", f"cells/{job}").json()
            if data["outputs"]:
                break
            time.sleep(0.3)
        assert data["state"] == "RUNNING", data
        subprocess.run(["scancel", job], check=True, timeout=60)
        t0 = alive = time.monotonic()
        ended = None
        while not data["done"] and time.monotonic() - t0 < 60:
            t = time.monotonic()
            if ended is None:
                if job_state(job) in FINISHED:
                    ended = alive  # the last look that still saw it unfinished: an upper bound
                else:
                    alive = t
            data = alice_srv.api("GET", f"cells/{job}").json()
        noticed = time.monotonic() - (ended if ended is not None else alive)
    finally:
        scancel([job])
    figures.notice("cell job cancelled from outside (REST)", noticed)
    assert data["done"] and data["status"] == "error", data
    errors = [o for o in data["outputs"] if o["output_type"] == "error"]
    assert errors and "CANCELLED" in " ".join(errors[-1]["traceback"]), data["outputs"]
    figures.error_message("cell job cancelled from outside", " ".join(errors[-1]["traceback"][:1]))
    assert noticed <= SERVER_WATCH_INTERVAL + NOTICE_SLACK, f"noticed after {noticed:.1f} s"


# -- images ----------------------------------------------------------------------------------------


def _progress(hub, user: str, events: list, timeout: float = 240) -> threading.Thread:
    def follow():
        try:
            for ev in hub.progress_events(user, timeout=timeout):
                events.append(ev)
        except requests.RequestException as e:
            events.append({"message": f"progress stream ended: {e}"})

    th = threading.Thread(target=follow, daemon=True)
    th.start()
    return th


def test_image_deleted_while_spawn_is_pending(hub, tb, load_users, figures):
    user = load_users[2]
    pw = pwd.getpwnam(user)
    image = os.path.join(pw.pw_dir, "images", "jhrel-doomed.sif")
    shutil.copyfile(tb["NOTEBOOK_SIF"], image)
    os.chown(image, pw.pw_uid, pw.pw_gid)
    gres = f"gpu:{tb['GPU_TYPE']}:{tb['GPU_COUNT']}"
    blocker = subprocess.run(["runuser", "-u", user, "--", "sbatch", "--parsable", "-p", tb["GPU_PARTITION"],
                              f"--gres={gres}", "--time=5", "--mem=64M", "--output=/dev/null",
                              "--job-name=jhrel-blocker", "--wrap", "sleep 300"],
                             capture_output=True, text=True, timeout=60, cwd="/")
    assert blocker.returncode == 0, blocker.stderr
    blocker_id = blocker.stdout.strip().split(";")[0]
    events: list = []
    try:
        assert wait_state(blocker_id, ("RUNNING",), 120) == "RUNNING"
        r = hub.spawn(user, {"image": "user:jhrel-doomed.sif", "partition": tb["GPU_PARTITION"],
                             "gpus": int(tb["GPU_COUNT"])})
        assert r.status_code in (201, 202), r.text
        follower = _progress(hub, user, events)
        assert wait_for(lambda: any("pending" in e.get("message", "") for e in events), 60), events
        jobs = jobs_named(user=user)
        assert len(jobs) == 1 and job_state(jobs[0]) == "PENDING", jobs
        os.unlink(image)
        scancel([blocker_id])
        t0 = time.monotonic()
        follower.join(240)
        failed_after = time.monotonic() - t0
    finally:
        scancel([blocker_id])
        if os.path.exists(image):
            os.unlink(image)
    final = events[-1] if events else {}
    message = final.get("message", "")
    figures.error_message("image deleted while the spawn was pending", gist(message))
    figures.note(f"spawn with a deleted image failed {failed_after:.1f} s after the job could start")
    assert final.get("failed"), events[-3:]
    assert "jhrel-doomed.sif" in message or "image" in message.lower(), message
    assert hub.server(user) is None
    assert jobs_named(user=user) == []


# -- the registry ---------------------------------------------------------------------------------------


class FlakyRegistry:
    """A TCP forwarder on the 'dead registry' port to the real registry that answers the first
    request (the client's ping) and goes down for good when the next request arrives: the
    registry failing in the middle of a pull."""

    def __init__(self, port: int, target=("127.0.0.1", 5000)):
        self.port, self.target = port, target
        self.server = socket.create_server(("127.0.0.1", port))
        self.conns: List[socket.socket] = []
        self.sent = 0
        self.requests = 0
        self.down = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.down.is_set():
            try:
                client, _ = self.server.accept()
                upstream = socket.create_connection(self.target)
            except OSError:
                return
            self.conns += [client, upstream]
            for a, b, down in ((client, upstream, False), (upstream, client, True)):
                threading.Thread(target=self._pipe, args=(a, b, down), daemon=True).start()

    def _pipe(self, src, dst, downstream):
        try:
            while not self.down.is_set():
                data = src.recv(65536)
                if not data:
                    break
                if downstream:
                    self.sent += len(data)
                elif self.sent:
                    self.requests += 1
                    self.stop()  # a request after the first answer: down
                    return
                dst.sendall(data)
        except OSError:
            pass

    def stop(self):
        self.down.set()
        for s in [self.server] + self.conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


def _forget_pulled(ref: str) -> None:
    """Remove any cached copy of ``ref`` (so that a pull really has to reach the registry)."""
    from jupyter_hpc.images import ref_filename

    cache = "/opt/jupyter-hpc/cache"
    name = ref_filename(ref)
    for root, _, files in os.walk(cache):
        for f in files:
            if f in (name, name + ".ref"):
                os.unlink(os.path.join(root, f))


def gist(message: str, head: int = 110, tail: int = 180) -> str:
    """A long error message shortened for the figures: its start and its end."""
    text = " ".join(str(message).split())
    return text if len(text) <= head + tail + 5 else f"{text[:head]} [...] {text[-tail:]}"


def _wait_pull(server, ref: str, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    pull = {}
    while time.monotonic() < deadline:
        pulls = {p["ref"]: p for p in server.api("GET", "images/pulls").json()["pulls"]}
        pull = pulls.get(ref, {})
        if pull.get("state") in ("done", "error"):
            return pull
        time.sleep(0.5)
    return pull


def test_registry_down(hub, alice_srv, load_users, figures):
    from jupyter_hpc.images import ref_id

    _forget_pulled(DEAD_REF)
    # down when the spawn's pull starts
    user = load_users[3]
    t0 = time.monotonic()
    r = hub.spawn(user, {"image": ref_id(DEAD_REF)})
    if r.status_code >= 400:
        message = message_of(r)
    else:
        events: list = []
        _progress(hub, user, events, timeout=180).join(200)
        message = (events[-1] if events else {}).get("message", "")
    figures.error_message("registry down when a spawn pulls its image", gist(message))
    figures.note(f"spawn from a dead registry failed after {time.monotonic() - t0:.1f} s")
    assert "pull" in message.lower() and f"127.0.0.1:{DEAD_REGISTRY_PORT}" in message, message
    assert hub.server(user) is None
    assert jobs_named(user=user) == []
    # going down while a pull runs (REST)
    registry = FlakyRegistry(DEAD_REGISTRY_PORT)
    try:
        r = alice_srv.api("POST", "images/pull", {"ref": DEAD_REF})
        assert r.status_code == 202, r.text
        pull = _wait_pull(alice_srv, DEAD_REF)
    finally:
        registry.stop()
        _forget_pulled(DEAD_REF)
    assert registry.sent and registry.requests, f"the registry did not go down during the pull: {pull}"
    figures.error_message("registry going down during a pull (REST)", gist(pull.get("message", "")))
    assert pull.get("state") == "error" and pull.get("message"), pull
    assert pull.get("image_id") is None


def test_figure_servers_lost(figures):
    if figures.servers_lost is None:
        pytest.skip("no fault test ran")
    assert figures.servers_lost == 0, figures.notes
