"""Container batch scripts: quoting, variable hand-over, port hand-off (run with bash and stub commands)."""

import json
import os
import shlex
import stat
import subprocess

import pytest

from jupyter_hpc import jobscript, slurm
from jupyter_hpc.validate import ValidationError

NASTY = ["a b", "$(touch /tmp/pwned)", "`id`", "x;y", "'q'", '"dq"', "*", "~", "\\", "{port}x", ""]


def _stub(tmp_path, name, body):
    path = tmp_path / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


@pytest.fixture
def stubs(tmp_path):
    """An 'apptainer' that prints its argv and environment as JSON, an 'scontrol' that logs its argv."""
    log = tmp_path / "scontrol.log"
    app = _stub(
        tmp_path,
        "apptainer",
        'python3 -c \'import json,os,sys; print(json.dumps({"argv": sys.argv[1:], '
        '"env": {k: v for k, v in os.environ.items() if k.startswith(("APPTAINERENV_", "PORT"))}}))\' "$@"\n',
    )
    sc = _stub(tmp_path, "scontrol", f'printf "%s\\n" "$@" >> {shlex.quote(str(log))}\n')
    return {"apptainer": app, "scontrol": sc, "log": log}


def _run(script, env=None, tmp_path=None):
    full = {"PATH": os.environ["PATH"], "HOME": str(tmp_path) if tmp_path else "/tmp", "SLURM_JOB_ID": "77"}
    full.update(env or {})
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=full, timeout=60)


def test_script_passes_argv_verbatim(stubs, tmp_path):
    script = jobscript.build_container_script(
        "/opt/images/nb.sif", ["python3", "-c", "print(1)"] + NASTY,
        binds=[("/home/alice", "/home/alice", "rw")], apptainer=stubs["apptainer"], exec_=True,
    )
    assert script.startswith("#!/bin/bash\n") and "set -euo pipefail" in script
    res = _run(script, tmp_path=tmp_path)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["argv"] == ["exec", "--cleanenv", "--bind", "/home/alice:/home/alice:rw", "/opt/images/nb.sif",
                           "python3", "-c", "print(1)"] + NASTY  # {port} untouched without port=True
    assert not os.path.exists("/tmp/pwned")
    markers = jobscript.parse_markers(res.stderr)
    assert markers["started"] == "/opt/images/nb.sif" and markers["node"] and "cpu_model" in markers


def test_env_names_and_exports(stubs, tmp_path):
    script = jobscript.build_container_script(
        "/i.sif", ["true"], apptainer=stubs["apptainer"],
        env_names=["JUPYTERHUB_API_TOKEN", "NOT_SET_VAR"], exports={"JHPC_KIND": "cell it's"},
    )
    assert "s3cret" not in script
    res = _run(script, env={"JUPYTERHUB_API_TOKEN": "s3cret $(id)"}, tmp_path=tmp_path)
    assert res.returncode == 0, res.stderr
    env = json.loads(res.stdout)["env"]
    assert env["APPTAINERENV_JUPYTERHUB_API_TOKEN"] == "s3cret $(id)"
    assert env["APPTAINERENV_JHPC_KIND"] == "cell it's"
    assert "APPTAINERENV_NOT_SET_VAR" not in env
    with pytest.raises(ValidationError):
        jobscript.build_container_script("/i.sif", ["true"], env_names=["bad name"])
    with pytest.raises(ValidationError):
        jobscript.build_container_script("/i.sif", ["true"], exports={"X;Y": "1"})


def test_port_handoff(stubs, tmp_path):
    comment = slurm.make_comment(kind="service", image="site:nb.sif")
    script = jobscript.build_container_script(
        "/i.sif", ["serve", "--port={port}", "--url=http://h:{port}/x y", "{port}", "$PORT"],
        apptainer=stubs["apptainer"], scontrol=stubs["scontrol"], port=True, comment=comment,
        port_range=(40000, 40100),
    )
    res = _run(script, tmp_path=tmp_path)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    port = out["env"]["PORT"]
    assert 40000 <= int(port) <= 40100 and out["env"]["APPTAINERENV_PORT"] == port
    assert out["argv"][-4:] == [f"--port={port}", f"--url=http://h:{port}/x y", port, "$PORT"]
    logged = stubs["log"].read_text().splitlines()
    assert logged[:2] == ["update", "JobId=77"]
    assert logged[2].startswith("Comment=" + comment + ",host=")
    meta = slurm.parse_comment(logged[2][len("Comment="):])
    assert meta["kind"] == "service" and meta["port"] == port and meta["host"]
    assert slurm.JobInfo("77", comment=logged[2][len("Comment="):]).endpoint == (meta["host"], int(port))
    assert jobscript.parse_markers(res.stderr)["port"] == port


