"""Container runtime choice (apptainer / host / auto probe) and host-mode batch scripts."""

import asyncio
import json
import os
import stat
import subprocess

import pytest

from jupyter_hpc import apptainer, jobscript
from jupyter_hpc.images import ImageCatalog
from jupyter_hpc.runtime import ENV_MODE, HOST_MESSAGE, ContainerRuntime
from jupyter_hpc.validate import ValidationError

NASTY = ["a b", "$(touch /tmp/pwned-host)", "`id`", "x;y", "'q'", '"dq"', "*", "~", "\\", ""]


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch):
    monkeypatch.delenv(ENV_MODE, raising=False)
    ContainerRuntime.clear_cache()
    yield
    ContainerRuntime.clear_cache()


def _script(tmp_path, name, body):
    path = tmp_path / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_command_argv():
    assert apptainer.command_argv("/i.sif", ["python3", "-V"], runtime="host", nv=True,
                                  binds=[("/a", "/b")]) == ["python3", "-V"]
    assert apptainer.command_argv("/i.sif", ["python3"], nv=True)[:3] == ["apptainer", "exec", "--nv"]
    with pytest.raises(ValidationError):
        apptainer.command_argv("/i.sif", ["x"], runtime="docker")
    with pytest.raises(ValidationError):
        apptainer.command_argv("relative.sif", ["x"], runtime="host")
    with pytest.raises(ValidationError):
        apptainer.command_argv("/i.sif", [], runtime="host")
    assert apptainer.probe_argv("/i.sif") == ["apptainer", "exec", "--cleanenv", "/i.sif", "true"]


def test_host_script_runs_argv_directly(tmp_path):
    workdir = tmp_path / "work dir"
    workdir.mkdir()
    script = jobscript.build_container_script(
        "/opt/images/nb.sif",
        ["python3", "-c", "import json, os, sys; print(json.dumps({'argv': sys.argv[1:], 'cwd': os.getcwd(), "
         "'lit': os.environ.get('LIT'), 'gpu': os.environ.get('CUDA_VISIBLE_DEVICES')}))"] + NASTY,
        binds=[("/home/alice", "/home/alice", "rw")], nv=True, pwd=str(workdir), exports={"LIT": "a 'b' $c"},
        env_names=["CUDA_VISIBLE_DEVICES"], runtime="host",
    )
    assert "apptainer" not in script and "APPTAINERENV_" not in script
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "CUDA_VISIBLE_DEVICES": "0"}
    res = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out == {"argv": NASTY, "cwd": str(workdir), "lit": "a 'b' $c", "gpu": "0"}
    assert not os.path.exists("/tmp/pwned-host")
    markers = jobscript.parse_markers(res.stderr)
    assert markers["runtime"] == "host" and markers["image"] == "/opt/images/nb.sif" and markers["node"]
    assert "started" not in markers


def test_host_script_port_handoff(tmp_path):
    log = tmp_path / "scontrol.log"
    sc = _script(tmp_path, "scontrol", f'printf "%s\\n" "$@" >> "{log}"\n')
    script = jobscript.build_container_script(
        "/i.sif", ["python3", "-c", "import os, sys; print(sys.argv[1], os.environ['PORT'])", "--port={port}"],
        port=True, comment="jupyter-hpc:kind=service", scontrol=sc, runtime="host",
    )
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "SLURM_JOB_ID": "12"}
    res = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    arg, port = res.stdout.split()
    assert arg == f"--port={port}" and port.isdigit()
    assert "Comment=jupyter-hpc:kind=service,host=" in log.read_text() and f"port={port}" in log.read_text()


def test_fixed_modes(monkeypatch):
    assert ContainerRuntime().mode == "apptainer"
    info = asyncio.run(ContainerRuntime().resolve())
    assert info.containers and info.message is None and info.configured == "apptainer"
    info = asyncio.run(ContainerRuntime(mode="host").resolve())
    assert info.mode == "host" and not info.containers and info.message == HOST_MESSAGE
    assert info.to_dict()["message"] == HOST_MESSAGE and info.to_dict()["containers"] is False
    monkeypatch.setenv(ENV_MODE, "HOST")
    assert ContainerRuntime().mode == "host"
    monkeypatch.setenv(ENV_MODE, "docker")
    assert ContainerRuntime().mode == "apptainer"
    with pytest.raises(Exception):
        ContainerRuntime(mode="docker")


