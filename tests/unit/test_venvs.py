"""User venvs layered on an image: name allow-list, containment in the user's venv directory,
creation argv, and how job scripts put a venv first on the path."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from jupyter_hpc import cli, jobscript, magic, venvs
from jupyter_hpc.validate import ValidationError


def make_venv(home, name):
    path = os.path.join(venvs.venv_root(str(home)), name)
    os.makedirs(os.path.join(path, "bin"))
    with open(os.path.join(path, "pyvenv.cfg"), "w") as f:
        f.write("home = /usr/bin\ninclude-system-site-packages = true\n")
    os.symlink("/usr/bin/python3", os.path.join(path, "bin", "python3"))
    return path


@pytest.mark.parametrize("name", ["analysis", "torch-2.3", "a_b.c", "A1"])
def test_venv_names_allowed(name):
    assert venvs.venv_name(name) == name


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "a/b", "-rf", ".hidden", "a b", "x;y", "$(id)", "é",
                                  "a" * 65, None, 3, "a\n"])
def test_venv_names_refused(name):
    with pytest.raises(ValidationError) as e:
        venvs.venv_name(name)
    assert e.value.field == "venv"


def test_resolve_only_inside_the_users_venv_dir(tmp_path):
    home = tmp_path / "home"
    path = make_venv(home, "good")
    assert venvs.resolve(str(home), "good") == os.path.realpath(path)
    root = venvs.venv_root(str(home))
    # a symlink to another venv inside the directory is fine, one leading out is not
    os.symlink("good", os.path.join(root, "alias"))
    assert venvs.resolve(str(home), "alias") == os.path.realpath(path)
    outside = make_venv(tmp_path / "other", "theirs")
    os.symlink(outside, os.path.join(root, "escape"))
    with pytest.raises(ValidationError, match="outside"):
        venvs.resolve(str(home), "escape")
    os.makedirs(os.path.join(root, "notavenv"))
    for name in ("notavenv", "missing"):
        with pytest.raises(ValidationError, match="no venv"):
            venvs.resolve(str(home), name)
    assert [v["name"] for v in venvs.list_venvs(str(home))] == ["alias", "good"]
    venvs.remove(str(home), "alias")
    assert os.path.isdir(path) and [v["name"] for v in venvs.list_venvs(str(home))] == ["good"]
    venvs.remove(str(home), "good")
    assert not os.path.exists(path)
    with pytest.raises(ValidationError):
        venvs.remove(str(home), "escape")
    assert os.path.isdir(outside)


def test_create_argv_uses_the_images_python():
    argv = venvs.create_argv("/img/nb.sif", "/home/a/.jupyter-hpc/venvs/x", apptainer="/usr/bin/apptainer")
    assert argv[:2] == ["/usr/bin/apptainer", "exec"]
    assert "--cleanenv" in argv and argv[argv.index("--bind") + 1] == "/home/a/.jupyter-hpc/venvs:/home/a/.jupyter-hpc/venvs:rw"
    i = argv.index("/img/nb.sif")
    assert argv[i + 1:] == ["python3", "-c", venvs.CREATE_SCRIPT, "/home/a/.jupyter-hpc/venvs/x"]
    assert venvs.create_argv("/img/nb.sif", "/h/v/x", runtime="host") == ["python3", "-c", venvs.CREATE_SCRIPT, "/h/v/x"]
    for bad in ("relative", "/a,b", "/a:b", "-x"):
        with pytest.raises(ValidationError):
            venvs.create_argv("/img/nb.sif", bad)


def test_create_script_builds_a_layered_venv(tmp_path):
    """The fixed creation script, run with this machine's Python, gives a venv that sees the creator's packages."""
    path = str(tmp_path / "v")
    res = subprocess.run(["python3", "-c", venvs.CREATE_SCRIPT.replace("with_pip=True", "with_pip=False"), path],
                         capture_output=True, text=True, timeout=120)
    if res.returncode != 0 and "ensurepip" in res.stderr + res.stdout:
        pytest.skip("python3 -m venv is not usable here")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout.strip().splitlines()[-1])
    with open(os.path.join(info["site_packages"], "_jupyter_hpc_image.pth")) as f:
        assert f.read().splitlines() == info["image_site_packages"]
    assert os.path.isfile(os.path.join(path, "pyvenv.cfg"))


def _run(script, tmp_path):
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "SLURM_JOB_ID": "77"}
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=60)


def test_job_script_puts_the_venv_first(tmp_path):
    app = tmp_path / "apptainer"
    app.write_text('#!/bin/bash\npython3 -c \'import json,os,sys; print(json.dumps({"argv": sys.argv[1:], '
                   '"env": {k: v for k, v in os.environ.items() if k.startswith("APPTAINERENV_")}}))\' "$@"\n')
    app.chmod(0o755)
    venv = "/home/alice/.jupyter-hpc/venvs/my env"
    script = jobscript.build_container_script("/i.sif", ["python3", "x.py"], apptainer=str(app), venv=venv)
    res = _run(script, tmp_path)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["argv"][out["argv"].index("--bind") + 1] == f"{venv}:{venv}:rw"
    assert out["env"]["APPTAINERENV_PREPEND_PATH"] == venv + "/bin"
    assert out["env"]["APPTAINERENV_VIRTUAL_ENV"] == venv
    host = jobscript.build_container_script("/i.sif", ["sh", "-c", 'echo "$VIRTUAL_ENV|${PATH%%:*}"'], venv=venv,
                                            runtime="host")
    res = _run(host, tmp_path)
    assert res.returncode == 0 and res.stdout.strip() == f"{venv}|{venv}/bin", res.stderr
    for bad in ("relative", "/a:b", "/a,b", "/"):
        with pytest.raises(ValidationError):
            jobscript.build_container_script("/i.sif", ["x"], venv=bad)


def test_options_carry_the_venv_name():
    assert magic.parse_cell_options("--image x --venv analysis")["body"]["venv"] == "analysis"
    spec = cli.build_kernel_json(image="/i.sif", display_name="K", venv="analysis")
    assert spec["metadata"]["kernel_provisioner"]["config"]["venv"] == "analysis"
    with pytest.raises(ValidationError):
        cli.build_kernel_json(image="/i.sif", display_name="K", venv="../x")
    args = cli.make_parser().parse_args(["venv", "create", "v1", "--image", "site:notebook.sif"])
    assert (args.command, args.action, args.name, args.image) == ("venv", "create", "v1", "site:notebook.sif")


def test_spawn_option_venv_is_a_checked_name():
    from jupyter_hpc.slurm import Partition
    from jupyter_hpc.spawners import options as o

    parts = [Partition(name="cpu", default=True, nodes=1, cpus=4, memory_mb=4000, max_time_minutes=60)]
    images = [{"id": "site:notebook.sif"}]

    def resolve(raw):
        return o.resolve_options(raw, partitions=parts, images=images, profiles=[],
                                 defaults={"cpus": 1, "memory": "1G", "time": "00:30:00"})

    assert resolve({"venv": "analysis"}).venv == "analysis"
    assert resolve({}).venv is None and resolve({"venv": ""}).venv is None
    for bad in ("../x", "/home/alice/v", "-x", "a b"):
        with pytest.raises(ValidationError) as e:
            resolve({"venv": bad})
        assert e.value.field == "venv"
    form = o.render_form(partitions=parts, images=images, profiles=[], defaults={}, limits=o.Limits(),
                         allowed_partitions=[], previous={"venv": "analysis"})
    assert 'name="venv"' in form


def test_kernel_provisioner_venv(tmp_path, monkeypatch):
    from jupyter_client.kernelspec import KernelSpec

    from jupyter_hpc import provisioner as prov

    monkeypatch.setenv("HOME", str(tmp_path))
    path = make_venv(tmp_path, "kern")
    spec = KernelSpec(argv=["python3"], display_name="HPC", language="python", resource_dir=str(tmp_path))

    def make(venv):
        return prov.SlurmApptainerProvisioner(kernel_id="0b6f4d1e-8d0e-4a8f-9d55-3f2f5e0c1a2b", kernel_spec=spec,
                                              parent=None, image="/i.sif", venv=venv)

    script = make("kern").batch_script("/i.sif", ["python3", "-m", "ipykernel_launcher"], [])
    real = os.path.realpath(path)
    assert f"--bind {real}:{real}:rw" in script and 'APPTAINERENV_PREPEND_PATH="$VIRTUAL_ENV/bin"' in script
    for bad in ("../x", "missing"):
        with pytest.raises(ValidationError):
            make(bad).batch_script("/i.sif", ["python3"], [])


def test_venv_names_looks_without_opening_files(tmp_path):
    from jupyter_hpc.venvs import venv_names, venv_root

    root = tmp_path / venv_root("x").split("x/", 1)[1]
    (root / "good").mkdir(parents=True)
    (root / "good" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (root / "no-cfg").mkdir()
    (root / "fifo-cfg").mkdir()
    os.mkfifo(root / "fifo-cfg" / "pyvenv.cfg")  # opening it would block: never opened
    (root / "link").symlink_to(root / "good")
    (root / "bad name").mkdir()
    (root / "bad name" / "pyvenv.cfg").write_text("")
    assert venv_names(str(tmp_path)) == ["good"]
    assert venv_names(str(tmp_path / "nowhere")) == []
