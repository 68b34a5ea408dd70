"""Unit tests of the kernel provisioner's pure parts and its lifecycle logic.

Slurm is replaced by in-memory stand-ins here; the real thing is exercised in
tests/integration/test_provisioner.py.
"""

import asyncio
import json
import os
import signal
import stat

import pytest

pytest.importorskip("jupyter_client")

from jupyter_client.kernelspec import KernelSpec  # noqa: E402

from jupyter_hpc import provisioner as prov
from jupyter_hpc.slurm import JobInfo
from jupyter_hpc.validate import ValidationError
from jupyter_hpc.watcher import GONE, KNOWN, JobStatus

KERNEL_ID = "0b6f4d1e-8d0e-4a8f-9d55-3f2f5e0c1a2b"
ARGV = ["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"]


def make(tmp_path, **config):
    spec = KernelSpec(argv=list(ARGV), display_name="HPC", language="python", env={"MY_SETTING": "1"},
                      interrupt_mode="message", resource_dir=str(tmp_path / "spec"))
    config.setdefault("image", str(tmp_path / "img.sif"))
    config.setdefault("connection_dir", str(tmp_path / "conn"))
    (tmp_path / "img.sif").write_bytes(b"")
    return prov.SlurmApptainerProvisioner(kernel_id=KERNEL_ID, kernel_spec=spec, parent=None, **config)


class FakeWatcher:
    def __init__(self):
        self.statuses = {}
        self.tracked = []
        self.untracked = []

    def track(self, job_id):
        self.tracked.append(job_id)

    def untrack(self, job_id):
        self.untracked.append(job_id)

    def get(self, job_id):
        return self.statuses.get(job_id, JobStatus(job_id))

    async def wait_for_update(self, timeout=None):
        await asyncio.sleep(0.01)
        return True


class FakeSlurm:
    """Stands in for SlurmClient; ``on_submit`` plays the job."""

    scancel_cmd = "scancel"
    env = {}

    def __init__(self, on_submit=None, node="node7"):
        self.on_submit = on_submit
        self.node = node
        self.submitted = []
        self.cancelled = []

    async def check_request(self, req):
        return None

    async def submit(self, req, script, user=None, env=None, cwd=None):
        self.submitted.append((req, script, env))
        if self.on_submit:
            self.on_submit()
        return "4242"

    async def squeue(self, job_ids=None, user=None, states="all", as_user=None):
        return {"4242": JobInfo(job_id="4242", state="RUNNING", nodes=self.node)}

    async def cancel(self, job_id, user=None, signal=None):
        self.cancelled.append(job_id)
        return True


def wire(p, slurm, watcher):
    p._client = slurm
    p._watcher = lambda: watcher


async def test_pre_launch_writes_private_connection_file(tmp_path):
    p = make(tmp_path)
    kw = await p.pre_launch(env={"PATH": "/usr/bin", "JUPYTER_TOKEN": "secret"}, cwd=str(tmp_path))
    path = p.connection_file
    assert path == str(tmp_path / "conn" / f"hpc-kernel-{KERNEL_ID}.json")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "conn").st_mode) == 0o700
    data = json.loads(open(path).read())
    assert data["ip"] == "0.0.0.0" and data["transport"] == "tcp"
    assert all(data[name] == 0 for name in prov.PORT_NAMES)
    assert len(data["key"]) >= 32 and data["signature_scheme"] == "hmac-sha256"
    # the command names the file, never the key
    assert kw["cmd"] == ["python3", "-m", "ipykernel_launcher", "-f", path]
    assert data["key"] not in " ".join(kw["cmd"])
    # kernelspec env was applied by the base class
    assert kw["env"]["MY_SETTING"] == "1"
    assert p._request.workdir == os.path.realpath(str(tmp_path))
    assert p._request.output.endswith(".log")


async def test_pre_launch_replaces_planted_symlink(tmp_path):
    p = make(tmp_path)
    (tmp_path / "conn").mkdir(mode=0o700)
    target = tmp_path / "elsewhere.json"
    target.write_text("{}")
    os.symlink(target, tmp_path / "conn" / f"hpc-kernel-{KERNEL_ID}.json")
    await p.pre_launch(env={})
    assert not os.path.islink(p.connection_file)
    assert target.read_text() == "{}"


