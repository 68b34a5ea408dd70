"""Unit tests of ``jupyter hpc kernelspec install``."""

import json
import os

import pytest

pytest.importorskip("jupyter_client")

from jupyter_hpc import cli  # noqa: E402
from jupyter_hpc.validate import ValidationError


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "nb.sif"
    path.write_bytes(b"")
    return str(path)


def test_install_into_prefix(tmp_path, image, capsys):
    prefix = tmp_path / "prefix"
    rc = cli.main(["kernelspec", "install", "--name", "HPC-GPU", "--image", image, "--partition", "gpu",
                   "--gpus", "1", "--gpu-type", "tesla", "--time", "90", "--cpus", "2", "--mem", "2G",
                   "--account", "proj1", "--bind", "/scratch:/scratch:ro", "--env", "OMP_NUM_THREADS=2",
                   "--display-name", "Python (GPU job)", "--prefix", str(prefix)])
    assert rc == 0
    kdir = prefix / "share" / "jupyter" / "kernels" / "hpc-gpu"
    spec = json.loads((kdir / "kernel.json").read_text())
    assert "Installed kernelspec hpc-gpu" in capsys.readouterr().out
    assert spec["argv"] == ["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    assert spec["interrupt_mode"] == "message"
    assert spec["display_name"] == "Python (GPU job)"
    assert spec["env"] == {"OMP_NUM_THREADS": "2"}
    prov = spec["metadata"]["kernel_provisioner"]
    assert prov["provisioner_name"] == "hpc-slurm-provisioner"
    assert prov["config"] == {"image": image, "partition": "gpu", "account": "proj1", "time": "01:30:00",
                              "cpus": 2, "memory": "2048M", "gpus": 1, "gpu_type": "tesla",
                              "binds": ["/scratch:/scratch:ro"]}


def test_install_user_default(tmp_path, image, monkeypatch):
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "data"))
    assert cli.main(["kernelspec", "install", "--name", "cpu1", "--image", image]) == 0
    spec = json.loads((tmp_path / "data" / "kernels" / "cpu1" / "kernel.json").read_text())
    assert spec["metadata"]["kernel_provisioner"]["config"] == {"image": image, "time": "01:00:00", "cpus": 1}
    assert "CPU" in spec["display_name"] and "nb" in spec["display_name"]


@pytest.mark.parametrize(
    "args, field",
    [
        (["--partition", "gpu;reboot"], "partition"),
        (["--time", "soon"], "time"),
        (["--mem", "lots"], "memory"),
        (["--gpus", "-1"], "gpus"),
        (["--gpu-type", "tesla"], "gpu type"),
        (["--bind", "/a:/b:rx"], "bind mode"),
        (["--display-name", "x\ny"], "display name"),
        (["--python=-c"], "python"),
    ],
)
def test_install_refuses_bad_values(tmp_path, image, args, field, capsys):
    rc = cli.main(["kernelspec", "install", "--name", "k", "--image", image, "--prefix", str(tmp_path)] + args)
    assert rc == 2
    assert f"error: {field}" in capsys.readouterr().err
    assert not (tmp_path / "share" / "jupyter" / "kernels" / "k").exists()


def test_image_checks(tmp_path):
    with pytest.raises(ValidationError, match="does not exist"):
        cli.image_value(str(tmp_path / "missing.sif"))
    assert cli.image_value(str(tmp_path / "missing.sif"), check_exists=False).endswith("missing.sif")
    assert cli.image_value("site:notebook.sif") == "site:notebook.sif"
    with pytest.raises(ValidationError):
        cli.image_value("../x.sif")
    with pytest.raises(ValidationError):
        cli.kernel_name("a b")


def test_bad_env_pair(tmp_path, image):
    with pytest.raises(SystemExit):
        cli.main(["kernelspec", "install", "--name", "k", "--image", image, "--env", "lower=1"])


def test_show(tmp_path, image, monkeypatch, capsys):
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "data"))
    cli.main(["kernelspec", "install", "--name", "k1", "--image", image])
    capsys.readouterr()
    assert cli.main(["kernelspec", "show", "k1"]) == 0
    assert json.loads(capsys.readouterr().out)["metadata"]["kernel_provisioner"]["config"]["image"] == image
    assert cli.main(["kernelspec", "show", "nope"]) == 1


def test_shipped_kernelspecs_are_valid():
    root = os.path.join(os.path.dirname(__file__), "..", "..", "kernelspecs")
    for name in ("hpc-python-cpu", "hpc-python-gpu"):
        spec = json.load(open(os.path.join(root, name, "kernel.json")))
        config = spec["metadata"]["kernel_provisioner"]["config"]
        rebuilt = cli.build_kernel_json(display_name=spec["display_name"], **config)
        assert rebuilt["metadata"] == spec["metadata"] and rebuilt["argv"] == spec["argv"]
        assert spec["interrupt_mode"] == "message"
    gpu = json.load(open(os.path.join(root, "hpc-python-gpu", "kernel.json")))
    assert gpu["metadata"]["kernel_provisioner"]["config"]["gpus"] == 1


@pytest.mark.parametrize("option", ["--cpus", "--gpus"])
@pytest.mark.parametrize("value", ["+1", " 1", "\uff11\uff12", "\u0663", "1.5"])
def test_numbers_as_written(tmp_path, image, option, value, capsys):
    rc = cli.main(["kernelspec", "install", "--name", "k", "--image", image, "--prefix", str(tmp_path),
                   f"{option}={value}"])
    assert rc == 2 and f"error: {option[2:]}" in capsys.readouterr().err


def test_image_path_must_be_an_image(tmp_path):
    other = tmp_path / "notes.txt"
    other.write_text("x")
    (tmp_path / "link.sif").symlink_to(other)
    for path in (other, tmp_path / "link.sif"):
        with pytest.raises(ValidationError, match="not an image"):
            cli.image_value(str(path))
    with pytest.raises(ValidationError):
        cli.image_value("-p")
