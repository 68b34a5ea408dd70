"""Reproducible-measurement and custom-environment workflows on the real testbed: real Slurm
jobs, real Apptainer, as alice, through a real jupyter server and the REST API.

- exclusive cell jobs and their run record (node, CPU model, CPU counts, exclusive);
- user venvs layered on an image (REST and ``%hpc venv`` / ``%%hpc --venv``);
- image builds from a definition file (``apptainer build --fakeroot``) and from a sandbox.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import secrets
import subprocess
import time

import pytest

from hub_fixtures import running_hub
from kernel_fixtures import ipython_output, kernel_output
from server_fixtures import server_for, validate_schema, wait_cell

IMAGE = "site:notebook.sif"


@pytest.fixture(scope="module")
def alice(testbed):
    server = server_for("alice", testbed["VENV"])
    yield server
    server.stop()


def submit(server, code, **extra):
    body = {"code": code, "image": IMAGE, "time": "00:05:00", "memory": "1G", "cpus": 1}
    body.update(extra)
    r = server.api("POST", "cells", body)
    assert r.status_code == 201, r.text
    return r.json()["job_id"]


def stdout_of(outputs):
    return "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream" and o["name"] == "stdout")


def others_on_node(user):
    """Jobs of other users (or of other tests) running now: an exclusive job waits for them."""
    out = subprocess.run(["squeue", "--noheader", "--states=RUNNING", "--format=%i %u %j"],
                         capture_output=True, text=True, timeout=60)
    return [line for line in out.stdout.splitlines() if line.strip()]


def wait_exclusive(server, job_id, timeout):
    """Wait for an exclusive cell job; skip when the shared testbed node stayed busy with other jobs."""
    deadline = time.monotonic() + timeout
    busy = []
    while time.monotonic() < deadline:
        r = server.api("GET", f"cells/{job_id}")
        assert r.status_code == 200, r.text
        state = r.json()
        validate_schema(state, "CellState")
        if state["state"] != "PENDING":
            return wait_cell(server, job_id, timeout=max(30, deadline - time.monotonic()))
        busy = others_on_node(server.user)
        time.sleep(0.5)
    if busy:
        pytest.skip(f"the exclusive job {job_id} waited {timeout:.0f} s for the node, held by other jobs: {busy[:5]}")
    raise AssertionError(f"exclusive job {job_id} still pending after {timeout} s on an idle node")


def test_exclusive_cell_job_records_where_it_ran(alice, testbed, cancel_jobs):
    node_cpus = int(testbed["NODE_CPUS"])
    code = "import os\nprint('cpus', len(os.sched_getaffinity(0)))\n"

    bad = alice.api("POST", "cells", {"code": "1", "image": IMAGE, "exclusive": "maybe"})
    assert bad.status_code == 400 and bad.json()["field"] == "exclusive"

    shared = submit(alice, code, cpus=1)
    cancel_jobs.append(shared)
    outputs, last, _ = wait_cell(alice, shared, timeout=120)
    assert last["status"] == "ok", outputs
    validate_schema(last["run"], "RunRecord")
    assert last["run"]["exclusive"] is False and last["run"]["alloc_cpus"] < node_cpus
    assert last["run"]["node"] == testbed["SLURM_NODE"] and last["run"]["cpu_model"]

    excl = submit(alice, code, exclusive=True)
    cancel_jobs.append(excl)
    outputs, last, _ = wait_exclusive(alice, excl, timeout=90)
    assert last["status"] == "ok", outputs
    run = last["run"]
    validate_schema(run, "RunRecord")
    assert run["exclusive"] is True and run["node"] == testbed["SLURM_NODE"] and run["job_id"] == excl
    assert run["cpus"] >= 1 and run["node_cpus"] >= run["cpus"]
    # the whole node was allocated: every CPU Slurm knows of on it
    assert run["alloc_cpus"] == node_cpus
    assert f"cpus {run['cpus']}" in stdout_of(outputs)  # the record matches what the cell saw


# -- user venvs layered on an image ------------------------------------------------------------

VENV = "seed-venv"


def as_alice(*argv, check=True):
    return subprocess.run(["runuser", "-u", "alice", "--"] + list(argv), capture_output=True, text=True,
                          timeout=120, check=check)


def test_venv_create_use_in_cell_job_and_remove(alice, cancel_jobs):
    root = os.path.join(alice.home, ".jupyter-hpc", "venvs")
    as_alice("rm", "-rf", os.path.join(root, VENV), os.path.join(root, "escape"))

    r = alice.api("POST", "venvs", {"name": VENV, "image": IMAGE}, timeout=300)
    assert r.status_code == 201, r.text
    info = r.json()
    validate_schema(info, "Venv")
    path = os.path.join(os.path.realpath(root), VENV)
    assert info["path"] == path and info["image"] == IMAGE and info["python"].startswith("3.")
    assert alice.api("POST", "venvs", {"name": VENV, "image": IMAGE}).status_code == 409
    listed = alice.api("GET", "venvs").json()["venvs"]
    assert VENV in [v["name"] for v in listed]
    for v in listed:
        validate_schema(v, "Venv")

    # a package "installed" into the venv only
    site = as_alice("bash", "-c", f"ls -d {path}/lib/python3*/site-packages").stdout.strip()
    as_alice("bash", "-c", f"echo 'WHERE = \"venv\"' > {site}/seed_venv_pkg.py")
    code = ("import sys, os, seed_venv_pkg, jupyter_hpc\n"
            "print('prefix', sys.prefix)\nprint('pkg', seed_venv_pkg.WHERE)\n"
            "print('env', os.environ.get('VIRTUAL_ENV'))\n"
            "print('path0', os.environ['PATH'].split(':')[0])\n")
    job = submit(alice, code, venv=VENV)
    cancel_jobs.append(job)
    outputs, last, _ = wait_cell(alice, job, timeout=120)
    assert last["status"] == "ok", outputs
    out = stdout_of(outputs)
    assert f"prefix {path}\n" in out and "pkg venv\n" in out and f"env {path}\n" in out
    assert f"path0 {path}/bin\n" in out

    # without the venv the package is not there
    job = submit(alice, "import seed_venv_pkg")
    cancel_jobs.append(job)
    outputs, last, _ = wait_cell(alice, job, timeout=120)
    assert last["status"] == "error" and any(o.get("ename") == "ModuleNotFoundError" for o in outputs)

    # only names, only venvs inside the user's own venv directory
    as_alice("ln", "-sfn", "/tmp", os.path.join(root, "escape"))
    for bad, status in (("../x", 400), ("escape", 400), ("no-such-venv", 400), ("-rf", 400), ("a b", 400)):
        r = alice.api("POST", "cells", {"code": "1", "image": IMAGE, "venv": bad})
        assert r.status_code == status and r.json()["field"] == "venv", (bad, r.text)
    assert alice.api("GET", "venvs/escape").status_code == 404
    assert alice.api("POST", "venvs", {"name": "../up", "image": IMAGE}).status_code == 400
    assert alice.api("POST", "venvs", {"name": "x", "image": "site:nope.sif"}).status_code == 400

    assert alice.api("DELETE", f"venvs/{VENV}").status_code == 204
    assert alice.api("GET", f"venvs/{VENV}").status_code == 404
    assert not os.path.exists(path)
    as_alice("rm", "-f", os.path.join(root, "escape"))


# -- image builds from a definition file (fakeroot) and from a sandbox directory ------------------

TINY_DEF = """Bootstrap: localimage
From: {base}

