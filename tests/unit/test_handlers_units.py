"""Pure parts of the server extension: validation of cell/service requests, proxy target checks,
API schema, magic options. (HTTP-level behaviour is tested against the real testbed in
tests/integration/test_server*.py.)"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from jupyter_hpc import celljob, handlers, magic, services
from jupyter_hpc.slurm import JobInfo, Partition
from jupyter_hpc.validate import ValidationError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from server_fixtures import openapi_spec, validate_schema  # noqa: E402


class Partitions:
    """Answers ``partitions()`` like SlurmClient does from sinfo (no commands run here)."""

    def __init__(self):
        self.parts = [
            Partition(name="cpu", default=True, state="up", nodes=1, cpus=32, memory_mb=16000,
                      max_time_minutes=1440, gpus={}),
            Partition(name="gpu", default=False, state="up", nodes=1, cpus=32, memory_mb=16000,
                      max_time_minutes=1440, gpus={"tesla": 2}),
        ]

    async def partitions(self, max_age=None):
        return self.parts


async def test_job_request_defaults_and_limits():
    slurm = Partitions()
    req = await celljob.job_request(slurm, {}, defaults={"time": "00:30:00", "cpus": 1, "memory": "1G"})
    assert (req.partition, req.time, req.cpus, req.memory, req.gpus) == ("cpu", "00:30:00", 1, "1024M", 0)
    req = await celljob.job_request(slurm, {"partition": "gpu", "gpus": 2, "time": "00:10:00"})
    assert req.partition == "gpu" and req.gres == "gpu:2"


@pytest.mark.parametrize("raw,field", [
    ({"partition": "nope"}, "partition"),
    ({"partition": "cpu;scancel -u alice"}, "partition"),
    ({"partition": "-p"}, "partition"),
    ({"partition": "cpu\n#SBATCH --uid=0"}, "partition"),
    ({"gpus": 10000}, "gpus"),
    ({"partition": "cpu", "gpus": 1}, "gpus"),
    ({"partition": "gpu", "gpus": 3}, "gpus"),
    ({"time": "abc"}, "time"),
    ({"time": "2-00:00:00"}, "time"),
    ({"memory": "1Q"}, "memory"),
    ({"memory": "64G"}, "memory"),
    ({"cpus": "$(id)"}, "cpus"),
    ({"cpus": 33}, "cpus"),
    ({"exclusive": "maybe"}, "exclusive"),
])
async def test_job_request_refuses(raw, field):
    with pytest.raises(ValidationError) as e:
        await celljob.job_request(Partitions(), raw)
    assert e.value.field == field


async def test_job_request_allowed_partitions():
    with pytest.raises(ValidationError):
        await celljob.job_request(Partitions(), {"partition": "gpu"}, allowed_partitions=["cpu"])
    req = await celljob.job_request(Partitions(), {}, allowed_partitions=["gpu"])
    assert req.partition == "gpu"


def manager(tmp_path):
    import pwd

    user = pwd.getpwuid(os.getuid()).pw_name
    return celljob.CellJobManager(slurm=Partitions(), catalog=None, username=user,
                                  jobs_dir=str(tmp_path / "jobs"))


def test_resolve_cwd(tmp_path):
    root = tmp_path / "root"
    (root / "nb" / "sub").mkdir(parents=True)
    (root / "nb" / "x.ipynb").write_text("{}")
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", root / "escape")
    m = manager(tmp_path)
    assert m.resolve_cwd("", str(root)) == os.path.realpath(root)
    assert m.resolve_cwd("nb/sub", str(root)) == os.path.realpath(root / "nb" / "sub")
    assert m.resolve_cwd("/nb/x.ipynb", str(root)) == os.path.realpath(root / "nb")
    assert m.resolve_cwd("nb/sub/unsaved.ipynb", str(root)) == os.path.realpath(root / "nb" / "sub")
    for bad in ("../", "nb/../../etc", "escape", "/etc", "nb\n", "missing", "missing/x.ipynb",
                "escape/x.ipynb", 5):
        with pytest.raises(ValidationError):
            m.resolve_cwd(bad, str(root))


def test_job_dir_lookup_never_uses_client_paths(tmp_path):
    m = manager(tmp_path)
    m._ensure_dirs()
    token = "0123456789abcdef0123456789abcdef"
    os.mkdir(os.path.join(m.jobs_dir, token))
    os.symlink(os.path.join("..", token), os.path.join(m.jobs_dir, "by-id", "42"))
    assert m.job_dir("42") == os.path.join(m.jobs_dir, token)
    os.symlink("/etc", os.path.join(m.jobs_dir, "by-id", "43"))
    with pytest.raises(celljob.NotFound):
        m.job_dir("43")
    with pytest.raises(celljob.NotFound):
        m.job_dir("44")
    for bad in ("1;scancel -u alice", "../42", "-1", "42\n"):
        with pytest.raises(ValidationError):
            m.job_dir(bad)
    assert os.stat(m.jobs_dir).st_mode & 0o777 == 0o700


def test_cleanup_removes_only_old_job_dirs(tmp_path):
    import time as _time

    m = manager(tmp_path)
    m._ensure_dirs()
    old, new = "a" * 32, "b" * 32
    for token, job in ((old, "1"), (new, "2")):
        os.mkdir(os.path.join(m.jobs_dir, token))
        os.symlink(os.path.join("..", token), os.path.join(m.jobs_dir, "by-id", job))
    os.mkdir(os.path.join(m.jobs_dir, "not-a-job"))
    past = _time.time() - 30 * 86400
    os.utime(os.path.join(m.jobs_dir, old), (past, past))
    os.utime(os.path.join(m.jobs_dir, "not-a-job"), (past, past))
    assert m.cleanup(14) == 1
    assert sorted(os.listdir(m.jobs_dir)) == sorted([new, "by-id", "not-a-job"])
    assert os.listdir(os.path.join(m.jobs_dir, "by-id")) == ["2"]
    assert m.cleanup(0) == 0


@pytest.mark.parametrize("command", [[], "python -m http.server", [1], ["-c"], ["python", "a\nb"], [""],
                                     ["x"] * 300, ["python", "\x00"]])
def test_service_command_refused(command):
    with pytest.raises(ValidationError):
        services.validate_command(command)


def test_service_command_allows_shell_text_as_plain_arguments():
    argv = ["python3", "-c", "print('$(id); `x` | y')", "--port={port}"]
    assert services.validate_command(argv) == argv


def test_launcher_substitutes_placeholders():
    env = {"SLURM_JOB_ID": "77", "PORT": "23456", "JUPYTER_HPC_PROXY_PREFIX": "/user/a/jupyter-hpc/proxy/"}
    argv = services.launch(["app", "--port={port}", "--base={base_url}", "{x}"], env)
    assert argv == ["app", "--port=23456", "--base=/user/a/jupyter-hpc/proxy/77/", "{x}"]
    assert env["JUPYTER_HPC_BASE_URL"] == "/user/a/jupyter-hpc/proxy/77/"
    with pytest.raises(SystemExit):
        services.launch(["app"], {"SLURM_JOB_ID": "1;x", "PORT": "1"})


def service_manager(tmp_path):
    return services.ServiceManager(cells=manager(tmp_path), services_dir=str(tmp_path / "svc"),
                                   proxy_prefix="/jupyter-hpc/proxy/")


def info(**kw):
    base = dict(job_id="5", user=None, state="RUNNING", nodes="n1",
                comment="jupyter-hpc:kind=service,name=web,host=n1,port=23456")
    base.update(kw)
    return JobInfo(**base)


def test_proxy_endpoint_checks(tmp_path):
    sm = service_manager(tmp_path)
    me = sm.username
    assert sm.endpoint_of(info(user=me)) == ("n1", 23456)
    assert sm.endpoint_of(info(user="someoneelse")) is None
    assert sm.endpoint_of(info(user=me, state="PENDING")) is None
    assert sm.endpoint_of(info(user=me, state="COMPLETED")) is None
    assert sm.endpoint_of(info(user=me, comment="jupyter-hpc:kind=cell,host=n1,port=23456")) is None
    assert sm.endpoint_of(info(user=me, comment="jupyter-hpc:kind=service,host=evil.example,port=22")) is None
    assert sm.endpoint_of(info(user=me, comment="jupyter-hpc:kind=service")) is None
    assert sm.endpoint_of(info(user=me, comment="anything")) is None


async def test_proxy_target_requires_record(tmp_path):
    sm = service_manager(tmp_path)
    assert await sm.target("5") is None  # not started by this server: no Slurm query at all
    with pytest.raises(ValidationError):
        await sm.target("5;id")


def test_prefix_checked(tmp_path):
    with pytest.raises(ValueError):
        services.ServiceManager(cells=manager(tmp_path), proxy_prefix="/a b/")


def test_handler_patterns_and_job_dict():
    paths = [h[0] for h in handlers.handlers()]
    assert "/jupyter-hpc/api/cells" in paths and "/jupyter-hpc/api/services" in paths
    j = info(user="alice", comment="jupyter-hpc:kind=cell,image=site:notebook.sif")
    d = handlers.job_dict(j)
    assert d["kind"] == "cell" and d["image"] == "site:notebook.sif"
    validate_schema(d, "Job")
    assert handlers.job_dict(info(comment=None))["kind"] == "other"


def test_decode_prefix_keeps_split_utf8():
    data = "aé".encode()
    assert handlers._decode_prefix(data[:-1]) == ("a", 1)
    assert handlers._decode_prefix(data) == ("aé", 3)
    assert handlers._decode_prefix(b"\xff\xfeabcdefgh")[1] == 10


def test_openapi_spec_is_consistent():
    spec = openapi_spec()
    for name in ("Image", "Job", "CellState", "Service", "Partition", "Error", "JobOutput", "Pull"):
        assert name in spec["components"]["schemas"]
    validate_schema({"job_id": "1", "state": "RUNNING", "reason": None, "node": "n1", "next": 2, "done": False,
                     "status": None, "outputs": [
                         {"output_type": "stream", "name": "stdout", "text": "x"},
                         {"output_type": "display_data", "data": {"image/png": "AA=="}, "metadata": {}},
                         {"output_type": "error", "ename": "E", "evalue": "v", "traceback": []}]}, "CellState")
    with pytest.raises(AssertionError):
        validate_schema({"job_id": "1", "state": "X", "outputs": [{"output_type": "bogus"}], "next": 0,
                         "done": True, "status": "ok"}, "CellState")
    validate_schema({"message": "bad", "field": None}, "Error")
    run = {"node": "n1", "cpu_model": "AMD EPYC", "cpus": 32, "node_cpus": 32, "alloc_cpus": 32,
           "exclusive": True, "job_id": "1"}
    for value in (run, None, dict(run, exclusive=None)):
        validate_schema({"job_id": "1", "state": "COMPLETED", "node": "n1", "next": 0, "done": True,
                         "status": "ok", "outputs": [], "run": value}, "CellState")
    with pytest.raises(AssertionError):
        validate_schema(dict(run, cpus="32"), "RunRecord")


def test_cell_state_carries_run_record(tmp_path):
    import asyncio
    import json

    m = manager(tmp_path)
    m._ensure_dirs()
    token = "c" * 32
    job_dir = os.path.join(m.jobs_dir, token)
    os.mkdir(job_dir)
    os.symlink(os.path.join("..", token), os.path.join(m.jobs_dir, "by-id", "42"))
    with open(os.path.join(job_dir, "status.json"), "w") as f:
        json.dump({"status": "ok"}, f)
    state = asyncio.run(m.state("42"))
    assert state.done and state.run is None and state.to_dict()["run"] is None
    run = {"node": "n1", "cpu_model": "X", "cpus": 4, "node_cpus": 4, "alloc_cpus": 4, "exclusive": True,
           "job_id": "42"}
    with open(os.path.join(job_dir, celljob.RUN_RECORD), "w") as f:
        json.dump(run, f)
    state = asyncio.run(m.state("42"))
    assert state.to_dict()["run"] == run and state.node == "n1"
    validate_schema(state.to_dict(), "CellState")
    assert magic.describe_run(run) == "ran on n1 (X, 4 of 4 CPUs allocated, exclusive)"


def test_magic_options():
    opts = magic.parse_cell_options("--image site:notebook.sif --gpus 1 --partition gpu --time 00:10:00 --wait")
    assert opts["wait"] is True
    assert opts["body"] == {"image": "site:notebook.sif", "gpus": "1", "partition": "gpu", "time": "00:10:00"}
    opts = magic.parse_cell_options("--image x --cpus 2 --mem 4G --exclusive")
    assert opts["body"]["memory"] == "4G" and opts["body"]["exclusive"] is True
    for bad in ("--bogus 1", "--image 'unterminated", "--gpus"):
        with pytest.raises(ValidationError):
            magic.parse_cell_options(bad)
