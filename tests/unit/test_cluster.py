"""SlurmClient error mapping and argument handling (no cluster needed)."""

import os
import stat

import pytest

from jupyter_hpc import slurm
from jupyter_hpc.cluster import (AccountingUnavailable, SlurmClient, SlurmError, SlurmRequestError,
                                 SlurmUnavailable, classify)
from jupyter_hpc.process import CommandError, CommandNotFound, CommandTimeout
from jupyter_hpc.validate import ValidationError


def err(stderr, rc=1, cls=CommandError, reason=""):
    return cls(["sbatch"], rc, stderr, "", reason)


@pytest.mark.parametrize(
    "stderr",
    [
        "sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)",
        "squeue: error: slurm_receive_msg: Socket timed out on send/recv operation",
        "slurm_load_jobs error: Unable to contact slurm controller (connect failure)",
        "sinfo: error: Connection refused",
        "squeue: error: Munge decode failed: Expired credential",
    ],
)
def test_unavailable(stderr):
    e = classify(err(stderr))
    assert isinstance(e, SlurmUnavailable) and isinstance(e, SlurmError) and isinstance(e, CommandError)


def test_timeout_is_unavailable():
    assert isinstance(classify(err("", None, CommandTimeout, "timed out")), SlurmUnavailable)


def test_not_found_is_plain_error():
    e = classify(err("", None, CommandNotFound, "could not be started"))
    assert type(e) is SlurmError


@pytest.mark.parametrize(
    "stderr,field",
    [
        ("sbatch: error: Batch job submission failed: Invalid partition name specified", "partition"),
        ("sbatch: error: Batch job submission failed: Requested node configuration is not available", "resources"),
        ("sbatch: error: Batch job submission failed: Invalid generic resource (gres) specification", "gpus"),
        ("sbatch: error: Batch job submission failed: Invalid account or account/partition combination specified",
         "account"),
        ("sbatch: error: Batch job submission failed: Invalid qos specification", "qos"),
        ("sbatch: error: Batch job submission failed: Requested time limit is invalid (missing or exceeds some limit)",
         "time"),
        ("sbatch: error: Batch job submission failed: Job violates accounting/QOS policy (job submit limit, "
         "user's size and/or time limits)", "resources"),
    ],
)
def test_request_errors(stderr, field):
    e = classify(err(stderr), request=True)
    assert isinstance(e, SlurmRequestError) and e.field == field
    assert "Slurm said" in str(e) and len(e.message) > 30
    # outside a submission the same text is a plain error
    assert not isinstance(classify(err(stderr)), SlurmRequestError)


def test_accounting_disabled():
    assert isinstance(classify(err("Slurm accounting storage is disabled")), AccountingUnavailable)


def test_other_error():
    e = classify(err("sbatch: error: something odd"))
    assert type(e) is SlurmError and "something odd" in str(e)


def _stub_bin(tmp_path, name, body):
    p = tmp_path / name
    p.write_text("#!/bin/bash\n" + body)
    p.chmod(p.stat().st_mode | stat.S_IXUSR)
    return str(p)


async def test_submit_uses_stdin_and_env(tmp_path):
    """sbatch gets the script on stdin and the env as its environment (a stub records both)."""
    rec = tmp_path / "rec"
    sb = _stub_bin(tmp_path, "sbatch", f'printf "%s\\n" "$@" > {rec}.argv; cat > {rec}.stdin; '
                                       f'echo "$SECRET_TOKEN" > {rec}.env; echo "4242;cluster"\n')
    c = SlurmClient(sbatch=sb)
    req = slurm.JobRequest.validated(partition="cpu", time="10")
    jid = await c.submit(req, "#!/bin/bash\necho hi\n", env={"PATH": os.environ["PATH"], "SECRET_TOKEN": "t0k"})
    assert jid == "4242"
    assert (tmp_path / "rec.stdin").read_text() == "#!/bin/bash\necho hi\n"
    assert (tmp_path / "rec.env").read_text().strip() == "t0k"
    argv = (tmp_path / "rec.argv").read_text().split()
    assert "--partition=cpu" in argv and "t0k" not in " ".join(argv)
    assert c.counters["sbatch"] == 1


async def test_submit_request_error(tmp_path):
    sb = _stub_bin(tmp_path, "sbatch", 'cat >/dev/null; echo "sbatch: error: Batch job submission failed: '
                                       'Invalid partition name specified" >&2; exit 1\n')
    c = SlurmClient(sbatch=sb)
    with pytest.raises(SlurmRequestError) as e:
        await c.submit(slurm.JobRequest.validated(partition="nope"), "#!/bin/bash\n")
    assert e.value.field == "partition"