@pytest.mark.parametrize("config, field", [
    ({"partition": "cpu;rm -rf /"}, "partition"),
    ({"time": "forever"}, "time"),
    ({"image": ""}, "image"),
    ({"image": "../../etc/x"}, "image"),
    ({"memory": "-1G"}, "memory"),
    ({"binds": ["/a:/b:rx"]}, "bind mode"),
])
async def test_pre_launch_validates_resources(tmp_path, config, field):
    p = make(tmp_path, **config)
    with pytest.raises(prov.KernelJobError) as e:
        kw = await p.pre_launch(env={})
        p.batch_script("/i.sif", kw["cmd"], [])
    assert e.value.status_code == 400
    assert f"Kernelspec setting refused: {field}:" in str(e.value)
    assert f"{field}:" in e.value.log_message


async def test_job_request_with_gpus(tmp_path):
    p = make(tmp_path, partition="gpu", gpus=2, gpu_type="tesla", memory="4G", time="90", cpus=4)
    await p.pre_launch(env={})
    req = p._request
    assert (req.partition, req.gpus, req.gres, req.memory, req.time, req.cpus) == (
        "gpu", 2, "gpu:tesla:2", "4096M", "01:30:00", 4)
    assert req.comment.startswith("jupyter-hpc:kind=kernel,kernel=" + KERNEL_ID)


def test_batch_script_runs_kernel_in_image(tmp_path):
    p = make(tmp_path, gpus=1, binds=["/scratch", "/data:/mnt/data:ro"])
    conn = str(tmp_path / "conn" / "k.json")
    script = p.batch_script("/images/nb.sif", ["python3", "-m", "ipykernel_launcher", "-f", conn],
                            ["SLURM_JOB_ID", "MY_SETTING"])
    last = script.strip().splitlines()[-1]
    assert last.startswith("exec apptainer exec --nv --cleanenv")
    assert "--bind /scratch --bind /data:/mnt/data:ro /images/nb.sif python3 -m ipykernel_launcher -f " + conn in last
    assert 'export APPTAINERENV_SLURM_JOB_ID="$SLURM_JOB_ID"' in script
    assert 'export APPTAINERENV_MY_SETTING="$MY_SETTING"' in script
    # without GPUs no --nv
    p2 = make(tmp_path)
    assert "--nv" not in p2.batch_script("/images/nb.sif", ["python3"], [])


def test_batch_script_quotes_odd_argv(tmp_path):
    p = make(tmp_path)
    script = p.batch_script("/images/nb.sif", ["python3", "-c", "print('$(id)'); x=`id`"], [])
    assert "'print('\"'\"'$(id)'\"'\"'); x=`id`'" in script


def test_bad_bind_refused(tmp_path):
    with pytest.raises(ValidationError):
        prov.parse_bind("/a:/b:rx")
    with pytest.raises(ValidationError):
        prov.parse_bind("-x")
    with pytest.raises(ValidationError):
        prov.parse_bind("/a,/b")


def test_job_environment_keeps_secrets_out(tmp_path):
    p = make(tmp_path)
    env = p.job_environment({"PATH": "/usr/bin", "HOME": "/home/a", "JUPYTER_TOKEN": "t0k", "JPY_SESSION_NAME": "nb.ipynb",
                             "MY_SETTING": "1", "JUPYTERHUB_API_TOKEN": "x", "SLURM_CONF": "/etc/slurm/slurm.conf"})
    assert env == {"PATH": "/usr/bin", "HOME": "/home/a", "JPY_SESSION_NAME": "nb.ipynb", "MY_SETTING": "1",
                   "SLURM_CONF": "/etc/slurm/slurm.conf"}


def test_nv_setting(tmp_path):
    assert make(tmp_path, gpus=1)._use_nv(1) is True
    assert make(tmp_path)._use_nv(0) is False
    assert make(tmp_path, nv=True)._use_nv(0) is True
    assert make(tmp_path, nv="false")._use_nv(2) is False


