"""The jupyter-hpc REST API on a real jupyter server (as alice and as bob) with real Slurm jobs
running in the real notebook image. Answers are validated against docs/openapi.yaml."""

from __future__ import annotations

import base64
import os
import pwd
import re
import subprocess
import time
import urllib.parse

import pytest
import requests

from server_fixtures import server_for, validate_schema, wait_cell

IMAGE = "site:notebook.sif"


@pytest.fixture(scope="module")
def alice(testbed):
    server = server_for("alice", testbed["VENV"], extra_args=(
        "--HPCExtension.proxy_cache_seconds=0",
        f"--ImageCatalog.insecure_registries={testbed['REGISTRY']}",
    ))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def bob(testbed):
    server = server_for("bob", testbed["VENV"])
    yield server
    server.stop()


def submit(server, code, **extra):
    body = {"code": code, "image": IMAGE, "time": "00:05:00", "memory": "1G", "cpus": 1}
    body.update(extra)
    r = server.api("POST", "cells", body)
    assert r.status_code == 201, r.text
    job_id = r.json()["job_id"]
    assert job_id.isdigit()
    return job_id


def own_job_ids(server, kinds=("cell", "service")):
    """Ids of the user's jobs (of the kinds this extension submits), schema-checked."""
    r = server.api("GET", "jobs")
    assert r.status_code == 200, r.text
    for job in r.json()["jobs"]:
        validate_schema(job, "Job")
    return {j["id"] for j in r.json()["jobs"] if j["kind"] in kinds}


def test_partitions_images_and_jobs(alice, testbed):
    r = alice.api("GET", "partitions")
    assert r.status_code == 200
    parts = {p["name"]: p for p in r.json()["partitions"]}
    for p in parts.values():
        validate_schema(p, "Partition")
    assert parts[testbed["CPU_PARTITION"]]["default"] is True
    assert parts[testbed["GPU_PARTITION"]]["gpus"] == {testbed["GPU_TYPE"]: int(testbed["GPU_COUNT"])}

    r = alice.api("GET", "images")
    assert r.status_code == 200, r.text
    images = {i["id"]: i for i in r.json()["images"]}
    for img in images.values():
        validate_schema(img, "Image")
    assert IMAGE in images
    r = alice.api("GET", "images/" + urllib.parse.quote(IMAGE, safe=""))
    assert r.status_code == 200, r.text
    validate_schema(r.json(), "ImageDetail")
    assert alice.api("GET", "images/site:nope.sif").status_code == 404
    own_job_ids(alice)


def test_cell_text_and_figure(alice, bob):
    code = (
        "print('hello from the node')\n"
        "import matplotlib.pyplot as plt\n"
        "plt.plot([1, 4, 9])\n"
        "plt.title('squares')\n"
        "6 * 7\n"
    )
    job_id = submit(alice, code)
    assert job_id in own_job_ids(alice)
    outputs, last, _ = wait_cell(alice, job_id)
    assert last["status"] == "ok" and last["state"] == "COMPLETED", (last, outputs)
    text = "".join(o["text"] for o in outputs if o["output_type"] == "stream" and o["name"] == "stdout")
    assert "hello from the node" in text
    pngs = [o for o in outputs if o["output_type"] == "display_data" and "image/png" in o["data"]]
    assert len(pngs) == 1
    assert base64.b64decode(pngs[0]["data"]["image/png"])[:4] == b"\x89PNG"
    assert any(o["output_type"] == "execute_result" and o["data"]["text/plain"] == "42" for o in outputs)

    # Job listing shows it as a cell job; its stderr is readable incrementally.
    r = alice.api("GET", f"jobs/{job_id}")
    assert r.status_code == 200
    validate_schema(r.json(), "Job")
    assert r.json()["kind"] == "cell" and r.json()["image"] == IMAGE
    r = alice.api("GET", f"jobs/{job_id}/output?stream=stderr&offset=0")
    assert r.status_code == 200
    chunk = r.json()
    validate_schema(chunk, "JobOutput")
    assert "starting container" in chunk["data"]
    r2 = alice.api("GET", f"jobs/{job_id}/output?stream=stderr&offset={chunk['offset']}")
    assert r2.json()["data"] == "" and r2.json()["offset"] == chunk["offset"]

    # bob sees none of it
    assert bob.api("GET", f"cells/{job_id}").status_code == 404
    assert bob.api("GET", f"jobs/{job_id}").status_code == 403
    assert bob.api("GET", f"jobs/{job_id}/output").status_code == 403
    assert bob.api("DELETE", f"jobs/{job_id}").status_code == 403
    assert job_id not in own_job_ids(bob)


