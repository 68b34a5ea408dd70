"""Shared test helpers for unit and integration tests.

- :func:`testbed_env` reads ``/etc/jupyter-hpc/testbed.env`` (written by
  ``tests/testbed/testbed.sh up``) into a dict.
- :func:`run_as_user` runs an argv as a test user (``runuser -u USER --``);
  tests get it as the ``run_as`` fixture: ``run_as("alice", ["id", "-un"])``.
- Tests under ``tests/integration/`` are marked ``integration`` automatically;
  they are skipped when the testbed is not up.
- With ``JUPYTER_HPC_REQUIRE_INTEGRATION=1`` the run FAILS unless at least one
  integration test passed (so CI cannot go green by skipping everything).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence

import pytest

TESTBED_ENV_FILE = os.environ.get("JUPYTER_HPC_TESTBED_ENV", "/etc/jupyter-hpc/testbed.env")
REQUIRE_INTEGRATION = os.environ.get("JUPYTER_HPC_REQUIRE_INTEGRATION", "") == "1"

_INTEGRATION_PASSED = 0
_INTEGRATION_RAN = 0


def testbed_env(path: str = TESTBED_ENV_FILE) -> Dict[str, str]:
    """``KEY=value`` lines of the testbed state file (shell quoting allowed); ``{}`` when absent."""
    env: Dict[str, str] = {}
    try:
        text = Path(path).read_text()
    except OSError:
        return env
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        if line.startswith("export "):
            line = line[len("export "):]
        key, _, value = line.partition("=")
        try:
            parts = shlex.split(value)
        except ValueError:
            parts = [value]
        env[key.strip()] = " ".join(parts)
    return env


def run_as_user(
    user: Optional[str],
    argv: Sequence[str],
    *,
    input: Optional[str] = None,
    env: Optional[Mapping[str, str]] = None,
    timeout: float = 120,
    check: bool = False,
    cwd: Optional[str] = None,
) -> subprocess.CompletedProcess:
    """Run ``argv`` as ``user`` (``None``: as the current user); text output captured.

    ``env`` is added to the current environment. Commands run from ``/`` by
    default so that a user without access to the current directory can start.
    """
    full = list(argv) if not user else ["runuser", "-u", user, "--", *argv]
    merged = dict(os.environ)
    if env:
        merged.update(env)
    return subprocess.run(
        full,
        input=input,
        env=merged,
        cwd=cwd or "/",
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
    )


def _slurm_problem() -> Optional[str]:
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"scontrol ping failed: {e}"
    if "UP" not in ping.stdout:
        return f"slurmctld is not answering: {ping.stdout.strip().splitlines()[0] if ping.stdout.strip() else ''} {ping.stderr.strip()}"
    return None


def testbed_problem(env: Optional[Mapping[str, str]] = None, wait: Optional[float] = None) -> Optional[str]:
    """Why the testbed cannot be used (``None`` when it can).

    slurmctld may be down for a moment (a test restarting it): wait up to
    ``wait`` seconds (default ``$JUPYTER_HPC_TESTBED_WAIT`` or 90) for it.
    """
    env = testbed_env() if env is None else env
    if not env:
        return f"testbed not set up ({TESTBED_ENV_FILE} missing); run `make testbed`"
    if os.geteuid() != 0:
        return "integration tests run as root (they switch to test users with runuser)"
    wait = float(os.environ.get("JUPYTER_HPC_TESTBED_WAIT", "90")) if wait is None else wait
    deadline = time.monotonic() + wait
    while True:
        problem = _slurm_problem()
        if problem is None or time.monotonic() >= deadline:
            return problem
        time.sleep(2)


_TESTBED_OK: Dict[str, object] = {}


def _cached_problem() -> Optional[str]:
    """Testbed problem; a good answer is remembered, a bad one re-checked for every test."""
    if _TESTBED_OK.get("ok"):
        return None
    if _TESTBED_OK.get("bad"):
        return _TESTBED_OK["bad"]
    problem = testbed_problem()
    if problem is None:
        _TESTBED_OK["ok"] = True
    else:
        _TESTBED_OK["bad"] = problem  # waited once already: do not wait again for every test
    return problem


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/integration/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.integration)


def pytest_runtest_setup(item):
    if item.get_closest_marker("integration") is not None:
        problem = _cached_problem()
        if problem:
            if REQUIRE_INTEGRATION:
                pytest.fail(f"integration test required but the testbed is unusable: {problem}", pytrace=False)
            pytest.skip(problem)


def pytest_runtest_logreport(report):
    global _INTEGRATION_PASSED, _INTEGRATION_RAN
    if report.when != "call" or "integration" not in report.keywords:
        return
    _INTEGRATION_RAN += 1
    if report.passed:
        _INTEGRATION_PASSED += 1


def pytest_sessionfinish(session, exitstatus):
    if not REQUIRE_INTEGRATION:
        return
    if session.config.option.collectonly:
        return
    if _INTEGRATION_PASSED == 0:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        msg = (
            "JUPYTER_HPC_REQUIRE_INTEGRATION=1 but no integration test passed "
            f"({_INTEGRATION_RAN} ran); failing the run"
        )
        if reporter is not None:
            reporter.write_line(msg, red=True, bold=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def testbed() -> Dict[str, str]:
    """The testbed values (skips the test when the testbed is not usable)."""
    problem = _cached_problem()
    if problem:
        if REQUIRE_INTEGRATION:
            pytest.fail(f"testbed required but unusable: {problem}", pytrace=False)
        pytest.skip(problem)
    return testbed_env()


@pytest.fixture(scope="session")
def run_as():
    """``run_as(user, argv, input=None, env=None, timeout=120, check=False)`` -> CompletedProcess."""
    return run_as_user