async def test_launch_waits_for_ports_and_uses_node(tmp_path):
    p = make(tmp_path)
    kw = await p.pre_launch(env={"PATH": "/usr/bin", "JUPYTER_TOKEN": "secret"})

    def kernel_writes_ports():
        data = json.loads(open(p.connection_file).read())
        data.update({name: 40000 + i for i, name in enumerate(prov.PORT_NAMES)})

        async def later():
            await asyncio.sleep(0.3)
            with open(p.connection_file, "w") as f:
                json.dump(data, f)

        asyncio.get_running_loop().create_task(later())

    slurm, watcher = FakeSlurm(kernel_writes_ports), FakeWatcher()
    wire(p, slurm, watcher)
    watcher.statuses["4242"] = JobStatus("4242", KNOWN, JobInfo(job_id="4242", state="RUNNING", nodes="node7"))
    info = await p.launch_kernel(kw.pop("cmd"), **kw)
    assert info["ip"] == "node7"
    assert info["shell_port"] == 40000 and info["hb_port"] == 40004
    assert isinstance(info["key"], bytes)
    assert p.has_process and p.job_id == "4242" and watcher.tracked == ["4242"]
    req, script, env = slurm.submitted[0]
    assert "JUPYTER_TOKEN" not in env and "secret" not in script
    assert p.connection_file in script and info["key"].decode() not in script
    assert await p.poll() is None


async def test_launch_reports_job_failure_with_output(tmp_path):
    p = make(tmp_path)
    kw = await p.pre_launch(env={})

    def job_fails():
        with open(p.output_file, "w") as f:
            f.write("jupyter-hpc: node=n1\nFATAL:   could not open image /x.sif: failed to retrieve path\n")

    slurm, watcher = FakeSlurm(job_fails), FakeWatcher()
    wire(p, slurm, watcher)
    watcher.statuses["4242"] = JobStatus("4242", KNOWN, JobInfo(job_id="4242", state="FAILED", exit_code=255))
    with pytest.raises(prov.KernelJobError) as e:
        await p.launch_kernel(kw.pop("cmd"), **kw)
    assert "FATAL:   could not open image /x.sif" in str(e.value)
    assert "job 4242 failed (FAILED, exit code 255)" in str(e.value)
    assert not p.has_process and watcher.untracked == ["4242"]


async def test_launch_cancelled_while_pending_cancels_job(tmp_path):
    p = make(tmp_path)
    kw = await p.pre_launch(env={})
    slurm, watcher = FakeSlurm(), FakeWatcher()
    wire(p, slurm, watcher)
    watcher.statuses["4242"] = JobStatus("4242", KNOWN, JobInfo(job_id="4242", state="PENDING", reason="Resources"))
    task = asyncio.ensure_future(p.launch_kernel(kw.pop("cmd"), **kw))
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert slurm.cancelled == ["4242"]


async def test_pending_timeout(tmp_path):
    p = make(tmp_path, pending_timeout=0.3)
    kw = await p.pre_launch(env={})
    slurm, watcher = FakeSlurm(), FakeWatcher()
    wire(p, slurm, watcher)
    watcher.statuses["4242"] = JobStatus("4242", KNOWN, JobInfo(job_id="4242", state="PENDING", reason="Priority"))
    with pytest.raises(prov.KernelJobError, match="still pending.*Priority"):
        await p.launch_kernel(kw.pop("cmd"), **kw)
    assert slurm.cancelled == ["4242"]


async def test_poll_wait_and_cleanup(tmp_path):
    p = make(tmp_path)
    await p.pre_launch(env={})
    slurm, watcher = FakeSlurm(), FakeWatcher()
    wire(p, slurm, watcher)
    p.job_id = "4242"
    watcher.statuses["4242"] = JobStatus("4242", KNOWN, JobInfo(job_id="4242", state="RUNNING"))
    assert await p.poll() is None
    watcher.statuses["4242"] = JobStatus("4242", KNOWN, JobInfo(job_id="4242", state="TIMEOUT"))
    code = await p.poll()
    assert code == 128 + signal.SIGTERM
    assert await p.wait() == code
    assert not p.has_process
    await p.cleanup()
    assert not os.path.exists(p.connection_file)
    assert slurm.cancelled == []  # nothing left to cancel


async def test_cleanup_cancels_running_job(tmp_path):
    p = make(tmp_path)
    await p.pre_launch(env={})
    slurm, watcher = FakeSlurm(), FakeWatcher()
    wire(p, slurm, watcher)
    p.job_id = "4242"
    await p.cleanup(restart=True)
    assert slurm.cancelled == ["4242"] and not p.has_process
    assert not os.path.exists(p.connection_file)


