"""Pure Apptainer argv builders and inspect parsing (JSON shape from Apptainer 1.4.5)."""

import pytest

from jupyter_hpc import apptainer
from jupyter_hpc.validate import ValidationError

INSPECT_1_4 = """{
\t"data": {
\t\t"attributes": {
\t\t\t"labels": {
\t\t\t\t"org.jupyter-hpc.description": "Debian bookworm, Python 3",
\t\t\t\t"org.jupyter-hpc.gpu": "true",
\t\t\t\t"org.jupyter-hpc.title": "Python notebook",
\t\t\t\t"org.label-schema.usage.apptainer.version": "1.4.5"
\t\t\t}
\t\t}
\t},
\t"type": "container"
}"""


def test_exec_argv_full():
    argv = apptainer.exec_argv(
        "/opt/img/nb.sif",
        ["python3", "-c", "print('a b; $(x)')"],
        binds=[("/home/alice", "/home/alice", "rw"), ("/scratch", "/scratch"), "/data"],
        nv=True,
        containall=True,
        pwd="/home/alice",
        home="/home/alice",
        env_file="/tmp/env",
        writable=False,
        apptainer="/usr/bin/apptainer",
    )
    assert argv == [
        "/usr/bin/apptainer", "exec", "--nv", "--cleanenv", "--containall",
        "--bind", "/home/alice:/home/alice:rw", "--bind", "/scratch:/scratch", "--bind", "/data",
        "--home", "/home/alice", "--pwd", "/home/alice", "--env-file", "/tmp/env",
        "/opt/img/nb.sif", "python3", "-c", "print('a b; $(x)')",
    ]


def test_exec_argv_minimal_and_refusals():
    assert apptainer.exec_argv("/i.sif", ["true"], cleanenv=False) == ["apptainer", "exec", "/i.sif", "true"]
    with pytest.raises(ValidationError):
        apptainer.exec_argv("/i.sif", [])
    for bad_bind in [("/a,b", "/c"), ("/a", "/b:ro"), ("rel", "/b"), ("/a", "/b", "rwx"), ("/a\n", "/b"), ("-/a", "/b")]:
        with pytest.raises(ValidationError):
            apptainer.exec_argv("/i.sif", ["true"], binds=[bad_bind])
    for bad_image in ["relative.sif", "--nv", "/x\ny.sif", "docker://Bad Ref"]:
        with pytest.raises(ValidationError):
            apptainer.exec_argv(bad_image, ["true"])
    assert apptainer.exec_argv("docker://127.0.0.1:5000/demo/tiny:latest", ["true"])[-2].startswith("docker://")


def test_run_instance_argv():
    assert apptainer.run_argv("/i.sif", ["x"]) == ["apptainer", "run", "--cleanenv", "/i.sif", "x"]
    assert apptainer.instance_start_argv("/i.sif", "svc1", nv=True) == [
        "apptainer", "instance", "start", "--nv", "--cleanenv", "/i.sif", "svc1"]
    assert apptainer.instance_list_argv() == ["apptainer", "instance", "list", "--json"]
    assert apptainer.instance_stop_argv("svc1") == ["apptainer", "instance", "stop", "svc1"]
    assert apptainer.instance_stop_argv(all=True, force=True) == ["apptainer", "instance", "stop", "--force", "--all"]
    with pytest.raises(ValidationError):
        apptainer.instance_start_argv("/i.sif", "bad name")
    with pytest.raises(ValidationError):
        apptainer.instance_stop_argv()
    listing = '{"instances": [{"instance": "svc1", "pid": 12, "img": "/i.sif"}]}'
    assert apptainer.parse_instance_list(listing)[0]["instance"] == "svc1"
    assert apptainer.parse_instance_list("garbage") == []


def test_inspect():
    assert apptainer.inspect_argv("/i.sif") == ["apptainer", "inspect", "--json", "--labels", "/i.sif"]
    assert apptainer.inspect_argv("/i.sif", what="deffile") == ["apptainer", "inspect", "--json", "--deffile", "/i.sif"]
    with pytest.raises(ValidationError):
        apptainer.inspect_argv("/i.sif", what="rm -rf")
    attrs = apptainer.parse_inspect(INSPECT_1_4)
    assert attrs["labels"]["org.jupyter-hpc.title"] == "Python notebook"
    # sandbox labels.json is a flat object
    assert apptainer.parse_labels('{"a": "b", "n": 1}') == {"a": "b", "n": "1"}
    assert apptainer.parse_inspect('{"data": {"attributes": {}}, "type": "container"}')["labels"] == {}
    with pytest.raises(ValueError):
        apptainer.parse_inspect("not json")
    assert apptainer.parse_apps('{"data": {"attributes": {}}, "type": "container"}') == []
    assert apptainer.parse_apps("app1\napp2\n") == ["app1", "app2"]


@pytest.mark.parametrize(
    "ref",
    [
        "docker://127.0.0.1:5000/demo/tiny:latest",
        "docker://registry.example.org/group/sub/name:1.2.3",
        "docker://ubuntu:22.04",
        "docker://library/python",
        "docker://ghcr.io/org/img@sha256:" + "a" * 64,
        "oras://registry.example.org/img:v1",
        "docker://localhost:5000/x",
    ],
)
def test_refs_ok(ref):
    assert apptainer.check_ref(ref) == ref


@pytest.mark.parametrize(
    "ref",
    [
        "docker://",
        "http://x/y",
        "docker://x/y;rm -rf /",
        "docker://x/y:$(id)",
        "docker://x/y:`id`",
        "docker://x/Y",
        "docker://x/y\n",
        "docker://x/../y",
        "-docker://x/y",
        "docker://x/y@sha256:short",
        "shub://x/y",
        "docker://x/y:tag with space",
    ],
)
def test_refs_refused(ref):
    with pytest.raises(ValidationError):
        apptainer.check_ref(ref)


def test_ref_host():
    assert apptainer.ref_host("docker://127.0.0.1:5000/demo/tiny:latest") == "127.0.0.1:5000"
    assert apptainer.ref_host("docker://ghcr.io/org/img") == "ghcr.io"
    assert apptainer.ref_host("docker://library/python") is None
    assert apptainer.ref_host("docker://ubuntu:22.04") is None


def test_pull_build_argv():
    ref = "docker://127.0.0.1:5000/demo/tiny:latest"
    assert apptainer.pull_argv(ref, "/c/t.sif") == ["apptainer", "pull", "/c/t.sif", ref]
    assert apptainer.pull_argv(ref, "/c/t.sif", insecure=True, force=True) == [
        "apptainer", "pull", "--force", "--no-https", "/c/t.sif", ref]
    with pytest.raises(ValidationError):
        apptainer.pull_argv("docker://x/y;id", "/c/t.sif")
    with pytest.raises(ValidationError):
        apptainer.pull_argv(ref, "--force")
    assert apptainer.build_argv("/o.sif", "/rootfs/", fakeroot=True) == [
        "apptainer", "build", "--fakeroot", "/o.sif", "/rootfs/"]
    assert apptainer.build_argv("/o.sif", ref)[-1] == ref