%post
    echo built-from-definition > /seed-marker

%labels
    org.jupyter-hpc.title Seed build
"""


def wait_build(server, job_id, wait_job, timeout=150):
    state = wait_job(job_id, timeout=timeout)
    r = server.api("GET", f"jobs/{job_id}/output")
    assert r.status_code == 200, r.text
    validate_schema(r.json(), "JobOutput")
    return state, r.json()["data"]


def test_build_images_from_definition_and_sandbox(alice, testbed, wait_job, cancel_jobs):
    work = os.path.join(alice.home, "seed-build")
    images = os.path.join(alice.home, "images")
    as_alice("rm", "-rf", work, os.path.join(images, "seed-def.sif"), os.path.join(images, "seed-box.sif"))
    as_alice("mkdir", "-p", work)
    base = os.path.join(work, "tiny.sif")
    as_alice(testbed["APPTAINER"], "pull", testbed["APPTAINER_INSECURE_PULL_FLAG"], base, testbed["TINY_REF"])
    subprocess.run(["runuser", "-u", "alice", "--", "tee", os.path.join(work, "tiny.def")],
                   input=TINY_DEF.format(base=base), capture_output=True, text=True, check=True, timeout=30)
    as_alice(testbed["APPTAINER"], "build", "--sandbox", os.path.join(work, "box"), base)
    as_alice("bash", "-c", f"echo built-from-sandbox > {work}/box/seed-marker")

    r = alice.api("POST", "builds", {"name": "seed-def", "definition": "seed-build/tiny.def", "time": "00:10:00"})
    assert r.status_code == 201, r.text
    build = r.json()
    validate_schema(build, "Build")
    cancel_jobs.append(build["job_id"])
    assert build["image"] == "user:seed-def.sif" and build["fakeroot"] is True and build["kind"] == "definition"
    jobs = {j["id"]: j for j in alice.api("GET", "jobs").json()["jobs"]}
    assert jobs[build["job_id"]]["kind"] == "build"

    r = alice.api("POST", "builds", {"name": "seed-box.sif", "sandbox": "seed-build/box"})
    assert r.status_code == 201, r.text
    box = r.json()
    cancel_jobs.append(box["job_id"])
    assert box["fakeroot"] is False and box["kind"] == "sandbox"

    for job, marker in ((build, "built-from-definition"), (box, "built-from-sandbox")):
        state, log = wait_build(alice, job["job_id"], wait_job)
        assert state == "COMPLETED", log
        assert "jupyter-hpc: built " + job["path"] in log
        out = as_alice(testbed["APPTAINER"], "exec", job["path"], "cat", "/seed-marker").stdout
        assert out.strip() == marker
        assert oct(os.stat(job["path"]).st_mode & 0o777) == "0o644"
    ids = [i["id"] for i in alice.api("GET", "images").json()["images"]]
    assert "user:seed-def.sif" in ids and "user:seed-box.sif" in ids
    assert not [n for n in os.listdir(images) if ".partial-" in n]

    # refusals: names, sources outside the root directory, both or neither source, existing image
    for body, status, field in (
        ({"name": "../x", "sandbox": "seed-build/box"}, 400, "name"),
        ({"name": "x y", "sandbox": "seed-build/box"}, 400, "name"),
        ({"name": "x", "definition": "/etc/passwd"}, 400, "definition"),
        ({"name": "x", "definition": "../bob/x.def"}, 400, "definition"),
        ({"name": "x", "definition": "seed-build/tiny.def", "sandbox": "seed-build/box"}, 400, "definition"),
        ({"name": "x"}, 400, "definition"),
        ({"name": "x", "sandbox": "seed-build"}, 400, "sandbox"),
        ({"name": "seed-def", "definition": "seed-build/tiny.def"}, 409, "name"),
    ):
        r = alice.api("POST", "builds", body)
        assert r.status_code == status and r.json()["field"] == field, (body, r.text)

    # a failing build shows Apptainer's error in the job output and leaves no image behind
    subprocess.run(["runuser", "-u", "alice", "--", "tee", os.path.join(work, "bad.def")],
                   input="Bootstrap: localimage\nFrom: /nonexistent/base.sif\n", capture_output=True, text=True,
                   check=True, timeout=30)
    r = alice.api("POST", "builds", {"name": "seed-bad", "definition": "seed-build/bad.def"})
    assert r.status_code == 201, r.text
    cancel_jobs.append(r.json()["job_id"])
    state, log = wait_build(alice, r.json()["job_id"], wait_job)
    assert state == "FAILED" and "FATAL" in log
    assert not os.path.exists(os.path.join(images, "seed-bad.sif"))
    assert not [n for n in os.listdir(images) if ".partial-" in n]
    as_alice("rm", "-rf", work, os.path.join(images, "seed-def.sif"), os.path.join(images, "seed-box.sif"))


MAGIC_SCRIPT = r'''
ip = get_ipython()
ip.run_line_magic("load_ext", "jupyter_hpc")
ip.run_line_magic("hpc", "venv remove seed-magic")
ip.run_line_magic("hpc", "venv create seed-magic --image site:notebook.sif")
ip.run_line_magic("hpc", "venv list")
ip.run_cell_magic("hpc", "--image site:notebook.sif --venv seed-magic --time 00:05:00 --mem 1G --wait",
                  "import sys\nprint('prefix', sys.prefix)\n")
ip.run_cell_magic("hpc", "--image site:notebook.sif --venv ../x", "print('never')")
ip.run_line_magic("hpc", "venv remove seed-magic")
'''


def test_magic_venv_and_run_record_as_alice(testbed):
    home = pwd.getpwnam("alice").pw_dir
    proc = ipython_output("alice", testbed, MAGIC_SCRIPT)
    out = proc.stdout + proc.stderr
    path = os.path.join(os.path.realpath(os.path.join(home, ".jupyter-hpc", "venvs")), "seed-magic")
    assert f"Created venv seed-magic in {path}" in out, out
    assert re.search(rf"^seed-magic\s+{re.escape(path)}\s+image=site:notebook.sif", out, re.M), out
    assert f"prefix {path}\n" in out, out
    job = re.search(r"Submitted cell job (\d+)", out).group(1)
    assert re.search(rf"job {job}: ran on {testbed['SLURM_NODE']} \(.+, \d+ of \d+ CPUs allocated, shared node\)", out), out
    assert "%hpc: venv: '../x' is not a venv name" in out and "never" not in out.replace("print('never')", "")
    assert "Removed venv seed-magic" in out and not os.path.exists(path)


# -- long-running services as Apptainer instances inside a job -------------------------------------


def test_service_in_an_apptainer_instance(alice, testbed, wait_job, cancel_jobs):
    import requests

    bad = alice.api("POST", "services", {"image": IMAGE, "command": ["true"], "instance": "maybe"})
    assert bad.status_code == 400 and bad.json()["field"] == "instance"

    marker = "seed-instance-page"
    work = os.path.join(alice.home, "seed-instance")
    as_alice("rm", "-rf", work)
    as_alice("mkdir", "-p", work)
    as_alice("bash", "-c", f"echo {marker} > {work}/index.html")
    r = alice.api("POST", "services", {
        "image": IMAGE, "name": "seed-inst", "instance": True, "time": "00:05:00", "memory": "512M",
        "command": ["python3", "-m", "http.server", "{port}", "--bind", "0.0.0.0", "--directory", work],
    })
    assert r.status_code == 201, r.text
    service = r.json()
    validate_schema(service, "Service")
    job_id = service["job_id"]
    cancel_jobs.append(job_id)
    assert service["instance"] == f"jhpc-{job_id}"

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        got = alice.api("GET", f"services/{job_id}").json()
        if got["ready"]:
            break
        time.sleep(0.5)
    assert got["ready"], got
    page = None
    while time.monotonic() < deadline:  # the port is registered a moment before the server listens
        page = requests.get(alice.url(f"jupyter-hpc/proxy/{job_id}/index.html"), headers=alice.headers(), timeout=30)
        if page.status_code == 200:
            break
        time.sleep(0.5)
    assert page.status_code == 200 and marker in page.text

    listed = {s["job_id"]: s for s in alice.api("GET", "services").json()["services"]}
    assert listed[job_id]["instance"] == f"jhpc-{job_id}"
    r = alice.api("GET", f"services/{job_id}/instance")
    assert r.status_code == 200, r.text
    inst = r.json()
    validate_schema(inst, "ServiceInstance")
    assert inst["running"] is True and inst["instances"][0]["img"] == testbed["NOTEBOOK_SIF"]
    assert inst["instances"][0]["pid"] > 0

    # a service without an instance has none to show
    assert alice.api("GET", "services/999999999/instance").status_code == 404

    assert alice.api("DELETE", f"services/{job_id}").status_code == 202
    wait_job(job_id, timeout=60)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        left = as_alice(testbed["APPTAINER"], "instance", "list", "--json", f"jhpc-{job_id}").stdout
        if f"jhpc-{job_id}" not in left:
            break
        time.sleep(0.5)
    assert f"jhpc-{job_id}" not in left, left  # the job stopped its instance when it was cancelled
    err = os.path.join(alice.home, ".jupyter-hpc", "services", f"{job_id}.err")
    assert f"jupyter-hpc: instance=jhpc-{job_id}" in open(err).read()
    as_alice("rm", "-rf", work)


def test_kernel_runs_with_the_users_venv(testbed):
    """A kernelspec with --venv: the kernel's job puts the venv first (jupyter_client as alice)."""
    home = pwd.getpwnam("alice").pw_dir
    cli = f"{testbed['VENV']}/bin/jupyter-hpc"
    name = "seed-kvenv"
    kernel_dir = os.path.join(home, ".local", "share", "jupyter", "kernels", name)
    as_alice(cli, "venv", "remove", name, check=False)
    as_alice(cli, "venv", "create", name, "--image", IMAGE)
    path = os.path.join(os.path.realpath(os.path.join(home, ".jupyter-hpc", "venvs")), name)
    as_alice("bash", "-c", f"cd {path}/lib/python3*/site-packages && echo 'WHERE = \"kernel-venv\"' > seed_kernel_pkg.py")
    as_alice(cli, "kernelspec", "install", "--name", name, "--image", IMAGE, "--venv", name, "--time", "00:05:00",
             "--mem", "1G")
    try:
        proc = kernel_output("alice", testbed, name,
                             "import sys, seed_kernel_pkg; print('prefix', sys.prefix, seed_kernel_pkg.WHERE)")
    finally:
        as_alice("rm", "-rf", kernel_dir)
        as_alice(cli, "venv", "remove", name, check=False)
    assert f"prefix {path} kernel-venv" in proc.stdout, proc.stdout + proc.stderr


