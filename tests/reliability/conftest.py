"""Reliability and security suite: shared fixtures and the end-of-run figures.

Tests here run against the real testbed (``tests/testbed/testbed.sh up``) and are
marked ``integration`` and ``reliability``. They reuse the integration fixtures
(``tb``, ``run_as``, ``user_jobs``, ``cancel_jobs``, ``wait_job``, ``user_tmpdir``)
and helpers (``hub_fixtures.HubProcess``, ``server_fixtures.UserServer``).

Session fixtures start ONE hub (users alice, bob, carol, user01..user10) and one
jupyter server per user (alice, bob), shared by all modules; every Slurm job the
suite starts carries the job name in :data:`JOB_NAME` or is cancelled by id.
``pytest_terminal_summary`` prints the figures collected in
:data:`reliability_figures.FIGURES`.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import secrets
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
INTEGRATION = os.path.join(os.path.dirname(HERE), "integration")
for _p in (HERE, INTEGRATION):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import reliability_figures  # noqa: E402
from reliability_corpus import ESCAPE_DIR_LINK, ESCAPE_LINK, HOSTILE_USER  # noqa: E402

# The integration fixtures, loaded under a private module name and re-exported here.
_spec = importlib.util.spec_from_file_location("jhpc_integration_conftest", os.path.join(INTEGRATION, "conftest.py"))
_integration = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_integration)
tb = _integration.tb
slurm_client = _integration.slurm_client
user_jobs = _integration.user_jobs
cancel_jobs = _integration.cancel_jobs
wait_job = _integration.wait_job
user_tmpdir = _integration.user_tmpdir
squeue_ids = _integration.squeue_ids

#: Slurm job name of every server job the suite's hub submits.
JOB_NAME = "jhrel-" + secrets.token_hex(3)
#: A local port nothing listens on: "the registry is down".
DEAD_REGISTRY_PORT = 5999
DEAD_REF = f"docker://127.0.0.1:{DEAD_REGISTRY_PORT}/demo/tiny:latest"
LOAD_USERS = [f"user{i:02d}" for i in range(1, 11)]
IMAGE = "site:notebook.sif"
HUB_POLL_INTERVAL = 2
#: The hub's start_timeout. Twenty servers starting at once on a 2-core machine (test_load) take
#: 60-100 s here and longer on slower machines; a spawn is timed out only far beyond that.
HUB_START_TIMEOUT = 420
#: The hub's job watcher interval (APPTAINER_SPAWNER_CONFIG of hub_fixtures).
WATCH_INTERVAL = 2.0
#: The user servers' job watcher interval (set by server_fixtures.UserServer).
SERVER_WATCH_INTERVAL = 1.0


def pytest_configure(config):
    config.addinivalue_line("markers", "reliability: reliability and security suite (tests/reliability)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/reliability/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.integration)
            item.add_marker(pytest.mark.reliability)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    figures = reliability_figures.FIGURES
    if figures.empty():
        return
    terminalreporter.section("jupyter-hpc reliability figures")
    for line in reliability_figures.summary_lines(figures):
        terminalreporter.write_line(line)
    path = os.environ.get("JUPYTER_HPC_RELIABILITY_REPORT")
    if path:
        reliability_figures.dump(path)
        terminalreporter.write_line(f"figures written to {path}")


@pytest.fixture(scope="session")
def figures():
    return reliability_figures.FIGURES


# -- users -------------------------------------------------------------------------------------


def ensure_user(name: str, group: str = "hpcusers") -> None:
    """Create a test user (idempotent): own group, member of ``group``, home 0700 with ~/images."""
    if subprocess.run(["id", name], capture_output=True).returncode != 0:
        if subprocess.run(["getent", "group", name], capture_output=True).returncode != 0:
            subprocess.run(["groupadd", name], check=True, capture_output=True)
        extra = ["-G", group] if subprocess.run(["getent", "group", group], capture_output=True).returncode == 0 else []
        subprocess.run(["useradd", "-g", name, *extra, "-d", f"/home/{name}", "-m", "-s", "/bin/bash", name],
                       check=True, capture_output=True)
    for d in (f"/home/{name}", f"/home/{name}/images"):
        subprocess.run(["install", "-d", "-o", name, "-g", name, "-m", "0700", d], check=True)


@pytest.fixture(scope="session")
def load_users(tb):
    for name in LOAD_USERS:
        ensure_user(name)
    return list(LOAD_USERS)


@pytest.fixture(scope="session")
def hostile_user(tb):
    """The user who sends hostile values (only this suite submits jobs as her)."""
    ensure_user(HOSTILE_USER)
    return HOSTILE_USER


@pytest.fixture(scope="session")
def escape_links(hostile_user):
    """Symlinks in mallory's image directory that point out of it (must never be usable)."""
    pw = pwd.getpwnam(hostile_user)
    images = os.path.join(pw.pw_dir, "images")
    made = []
    for name, target in ((ESCAPE_LINK, "/etc/passwd"), (ESCAPE_DIR_LINK, "/home/alice/images")):
        path = os.path.join(images, name)
        if os.path.lexists(path):
            os.unlink(path)
        os.symlink(target, path)
        os.lchown(path, pw.pw_uid, pw.pw_gid)
        made.append(path)
    yield made
    for path in made:
        if os.path.lexists(path):
            os.unlink(path)


