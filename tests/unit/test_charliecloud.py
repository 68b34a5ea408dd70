"""Charliecloud runtime: ch-run argv builders, batch scripts, per-image runtime choice, OOM detection."""

import asyncio
import json
import shlex
import subprocess
from types import SimpleNamespace

import pytest

from jupyter_hpc import apptainer, charliecloud, jobscript, slurm
from jupyter_hpc.images import ImageCatalog, image_runtime
from jupyter_hpc.runtime import ContainerRuntime, for_image
from jupyter_hpc.validate import ValidationError

NASTY = ["a b", "$(touch /tmp/pwned-ch)", "`id`", "x;y", "'q'", '"dq"', "*", "\\"]


def test_check_image_accepts_directories_only():
    assert charliecloud.check_image("/opt/images/nb-ch/") == "/opt/images/nb-ch"
    for bad in ("docker://127.0.0.1:5000/demo/tiny:latest", "/opt/images/nb.sif", "/x/y.sqfs", "/x/y.tar.gz"):
        with pytest.raises(ValidationError) as e:
            charliecloud.check_image(bad)
        assert "Charliecloud runs directory images" in e.value.message
        assert "Apptainer runtime" in e.value.message
    for bad in ("relative", "-rf", "/a:b", "/a\nb", ""):
        with pytest.raises(ValidationError):
            charliecloud.check_image(bad)


def test_exec_argv_and_venv():
    argv = charliecloud.exec_argv("/img", ["python3", "-V"], pwd="/home/alice", venv="/home/alice/v",
                                  env_file="/img/ch/environment")
    assert argv[0] == "ch-run" and "--home" in argv
    assert "--unset-env=PATH" in argv and "--unset-env=PYTHON*" in argv
    assert argv.index("--set-env=PATH=" + charliecloud.DEFAULT_PATH) < argv.index("--set-env=/img/ch/environment")
    # the venv comes after the image's environment, with $PATH left for ch-run to expand
    assert argv.index("--set-env=/img/ch/environment") < argv.index("--set-env=PATH=/home/alice/v/bin:$PATH")
    assert argv[-5:] == ["--cd=/home/alice", "/img", "--", "python3", "-V"]
    with pytest.raises(ValidationError):
        charliecloud.exec_argv("/img", [])
    with pytest.raises(ValidationError):
        charliecloud.venv_argv("/")
    assert charliecloud.probe_argv("/img") == ["ch-run", "/img", "--", "true"]
    wrapped = charliecloud.exec_argv("/img", ["x"], wrap=charliecloud.ENV_WRAP)
    assert wrapped[-6:] == ["/img", "--", *charliecloud.ENV_WRAP, "x"][-6:]


def test_command_argv_dispatch(tmp_path):
    img = tmp_path / "ch-img"
    (img / "ch").mkdir(parents=True)
    (img / "ch" / "environment").write_text("PATH=/opt/env/bin:$PATH\n")
    argv = apptainer.command_argv(str(img), ["python3"], runtime="charliecloud", binds=[("/a", "/a")])
    assert argv[0] == "ch-run" and f"--set-env={img}/ch/environment" in argv and "--bind" not in " ".join(argv)
    sandbox = tmp_path / "sandbox"
    (sandbox / ".singularity.d" / "env").mkdir(parents=True)
    argv = apptainer.command_argv(str(sandbox), ["python3"], runtime="charliecloud")
    assert list(charliecloud.ENV_WRAP) == argv[argv.index("--") + 1:-1]


def _ch_script(**kw):
    args = dict(binds=[("/usr/bin/sbatch", "/usr/bin/sbatch", "ro"), ("/etc/passwd", "/etc/passwd", "ro"),
                       ("/home/alice/data", "/home/alice/data")],
                pwd="/home/alice", runtime="charliecloud", env_names=["JUPYTERHUB_API_TOKEN"],
                exports={"LIT": "a 'b' $c"}, port=True)
    args.update(kw)
    return jobscript.build_container_script("/opt/images/nb-ch", ["python3", "-c", "print(1)", "--port={port}"] + NASTY,
                                            **args)


def test_charliecloud_script_shape():
    script = _ch_script()
    assert subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True).returncode == 0
    assert "apptainer exec" not in script and "APPTAINERENV_JUPYTERHUB_API_TOKEN" not in script
    # secrets stay in the job environment (ch-run passes it through): never in the script
    assert "JUPYTERHUB_API_TOKEN" not in script
    assert "JHPC_CH_IMAGE=/opt/images/nb-ch" in script
    assert "jhpc_ch_bind /usr/bin/sbatch /usr/bin/sbatch" in script
    assert "jupyter-hpc: runtime=charliecloud" in script and "jupyter-hpc: starting container" in script
    last = script.strip().splitlines()[-1]
    assert last.startswith('exec "${JHPC_CH[@]}" --cd=/home/alice /opt/images/nb-ch -- "${JHPC_CH_WRAP[@]}" python3')
    assert "--port=\"$PORT\"" in last
    # the user's words stay single-quoted words
    words = shlex.split(last.replace('"${JHPC_CH[@]}"', "CH").replace('"${JHPC_CH_WRAP[@]}"', "WRAP")
                        .replace('"$PORT"', "P"))
    assert words[-len(NASTY):] == NASTY


