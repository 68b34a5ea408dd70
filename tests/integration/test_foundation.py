"""Foundation acceptance: Slurm + Apptainer clients against the real single-node testbed.

Everything here runs the real sbatch/squeue/apptainer as the test users
(alice, bob) through ``runuser``; nothing is faked.
"""

import asyncio
import os
import shutil
import uuid

import pytest

from jupyter_hpc import jobscript, slurm
from jupyter_hpc.cluster import SlurmClient, SlurmRequestError
from jupyter_hpc.images import ImageAccessDenied, ImageCatalog, ImageNotFound
from jupyter_hpc.validate import ValidationError

pytestmark = pytest.mark.integration


def unique(prefix="jhpc"):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def catalog(tb, **kw):
    kw.setdefault("site_dirs", [tb["IMAGE_DIR"]])
    kw.setdefault("user_dirs", [tb.get("USER_IMAGE_DIR_TEMPLATE", "{home}/images")])
    kw.setdefault("cache_dir", tb["PULL_CACHE"])
    kw.setdefault("insecure_registries", [tb["REGISTRY"]])
    kw.setdefault("apptainer", tb.get("APPTAINER", "apptainer"))
    return ImageCatalog(**kw)


async def wait_finished(client: SlurmClient, job_id: str, timeout: float = 120) -> slurm.JobInfo:
    deadline = asyncio.get_running_loop().time() + timeout
    info = None
    while asyncio.get_running_loop().time() < deadline:
        info = (await client.squeue([job_id])).get(job_id)
        if info is not None and info.is_finished:
            return info
        await asyncio.sleep(0.5)
    raise AssertionError(f"job {job_id} did not finish in {timeout}s: {info}")


async def submit_container_job(client, tb, user, image, argv, *, out, gpus=0, partition=None, **script_kw):
    req = slurm.JobRequest.validated(
        partition=partition or tb["CPU_PARTITION"], time="5", cpus=1, memory="512M", gpus=gpus,
        job_name=unique("found"), output=out, workdir=os.path.dirname(out),
        comment=slurm.make_comment(kind="test"),
    )
    script = jobscript.build_container_script(image, argv, apptainer=tb.get("APPTAINER", "apptainer"), **script_kw)
    return await client.submit(req, script, user=user)


async def test_python_in_notebook_sif_as_alice(tb, user_tmpdir, run_as):
    client = SlurmClient()
    img = await catalog(tb).resolve("site:notebook.sif", "alice")
    d = user_tmpdir("alice")
    out = os.path.join(d, "job-%j.out")
    code = "import sys, os, getpass; print('hello from', getpass.getuser(), sys.version_info[0], os.environ.get('GREETING'))"
    jid = await submit_container_job(
        client, tb, "alice", img.path, ["python3", "-c", code], out=out,
        env_names=["GREETING"],
    )
    info = await wait_finished(client, jid)
    assert info.state == "COMPLETED", info
    assert info.user == "alice" and info.exit_code == 0
    text = open(out.replace("%j", jid)).read()
    assert "hello from alice 3" in text
    # the job's stdout path from squeue points at the same file (pattern expanded)
    assert info.stdout == out.replace("%j", jid)
    markers = jobscript.parse_markers(text)
    assert markers["started"] == img.path and markers["node"] == tb["SLURM_NODE"] and markers["cpu_model"]


async def test_secret_env_reaches_container_not_script(tb, user_tmpdir):
    client = SlurmClient()
    d = user_tmpdir("alice")
    out = os.path.join(d, "env-%j.out")
    req = slurm.JobRequest.validated(partition=tb["CPU_PARTITION"], time="5", job_name=unique(), output=out,
                                     workdir=d)
    script = jobscript.build_container_script(
        tb["NOTEBOOK_SIF"], ["python3", "-c", "import os; print('T=' + os.environ.get('MY_TOKEN', 'missing'))"],
        env_names=["MY_TOKEN"])
    secret = uuid.uuid4().hex
    assert secret not in script
    jid = await client.submit(req, script, user="alice", env={"MY_TOKEN": secret})
    info = await wait_finished(client, jid)
    assert info.state == "COMPLETED"
    assert f"T={secret}" in open(out.replace("%j", jid)).read()


