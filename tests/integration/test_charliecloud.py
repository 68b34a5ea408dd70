"""Charliecloud as the second container runtime, on the real testbed (ch-run 0.31, Slurm, as alice).

The testbed's ``notebook-ch`` is a Charliecloud image directory (``ch/environment``,
``ch/metadata.json``; no ``.singularity.d``): the catalog lists it with runtime
``charliecloud`` and every entry point runs it with ``ch-run``: cell jobs (REST and
``%%hpc``), venvs, kernels (provisioner) and hub-spawned servers. A server started
with ``JUPYTER_HPC_CONTAINER_RUNTIME=charliecloud`` runs directory images with
``ch-run`` site-wide and refuses SIF files with a message that says what to do.

``CH_RUNNING`` is set by ch-run inside its containers, ``APPTAINER_CONTAINER`` by Apptainer:
the cells print both, so each test sees which runtime really ran it.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import subprocess

import pytest

from hub_fixtures import running_hub
from kernel_fixtures import ipython_output, kernel_output
from server_fixtures import UserServer, server_for, validate_schema, wait_cell

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

CH_IMAGE = "site:notebook-ch"
PROBE = ("import os, sys\n"
         "print('ch', os.environ.get('CH_RUNNING') is not None)\n"
         "print('apptainer', os.environ.get('APPTAINER_CONTAINER'))\n"
         "print('python', sys.executable)\n"
         "print('cwd', os.getcwd())\n"
         "6 * 7\n")


@pytest.fixture(scope="module")
def alice(testbed):
    if not os.path.isdir(testbed.get("CH_IMAGE_DIR", "/nonexistent")):
        pytest.skip("the testbed has no Charliecloud image (bash tests/testbed/testbed.sh up)")
    server = server_for("alice", testbed["VENV"])
    yield server
    server.stop()


def as_alice(*argv, check=True):
    return subprocess.run(["runuser", "-u", "alice", "--"] + list(argv), capture_output=True, text=True,
                          timeout=120, check=check)


def stdout_of(outputs):
    return "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream" and o["name"] == "stdout")


def submit(server, code, image=CH_IMAGE, **extra):
    body = {"code": code, "image": image, "time": "00:05:00", "memory": "1G", "cpus": 1}
    body.update(extra)
    r = server.api("POST", "cells", body)
    assert r.status_code == 201, r.text
    return r.json()


def test_catalog_lists_the_charliecloud_image(alice, testbed):
    r = alice.api("GET", "images")
    assert r.status_code == 200, r.text
    images = {i["id"]: i for i in r.json()["images"]}
    ch = images[CH_IMAGE]
    validate_schema(ch, "Image")
    assert ch["format"] == "directory" and ch["runtime"] == "charliecloud", ch
    assert ch["title"] == "Python notebook (Charliecloud)" and ch["path"] == testbed["CH_IMAGE_DIR"]
    # the Apptainer images keep the site's runtime
    assert images["site:notebook.sif"]["runtime"] is None
    assert images["site:notebook-sandbox"]["runtime"] is None


def test_cell_job_runs_with_ch_run(alice, cancel_jobs):
    sub = submit(alice, PROBE)
    cancel_jobs.append(sub["job_id"])
    assert sub["runtime"] == "charliecloud"
    outputs, last, _ = wait_cell(alice, sub["job_id"], timeout=120)
    assert last["status"] == "ok", outputs
    out = stdout_of(outputs)
    # ch-run ran it, not Apptainer; the image's own Python came first through ch/environment
    assert "ch True\n" in out and "apptainer None\n" in out, out
    assert "python /opt/env/bin/python3\n" in out, out
    assert f"cwd {alice.home}\n" in out, out
    assert any(o["output_type"] == "execute_result" and o["data"]["text/plain"] == "42" for o in outputs)
    err = open(os.path.join(alice.home, ".jupyter-hpc", "jobs", "by-id", sub["job_id"], "slurm.err")).read()
    assert "jupyter-hpc: runtime=charliecloud" in err, err
    job = alice.api("GET", f"jobs/{sub['job_id']}")
    assert job.status_code == 200, job.text


def test_venv_on_a_charliecloud_image(alice, cancel_jobs):
    name = "ch-venv"
    root = os.path.join(alice.home, ".jupyter-hpc", "venvs")
    as_alice("rm", "-rf", os.path.join(root, name))
    r = alice.api("POST", "venvs", {"name": name, "image": CH_IMAGE}, timeout=300)
    assert r.status_code == 201, r.text
    path = r.json()["path"]
    try:
        site = as_alice("bash", "-c", f"ls -d {path}/lib/python3*/site-packages").stdout.strip()
        as_alice("bash", "-c", f"echo 'WHERE = \"ch-venv\"' > {site}/ch_venv_pkg.py")
        code = ("import os, sys, ch_venv_pkg\nprint('prefix', sys.prefix, ch_venv_pkg.WHERE)\n"
                "print('ch', os.environ.get('CH_RUNNING') is not None)\n"
                "import jupyter_hpc\nprint('image package', jupyter_hpc.__file__.startswith('/opt/env/'))\n")
        sub = submit(alice, code, venv=name)
        cancel_jobs.append(sub["job_id"])
        outputs, last, _ = wait_cell(alice, sub["job_id"], timeout=120)
        assert last["status"] == "ok", outputs
        out = stdout_of(outputs)
        assert f"prefix {path} ch-venv\n" in out and "ch True\n" in out and "image package True\n" in out, out
    finally:
        alice.api("DELETE", f"venvs/{name}")


def test_instances_and_apps_are_apptainer_only(alice):
    r = alice.api("POST", "services", {"image": CH_IMAGE, "command": ["true"], "instance": True, "time": "00:05:00"})
    assert r.status_code == 400 and r.json()["field"] == "instance", r.text
    assert "Apptainer" in r.json()["message"]


def test_site_wide_charliecloud_runs_sandboxes_and_refuses_sif(testbed, cancel_jobs):
    server = UserServer("alice", testbed["VENV"])
    env = server.environment()
    server.environment = lambda: dict(env, JUPYTER_HPC_CONTAINER_RUNTIME="charliecloud")
    server.start()
    try:
        r = server.api("GET", "images")
        assert r.status_code == 200 and r.json()["runtime"]["mode"] == "charliecloud", r.text
        # the Apptainer sandbox is a directory: ch-run runs it
        sub = submit(server, PROBE, image="site:notebook-sandbox")
        cancel_jobs.append(sub["job_id"])
        assert sub["runtime"] == "charliecloud"
        outputs, last, _ = wait_cell(server, sub["job_id"], timeout=120)
        assert last["status"] == "ok", outputs
        assert "ch True\n" in stdout_of(outputs)
        # a SIF file cannot run with ch-run: refused before anything is submitted
        r = server.api("POST", "cells", {"code": "1", "image": "site:notebook.sif", "time": "00:05:00"})
        assert r.status_code == 400 and r.json()["field"] == "image", r.text
        assert "Charliecloud runs directory images" in r.json()["message"]
        assert "Apptainer runtime" in r.json()["message"]
    finally:
        server.stop()


MAGIC = r'''
ip = get_ipython()
ip.run_line_magic("load_ext", "jupyter_hpc")
ip.run_cell_magic("hpc", "--image site:notebook-ch --time 00:05:00 --mem 512M --wait",
                  "import os\nprint('magic ch', os.environ.get('CH_RUNNING') is not None)\n")
'''


def test_magic_runs_a_cell_with_charliecloud(testbed):
    proc = ipython_output("alice", testbed, MAGIC)
    out = proc.stdout + proc.stderr
    assert "magic ch True" in out, out


def test_kernel_runs_in_a_charliecloud_image(testbed):
    """A kernelspec naming the image directory: the provisioner sees a Charliecloud image and uses ch-run."""
    home = pwd.getpwnam("alice").pw_dir
    cli = f"{testbed['VENV']}/bin/jupyter-hpc"
    name = "ch-kernel"
    kernel_dir = os.path.join(home, ".local", "share", "jupyter", "kernels", name)
    as_alice(cli, "kernelspec", "install", "--name", name, "--image", testbed["CH_IMAGE_DIR"],
             "--time", "00:05:00", "--mem", "1G")
    try:
        proc = kernel_output("alice", testbed, name, "import os, sys; "
                             "print('kernel', os.environ.get('CH_RUNNING') is not None, sys.executable)")
    finally:
        as_alice("rm", "-rf", kernel_dir)
    assert "kernel True /opt/env/bin/python" in proc.stdout, proc.stdout + proc.stderr


def test_hub_spawns_a_server_with_charliecloud(testbed, tmp_path_factory):
    """JupyterHub spawns alice's server in notebook-ch; from inside it, the sidebar's API submits a cell job."""
    with running_hub(str(tmp_path_factory.mktemp("chhub")), "jhch-" + secrets.token_hex(3), poll_interval=5) as hub:
        r = hub.spawn("alice", {"image": CH_IMAGE, "partition": "cpu", "memory": "1G", "time": "00:30:00"})
        assert r.status_code in (201, 202), r.text
        hub.wait_ready("alice", timeout=150)
        out = hub.run_code("alice", "import os, sys; print('server', os.environ.get('CH_RUNNING') is not None, "
                                    "sys.executable, 'JUPYTERHUB_API_TOKEN' in os.environ)")
        assert re.search(r"server True /opt/env/bin/python\S* True", out), out

        # Slurm works from inside the Charliecloud container (host tools bound at their mount points)
        _, state, outputs = hub.run_cell("alice", {
            "code": "import os\nprint('inner', os.environ.get('APPTAINER_CONTAINER'))",
            "image": "site:notebook.sif", "time": "00:05:00", "memory": "512M"})
        assert state.get("status") == "ok", state
        assert f"inner {testbed['NOTEBOOK_SIF']}" in stdout_of(outputs)
        hub.stop_server("alice")