def test_auto_without_apptainer(tmp_path):
    rt = ContainerRuntime(mode="auto", apptainer=str(tmp_path / "no-such-apptainer"))
    info = asyncio.run(rt.resolve())
    assert info.mode == "host" and "command not found" in info.reason and info.configured == "auto"
    assert rt.cached() is info


def test_auto_probe_failure_and_cache(tmp_path):
    calls = tmp_path / "calls"
    fake = _script(tmp_path, "apptainer", f'echo "$@" >> "{calls}"\n'
                   'printf "\\033[91mERROR  : Failed to create user namespace: maximum number exceeded\\033[0m\\n" >&2\n'
                   "exit 255\n")
    rt = ContainerRuntime(mode="auto", apptainer=fake, probe_image="/opt/images/x.sif")
    info = asyncio.run(rt.resolve())
    assert info.mode == "host" and info.probe_image == "/opt/images/x.sif"
    assert "Failed to create user namespace" in info.reason and "\x1b" not in info.reason
    assert asyncio.run(rt.resolve()) is info  # probed once per process
    assert calls.read_text().splitlines() == ["exec --cleanenv /opt/images/x.sif true"]


def test_auto_probe_with_catalog_image(tmp_path):
    site = tmp_path / "site"
    sandbox = site / "nb-sandbox" / ".singularity.d"
    sandbox.mkdir(parents=True)
    (sandbox / "labels.json").write_text("{}")
    calls = tmp_path / "calls"
    fake = _script(tmp_path, "apptainer", f'echo "$@" >> "{calls}"\n')
    catalog = ImageCatalog(site_dirs=[str(site)], user_dirs=[], cache_dir="")
    rt = ContainerRuntime(mode="auto", apptainer=fake)
    info = asyncio.run(rt.resolve(catalog, None))
    assert info.mode == "apptainer" and info.probe_image == str(site / "nb-sandbox")
    assert calls.read_text().split() == ["exec", "--cleanenv", str(site / "nb-sandbox"), "true"]


def test_auto_without_images_is_not_cached(tmp_path):
    fake = _script(tmp_path, "apptainer", "exit 0\n")
    catalog = ImageCatalog(site_dirs=[str(tmp_path / "none")], user_dirs=[], cache_dir="")
    rt = ContainerRuntime(mode="auto", apptainer=fake)
    info = asyncio.run(rt.resolve(catalog, None))
    assert info.mode == "apptainer" and "no image" in info.reason
    assert rt.cached() is None


class _Slurm:
    """Partitions like sinfo reports them and an sbatch that always answers job id 7."""

    async def partitions(self, max_age=None):
        from jupyter_hpc.slurm import Partition

        return [Partition(name="cpu", default=True, state="up", nodes=1, cpus=4, memory_mb=4000,
                          max_time_minutes=60, gpus={})]

    async def submit(self, req, script, env=None):
        self.script = script
        return "7"


class _Catalog:
    def __init__(self, path):
        self.path = path

    async def resolve(self, image, username=None):
        from jupyter_hpc.images import Image

        return Image(id="user:x", name="x", format="sandbox", path=self.path)


def test_cell_job_in_host_mode_and_reused_job_id(tmp_path):
    """Cell jobs follow the runtime; a job id Slurm hands out again replaces the stale link."""
    import pwd

    from jupyter_hpc.celljob import CellJobManager

    slurm = _Slurm()
    user = pwd.getpwuid(os.getuid()).pw_name
    cells = CellJobManager(slurm=slurm, catalog=_Catalog(str(tmp_path / "img")), username=user,
                           jobs_dir=str(tmp_path / "jobs"), runtime=ContainerRuntime(mode="host"))
    first = asyncio.run(cells.submit({"code": "print(1)", "image": "user:x"}, cwd=str(tmp_path)))
    assert first["runtime"] == "host" and "apptainer" not in slurm.script
    assert "jupyter-hpc: runtime=host" in slurm.script and "jupyter_hpc.cellrunner" in slurm.script
    second = asyncio.run(cells.submit({"code": "print(2)", "image": "user:x"}, cwd=str(tmp_path)))
    assert first["job_id"] == second["job_id"] == "7"
    assert cells.job_dir("7") == second["dir"] != first["dir"]
    assert sorted(os.listdir(tmp_path / "jobs" / "by-id")) == ["7"]
    with open(os.path.join(second["dir"], "job.json")) as f:
        assert json.load(f)["runtime"] == "host"