async def test_gpu_job_schedules(tb, user_tmpdir):
    client = SlurmClient()
    parts = {p.name: p for p in await client.partitions(max_age=0)}
    gpu = parts[tb["GPU_PARTITION"]]
    assert gpu.gpus.get(tb["GPU_TYPE"]) == int(tb.get("GPU_COUNT", "2"))
    assert parts[tb["CPU_PARTITION"]].default
    d = user_tmpdir("alice")
    out = os.path.join(d, "gpu-%j.out")
    req = slurm.JobRequest.validated(partition=gpu.name, gpus=1, time="5", job_name=unique(), output=out, workdir=d)
    await client.check_request(req)
    script = slurm.batch_script([["sh", "-c", 'echo "CUDA=$CUDA_VISIBLE_DEVICES"']])
    jid = await client.submit(req, script, user="alice")
    info = await wait_finished(client, jid)
    assert info.state == "COMPLETED" and info.partition == gpu.name
    assert info.gpu_count == 1, info
    assert "CUDA=0" in open(out.replace("%j", jid)).read() or "CUDA=1" in open(out.replace("%j", jid)).read()
    # typed GPU request inside a container with --nv-style binds is not possible without GPUs; the request path is.
    req2 = slurm.JobRequest.validated(partition=gpu.name, gpus=1, gpu_type=tb["GPU_TYPE"], time="5",
                                      job_name=unique(), output=out, workdir=d)
    jid2 = await client.submit(req2, script, user="alice")
    info2 = await wait_finished(client, jid2)
    assert info2.state == "COMPLETED" and info2.gpus == {tb["GPU_TYPE"]: 1}


