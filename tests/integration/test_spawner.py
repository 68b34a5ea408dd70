"""ApptainerSlurmSpawner against the real testbed: JupyterHub 6 + CHP + Slurm + Apptainer.

One hub (module scope) serves all tests; they run in file order and build on
each other (alice and bob keep their servers from the concurrent spawn until
the last test stops them).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import threading
import time

import pytest

try:
    from .hub_fixtures import HubProcess, run_in_terminal, scontrol_job, slurm_jobs
    from .hub_fixtures import testbed_env as _testbed_env
except ImportError:  # tests/integration is not a package
    from hub_fixtures import HubProcess, run_in_terminal, scontrol_job, slurm_jobs
    from hub_fixtures import testbed_env as _testbed_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

ENV = _testbed_env()
TESTBED = os.path.join(os.path.dirname(__file__), "..", "testbed", "testbed.sh")
JOB_NAME = "jhtest-" + secrets.token_hex(3)


def _need_testbed():
    if not ENV or not shutil.which("sbatch") or not os.path.exists(ENV.get("NOTEBOOK_SIF", "/nonexistent")):
        pytest.skip("testbed not installed (bash tests/testbed/testbed.sh up)")
    if os.geteuid() != 0:
        pytest.skip("the hub must run as root (runuser)")


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    _need_testbed()
    h = HubProcess(str(tmp_path_factory.mktemp("hub")), job_name=JOB_NAME, poll_interval=5, extra_config=PROFILES)
    h.start()
    yield h
    try:
        for user in ("alice", "bob", "carol"):
            try:
                if h.server(user) is not None:
                    h.stop_server(user)
            except Exception as e:  # noqa: BLE001 - teardown must go on
                print(f"teardown: stopping {user}: {e}")
    finally:
        h.stop()
        subprocess.run(["scancel", "--name=" + JOB_NAME], check=False)


def _wait_pending(hub, name, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = hub.server(name)
        if s and s.get("pending") == "spawn":
            return
        time.sleep(0.2)
    raise AssertionError(f"spawn of {name} not pending: {hub.server(name)}")


def _our_jobs(user=None):
    return slurm_jobs(user=user, name=JOB_NAME)


def _spawn_async(hub, name, options, results):
    def go():
        t0 = time.monotonic()
        r = hub.spawn(name, options)
        results[name] = (r, time.monotonic() - t0)

    th = threading.Thread(target=go)
    th.start()
    return th


PROFILES = '''
c.ApptainerSlurmSpawner.profiles = [
    {"name": "standard", "display_name": "Standard (CPU)",
     "defaults": {"partition": "cpu", "cpus": 1, "memory": "1G", "time": "01:00:00"},
     "limits": {"cpus": 32, "memory": "8G", "time": "04:00:00", "gpus": 0},
     "partitions": ["cpu"]},
    {"name": "gpu", "display_name": "One GPU", "description": "notebook image with one GPU",
     "defaults": {"partition": "gpu", "gpus": 1, "image": "site:notebook.sif"},
     "limits": {"gpus": 1, "cpus": 4}, "partitions": ["gpu"], "images": ["site:notebook.sif"]},
]
'''

HOSTILE = [
    ({"partition": "cpu\n#SBATCH --uid=0"}, "partition"),
    ({"image": "$(touch /tmp/jhpc-pwned)"}, "image"),
    ({"account": "`id`"}, "account"),
    ({"memory": "1G; rm -rf /"}, "memory"),
    ({"cpus": "1\n--uid=0"}, "cpus"),
    ({"time": "-1"}, "time"),
    ({"partition": "nosuchpartition"}, "partition"),
    ({"profile": "gpu", "gpus": 10000}, "gpus"),
    ({"image": "/etc/passwd"}, "image"),
    ({"image": "user:alice-private.sif"}, "image"),
    ({"image": "site:does-not-exist.sif"}, "image"),
    ({"cpus": 100000}, "cpus"),
    ({"evil_key": "x"}, "user_options"),
    ({"profile": "admin"}, "profile"),
    ({"profile": "gpu", "image": "site:notebook-sandbox"}, "image"),
    ({"profile": "gpu", "gpus": 2}, "gpus"),
    ({"profile": "gpu", "cpus": 8}, "cpus"),
    ({"time": "2-00:00:00"}, "time"),
    ({"memory": "64G"}, "memory"),
    ({"partition": "gpu"}, "partition"),
    ({"gpus": 1}, "gpus"),
    ({"image": ["site:notebook.sif"]}, "image"),
    ({"cpus": True}, "cpus"),
]


def test_hostile_rest_options_are_refused(hub):
    """REST spawns with hostile user_options get HTTP 400 naming the field; nothing is submitted."""
    before = _our_jobs("carol")
    assert before == []
    for options, field in HOSTILE:
        t0 = time.monotonic()
        r = hub.spawn("carol", options)
        assert r.status_code == 400, (options, r.status_code, r.text)
        message = r.json().get("message", "")
        assert field in message, (options, message)
        assert time.monotonic() - t0 < 10
        assert _our_jobs("carol") == [], options
    assert not os.path.exists("/tmp/jhpc-pwned")
    assert hub.server("carol") is None or not hub.server("carol").get("ready")


def test_alice_and_bob_spawn_concurrently_into_different_images(hub):
    results = {}
    threads = [
        _spawn_async(hub, "alice", {"image": "site:notebook.sif"}, results),
        _spawn_async(hub, "bob", {"image": "site:notebook-sandbox", "cpus": 2, "memory": "2G"}, results),
    ]
    for th in threads:
        th.join(120)
    for name in ("alice", "bob"):
        r, _ = results[name]
        assert r.status_code in (201, 202), (name, r.status_code, r.text)
        hub.wait_ready(name, timeout=120)

    alice_state = hub.server("alice")["state"]
    bob_state = hub.server("bob")["state"]
    assert alice_state["image_path"] == ENV["NOTEBOOK_SIF"]
    assert bob_state["image_path"] == ENV["SANDBOX_DIR"]
    jobs = {j["user"]: j for j in _our_jobs()}
    assert jobs["alice"]["id"] == alice_state["job_id"] and jobs["alice"]["state"] == "RUNNING"
    assert jobs["bob"]["id"] == bob_state["job_id"] and jobs["bob"]["state"] == "RUNNING"
    assert f"port={alice_state['job_port']}" in jobs["alice"]["comment"]
    assert "NumCPUs=2" in scontrol_job(bob_state["job_id"])

    # The server process itself runs inside its image, as its user, with the hub's variables.
    assert run_in_terminal(hub, "alice", "printenv APPTAINER_CONTAINER") == ENV["NOTEBOOK_SIF"]
    assert run_in_terminal(hub, "bob", "printenv APPTAINER_CONTAINER") == ENV["SANDBOX_DIR"]
    assert run_in_terminal(hub, "alice", "id -un") == "alice"
    assert run_in_terminal(hub, "bob", "id -un") == "bob"
    assert run_in_terminal(hub, "alice", "printenv JUPYTERHUB_USER") == "alice"
    # the token reaches the server through the environment, never the command line
    assert run_in_terminal(hub, "alice", "grep -c JUPYTERHUB_API_TOKEN /proc/$PPID/cmdline || true") in ("0", "")
    # the user's home is available in the container
    assert run_in_terminal(hub, "alice", "test -d $HOME/.jupyter-hpc && echo yes") == "yes"
    # and the token is not in the batch script stored by Slurm
    script = subprocess.run(["scontrol", "write", "batch_script", alice_state["job_id"], "-"],
                            capture_output=True, text=True, timeout=30).stdout
    assert "JUPYTERHUB_API_TOKEN" not in script or "APPTAINERENV_JUPYTERHUB_API_TOKEN=\"$JUPYTERHUB_API_TOKEN\"" in script
    token = subprocess.run(["cat", f"/proc/{_server_pid(alice_state['job_id'])}/environ"], capture_output=True).stdout
    secret = [kv for kv in token.split(b"\0") if kv.startswith(b"JUPYTERHUB_API_TOKEN=")]
    assert secret and secret[0].split(b"=", 1)[1].decode() not in script


def test_spawned_server_reaches_slurm_and_the_catalog_from_inside_its_container(hub):
    """The sidebar's API in a hub-spawned server: site images, partitions, and a cell job submitted from inside."""
    def api(method, path, **kw):
        return hub.server_api("alice", method, path, **kw)

    r = api("GET", "images")
    assert r.status_code == 200, r.text
    ids = {img["id"] for img in r.json()["images"]}
    assert {"site:notebook.sif", "site:notebook-sandbox", "user:alice-private.sif"} <= ids, r.text[:3000]
    r = api("GET", "partitions")
    assert r.status_code == 200, r.text
    assert {p["name"] for p in r.json()["partitions"]} >= {"cpu", "gpu"}

    cell_job, state, outputs = hub.run_cell("alice", {
        "code": "import os\nprint('cell in', os.environ.get('APPTAINER_CONTAINER'))\n6 * 7",
        "image": "site:notebook.sif", "time": "00:05:00", "memory": "512M", "cpus": 1})
    assert state.get("status") == "ok", state
    text = "".join(o.get("text", "") for o in outputs if o["output_type"] == "stream")
    assert f"cell in {ENV['NOTEBOOK_SIF']}" in text
    assert any(o["output_type"] == "execute_result" and o["data"]["text/plain"] == "42" for o in outputs)
    # the cell job is the user's own Slurm job, listed by the server's job API
    r = api("GET", "jobs")
    assert r.status_code == 200 and cell_job in {j["id"] for j in r.json()["jobs"]}, r.text