# -- resource limits enforced by Slurm ----------------------------------------------------------


def test_cell_over_its_memory_is_reported_out_of_memory(alice, cancel_jobs):
    """Slurm kills a cell job that uses more than its --mem; the cell says "out of memory", not "failed"."""
    code = ("import time\nblocks = []\n"
            "for i in range(60):\n    blocks.append(bytearray(32 * 1024 * 1024))\n    time.sleep(0.1)\n"
            "print('survived')\n")
    job = submit(alice, code, memory="256M")
    cancel_jobs.append(job)
    outputs, last, _ = wait_cell(alice, job, timeout=180)
    assert last["state"] == "OUT_OF_MEMORY" and last["status"] == "error", (last, outputs)
    err = [o for o in outputs if o.get("output_type") == "error"]
    assert err and err[-1]["ename"] == "OutOfMemory", outputs
    text = "\n".join(err[-1]["traceback"])
    assert "ran out of memory" in text and "256M" in text, text
    # Slurm's own words come with it: the cgroup's OOM kill, or the sampler's kill without cgroups
    assert re.search(r"oom-kill event|Exceeded job memory limit", text), text
    assert "survived" not in stdout_of(outputs)
    # within the limit the same kind of cell is fine
    ok = submit(alice, "blocks = [bytearray(16 * 1024 * 1024) for _ in range(2)]\nprint('fits')\n", memory="512M")
    cancel_jobs.append(ok)
    outputs, last, _ = wait_cell(alice, ok, timeout=120)
    assert last["status"] == "ok" and "fits" in stdout_of(outputs), outputs


