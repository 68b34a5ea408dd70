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