def _server_pid(job_id):
    """PID of a process of the job that carries the hub's environment (the job's batch shell's child)."""
    out = subprocess.run(["scontrol", "listpids", job_id], capture_output=True, text=True, timeout=30).stdout
    pids = [line.split()[0] for line in out.splitlines()[1:] if line.split() and line.split()[0].isdigit()]
    for pid in pids:
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if b"JUPYTERHUB_API_TOKEN=" in f.read():
                    return pid
        except OSError:
            continue
    raise AssertionError(f"no process of job {job_id} has the hub token: {pids}")


def test_progress_of_a_pending_spawn_and_cancelling_it(hub):
    """A spawn that cannot start (all CPUs asked for) reports queue details; stopping it cancels the job."""
    cpus = int(ENV.get("NODE_CPUS", "32"))
    results = {}
    th = _spawn_async(hub, "carol", {"image": "site:notebook.sif", "cpus": cpus}, results)
    _wait_pending(hub, "carol")
    messages = []
    deadline = time.monotonic() + 60
    job_id = None
    for ev in hub.progress_events("carol", timeout=60):
        messages.append(ev.get("message", ""))
        if "pending" in ev.get("message", "") and "reason" in ev.get("message", ""):
            break
        if time.monotonic() > deadline:
            break
    th.join(30)
    pending = [m for m in messages if "pending" in m]
    assert pending, messages
    assert "position" in pending[-1], pending
    jobs = _our_jobs("carol")
    assert len(jobs) == 1 and jobs[0]["state"] == "PENDING", jobs
    job_id = jobs[0]["id"]
    hub.stop_server("carol")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _our_jobs("carol"):
        time.sleep(0.5)
    assert _our_jobs("carol") == [], f"pending job {job_id} left behind"


