"""The student's path in a real browser: hub login -> spawn form -> pending page -> Lab with the HPC sidebar.

A real JupyterHub (hub_fixtures.HubProcess: configurable-http-proxy, the
ApptainerSlurmSpawner) runs on the testbed; ``tests/ui/hub-ui.mjs`` drives
Debian's chromium through playwright-core and saves PNG screenshots
(``artifacts/ui/5*.png``). The server runs as a Slurm job inside the
notebook image, and its sidebar lists the site's images through the Slurm
client and catalog directories bound into the container.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest

try:
    from .hub_fixtures import HubProcess, slurm_jobs
except ImportError:  # tests/integration is not a package
    from hub_fixtures import HubProcess, slurm_jobs

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
UI_SCRIPT = REPO / "tests" / "ui" / "hub-ui.mjs"
ARTIFACTS = REPO / "artifacts" / "ui"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
JOB_NAME = "jhui-" + secrets.token_hex(3)


@pytest.fixture(scope="module")
def hub(testbed, tmp_path_factory):
    if not shutil.which("node") or not (REPO / "labextension" / "node_modules" / "playwright-core").is_dir():
        pytest.skip("Node.js or playwright-core missing (labextension/build.sh installs it)")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    h = HubProcess(str(tmp_path_factory.mktemp("uihub")), job_name=JOB_NAME,
                   extra_config='c.Spawner.default_url = "/lab"\n')
    h.start()
    yield h
    try:
        if h.server("alice") is not None:
            h.stop_server("alice")
    finally:
        h.stop()
        subprocess.run(["scancel", "--name=" + JOB_NAME], check=False, capture_output=True)


def test_login_spawn_form_pending_page_and_lab_sidebar(hub, testbed):
    env = dict(os.environ, HUB_URL=hub.url + "/", HUB_USER="alice", HUB_PASSWORD=hub.password,
               ARTIFACTS=str(ARTIFACTS), CHROMIUM=CHROMIUM, HUB_IMAGE="site:notebook.sif")
    result = subprocess.run(["node", str(UI_SCRIPT)], env=env, capture_output=True, text=True, timeout=420,
                            cwd=str(REPO))
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "ok hub-spawn" in output, f"{output[-6000:]}\n--- hub log ---\n{hub.log_tail()}"
    facts = dict(line[5:].split("=", 1) for line in output.splitlines() if line.startswith("fact "))
    assert facts["url"].endswith("/user/alice/lab")
    # the sidebar lists the site images and alice's own: Slurm and the catalog work inside the container
    assert int(facts["images"]) >= 3, output
    # the server is alice's Slurm job in the chosen image
    jobs = [j for j in slurm_jobs(user="alice", name=JOB_NAME) if j["state"] == "RUNNING"]
    assert len(jobs) == 1 and "image=site:notebook.sif" in jobs[0]["comment"]
    for name in ("51-hub-spawn-form", "53-hub-lab-sidebar"):
        assert (ARTIFACTS / f"{name}.png").stat().st_size > 10_000