async def test_gone_job_is_dead(tmp_path):
    p = make(tmp_path)
    wire(p, FakeSlurm(), FakeWatcher())
    p.job_id = "4242"
    p._watcher().statuses["4242"] = JobStatus("4242", GONE)
    assert await p.poll() == prov.UNKNOWN_EXIT


async def test_send_signal_uses_scancel_full(tmp_path, monkeypatch):
    p = make(tmp_path)
    wire(p, FakeSlurm(), FakeWatcher())
    p.job_id = "4242"
    calls = []

    async def fake_run(argv, **kw):
        calls.append(argv)

    monkeypatch.setattr(prov.process, "run", fake_run)
    await p.send_signal(signal.SIGINT)
    await p.send_signal(0)
    assert calls == [["scancel", "--signal=INT", "--full", "4242"]]
    with pytest.raises(ValueError):
        await p.send_signal(99)


async def test_terminate_and_kill_cancel(tmp_path):
    p = make(tmp_path)
    slurm = FakeSlurm()
    wire(p, slurm, FakeWatcher())
    p.job_id = "4242"
    await p.terminate()
    await p.kill()
    assert slurm.cancelled == ["4242", "4242"]


async def test_provisioner_info_round_trip(tmp_path):
    p = make(tmp_path)
    await p.pre_launch(env={})
    p.job_id, p.node = "4242", "node7"
    p.connection_info = {"ip": "node7"}
    info = await p.get_provisioner_info()
    assert info["job_id"] == "4242" and info["kernel_id"] == KERNEL_ID and info["node"] == "node7"
    q = make(tmp_path)
    watcher = FakeWatcher()
    q._watcher = lambda: watcher
    await q.load_provisioner_info(info)
    assert q.job_id == "4242" and q.connection_file == p.connection_file and watcher.tracked == ["4242"]


def test_helpers():
    assert prov.ports_ready({n: 5 for n in prov.PORT_NAMES})
    assert not prov.ports_ready({n: 0 for n in prov.PORT_NAMES})
    assert not prov.ports_ready(None)
    assert prov.job_error_summary("a\nb\nFATAL: x\nc") == "FATAL: x"
    assert prov.exit_code_for(JobInfo(job_id="1", state="COMPLETED", exit_code=0)) == 0
    assert prov.exit_code_for(JobInfo(job_id="1", state="OUT_OF_MEMORY")) == 128 + signal.SIGKILL
    assert "reached its time limit" in prov.describe_end(JobInfo(job_id="1", state="TIMEOUT"))
    assert prov.describe_end(JobInfo(job_id="1", state="FAILED", exit_code=65280)) == "job 1 failed (FAILED, exit code 255)"
    assert prov.exit_code_for(JobInfo(job_id="1", state="FAILED", exit_code=9, source="sacct")) == 9
    assert prov.exit_code_for(JobInfo(job_id="1", state="TIMEOUT", exit_code=15)) == 128 + 15
    assert prov.exit_code_for(JobInfo(job_id="1", state="COMPLETED", exit_code=0)) == 0
    assert prov.exit_code_for(JobInfo(job_id="1", state="FAILED", exit_code=65280)) == 255


def test_entry_point_declared():
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(os.path.dirname(__file__), "..", "..", "setup.cfg"))
    eps = cfg["options.entry_points"]["jupyter_client.kernel_provisioners"]
    assert "hpc-slurm-provisioner = jupyter_hpc.provisioner:SlurmApptainerProvisioner" in eps


async def test_job_end_on_its_own_reports_dead(tmp_path):
    from types import SimpleNamespace

    from jupyter_client.manager import AsyncKernelManager

    km = AsyncKernelManager()
    km._restarter = SimpleNamespace(restart_limit=5)
    spec = KernelSpec(argv=list(ARGV), display_name="HPC", language="python", interrupt_mode="message")
    (tmp_path / "img.sif").write_bytes(b"")
    p = prov.SlurmApptainerProvisioner(kernel_id=KERNEL_ID, kernel_spec=spec, parent=km,
                                       image=str(tmp_path / "img.sif"), connection_dir=str(tmp_path / "c"))
    await p.pre_launch(env={})
    assert json.load(open(p.connection_file))["key"] == km.session.key.decode()
    wire(p, FakeSlurm(), FakeWatcher())
    p.job_id = "4242"
    p._watcher().statuses["4242"] = JobStatus("4242", KNOWN, JobInfo(job_id="4242", state="TIMEOUT"))
    assert await p.poll() == 128 + signal.SIGTERM
    assert km._restarter.restart_limit == 0
    assert not os.path.exists(p.connection_file)

    # a requested shutdown is not a death; with restart_after_job_end the restarter is left alone
    km._restarter.restart_limit = 5
    await p.pre_launch(env={})
    p.job_id = "4242"
    await p.shutdown_requested()
    assert await p.poll() is not None and km._restarter.restart_limit == 5
    p.restart_after_job_end = True
    await p.pre_launch(env={})
    p.job_id = "4242"
    assert await p.poll() is not None and km._restarter.restart_limit == 5


