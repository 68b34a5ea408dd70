"""Image builds: name allow-list, source containment, and the build job's script (run with bash
and a stub apptainer)."""

from __future__ import annotations

import os
import subprocess

import pytest

from jupyter_hpc import builds
from jupyter_hpc.validate import ValidationError


@pytest.mark.parametrize("value,expected", [("mine", "mine.sif"), ("mine.sif", "mine.sif"), ("a_b-1.2+x", "a_b-1.2+x.sif")])
def test_image_names(value, expected):
    assert builds.image_name(value) == expected


@pytest.mark.parametrize("value", ["", "../x", "a/b", "-x", ".hidden", "a b", "x;y", "é", "a" * 70, None, 1, "x\n"])
def test_image_names_refused(value):
    with pytest.raises(ValidationError) as e:
        builds.image_name(value)
    assert e.value.field == "name"


def test_sources_stay_inside_the_roots(tmp_path):
    root = tmp_path / "root"
    (root / "box" / "bin").mkdir(parents=True)
    (root / "x.def").write_text("Bootstrap: localimage\nFrom: /i.sif\n")
    (tmp_path / "outside.def").write_text("x")
    os.symlink(tmp_path / "outside.def", root / "link.def")
    assert builds.check_source(str(root / "x.def"), "definition", [str(root)]) == os.path.realpath(root / "x.def")
    assert builds.check_source(str(root / "box"), "sandbox", [str(root)]) == os.path.realpath(root / "box")
    for path, kind in ((root / "link.def", "definition"), (tmp_path / "outside.def", "definition"),
                       (root / "box", "definition"), (root / "x.def", "sandbox"), (root, "sandbox"),
                       (root / "missing.def", "definition")):
        with pytest.raises(ValidationError):
            builds.check_source(str(path), kind, [str(root)])


def _stub(tmp_path, body):
    app = tmp_path / "apptainer"
    app.write_text("#!/bin/bash\n" + body)
    app.chmod(0o755)
    return str(app)


def test_build_script_definition_uses_fakeroot_and_renames(tmp_path):
    log = tmp_path / "argv"
    app = _stub(tmp_path, f'printf "%s\\n" "$@" > {log}\n[ "$2" = --fakeroot ] && dest=$3 || dest=$2\necho sif > "$dest"\n')
    dest = str(tmp_path / "images" / "mine.sif")
    os.makedirs(os.path.dirname(dest))
    script = builds.build_script(dest, "/src/my def.def", kind="definition", apptainer=app, token="abc123")
    res = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    argv = log.read_text().splitlines()
    assert argv == ["build", "--fakeroot", str(tmp_path / "images" / ".mine.sif.partial-abc123"), "/src/my def.def"]
    assert open(dest).read() == "sif\n" and oct(os.stat(dest).st_mode & 0o777) == "0o644"
    assert os.listdir(tmp_path / "images") == ["mine.sif"]
    assert "jupyter-hpc: built " + dest in res.stdout


def test_build_script_sandbox_without_fakeroot_and_failure_leaves_nothing(tmp_path):
    log = tmp_path / "argv"
    app = _stub(tmp_path, f'printf "%s\\n" "$@" > {log}\necho partial > "$2"\necho "FATAL: broken" >&2\nexit 255\n')
    dest = str(tmp_path / "mine.sif")
    script = builds.build_script(dest, "/home/a/box", kind="sandbox", apptainer=app)
    res = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and "FATAL: broken" in res.stderr
    argv = log.read_text().splitlines()
    assert argv[0] == "build" and "--fakeroot" not in argv and argv[-1] == "/home/a/box/"
    assert sorted(os.listdir(tmp_path)) == ["apptainer", "argv"]  # no image, no partial file


def test_build_script_refusals():
    for dest, source in (("relative.sif", "/x.def"), ("/a:b.sif", "/x.def"), ("/x.sif", "-x"), ("/x.sif", "/a,b")):
        with pytest.raises(ValidationError):
            builds.build_script(dest, source, kind="definition")
    with pytest.raises(ValidationError):
        builds.build_script("/x.sif", "/x.def", kind="docker")
    with pytest.raises(ValidationError):
        builds.build_script("/x.sif", "/x.def", kind="definition", token="$(id)")


def test_magic_build_and_venv_options():
    from jupyter_hpc import magic

    ns = magic.build_parser().parse_args(["mine", "--sandbox", "box", "--wait"])
    assert (ns.name, ns.sandbox, ns.definition, ns.fakeroot, ns.wait) == ("mine", "box", None, None, True)
    assert magic.build_parser().parse_args(["m", "--definition", "x.def", "--no-fakeroot"]).fakeroot is False
    for bad in ([], ["m"], ["m", "--definition", "a", "--sandbox", "b"], ["m", "--bogus"]):
        with pytest.raises(ValidationError):
            magic.build_parser().parse_args(bad)
    ns = magic.venv_parser().parse_args(["create", "v1", "--image", "site:notebook.sif"])
    assert (ns.action, ns.name, ns.image) == ("create", "v1", "site:notebook.sif")
    with pytest.raises(ValidationError):
        magic.venv_parser().parse_args(["destroy", "v1"])