CPU_PROBE = """\
import os, time, multiprocessing as mp

def spin(q):
    t0 = time.monotonic()
    while time.monotonic() - t0 < 1.5:
        pass
    q.put(time.process_time())

print('cpus', len(os.sched_getaffinity(0)))
print('cgroup', [l.split(':', 2)[2] for l in open('/proc/self/cgroup').read().splitlines() if ':cpuset:' in l])
# asking for every CPU of the machine does not widen the set: the job's cpuset bounds it
os.sched_setaffinity(0, range(os.cpu_count()))
print('widened', len(os.sched_getaffinity(0)))
# two busy processes for 1.5 s each: the CPU time they get together shows how many CPUs the job really has
q = mp.get_context('fork').Queue()
procs = [mp.get_context('fork').Process(target=spin, args=(q,)) for _ in range(2)]
t0 = time.monotonic()
for p in procs:
    p.start()
used = sum(q.get() for _ in procs)
for p in procs:
    p.join()
print('cpu_per_wall %.2f' % (used / (time.monotonic() - t0)))
"""


def test_cell_job_is_held_to_its_cpus(alice, testbed, cancel_jobs):
    """Slurm confines a cell job to the CPUs it asked for (task/cgroup cpuset), not just counts them."""
    if testbed.get("CGROUPS", "none") == "none":
        pytest.skip("this machine offers no cgroups: the testbed runs Slurm without CPU binding")
    one = submit(alice, CPU_PROBE, cpus=1)
    cancel_jobs.append(one)
    outputs, last, _ = wait_cell(alice, one, timeout=180)
    assert last["status"] == "ok", outputs
    out = stdout_of(outputs)
    assert "cpus 1\n" in out and "widened 1\n" in out, out
    assert f"job_{one}" in out, out  # the cpuset is the job's own cgroup
    ratio = float(re.search(r"cpu_per_wall ([0-9.]+)", out).group(1))
    assert ratio < 1.4, out  # two busy processes share the one CPU (about 1.0), where two CPUs would give 2.0
    assert last["run"]["alloc_cpus"] == 1, last["run"]

    machine = int(testbed.get("MACHINE_CPUS") or os.cpu_count())
    if machine >= 2:
        two = submit(alice, "import os\nprint('cpus', len(os.sched_getaffinity(0)))\n", cpus=2)
        cancel_jobs.append(two)
        outputs, last, _ = wait_cell(alice, two, timeout=120)
        assert last["status"] == "ok" and "cpus 2\n" in stdout_of(outputs), outputs


