"""Packaging: one wheel carries the prebuilt Lab extension, and the notebook images enable it.

The testbed builds ``jupyter_hpc/labextension`` (``labextension/build.sh``)
before it builds the wheel that goes into the notebook images, so a server
spawned in an image shows the HPC sidebar with no Node.js in the image.
"""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
LABEXT = REPO / "jupyter_hpc" / "labextension"
SHARE = "share/jupyter/labextensions/jupyter-hpc"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    if not (LABEXT / "package.json").is_file():
        pytest.fail("jupyter_hpc/labextension is not built: the testbed (`make testbed`) builds it")
    out = tmp_path_factory.mktemp("wheel")
    src = tmp_path_factory.mktemp("src")
    # Build from a copy so that setuptools' build/ directory stays out of the checkout.
    subprocess.run(["cp", "-a", "--", *[str(p) for p in REPO.iterdir()
                                         if p.name not in {".git", "build", "artifacts"}], str(src)], check=True)
    subprocess.run(["rm", "-rf", str(src / "labextension" / "node_modules")], check=True)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                             "-w", str(out), str(src)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    wheels = list(out.glob("jupyter_hpc-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_ships_the_prebuilt_labextension_and_server_config(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    data = [n.split(".data/data/", 1)[1] for n in names if ".data/data/" in n]
    assert f"{SHARE}/package.json" in data
    assert f"{SHARE}/install.json" in data
    assert any(re.match(rf"{SHARE}/static/remoteEntry\.[0-9a-f]+\.js$", n) for n in data), data
    assert f"{SHARE}/schemas/jupyter-hpc/plugin.json" in data
    assert "etc/jupyter/jupyter_server_config.d/jupyter_hpc.json" in data
    # The spawner, the provisioner and the server extension are in the same distribution.
    for module in ("jupyter_hpc/spawners/__init__.py", "jupyter_hpc/provisioner.py", "jupyter_hpc/extension.py"):
        assert module in names


def test_notebook_image_lists_the_extension_enabled(tb, run_as):
    res = run_as("alice", [tb["APPTAINER"], "exec", tb["NOTEBOOK_SIF"], "jupyter", "labextension", "list"], timeout=120)
    text = re.sub(r"\x1b\[[0-9;]*m", "", res.stdout + res.stderr)
    assert res.returncode == 0, text
    assert re.search(r"jupyter-hpc v\S+ enabled\s+OK", text), text
    res = run_as("alice", [tb["APPTAINER"], "exec", tb["NOTEBOOK_SIF"], "jupyter", "server", "extension", "list"],
                 timeout=120)
    text = re.sub(r"\x1b\[[0-9;]*m", "", res.stdout + res.stderr)
    assert re.search(r"jupyter_hpc\s+enabled", text), text
