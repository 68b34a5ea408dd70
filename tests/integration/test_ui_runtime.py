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
import time

import pytest

from test_ui import ARTIFACTS, CHROMIUM, REPO, RUNUSER, Lab, labextension, venv  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration

SCRIPT = REPO / "tests" / "ui" / "runtime-ui.mjs"


class HostLab(Lab):
    """:class:`test_ui.Lab` with jupyter-hpc's container runtime set to ``host``."""

    def start(self, timeout: float = 90) -> "HostLab":
        import requests

        env = {
            "PATH": f"{self.venv}/bin:/usr/local/bin:/usr/bin:/bin",
            "HOME": self.home,
            "USER": self.user,
            "LOGNAME": self.user,
            "LANG": "C.UTF-8",
            "JUPYTER_TOKEN": self.token,
            "JUPYTER_PATH": self.jupyter_path,
            "JUPYTERLAB_SETTINGS_DIR": os.path.join(self.lab_dir, "settings"),
            "JUPYTERLAB_WORKSPACES_DIR": os.path.join(self.lab_dir, "workspaces"),
            "JUPYTER_HPC_CONTAINER_RUNTIME": "host",
        }
        argv = [
            RUNUSER, "-u", self.user, "--", f"{self.venv}/bin/jupyter", "lab",
            "--no-browser", "--ip=127.0.0.1", f"--port={self.port}", "--port-retries=0",
            f"--ServerApp.root_dir={self.root_dir}",
            "--ServerApp.jpserver_extensions={'jupyter_hpc': True}",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ]
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd="/",
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        headers = {"Authorization": f"token {self.token}"}
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited:\n{self.log_tail()}")
            try:
                r = requests.get(self.url + "jupyter-hpc/api/images", headers=headers, timeout=10)
                if r.status_code == 200:
                    self.images_answer = r.json()
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"jupyter lab did not answer:\n{self.log_tail()}")


def test_sidebar_says_containers_are_unavailable(testbed, venv, labextension):  # noqa: F811
    lab = HostLab("alice", venv, labextension).start()
    try:
        runtime = lab.images_answer["runtime"]
        assert runtime["mode"] == "host" and runtime["configured"] == "host"
        env = dict(os.environ, LAB_URL=lab.url, LAB_TOKEN=lab.token, ARTIFACTS=str(ARTIFACTS), CHROMIUM=CHROMIUM)
        result = subprocess.run(["node", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=240,
                                cwd=str(REPO))
        output = result.stdout + result.stderr
        assert result.returncode == 0 and "ok runtime-notice" in output, f"{output[-4000:]}\n{lab.log_tail()}"
        assert (ARTIFACTS / "05-sidebar-host-runtime.png").stat().st_size > 10_000
    finally:
        lab.stop()