def test_port_handoff_file_fallback(stubs, tmp_path):
    failing = _stub(tmp_path, "scontrol-no", "exit 1\n")
    script = jobscript.build_container_script("/i.sif", ["x", "{port}"], apptainer=stubs["apptainer"],
                                              scontrol=failing, port=True)
    res = _run(script, tmp_path=tmp_path)
    assert res.returncode == 0, res.stderr
    port = int(json.loads(res.stdout)["env"]["PORT"])
    host, p = jobscript.read_port_file(str(tmp_path), "77")
    assert p == port and host
    mode = os.stat(jobscript.port_file(str(tmp_path), "77")).st_mode & 0o777
    assert mode == 0o600


def test_port_skips_busy_port(stubs, tmp_path):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    busy = s.getsockname()[1]
    try:
        script = jobscript.build_container_script("/i.sif", ["x"], apptainer=stubs["apptainer"],
                                                  scontrol=stubs["scontrol"], port=True, port_range=(busy, busy))
        res = _run(script, tmp_path=tmp_path)
        assert res.returncode != 0 and "no free port" in res.stderr
    finally:
        s.close()


def test_quote_word():
    assert jobscript.quote_word("--port={port}", True) == '--port="$PORT"'
    assert jobscript.quote_word("{port}", True) == '"$PORT"'
    assert jobscript.quote_word("a b{port}", True) == "'a b'\"$PORT\""
    assert jobscript.quote_word("{port}", False) == "'{port}'"
    with pytest.raises(ValidationError):
        jobscript.quote_word("a\x00b", False)


def test_refusals():
    with pytest.raises(ValidationError):
        jobscript.build_container_script("relative.sif", ["x"])
    with pytest.raises(ValidationError):
        jobscript.build_container_script("/i.sif", [])
    with pytest.raises(ValidationError):
        jobscript.build_container_script("/i.sif", ["x"], port=True, comment="other:x")
    with pytest.raises(ValidationError):
        jobscript.build_container_script("/i.sif", ["x"], port=True, comment="jupyter-hpc:kind=x;id")
    with pytest.raises(ValidationError):
        jobscript.build_container_script("/i.sif", ["x"], host="$(id)")
    with pytest.raises(ValidationError):
        jobscript.build_container_script("/i.sif", ["x"], port_range=(80, 90))


def test_setup_lines_are_quoted():
    script = jobscript.build_container_script("/i.sif", ["x"], setup=[["module", "load", "a;b"]])
    assert "module load 'a;b'" in script


def test_parse_markers():
    text = ("noise\njupyter-hpc: node=n1 cpus=2 cpu_model=AMD EPYC 7B13 64-Core Processor\n"
            "jupyter-hpc: port=2345 host=n1\njupyter-hpc: starting container /i.sif on n1\n")
    m = jobscript.parse_markers(text)
    assert m == {"node": "n1", "cpus": "2", "cpu_model": "AMD EPYC 7B13 64-Core Processor", "port": "2345",
                 "host": "n1", "started": "/i.sif"}


@pytest.mark.parametrize("exclusive,word,value", [(True, "yes", True), (False, "no", False), (None, "unknown", None)])
def test_run_record(stubs, tmp_path, exclusive, word, value):
    record = tmp_path / "run.json"
    script = jobscript.build_container_script(
        "/i.sif", ["true"], apptainer=stubs["apptainer"], scontrol=stubs["scontrol"],
        exclusive=exclusive, record_file=str(record),
    )
    res = _run(script, env={"SLURM_CPUS_ON_NODE": "32"}, tmp_path=tmp_path)
    assert res.returncode == 0, res.stderr
    assert not stubs["log"].exists()  # the record asks Slurm nothing
    assert f" exclusive={word} " in res.stderr
    from_stderr = jobscript.run_record(res.stderr)
    from_file = jobscript.read_run_record(str(record))
    assert from_stderr == from_file
    assert from_file["exclusive"] is value and from_file["alloc_cpus"] == 32 and from_file["job_id"] == "77"
    assert from_file["node"] and from_file["cpu_model"] and from_file["cpus"] >= 1
    assert from_file["node_cpus"] >= from_file["cpus"]
    assert os.stat(record).st_mode & 0o777 == 0o600


def test_run_record_file_only_and_refusals(stubs, tmp_path):
    record = tmp_path / "run.json"
    script = jobscript.build_container_script("/i.sif", ["true"], apptainer=stubs["apptainer"], node_info=False,
                                              exclusive=True, record_file=str(record))
    res = _run(script, tmp_path=tmp_path)
    assert res.returncode == 0, res.stderr
    assert jobscript.run_record(res.stderr) == {}  # stderr stays clean
    assert jobscript.read_run_record(str(record))["exclusive"] is True
    script = jobscript.build_container_script("/i.sif", ["true"], node_info=False)
    assert "jhpc_node_info " not in script.split("}\n")[-1]
    for bad in ("relative.json", "/x,y", "-x", "/a\nb"):
        with pytest.raises(ValidationError):
            jobscript.build_container_script("/i.sif", ["true"], record_file=bad)
    with pytest.raises(ValidationError):
        jobscript.build_container_script("/i.sif", ["true"], exclusive="maybe")