async def test_pending_job_is_logged(tmp_path, caplog):
    import logging

    p = make(tmp_path, pending_log_interval=1.0)
    p.log = logging.getLogger("test-provisioner")
    kw = await p.pre_launch(env={})
    slurm, watcher = FakeSlurm(), FakeWatcher()
    wire(p, slurm, watcher)
    watcher.statuses["4242"] = JobStatus("4242", KNOWN, JobInfo(job_id="4242", state="PENDING", reason="Resources"))

    async def later():
        await asyncio.sleep(0.5)
        watcher.statuses["4242"] = JobStatus("4242", KNOWN, JobInfo(job_id="4242", state="RUNNING", nodes="node7"))
        data = json.load(open(p.connection_file))
        data.update({name: 41000 + i for i, name in enumerate(prov.PORT_NAMES)})
        with open(p.connection_file, "w") as f:
            json.dump(data, f)

    with caplog.at_level(logging.INFO, logger="test-provisioner"):
        task = asyncio.ensure_future(later())
        info = await p.launch_kernel(kw.pop("cmd"), **kw)
        await task
    text = caplog.text
    assert "submitted Slurm job 4242" in text
    assert "job 4242 is pending (Resources)" in text
    assert "waiting for job 4242 (pending 0 s, reason: Resources)" in text
    assert "up in job 4242 on node7" in text
    assert info["ip"] == "node7"


async def test_unknown_kernelspec_setting_is_refused(tmp_path):
    p = make(tmp_path, memroy="4G")
    with pytest.raises(prov.KernelJobError, match="unknown setting.*'memroy'") as e:
        await p.pre_launch(env={})
    assert e.value.status_code == 400


def test_factory_builds_from_kernelspec(tmp_path):
    from jupyter_client.provisioning.factory import KernelProvisionerFactory

    spec = KernelSpec(argv=list(ARGV), display_name="HPC", language="python", metadata={
        "kernel_provisioner": {"provisioner_name": "hpc-slurm-provisioner",
                               "config": {"image": "/i.sif", "partition": "gpu", "gpus": 1}}})
    factory = KernelProvisionerFactory.instance()
    if "hpc-slurm-provisioner" not in factory.provisioners:
        pytest.skip("jupyter-hpc is not installed in this environment (entry point missing)")
    p = factory.create_provisioner_instance(KERNEL_ID, spec, parent=None)
    assert isinstance(p, prov.SlurmApptainerProvisioner)
    assert (p.image, p.partition, p.gpus) == ("/i.sif", "gpu", 1)


def test_wrong_setting_type_is_a_short_400(tmp_path):
    with pytest.raises(prov.KernelJobError) as e:
        make(tmp_path, cpus="A" * 100000)
    assert e.value.status_code == 400 and "cpus" in str(e.value) and len(str(e.value)) < 500


async def test_launch_checks_the_partition_before_submitting(tmp_path):
    p = make(tmp_path, gpus=1, gpu_type="nosuch")
    kw = await p.pre_launch(env={})
    slurm, watcher = FakeSlurm(), FakeWatcher()

    async def check_request(req):
        raise ValidationError("gpus", "partition 'gpu' has at most 0 'nosuch' GPUs per node (tesla: 2)")

    slurm.check_request = check_request
    wire(p, slurm, watcher)
    with pytest.raises(prov.KernelJobError) as e:
        await p.launch_kernel(kw.pop("cmd"), **kw)
    assert e.value.status_code == 400 and "nosuch" in str(e.value)
    assert slurm.submitted == [] and not os.path.exists(p.connection_file)
