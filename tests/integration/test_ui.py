"""The JupyterLab HPC sidebar in a real browser against a real ``jupyter lab``.

A ``jupyter lab`` runs as alice on the testbed with the jupyter-hpc server
extension enabled and the prebuilt labextension (``labextension/build.sh``,
skipped when unchanged). ``tests/ui/lab-ui.mjs`` drives Debian's chromium
through ``playwright-core`` and saves PNG screenshots of each step under
``artifacts/ui/``.

Needs: the testbed (``tests/testbed/testbed.sh up``), Node.js and
``/usr/bin/chromium``; skipped otherwise.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Dict, Optional

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "labextension" / "build.sh"
LABEXT = REPO / "jupyter_hpc" / "labextension"
UI_SCRIPT = REPO / "tests" / "ui" / "lab-ui.mjs"
ARTIFACTS = REPO / "artifacts" / "ui"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
USER = "alice"
RUNUSER = shutil.which("runuser") or "/usr/sbin/runuser"

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def venv(testbed) -> str:
    return testbed.get("VENV", "/opt/jupyter-hpc/venv")


@pytest.fixture(scope="module")
def labextension(venv) -> Path:
    """Build (or reuse) the prebuilt labextension."""
    if not shutil.which("node"):
        pytest.skip("Node.js is not installed")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    env = dict(os.environ, JUPYTER_HPC_PYTHON=f"{venv}/bin/python")
    result = subprocess.run(["bash", str(BUILD)], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"labextension build failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert (LABEXT / "package.json").is_file()
    return LABEXT


class Lab:
    """``jupyter lab`` as a test user, token in the environment."""

    def __init__(self, user: str, venv: str, labext: Path, extra_env: Optional[Dict[str, str]] = None):
        self.user = user
        self.extra_env = dict(extra_env or {})
        self.venv = venv
        pw = pwd.getpwnam(user)
        self.home = pw.pw_dir
        self.port = _free_port()
        self.token = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}/"
        # Notebooks of the tests live in a directory of the user's own.
        self.root_dir = os.path.join(self.home, "hpc-ui-tests")
        subprocess.run([RUNUSER, "-u", user, "--", "mkdir", "-p", self.root_dir], check=True)
        # Make the labextension visible to this server without touching the venv
        # (an installed copy in the venv would be found as well).
        self.jupyter_path = tempfile.mkdtemp(prefix="hpc-ui-jupyter-path-")
        os.chmod(self.jupyter_path, 0o755)
        os.makedirs(os.path.join(self.jupyter_path, "labextensions"))
        os.chmod(os.path.join(self.jupyter_path, "labextensions"), 0o755)
        os.symlink(str(labext), os.path.join(self.jupyter_path, "labextensions", "jupyter-hpc"))
        # Fresh Lab settings and workspaces (news prompt off), owned by the user.
        uid, gid = pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid
        self.lab_dir = tempfile.mkdtemp(prefix="hpc-ui-lab-")
        settings = os.path.join(self.lab_dir, "settings", "@jupyterlab", "apputils-extension")
        os.makedirs(settings)
        Path(settings, "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
        os.makedirs(os.path.join(self.lab_dir, "workspaces"))
        for dirpath, dirnames, filenames in os.walk(self.lab_dir):
            for name in [dirpath, *(os.path.join(dirpath, f) for f in filenames)]:
                os.chown(name, uid, gid)
        self.log_path = f"/tmp/hpc-ui-lab-{self.port}.log"
        self.proc = None

    def start(self, timeout: float = 90) -> "Lab":
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
            **self.extra_env,
        }
        argv = [
            RUNUSER, "-u", self.user, "--",
            f"{self.venv}/bin/jupyter", "lab",
            "--no-browser", "--ip=127.0.0.1", f"--port={self.port}", "--port-retries=0",
            f"--ServerApp.root_dir={self.root_dir}",
            "--ServerApp.jpserver_extensions={'jupyter_hpc': True}",
            "--HPCExtension.watch_interval=1",
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
                r = requests.get(self.url + "jupyter-hpc/api/partitions", headers=headers, timeout=5)
                if r.status_code == 200:
                    r = requests.get(self.url + "lab/api/settings/jupyter-hpc:plugin", headers=headers, timeout=10)
                    assert r.status_code == 200, f"labextension not found by the server: {r.text[:300]}"
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"jupyter lab did not answer:\n{self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        shutil.rmtree(self.jupyter_path, ignore_errors=True)
        shutil.rmtree(self.lab_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def lab(testbed, venv, labextension):
    testbed_values = testbed
    for stale in ARTIFACTS.glob("FAIL-*.png"):
        stale.unlink()
    server = Lab(USER, venv, labextension).start()
    server.pull_ref = testbed_values.get("TINY_REF", "docker://127.0.0.1:5000/demo/tiny:latest")
    yield server
    server.stop()


def run_ui(lab: Lab, scenario: str, timeout: float = 420) -> str:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, LAB_URL=lab.url, LAB_TOKEN=lab.token, ARTIFACTS=str(ARTIFACTS), CHROMIUM=CHROMIUM,
               UI_PULL_REF=lab.pull_ref)
    try:
        result = subprocess.run(["node", str(UI_SCRIPT), scenario], env=env, capture_output=True, text=True,
                                timeout=timeout, cwd=str(REPO))
    except subprocess.TimeoutExpired as e:
        out = e.stdout or b""
        out = out.decode(errors="replace") if isinstance(out, bytes) else out
        pytest.fail(f"UI scenario {scenario} timed out:\n{out[-6000:]}\n--- server log ---\n{lab.log_tail()}")
    output = result.stdout + result.stderr
    if result.returncode != 0:
        pytest.fail(f"UI scenario {scenario} failed:\n{output[-8000:]}\n--- server log ---\n{lab.log_tail()}")
    assert f"ok {scenario}" in output
    return output


def test_sidebar_lists_testbed_images(lab):
    """The HPC sidebar opens and shows notebook.sif and notebook-sandbox; the filter works."""
    run_ui(lab, "sidebar")
    assert (ARTIFACTS / "01-sidebar-images.png").stat().st_size > 10_000


def test_cell_runs_as_batch_job(lab):
    """Context menu -> dialog -> job; text, figure and result appear in the cell."""
    run_ui(lab, "celljob")
    assert (ARTIFACTS / "12-celljob-done.png").is_file()


def test_cancel_running_job_from_jobs_list(lab):
    """A running cell job is cancelled from the Jobs list after confirmation and leaves it."""
    run_ui(lab, "cancel")
    assert (ARTIFACTS / "22-cancel-done.png").is_file()


def test_pull_remote_image_from_images_list(lab):
    """A remote ref (the testbed registry's demo/tiny) is pulled with the Pull button."""
    run_ui(lab, "pull")
    assert (ARTIFACTS / "41-pull-done.png").is_file()


def test_run_dialog_offers_the_users_venvs(lab, testbed):
    """A venv of alice's is offered in the run dialog; the cell job imports its package."""
    cli = f"{testbed['VENV']}/bin/jupyter-hpc"
    home = pwd.getpwnam(USER).pw_dir

    def as_user(*argv, check=True):
        return subprocess.run([RUNUSER, "-u", USER, "--"] + list(argv), capture_output=True, text=True,
                              timeout=300, check=check, cwd=home)

    as_user(cli, "venv", "remove", "ui-venv", check=False)
    as_user(cli, "venv", "create", "ui-venv", "--image", "site:notebook.sif")
    try:
        as_user("bash", "-c", "cd ~/.jupyter-hpc/venvs/ui-venv/lib/python3*/site-packages && "
                              "echo 'WHERE = \"ui-venv-package\"' > ui_venv_pkg.py")
        run_ui(lab, "venv")
        assert (ARTIFACTS / "51-venv-done.png").is_file()
    finally:
        as_user(cli, "venv", "remove", "ui-venv", check=False)


def test_service_opens_in_lab_tab(lab):
    """A web service job is opened in a Lab tab (proxied iframe) and stopped."""
    run_ui(lab, "service")
    assert (ARTIFACTS / "31-service-tab.png").is_file()