def test_gpu_spawn_requests_gres_and_stop_leaves_no_job(hub):
    r = hub.spawn("carol", {"profile": "gpu"})
    assert r.status_code in (201, 202), r.text
    hub.wait_ready("carol", timeout=120)
    job_id = hub.server("carol")["state"]["job_id"]
    info = scontrol_job(job_id)
    assert "gpu" in info and ("TresPerNode=gres:gpu:1" in info or "gres/gpu=1" in info), info
    assert run_in_terminal(hub, "carol", "printenv CUDA_VISIBLE_DEVICES") == "0"
    hub.stop_server("carol")
    assert _our_jobs("carol") == []
    assert job_id not in [j["id"] for j in slurm_jobs()]


def test_corrupt_or_missing_image_fails_fast_with_a_clear_message(hub):
    # a corrupt image in carol's own image directory: listed by the catalog, unusable by Apptainer
    home = "/home/carol"
    subprocess.run(["runuser", "-u", "carol", "--", "mkdir", "-p", f"{home}/images"], check=True)
    corrupt = f"{home}/images/corrupt.sif"
    subprocess.run(["runuser", "-u", "carol", "--", "dd", "if=/dev/urandom", f"of={corrupt}", "bs=1k", "count=64"],
                   check=True, capture_output=True)
    try:
        t0 = time.monotonic()
        r = hub.spawn("carol", {"image": "user:corrupt.sif"})
        if r.status_code == 400:
            # the catalog already refused the image
            assert "image" in r.json()["message"]
        else:
            assert r.status_code in (201, 202, 500), r.text
            if r.status_code != 500:
                events = list(hub.progress_events("carol", timeout=30))
                final = events[-1]
                assert final.get("failed"), events
                message = final["message"]
            else:
                message = r.json()["message"]
            assert "ended" in message and ("image" in message.lower() or "FATAL" in message), message
        assert time.monotonic() - t0 < 10
        assert _our_jobs("carol") == []
    finally:
        subprocess.run(["rm", "-f", corrupt], check=False)

    t0 = time.monotonic()
    r = hub.spawn("carol", {"image": "user:missing.sif"})
    assert r.status_code == 400 and "image" in r.json()["message"], r.text
    assert time.monotonic() - t0 < 10