# -- a hub-spawned server with the user's venv -------------------------------------------------------


def test_spawned_server_uses_the_users_venv(testbed, tmp_path_factory):
    """The spawn form offers alice's venvs; the server spawned with one imports its packages first."""
    home = pwd.getpwnam("alice").pw_dir
    cli = f"{testbed['VENV']}/bin/jupyter-hpc"
    name = "seed-spawn-venv"
    as_alice(cli, "venv", "remove", name, check=False)
    as_alice(cli, "venv", "create", name, "--image", IMAGE)
    path = os.path.join(os.path.realpath(os.path.join(home, ".jupyter-hpc", "venvs")), name)
    as_alice("bash", "-c", f"cd {path}/lib/python3*/site-packages && echo 'WHERE = \"spawn-venv\"' > seed_spawn_pkg.py")
    try:
        with running_hub(str(tmp_path_factory.mktemp("venvhub")), "jhvenv-" + secrets.token_hex(3),
                         poll_interval=5) as hub:
            s, _ = hub.login("alice")
            page = s.get(hub.url + "/hub/spawn", timeout=60).text
            assert re.search(r'<select[^>]*name="venv"', page) and f'<option value="{name}">' in page, page[:3000]

            r = hub.spawn("alice", {"image": IMAGE, "venv": name, "partition": "cpu", "memory": "1G",
                                    "time": "00:30:00"})
            assert r.status_code in (201, 202), r.text
            hub.wait_ready("alice", timeout=150)
            out = hub.run_code("alice", "import os, sys, seed_spawn_pkg\n"
                                        "print('server', sys.prefix, seed_spawn_pkg.WHERE, os.environ.get('VIRTUAL_ENV'))\n"
                                        "print('server cpus', len(os.sched_getaffinity(0)))")
            assert f"server {path} spawn-venv {path}" in out, out
            if testbed.get("CGROUPS", "none") != "none":
                assert "server cpus 1" in out, out  # the server's job asked for 1 CPU and is held to it
            hub.stop_server("alice")
            # a venv name that is not one of alice's is refused before anything is submitted
            r = hub.spawn("alice", {"image": IMAGE, "venv": "../escape"})
            assert r.status_code == 400 and "venv" in r.text, r.text
    finally:
        as_alice(cli, "venv", "remove", name, check=False)