async def test_squeue_invalid_job_id_is_empty(tmp_path):
    sq = _stub_bin(tmp_path, "squeue", 'echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1\n')
    c = SlurmClient(squeue_cmd=sq)
    assert await c.squeue(["123"]) == {}
    assert await c.squeue([]) == {}


async def test_partitions_cached_and_check_request(tmp_path):
    D = slurm.DELIM
    count = tmp_path / "count"
    si = _stub_bin(tmp_path, "sinfo", f'echo x >> {count}\n'
                   f'printf "%s\\n" "cpu*{D}up{D}1{D}32{D}0/32/0/32{D}16000{D}1-00:00:00{D}gpu:tesla:2{D}idle{D}" '
                   f'"gpu{D}up{D}1{D}32{D}0/32/0/32{D}16000{D}1-00:00:00{D}gpu:tesla:2{D}idle{D}"\n')
    c = SlurmClient(sinfo_cmd=si)
    parts = await c.partitions()
    await c.partitions()
    assert [p.name for p in parts] == ["cpu", "gpu"] and count.read_text().count("x") == 1
    assert (await c.partition(None)).name == "cpu"
    with pytest.raises(SlurmRequestError) as e:
        await c.partition("nope")
    assert "cpu, gpu" in str(e.value)
    await c.check_request(slurm.JobRequest.validated(partition="gpu", gpus=2, gpu_type="tesla", cpus=32,
                                                     memory="16000M", time="1-00:00:00"))
    for bad, field in [
        (dict(partition="gpu", gpus=3), "gpus"),
        (dict(partition="gpu", gpus=1, gpu_type="a100"), "gpus"),
        (dict(cpus=64), "cpus"),
        (dict(memory="32G"), "memory"),
        (dict(time="2-00:00:00"), "time"),
    ]:
        with pytest.raises(ValidationError) as e:
            await c.check_request(slurm.JobRequest.validated(**bad))
        assert e.value.field == field


async def test_cancel_outcomes(tmp_path):
    ok = SlurmClient(scancel_cmd=_stub_bin(tmp_path, "sc-ok", "exit 0\n"))
    assert await ok.cancel("5") is True
    gone = SlurmClient(scancel_cmd=_stub_bin(
        tmp_path, "sc-gone", 'echo "scancel: error: Kill job error on job id 5: Job/step already completing or '
                             'completed" >&2; exit 0\n'))
    assert await gone.cancel("5") is False
    denied = SlurmClient(scancel_cmd=_stub_bin(
        tmp_path, "sc-denied", 'echo "scancel: error: Kill job error on job id 5: Access/permission denied" >&2; '
                               'exit 210\n'))
    with pytest.raises(SlurmRequestError):
        await denied.cancel("5")
    down = SlurmClient(scancel_cmd=_stub_bin(
        tmp_path, "sc-down", 'echo "scancel: error: Unable to contact slurm controller (connect failure)" >&2; '
                             'exit 1\n'))
    with pytest.raises(SlurmUnavailable):
        await down.cancel("5")
    with pytest.raises(ValidationError):
        await ok.cancel("5;rm")


async def test_squeue_timeout_is_unavailable(tmp_path):
    c = SlurmClient(squeue_cmd=_stub_bin(tmp_path, "sq-slow", "sleep 30\n"), query_timeout=0.3)
    with pytest.raises(SlurmUnavailable):
        await c.squeue()


async def test_submit_does_not_leak_process_env(tmp_path, monkeypatch):
    rec = tmp_path / "rec"
    sb = _stub_bin(tmp_path, "sbatch", f'cat >/dev/null; env > {rec}; echo 7\n')
    monkeypatch.setenv("JUPYTERHUB_CRYPT_KEY", "hub-secret")
    monkeypatch.setenv("LANG", "C.UTF-8")
    c = SlurmClient(sbatch=sb, env={"SLURM_CONF": "/etc/slurm/slurm.conf"})
    assert await c.submit(slurm.JobRequest.validated(), "#!/bin/bash\n", env={"JOB_VAR": "1"}) == "7"
    seen = rec.read_text()
    assert "hub-secret" not in seen
    assert "JOB_VAR=1" in seen and "LANG=C.UTF-8" in seen and "SLURM_CONF=/etc/slurm/slurm.conf" in seen
    assert "PATH=" in seen