@pytest.fixture
def fresh_cache():
    import tempfile

    path = tempfile.mkdtemp(prefix="jhpc-cache-", dir="/tmp")
    os.chmod(path, 0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_pull_tiny_into_cache_and_run(tb, fresh_cache, run_as):
    cache = fresh_cache
    cat = catalog(tb, cache_dir=str(cache))
    ref = tb["TINY_REF"]
    events = []
    images = await asyncio.gather(*[cat.pull(ref, "alice", progress=lambda f, m: events.append(m)) for _ in range(3)])
    assert cat.counters["pull"] == 1  # three concurrent requests, one pull
    img = images[0]
    assert img.pulled and img.format == "remote" and img.ref == ref and img.title == "Tiny busybox"
    assert os.stat(img.path).st_uid == int(run_as("alice", ["id", "-u"]).stdout)
    res = run_as("alice", [tb.get("APPTAINER", "apptainer"), "exec", img.path, "echo", "tiny-ok"])
    assert res.returncode == 0 and "tiny-ok" in res.stdout, res.stderr
    # a second catalog (another process) sees the cached copy without pulling
    other = catalog(tb, cache_dir=str(cache))
    again = await other.pull(ref, "alice")
    assert other.counters["pull"] == 0 and again.path == img.path
    listed = {i.id: i for i in await other.list_images("alice")}
    assert listed[img.id].pulled
    # bob does not run alice's copy (she could change it): he gets his own
    bobs = await other.pull(ref, "bob")
    assert bobs.path != img.path and os.stat(bobs.path).st_uid == int(run_as("bob", ["id", "-u"]).stdout)


async def test_pull_into_shared_cache(tb, run_as):
    """The testbed's shared cache (mode 1777) works for a real pull as alice."""
    cat = catalog(tb)
    img = await cat.pull(tb["TINY_REF"], "alice")
    assert img.pulled and img.path.startswith(tb["PULL_CACHE"])
    res = run_as("alice", [tb.get("APPTAINER", "apptainer"), "exec", img.path, "true"])
    assert res.returncode == 0, res.stderr


async def test_catalog_lists_images_with_labels(tb):
    cat = catalog(tb)
    alice = {i.id: i for i in await cat.list_images("alice")}
    nb = alice["site:notebook.sif"]
    assert nb.format == "sif" and nb.title == "Python notebook" and nb.gpu is True
    assert nb.labels["org.jupyter-hpc.title"] == "Python notebook" and nb.size > 0
    sb = alice["site:notebook-sandbox"]
    assert sb.format == "sandbox" and sb.labels.get("org.jupyter-hpc.title")
    priv = alice["user:alice-private.sif"]
    assert priv.owner == "alice" and priv.path == tb["ALICE_PRIVATE_SIF"] and priv.title
    bob = {i.id for i in await cat.list_images("bob")}
    assert "site:notebook.sif" in bob and "user:alice-private.sif" not in bob
    # listing again does not inspect again (metadata cache keyed by path, mtime, size)
    n = cat.counters["inspect"]
    await cat.list_images("alice")
    assert cat.counters["inspect"] == n


async def test_bob_cannot_read_alice_output_or_image(tb, user_tmpdir, run_as):
    client = SlurmClient()
    d = user_tmpdir("alice")
    out = os.path.join(d, "secret-%j.out")
    jid = await submit_container_job(client, tb, "alice", tb["NOTEBOOK_SIF"], ["python3", "-c", "print('alice-secret')"],
                                     out=out)
    info = await wait_finished(client, jid)
    assert info.state == "COMPLETED"
    path = out.replace("%j", jid)
    assert "alice-secret" in open(path).read()
    res = run_as("bob", ["cat", path])
    assert res.returncode != 0 and "alice-secret" not in res.stdout
    # alice's private image: not resolvable for bob, and not readable by bob directly either
    cat = catalog(tb)
    with pytest.raises(ImageNotFound):
        await cat.resolve("user:alice-private.sif", "bob")
    with pytest.raises(ImageAccessDenied):
        await cat.resolve(tb["ALICE_PRIVATE_SIF"], "bob")
    res = run_as("bob", [tb.get("APPTAINER", "apptainer"), "exec", tb["ALICE_PRIVATE_SIF"], "true"])
    assert res.returncode != 0
    # bob cannot cancel alice's job
    jid2 = await submit_container_job(client, tb, "alice", tb["NOTEBOOK_SIF"], ["sleep", "30"], out=out)
    try:
        with pytest.raises(SlurmRequestError):
            await client.cancel(jid2, user="bob")
    finally:
        assert await client.cancel(jid2, user="alice") is True


async def test_symlink_escape_in_user_dir(tb, run_as):
    """A link in alice's image dir pointing at another user's file is refused."""
    home_images = os.path.dirname(tb["ALICE_PRIVATE_SIF"])
    link = os.path.join(home_images, unique("escape") + ".sif")
    res = run_as("alice", ["ln", "-s", "/etc/passwd", link])
    assert res.returncode == 0, res.stderr
    try:
        cat = catalog(tb)
        ids = {i.id for i in await cat.list_images("alice")}
        assert f"user:{os.path.basename(link)}" not in ids
        with pytest.raises(ImageAccessDenied):
            await cat.resolve(f"user:{os.path.basename(link)}", "alice")
        with pytest.raises(ImageAccessDenied):
            await cat.resolve(link, "alice")
    finally:
        os.unlink(link)


BAD_REQUESTS = [
    dict(partition="nonexistent"),
    dict(time="abc"),
    dict(time="-1"),
    dict(memory="1Q"),
    dict(gpus=10000),
    dict(partition="cpu\nx"),
    dict(partition="cpu;id"),
    dict(partition="$(id)"),
    dict(job_name="`id`"),
    dict(partition="-p"),
    dict(account="--uid=0"),
    dict(comment="x\n#SBATCH --uid=0"),
    dict(output="/tmp/x\ny"),
    dict(workdir="relative"),
]


@pytest.mark.parametrize("bad", BAD_REQUESTS, ids=[repr(b) for b in BAD_REQUESTS])
async def test_bad_input_is_refused_and_nothing_submitted(tb, bad, user_jobs):
    client = SlurmClient()
    name = unique("bad")
    before = user_jobs("alice")
    with pytest.raises((ValidationError, SlurmRequestError)) as e:
        raw = dict(time="5", job_name=name)
        raw.update(bad)
        req = slurm.JobRequest.validated(**raw)
        if bad.get("gpus"):
            await client.check_request(req)
        await client.submit(req, slurm.batch_script([["true"]]), user="alice")
    assert getattr(e.value, "field", None)
    assert str(e.value)
    # nothing reached Slurm with this job name, and alice has no new job from this test
    out = await client.squeue(user="alice")
    assert not [j for j in out.values() if j.name == name]
    if "partition" not in bad or bad["partition"] != "nonexistent":
        assert client.counters.get("sbatch", 0) == 0
    after = set(user_jobs("alice"))
    assert not {j for j in after - set(before) if out.get(j) and out[j].name == name}


@pytest.mark.parametrize(
    "image",
    ["site:unknown.sif", "../notebook.sif", "/opt/jupyter-hpc/images/../../../etc/passwd", "/etc/passwd",
     "notebook.sif;id", "$(id)", "`id`", "-notebook.sif", "notebook.sif\n"],
)
async def test_bad_images_are_refused(tb, image):
    with pytest.raises(ValidationError) as e:
        await catalog(tb).resolve(image, "alice")
    assert e.value.field == "image"


async def test_bad_command_argv_is_inert(tb, user_tmpdir):
    """Shell meta characters in the command stay literal arguments inside the container."""
    client = SlurmClient()
    d = user_tmpdir("alice")
    out = os.path.join(d, "argv-%j.out")
    canary = os.path.join(d, "pwned")
    args = [f"; touch {canary}", f"$(touch {canary})", f"`touch {canary}`", "a\nb", "'", '"']
    jid = await submit_container_job(
        client, tb, "alice", tb["NOTEBOOK_SIF"],
        ["python3", "-c", "import sys, json; print(json.dumps(sys.argv[1:]))", *args], out=out)
    info = await wait_finished(client, jid)
    assert info.state == "COMPLETED"
    import json

    printed = [l for l in open(out.replace("%j", jid)).read().splitlines() if l.startswith("[")]
    assert json.loads(printed[-1]) == args
    assert not os.path.exists(canary)
