"""The HPC sidebar says plainly when jobs run without containers.

A ``jupyter lab`` as alice whose jupyter-hpc runs in host mode
(``JUPYTER_HPC_CONTAINER_RUNTIME=host``, i.e. ``ContainerRuntime.mode``) is
opened in chromium by ``tests/ui/runtime-ui.mjs``; the Images section must show
"Containers unavailable on this host: commands run directly on the node".
Screenshot: ``artifacts/ui/05-sidebar-host-runtime.png``.
"""

from __future__ import annotations

import os
import subprocess

import pytest
import requests

from test_ui import ARTIFACTS, CHROMIUM, REPO, Lab, labextension, venv  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration

SCRIPT = REPO / "tests" / "ui" / "runtime-ui.mjs"


def test_sidebar_says_containers_are_unavailable(testbed, venv, labextension):  # noqa: F811
    lab = Lab("alice", venv, labextension, extra_env={"JUPYTER_HPC_CONTAINER_RUNTIME": "host"}).start()
    try:
        r = requests.get(lab.url + "jupyter-hpc/api/images", headers={"Authorization": f"token {lab.token}"},
                         timeout=60)
        assert r.status_code == 200, r.text
        runtime = r.json()["runtime"]
        assert runtime["mode"] == "host" and runtime["configured"] == "host"
        env = dict(os.environ, LAB_URL=lab.url, LAB_TOKEN=lab.token, ARTIFACTS=str(ARTIFACTS), CHROMIUM=CHROMIUM)
        result = subprocess.run(["node", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=240,
                                cwd=str(REPO))
        output = result.stdout + result.stderr
        assert result.returncode == 0 and "ok runtime-notice" in output, f"{output[-4000:]}\n{lab.log_tail()}"
        assert (ARTIFACTS / "05-sidebar-host-runtime.png").stat().st_size > 10_000
    finally:
        lab.stop()
