"""Fixtures for tests against the real single-node testbed (Slurm + Apptainer).

Nothing here fakes Slurm or Apptainer. Helpers:

- ``tb``: testbed values (``/etc/jupyter-hpc/testbed.env``), skip when not up.
- ``run_as(user, argv, ...)`` fixture and ``testbed`` fixture: see ``tests/conftest.py``.
- ``slurm_client``: a :class:`jupyter_hpc.cluster.SlurmClient` running commands as root
  (submissions pass ``user=``, which runs sbatch through ``runuser``).
- ``user_jobs(user)``: the user's job ids currently in squeue.
- ``cancel_jobs``: list to append job ids to; they are cancelled after the test.
- ``wait_job(job_id, timeout)``: poll squeue until the job reached a finished state.
- ``user_tmpdir(user)``: a fresh directory owned by the user (mode 0700) under /tmp.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from typing import Dict, List

import pytest


@pytest.fixture(scope="session")
def tb(testbed) -> Dict[str, str]:
    return testbed


@pytest.fixture
def slurm_client():
    from jupyter_hpc.cluster import SlurmClient

    return SlurmClient()


def squeue_ids(user: str) -> List[str]:
    out = subprocess.run(["squeue", "--noheader", "--states=all", "--user=" + user, "--format=%i"],
                         capture_output=True, text=True, timeout=60, check=True)
    return sorted(line.strip() for line in out.stdout.splitlines() if line.strip())


@pytest.fixture
def user_jobs():
    return squeue_ids


@pytest.fixture
def cancel_jobs():
    ids: List[str] = []
    yield ids
    for jid in ids:
        subprocess.run(["scancel", str(jid)], capture_output=True, timeout=60)


def _job_state(job_id: str) -> str:
    out = subprocess.run(["squeue", "--noheader", "--states=all", "--jobs=" + str(job_id), "--format=%T"],
                         capture_output=True, text=True, timeout=60)
    return out.stdout.strip() or "GONE"


@pytest.fixture
def wait_job():
    finished = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
                "PREEMPTED", "BOOT_FAIL", "DEADLINE", "GONE"}

    def wait(job_id, timeout: float = 120.0) -> str:
        deadline = time.monotonic() + timeout
        state = "UNKNOWN"
        while time.monotonic() < deadline:
            state = _job_state(str(job_id))
            if state.split()[0] in finished:
                return state.split()[0]
            time.sleep(0.5)
        raise AssertionError(f"job {job_id} did not finish within {timeout}s (last state {state})")

    return wait


@pytest.fixture
def user_tmpdir():
    made: List[str] = []

    def make(user: str) -> str:
        pw = pwd.getpwnam(user)
        path = tempfile.mkdtemp(prefix=f"jhpc-{user}-", dir="/tmp")
        os.chown(path, pw.pw_uid, pw.pw_gid)
        os.chmod(path, 0o700)
        made.append(path)
        return path

    yield make
    for path in made:
        shutil.rmtree(path, ignore_errors=True)