def test_charliecloud_script_refusals():
    with pytest.raises(ValidationError) as e:
        _ch_script(instance=True)
    assert e.value.field == "instance"
    with pytest.raises(ValidationError):
        _ch_script(app="myapp")
    with pytest.raises(ValidationError) as e:
        jobscript.build_container_script("/opt/images/nb.sif", ["x"], runtime="charliecloud")
    assert e.value.field == "image"


def test_charliecloud_bind_helper_runs(tmp_path):
    """The script's bind helper: existing mount points are bound, home paths and missing ones are not."""
    image = tmp_path / "img"
    (image / "usr" / "bin").mkdir(parents=True)
    (image / "usr" / "bin" / "sbatch").write_text("")
    (image / "etc").mkdir()
    (image / "etc" / "passwd").write_text("")
    script = _ch_script()
    helpers = script[script.index("jhpc_ch_bind() {"):script.index("JHPC_CH_IMAGE=")]
    test = helpers + f"""
USER=alice
JHPC_CH_IMAGE={shlex.quote(str(image))}
JHPC_CH=(ch-run)
jhpc_ch_bind /usr/bin/sbatch /usr/bin/sbatch
jhpc_ch_bind /etc/passwd /etc/passwd
jhpc_ch_bind /etc/group /etc/group
jhpc_ch_bind /home/alice/data /home/alice/data
jhpc_ch_bind /opt/missing /opt/missing
printf '%s\\n' "${{JHPC_CH[@]}}"
"""
    res = subprocess.run(["bash", "-c", "set -euo pipefail\n" + test], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["ch-run", "--bind=/usr/bin/sbatch:/usr/bin/sbatch", "--no-passwd",
                                  "--bind=/etc/passwd:/etc/passwd"]
    assert "/opt/missing is not in the image" in res.stderr and "/etc/group is not in the image" in res.stderr


def test_runtime_for_image():
    ch = SimpleNamespace(runtime="charliecloud")
    plain = SimpleNamespace(runtime=None)
    assert for_image("apptainer", ch) == "charliecloud"
    assert for_image("charliecloud", plain) == "charliecloud"
    assert for_image("apptainer", plain) == "apptainer"
    assert for_image("host", ch) == "host"
    assert for_image("apptainer", None) == "apptainer"
    assert image_runtime("directory", {}) == "charliecloud"
    assert image_runtime("sandbox", {"org.jupyter-hpc.runtime": "Charliecloud"}) == "charliecloud"
    assert image_runtime("sif", {"org.jupyter-hpc.runtime": "charliecloud"}) is None  # cannot run a SIF
    assert image_runtime("sif", {"org.jupyter-hpc.runtime": "apptainer"}) == "apptainer"
    assert image_runtime("sandbox", {"org.jupyter-hpc.runtime": "docker"}) is None


def test_site_mode_charliecloud(monkeypatch):
    monkeypatch.setenv("JUPYTER_HPC_CONTAINER_RUNTIME", "charliecloud")
    ContainerRuntime.clear_cache()
    info = asyncio.run(ContainerRuntime().resolve())
    assert info.mode == "charliecloud" and info.containers and info.message is None


def test_catalog_lists_charliecloud_directories(tmp_path):
    site = tmp_path / "site"
    img = site / "nb-ch"
    for d in ("ch", "etc", "usr"):
        (img / d).mkdir(parents=True)
    (img / "ch" / "metadata.json").write_text(json.dumps({"labels": {
        "org.jupyter-hpc.title": "CH notebook", "org.jupyter-hpc.gpu": "true"}}))
    (site / "not-an-image").mkdir()
    cat = ImageCatalog(site_dirs=[str(site)], user_dirs=[], cache_dir="")
    images = asyncio.run(cat.list_images(None))
    assert [i.id for i in images] == ["site:nb-ch"]
    (ch,) = images
    assert ch.format == "directory" and ch.runtime == "charliecloud" and ch.title == "CH notebook" and ch.gpu


def test_memory_exceeded():
    err = ("slurmstepd-vm: error: StepId=2023.batch exceeded memory limit (483418112 > 209715200), being killed\n"
           "slurmstepd-vm: error: Exceeded job memory limit\n")
    assert slurm.memory_exceeded(err)
    assert slurm.memory_exceeded("slurmstepd: error: Detected 1 oom_kill event in StepId=5.batch.")
    assert not slurm.memory_exceeded("Traceback ...\nMemoryError\n") and not slurm.memory_exceeded("")
    assert slurm.ended_state("FAILED", err) == "OUT_OF_MEMORY"
    assert slurm.ended_state("CANCELLED", err) == "OUT_OF_MEMORY"
    assert slurm.ended_state("TIMEOUT", err) == "TIMEOUT"
    assert slurm.ended_state("FAILED", "boom") == "FAILED"