# -- servers -------------------------------------------------------------------------------------


def _server_args(tb):
    # A list option is given once per item (a Python list literal on the command line would
    # become a single item of the list); any other option only once (UserServer sets
    # --HPCExtension.watch_interval itself: a second value would void the whole configuration).
    registries = (tb["REGISTRY"], f"127.0.0.1:{DEAD_REGISTRY_PORT}")
    return (
        "--HPCExtension.proxy_cache_seconds=0",
        *[f"--ImageCatalog.insecure_registries={r}" for r in registries],
        *[f"--ImageCatalog.allowed_registries={r}" for r in registries],
    )


@pytest.fixture(scope="session")
def mallory_srv(tb, hostile_user, escape_links):
    from server_fixtures import UserServer

    server = UserServer(hostile_user, tb["VENV"], extra_args=_server_args(tb)).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def alice_srv(tb):
    from server_fixtures import UserServer

    server = UserServer("alice", tb["VENV"], extra_args=_server_args(tb)).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def bob_srv(tb):
    from server_fixtures import UserServer

    server = UserServer("bob", tb["VENV"], extra_args=_server_args(tb)).start()
    yield server
    server.stop()


HUB_EXTRA = f'''
c.JupyterHub.active_server_limit = 0
c.JupyterHub.allow_named_servers = True
c.ImageCatalog.insecure_registries = ["127.0.0.1:5000", "127.0.0.1:{DEAD_REGISTRY_PORT}"]
c.ImageCatalog.allowed_registries = ["127.0.0.1:5000", "127.0.0.1:{DEAD_REGISTRY_PORT}"]
c.ImageCatalog.remote_images = [{{"ref": "{DEAD_REF}", "title": "Image from a registry that is down"}}]
c.ApptainerSlurmSpawner.default_memory = "512M"
c.ApptainerSlurmSpawner.stop_timeout = 60
'''


@pytest.fixture(scope="session")
def hub(tb, tmp_path_factory):
    """One JupyterHub for the suite (poll interval 2 s, watcher interval 2 s)."""
    from hub_fixtures import HubProcess

    users = ["alice", "bob", "carol", HOSTILE_USER] + LOAD_USERS
    h = HubProcess(str(tmp_path_factory.mktemp("relhub")), users=users, job_name=JOB_NAME,
                   poll_interval=HUB_POLL_INTERVAL, start_timeout=HUB_START_TIMEOUT, extra_config=HUB_EXTRA)
    h.start()
    yield h
    try:
        stop_all_servers(h, users)
    finally:
        h.stop()
        subprocess.run(["scancel", "--name=" + JOB_NAME], capture_output=True, timeout=60)


def stop_all_servers(h, users, timeout: float = 90) -> None:
    for user in users:
        try:
            h.api("DELETE", f"/users/{user}/server", timeout=60)
        except Exception:  # noqa: BLE001 - teardown goes on
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not any(h.server(u) for u in users):
                return
        except Exception:  # noqa: BLE001
            return
        time.sleep(1)


def jobs_named(name: str = JOB_NAME, user: str = None):
    """Ids of pending/running jobs with the suite's job name."""
    from hub_fixtures import slurm_jobs

    return [j["id"] for j in slurm_jobs(user=user, name=name)]


def active_job_ids(user: str):
    """The user's pending/running/completing job ids (what "submitted" means for the figures)."""
    out = subprocess.run(["squeue", "--noheader", "--user=" + user, "--states=PENDING,RUNNING,COMPLETING,CONFIGURING,SUSPENDED",
                          "--format=%i"], capture_output=True, text=True, timeout=60)
    return {line.strip() for line in out.stdout.splitlines() if line.strip()}


def all_job_ids(user: str):
    """Every job id squeue still lists for the user (any state, incl. finished within MinJobAge)."""
    return set(squeue_ids(user))