def test_working_directory_and_gpu(alice, testbed):
    pw = pwd.getpwnam("alice")
    base = os.path.join(pw.pw_dir, "jhpc-cwd-test")
    sub = os.path.join(base, "sub")
    os.makedirs(sub, exist_ok=True)
    with open(os.path.join(sub, "data.txt"), "w") as f:
        f.write("data next to the notebook")
    for d in (base, sub, os.path.join(sub, "data.txt")):
        os.chown(d, pw.pw_uid, pw.pw_gid)
    try:
        job_id = submit(alice, "import os\nprint(open('data.txt').read())\nprint(os.getcwd())\n"
                               "print('gpus=' + os.environ.get('CUDA_VISIBLE_DEVICES', 'none'))\n",
                        cwd="jhpc-cwd-test/sub/analysis.ipynb", partition=testbed["GPU_PARTITION"], gpus=1)
        outputs, last, _ = wait_cell(alice, job_id)
        text = "".join(o.get("text", "") for o in outputs)
        assert last["status"] == "ok", outputs
        assert "data next to the notebook" in text and sub in text
        assert "gpus=0" in text
    finally:
        subprocess.run(["rm", "-rf", base])


def test_failing_cell(alice):
    job_id = submit(alice, "print('about to fail')\ndef f():\n    raise ValueError('broken on purpose')\nf()\n")
    outputs, last, _ = wait_cell(alice, job_id)
    assert last["done"] and last["status"] == "error" and last["state"] == "FAILED"
    err = [o for o in outputs if o["output_type"] == "error"]
    assert len(err) == 1 and err[0]["ename"] == "ValueError" and "broken on purpose" in err[0]["evalue"]
    plain = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in err[0]["traceback"]]
    assert any("raise ValueError" in line for line in plain), plain
    assert outputs[0]["text"] == "about to fail\n"


def test_partial_output_then_cancel(alice):
    code = "import time\nprint('first', flush=True)\ntime.sleep(120)\nprint('never')\n"
    job_id = submit(alice, code)
    deadline = time.monotonic() + 90
    seen = []
    since = 0
    while time.monotonic() < deadline:
        r = alice.api("GET", f"cells/{job_id}?since={since}")
        data = r.json()
        validate_schema(data, "CellState")
        seen.extend(data["outputs"])
        since = data["next"]
        assert not data["done"], data
        if seen:
            break
        time.sleep(0.3)
    assert seen and seen[0]["text"] == "first\n"
    assert data["state"] == "RUNNING"
    r = alice.api("GET", f"jobs/{job_id}/stats")
    assert r.status_code == 200, r.text
    validate_schema(r.json(), "JobStats")

    r = alice.api("DELETE", f"jobs/{job_id}")
    assert r.status_code == 202, r.text
    validate_schema(r.json(), "Cancelled")
    outputs, last, _ = wait_cell(alice, job_id, since=since, timeout=60)
    assert last["done"] and last["status"] == "error"
    assert last["state"] in ("CANCELLED", "ENDED", "COMPLETING"), last
    assert not any(o.get("text") == "never\n" for o in outputs)
    # A cancelled job cannot be cancelled again but is still answered properly.
    r = alice.api("DELETE", f"jobs/{job_id}")
    assert r.status_code in (202, 404)


# -- hostile inputs: 400/403/404 and nothing submitted --------------------------------------------

BAD_CELLS = [
    ({"partition": "cpu\n#SBATCH --uid=0"}, "partition"),
    ({"partition": "cpu;scancel -u alice"}, "partition"),
    ({"partition": "$(id)"}, "partition"),
    ({"partition": "`id`"}, "partition"),
    ({"partition": "-p"}, "partition"),
    ({"partition": "nosuchpartition"}, "partition"),
    ({"gpus": 10000}, "gpus"),
    ({"gpus": "1;id"}, "gpus"),
    ({"time": "abc"}, "time"),
    ({"time": "00:10:00\nid"}, "time"),
    ({"memory": "1Q"}, "memory"),
    ({"memory": "--mem=1"}, "memory"),
    ({"cpus": "$(reboot)"}, "cpus"),
    ({"image": "site:nope.sif"}, "image"),
    ({"image": "/etc/passwd"}, "image"),
    ({"image": "../../../etc/shadow"}, "image"),
    ({"image": "site:notebook.sif;id"}, "image"),
    ({"cwd": "../"}, "cwd"),
    ({"cwd": "../../etc"}, "cwd"),
    ({"cwd": "/../../etc"}, "cwd"),
    ({"cwd": "nope\nx"}, "cwd"),
    ({"code": 5}, "code"),
]