# -- the site registry: a user pushes an image, jobs run it by its docker:// reference ---------------

REGISTRY_MAGIC = r'''
ip = get_ipython()
ip.run_line_magic("load_ext", "jupyter_hpc")
ip.run_cell_magic("hpc", "--image {ref} --time 00:05:00 --mem 1G --wait",
                  "import os\nprint('from the registry in', os.environ.get('APPTAINER_CONTAINER'))\n")
'''


def test_user_pushed_image_runs_from_the_site_registry(testbed, cancel_jobs):
    """alice pushes an image to the site registry; %%hpc and a REST cell job run it by reference.

    The first use converts it to a SIF in the shared cache (with progress); the second finds it
    there. A server whose administrators did not list the plain-HTTP registry refuses to pull
    from it, and says why.
    """
    import requests

    registry = testbed["REGISTRY"]
    ref = f"docker://{registry}/alice/notebook:seed-{secrets.token_hex(3)}"
    push = subprocess.run(["runuser", "-u", "alice", "--", "skopeo", "copy", "--src-tls-verify=false",
                           "--dest-tls-verify=false", testbed["NOTEBOOK_REF"], ref],
                          capture_output=True, text=True, timeout=300, cwd="/", env={**os.environ, "HOME": "/home/alice"})
    assert push.returncode == 0, push.stderr
    tags = requests.get(f"http://{registry}/v2/alice/notebook/tags/list", timeout=30).json()["tags"]
    assert ref.rsplit(":", 1)[1] in tags

    # %%hpc with the reference: pulled once into the shared cache, then the cell runs in it
    catalog = json.dumps({"insecure_registries": [registry]})
    proc = ipython_output("alice", testbed, REGISTRY_MAGIC.replace("{ref}", ref), timeout=600,
                          env={"JUPYTER_HPC_CATALOG": catalog})
    out = proc.stdout + proc.stderr
    assert f"%hpc: pulling {ref}" in out and f"{ref} is in the image cache: {testbed['PULL_CACHE']}/" in out, out
    cached = re.search(rf"is in the image cache: ({re.escape(testbed['PULL_CACHE'])}/\S+\.sif)", out).group(1)
    assert f"from the registry in {cached}" in out, out
    mtime = os.stat(cached).st_mtime_ns

    # a REST cell job with the same reference finds it in the cache: no second pull
    server = server_for("alice", testbed["VENV"], extra_args=(f"--ImageCatalog.insecure_registries={registry}",))
    try:
        images = {i["ref"]: i for i in server.api("GET", "images").json()["images"] if i.get("ref")}
        assert images[ref]["pulled"] is True and images[ref]["path"] == cached
        r = server.api("POST", "cells", {"code": "import os\nprint(os.environ.get('APPTAINER_CONTAINER'))",
                                         "image": ref, "time": "00:05:00", "memory": "1G"})
        assert r.status_code == 201, r.text
        cancel_jobs.append(r.json()["job_id"])
        outputs, last, _ = wait_cell(server, r.json()["job_id"], timeout=120)
        assert last["status"] == "ok" and cached in stdout_of(outputs), outputs
        assert os.stat(cached).st_mtime_ns == mtime
        assert server.api("GET", "images/pulls").json()["pulls"] == []
    finally:
        server.stop()

    # the converted copy is not needed any more (each run pushes a new tag)
    for leftover in (cached, cached + ".ref"):
        if os.path.exists(leftover):
            os.unlink(leftover)

    # without the registry in insecure_registries: refused, with the reason and what to do
    server = server_for("alice", testbed["VENV"])
    try:
        other = f"docker://{registry}/alice/notebook:other-{secrets.token_hex(3)}"
        r = server.api("POST", "images/pull", {"ref": other})
        assert r.status_code == 202, r.text
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            pull = {p["ref"]: p for p in server.api("GET", "images/pulls").json()["pulls"]}[other]
            if pull["state"] != "pulling":
                break
            time.sleep(0.5)
        assert pull["state"] == "error", pull
        assert "ImageCatalog.insecure_registries" in pull["message"] and registry in pull["message"], pull
    finally:
        server.stop()