def test_read_run_record_keeps_only_known_typed_values(tmp_path):
    path = tmp_path / "run.json"
    assert jobscript.read_run_record(str(path)) is None
    path.write_text("not json")
    assert jobscript.read_run_record(str(path)) is None
    path.write_text('{"node": "n1", "cpus": "2", "node_cpus": 8, "alloc_cpus": true, "exclusive": "yes", "x": 1}')
    assert jobscript.read_run_record(str(path)) == {"node": "n1", "node_cpus": 8}
    text = "jupyter-hpc: node=n1 cpus=2 node_cpus=8 alloc_cpus=8 exclusive=yes job=5 cpu_model=AMD EPYC 7B13\n"
    assert jobscript.run_record(text) == {"node": "n1", "cpu_model": "AMD EPYC 7B13", "cpus": 2, "node_cpus": 8,
                                          "alloc_cpus": 8, "exclusive": True, "job_id": "5"}
    assert jobscript.run_record("jupyter-hpc: port=1 host=n1\n") == {}


def test_instance_mode_starts_runs_in_and_stops_the_instance(tmp_path):
    log = tmp_path / "calls"
    app = _stub(tmp_path, "apptainer-inst",
                f'printf "%s\\n" "$*" >> {shlex.quote(str(log))}\n'
                'if [ "$1" = exec ] && [ -n "${SLOW:-}" ]; then exec sleep 30; fi\n')
    script = jobscript.build_container_script(
        "/i.sif", ["serve", "--port={port}", "a b"], apptainer=app, binds=[("/data", "/data", "ro")], pwd="/work",
        scontrol=_stub(tmp_path, "sc", "exit 0\n"), port=True, instance=True,
    )
    res = _run(script, tmp_path=tmp_path)
    assert res.returncode == 0, res.stderr
    calls = log.read_text().splitlines()
    assert calls[0] == "instance start --cleanenv --bind /data:/data:ro /i.sif jhpc-77"
    assert calls[1].startswith("exec --cleanenv --bind /data:/data:ro --pwd /work instance://jhpc-77 serve --port=")
    assert calls[1].endswith(" a b") and calls[2] == "instance stop jhpc-77"
    assert "jupyter-hpc: instance=jhpc-77" in res.stderr and "instance jhpc-77 stopped" in res.stderr
    assert jobscript.instance_for_job("77") == "jhpc-77"

    # scancel: TERM to the batch shell stops the instance at once
    log.unlink()
    proc = subprocess.Popen(["bash", "-c", script], env={"PATH": os.environ["PATH"], "HOME": str(tmp_path),
                                                         "SLURM_JOB_ID": "78", "SLOW": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    import time

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not (log.exists() and "exec" in log.read_text()):
        time.sleep(0.1)
    proc.terminate()
    proc.communicate(timeout=20)
    assert log.read_text().splitlines()[-1] == "instance stop jhpc-78"
    with pytest.raises(ValidationError):
        jobscript.build_container_script("/i.sif", ["x"], instance=True, runtime="host")


def test_port_avoids_the_ephemeral_range(stubs, tmp_path):
    """A port in the node's ephemeral range may be taken by an outgoing connection before the
    server binds it: the job picks outside that range when its port range allows."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        elo, ehi = (int(x) for x in f.read().split())
    if elo < 1030:
        pytest.skip("no room below the ephemeral range")
    script = jobscript.build_container_script("/i.sif", ["x"], apptainer=stubs["apptainer"], scontrol=stubs["scontrol"],
                                              port=True, port_range=(elo - 3, min(ehi, elo + 500)))
    for _ in range(8):
        res = _run(script, tmp_path=tmp_path)
        assert res.returncode == 0, res.stderr
        port = int(json.loads(res.stdout)["env"]["PORT"])
        assert elo - 3 <= port < elo, port
    # a range that lies wholly inside the ephemeral range is still used
    script = jobscript.build_container_script("/i.sif", ["x"], apptainer=stubs["apptainer"], scontrol=stubs["scontrol"],
                                              port=True, port_range=(elo + 10, elo + 20))
    res = _run(script, tmp_path=tmp_path)
    assert res.returncode == 0 and elo + 10 <= int(json.loads(res.stdout)["env"]["PORT"]) <= elo + 20, res.stderr