@pytest.mark.parametrize("override,field", BAD_CELLS)
def test_bad_cell_requests_submit_nothing(alice, override, field):
    before = own_job_ids(alice)
    body = {"code": "print(1)", "image": IMAGE}
    body.update(override)
    r = alice.api("POST", "cells", body)
    assert r.status_code == 400, (r.status_code, r.text)
    err = r.json()
    validate_schema(err, "Error")
    assert err["field"] == field, err
    assert own_job_ids(alice) == before


def test_pull_with_progress(alice, testbed):
    ref = testbed["TINY_REF"]
    r = alice.api("POST", "images/pull", {"ref": ref})
    assert r.status_code == 202, r.text
    validate_schema(r.json(), "Pull")
    deadline = time.monotonic() + 180
    pull = None
    while time.monotonic() < deadline:
        r = alice.api("GET", "images/pulls")
        assert r.status_code == 200
        pulls = {p["ref"]: p for p in r.json()["pulls"]}
        pull = pulls[ref]
        validate_schema(pull, "Pull")
        if pull["state"] != "pulling":
            break
        time.sleep(0.5)
    assert pull["state"] == "done", pull
    assert pull["progress"] == 1.0 and pull["image_id"]
    images = {i["id"]: i for i in alice.api("GET", "images").json()["images"]}
    assert images[pull["image_id"]]["pulled"] is True


def test_bad_bodies(alice):
    before = own_job_ids(alice)
    assert alice.api("POST", "cells", "not json").status_code == 400
    assert alice.api("POST", "cells", "[1, 2]").status_code == 400
    assert alice.api("POST", "services", {"image": IMAGE, "command": "python3 -m http.server"}).status_code == 400
    assert alice.api("POST", "services", {"image": IMAGE, "command": ["python3", "a\nb"]}).status_code == 400
    assert alice.api("POST", "services", {"image": IMAGE, "command": ["-rf"]}).status_code == 400
    assert alice.api("POST", "services", {"image": IMAGE, "command": ["x"], "name": "a;b"}).status_code == 400
    assert alice.api("POST", "services", {"image": "site:nope.sif", "command": ["x"]}).status_code == 400
    assert alice.api("POST", "images/pull", {"ref": "docker://x/y;rm -rf ~"}).status_code == 400
    assert alice.api("POST", "images/pull", {"ref": "-v"}).status_code == 400
    assert alice.api("GET", "images/..%2F..%2Fetc%2Fpasswd").status_code in (400, 404)
    assert alice.api("GET", "images/user:..%2F..%2Fbob%2Fimages%2Fx.sif").status_code in (400, 404)
    assert alice.api("POST", "services", {"image": IMAGE, "command": ["x"], "gpus": 10000}).status_code == 400
    assert alice.api("POST", "services", {"image": IMAGE, "command": ["x"], "time": "abc"}).status_code == 400
    assert own_job_ids(alice) == before


@pytest.mark.parametrize("job_id", ["1;scancel -u alice", "1 2", "-1", "$(id)", "`id`", "1%0Aid", "abc", "1.5"])
def test_bad_job_ids(alice, job_id):
    quoted = urllib.parse.quote(job_id, safe="%")
    for method, path in (("GET", "jobs/{}"), ("DELETE", "jobs/{}"), ("GET", "jobs/{}/output"),
                         ("GET", "jobs/{}/stats"), ("GET", "cells/{}"), ("DELETE", "services/{}")):
        r = alice.api(method, path.format(quoted))
        assert r.status_code in (400, 404), (method, path, job_id, r.status_code)


def test_unknown_and_foreign_ids(alice):
    assert alice.api("GET", "jobs/999999999").status_code == 404
    assert alice.api("GET", "cells/999999999").status_code == 404
    assert alice.api("DELETE", "services/999999999").status_code == 404


def test_output_parameters(alice):
    assert alice.api("GET", "jobs/1/output?stream=../../etc/passwd").status_code == 400
    assert alice.api("GET", "jobs/1/output?offset=-5").status_code == 400
    assert alice.api("GET", "jobs/1/output?offset=abc").status_code == 400
    assert alice.api("GET", "cells/1?since=x").status_code == 400


def test_authentication_required(alice, bob):
    for token in ("", "wrong", bob.token):
        r = requests.get(alice.url("jupyter-hpc/api/jobs"),
                         headers={"Authorization": f"token {token}"} if token else {}, timeout=30,
                         allow_redirects=False)
        assert r.status_code in (302, 403), r.status_code
    r = requests.post(alice.url("jupyter-hpc/api/cells"), json={"code": "print(1)", "image": IMAGE},
                      headers={"Authorization": "token wrong"}, timeout=30, allow_redirects=False)
    assert r.status_code in (302, 403)