def test_hub_restart_keeps_servers(hub):
    before = {u: hub.server(u)["state"]["job_id"] for u in ("alice", "bob")}
    hub.restart()
    for user, job_id in before.items():
        s = hub.server(user)
        assert s and s["ready"], (user, s)
        assert s["state"]["job_id"] == job_id
        r = hub.server_get(user, "api/status")
        assert r.status_code == 200, (user, r.status_code, r.text[:300])
    assert run_in_terminal(hub, "alice", "printenv APPTAINER_CONTAINER") == ENV["NOTEBOOK_SIF"]


def test_slurmctld_outage_loses_no_server(hub):
    jobs = {u: hub.server(u)["state"]["job_id"] for u in ("alice", "bob")}
    subprocess.run(["bash", TESTBED, "stop-slurmctld"], check=True, timeout=120)
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 30:  # the hub polls every 5 s meanwhile
            for user in jobs:
                s = hub.server(user)
                assert s and s["ready"], (user, s, hub.log_tail())
            time.sleep(5)
        assert hub.server_get("alice", "api/status").status_code == 200
    finally:
        subprocess.run(["bash", TESTBED, "start-slurmctld"], check=True, timeout=120)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if subprocess.run(["squeue", "-h", "-j", jobs["alice"]], capture_output=True).returncode == 0:
            break
        time.sleep(1)
    time.sleep(12)  # at least two hub polls with Slurm back
    for user, job_id in jobs.items():
        s = hub.server(user)
        assert s and s["ready"] and s["state"]["job_id"] == job_id, (user, s)
        assert hub.server_get(user, "api/status").status_code == 200
    assert {j["user"] for j in _our_jobs()} >= {"alice", "bob"}


def test_stop_leaves_no_job(hub):
    for user in ("alice", "bob"):
        job_id = hub.server(user)["state"]["job_id"]
        hub.stop_server(user)
        assert job_id not in [j["id"] for j in slurm_jobs(user=user)]
    assert _our_jobs() == []


def test_spawn_form_lists_catalog_and_checks_form_values(hub):
    s, xsrf = hub.login("carol")
    r = s.get(hub.url + "/hub/spawn", timeout=60)
    assert r.status_code == 200
    page = r.text
    assert 'name="image"' in page and "site:notebook.sif" in page and "site:notebook-sandbox" in page
    assert 'name="profile"' in page and "One GPU" in page
    assert 'name="partition"' in page and "tesla" in page
    # a hostile form submission goes through the same checks as the REST API
    import re

    m = re.search(r'name="_xsrf" value="([^"]+)"', page)
    xsrf = m.group(1) if m else s.cookies.get("_xsrf")
    r = s.post(hub.url + "/hub/spawn", data={"_xsrf": xsrf, "profile": "standard", "partition": "cpu\n-x",
                                             "image": "site:notebook.sif"}, timeout=60)
    assert "Invalid server option partition" in r.text
    assert _our_jobs("carol") == []
