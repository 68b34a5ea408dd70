"""ImageCatalog with temporary directories and a stand-in apptainer program (no testbed needed)."""

import asyncio
import getpass
import json
import os
import pwd

import pytest

from jupyter_hpc.images import ImageAccessDenied, ImageCatalog, ImageNotFound, PullError, ref_filename, ref_id
from jupyter_hpc.validate import ValidationError

ME = getpass.getuser()
LABELS = {"org.jupyter-hpc.title": "Notebook", "org.jupyter-hpc.description": "Python", "org.jupyter-hpc.gpu": "true"}


def _exe(path, body):
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def layout(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "nb.sif").write_bytes(b"SIF" * 10)
    sb = site / "sandbox"
    (sb / ".singularity.d").mkdir(parents=True)
    (sb / ".singularity.d" / "labels.json").write_text(json.dumps({"org.jupyter-hpc.title": "Sandbox"}))
    (site / "notes.txt").write_text("not an image")
    (site / "escape.sif").symlink_to("/etc/passwd")
    (site / "bad name.sif").write_bytes(b"x")
    user = tmp_path / "users" / ME / "images"
    user.mkdir(parents=True)
    (user / "mine.sif").write_bytes(b"SIF")
    (user / "link-out.sif").symlink_to(site / ".." / "outside.sif")
    (tmp_path / "outside.sif").write_bytes(b"SIF")
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o1777)
    log = tmp_path / "apptainer.log"
    app = _exe(
        tmp_path / "apptainer",
        f'echo "$@" >> {log}\n'
        'if [ "$1" = inspect ]; then\n'
        f'  echo \'{json.dumps({"data": {"attributes": {"labels": LABELS}}, "type": "container"})}\'\n'
        'elif [ "$1" = pull ]; then\n'
        '  sleep 0.3; dest="${@: -2:1}"; echo SIF > "$dest"\n'
        '  [[ "${@: -1}" == *fail* ]] && { echo "FATAL:   While pulling: unauthorized" >&2; rm -f "$dest"; exit 255; }\n'
        'fi\n'
        'exit 0\n',
    )
    cat = ImageCatalog(
        site_dirs=[str(site)],
        user_dirs=[str(tmp_path / "users" / "{username}" / "images")],
        cache_dir=str(cache),
        apptainer=app,
        insecure_registries=["127.0.0.1:5000"],
        remote_images=[{"ref": "docker://127.0.0.1:5000/demo/tiny:latest", "title": "Tiny", "gpu": False}],
        run_as_user=False,
    )
    return {"site": site, "user": user, "cache": cache, "cat": cat, "log": log, "tmp": tmp_path}


async def test_list_images(layout):
    cat = layout["cat"]
    images = {i.id: i for i in await cat.list_images(ME)}
    assert set(images) == {"site:nb.sif", "site:sandbox", "user:mine.sif", ref_id("docker://127.0.0.1:5000/demo/tiny:latest")}
    nb = images["site:nb.sif"]
    assert nb.format == "sif" and nb.title == "Notebook" and nb.gpu and nb.owner == "site" and nb.size == 30
    sb = images["site:sandbox"]
    assert sb.format == "sandbox" and sb.title == "Sandbox" and not sb.gpu
    mine = images["user:mine.sif"]
    assert mine.owner == ME and mine.path == os.path.realpath(layout["user"] / "mine.sif")
    remote = images[ref_id("docker://127.0.0.1:5000/demo/tiny:latest")]
    assert remote.format == "remote" and remote.pulled is False and remote.path is None and remote.title == "Tiny"
    d = nb.to_dict()
    assert set(d) >= {"id", "name", "title", "description", "format", "path", "ref", "size", "gpu", "labels", "apps",
                      "owner", "pulled"}


async def test_metadata_cache(layout):
    cat = layout["cat"]
    await cat.list_images(ME)
    n = cat.counters["inspect"]
    assert n == 2  # nb.sif and mine.sif; the sandbox's labels.json is read directly
    await cat.list_images(ME)
    assert cat.counters["inspect"] == n
    os.utime(layout["site"] / "nb.sif", (1, 1))
    await cat.list_images(ME)
    assert cat.counters["inspect"] == n + 1


async def test_resolve(layout):
    cat = layout["cat"]
    assert (await cat.resolve("site:nb.sif", ME)).path == str(layout["site"] / "nb.sif")
    assert (await cat.resolve("nb.sif", ME)).id == "site:nb.sif"
    assert (await cat.resolve("mine.sif", ME)).id == "user:mine.sif"
    assert (await cat.resolve(str(layout["site"] / "sandbox"), ME)).format == "sandbox"
    assert (await cat.resolve(str(layout["user"] / "mine.sif"), ME)).owner == ME


@pytest.mark.parametrize(
    "image,error",
    [
        ("site:missing.sif", ImageNotFound),
        ("site:escape.sif", ImageAccessDenied),
        ("user:link-out.sif", ImageAccessDenied),
        ("/etc/passwd", ImageAccessDenied),
        ("{site}/../outside.sif", ImageAccessDenied),
        ("{site}/escape.sif", ImageAccessDenied),
        ("{site}/notes.txt", ImageNotFound),
        ("../outside.sif", ImageNotFound),
        ("site:../outside.sif", ImageNotFound),
        ("nb.sif\n", ImageNotFound),
        ("nb.sif;id", ImageNotFound),
        ("$(id)", ImageNotFound),
        ("-nb.sif", ImageNotFound),
        ("", ImageNotFound),
        ("remote:0000000000000000", ImageNotFound),
        ("docker://x/y;id", ValidationError),
    ],
)
async def test_resolve_refusals(layout, image, error):
    with pytest.raises(error) as e:
        await layout["cat"].resolve(image.replace("{site}", str(layout["site"])), ME)
    assert e.value.field in ("image", "image reference")


async def test_other_users_dirs_are_invisible(layout):
    other = "nobody"
    pwd.getpwnam(other)
    cat = layout["cat"]
    ids = {i.id for i in await cat.list_images(other)}
    assert not any(i.startswith("user:") for i in ids)
    with pytest.raises(ImageNotFound):
        await cat.resolve("user:mine.sif", other)
    with pytest.raises(ImageAccessDenied):
        await cat.resolve(str(layout["user"] / "mine.sif"), other)


async def test_user_dir_symlinked_elsewhere_is_ignored(layout, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to create a directory owned by another user")
    target = tmp_path / "users" / "nobody-real"
    target.mkdir()
    (tmp_path / "users" / "nobody").mkdir()
    os.symlink(layout["user"], tmp_path / "users" / "nobody" / "images")  # points at ME's directory
    assert layout["cat"]._user_dirs("nobody") == []


async def test_pull_once_and_resolve(layout):
    cat = layout["cat"]
    ref = "docker://127.0.0.1:5000/demo/tiny:latest"
    events = []
    results = await asyncio.gather(*[cat.pull(ref, ME, progress=lambda f, m: events.append((f, m)))
                                     for _ in range(4)])
    assert cat.counters["pull"] == 1
    pulls = [l for l in layout["log"].read_text().splitlines() if l.startswith("pull")]
    assert len(pulls) == 1 and "--no-https" in pulls[0]
    img = results[0]
    assert img.pulled and img.path == str(layout["cache"] / ref_filename(ref)) and img.format == "remote"
    assert all(r.path == img.path for r in results)
    assert (1.0, "done") in events
    mode = os.stat(img.path).st_mode & 0o777
    assert mode == 0o644
    assert (await cat.resolve(ref, ME)).pulled
    assert (await cat.resolve(img.id, ME)).path == img.path
    assert (await cat.resolve(img.path, ME)).ref == ref
    # a secure registry gets no --no-https
    await cat.pull("docker://registry.example.org/a/b:1", ME)
    last = [l for l in layout["log"].read_text().splitlines() if l.startswith("pull")][-1]
    assert "--no-https" not in last
    listed = {i.ref for i in await cat.list_images(ME) if i.format == "remote"}
    assert "docker://registry.example.org/a/b:1" in listed


async def test_pull_errors(layout):
    cat = layout["cat"]
    with pytest.raises(PullError) as e:
        await cat.pull("docker://127.0.0.1:5000/demo/fail:latest", ME)
    assert "unauthorized" in e.value.message
    assert not [p for p in os.listdir(layout["cache"]) if p.endswith(".sif")]
    with pytest.raises(ValidationError):
        await cat.pull("docker://x/y:$(id)", ME)
    cat.allowed_registries = ["127.0.0.1:5000"]
    with pytest.raises(ImageAccessDenied):
        await cat.pull("docker://registry.example.org/a/b:1", ME)
    cat.allow_any_pull = False
    with pytest.raises(ImageAccessDenied):
        await cat.pull("docker://127.0.0.1:5000/other/x:1", ME)


async def test_untrusted_cache_file_is_not_used(layout):
    if os.geteuid() != 0:
        pytest.skip("needs root to create a file owned by another user")
    cat = layout["cat"]
    ref = "docker://127.0.0.1:5000/demo/tiny:latest"
    planted = layout["cache"] / ref_filename(ref)
    planted.write_text("evil")
    nobody = pwd.getpwnam("nobody")
    os.chown(planted, nobody.pw_uid, nobody.pw_gid)
    assert (await cat.resolve(ref, ME)).pulled is False
    with pytest.raises(ImageAccessDenied):
        await cat.resolve(str(planted), ME)
    img = await cat.pull(ref, ME)
    assert img.path != str(planted) and img.path.startswith(str(layout["cache"] / "users" / ME))
    assert planted.read_text() == "evil"


async def test_ensure_pulls_remote_once(layout):
    cat = layout["cat"]
    rid = ref_id("docker://127.0.0.1:5000/demo/tiny:latest")
    img = await cat.ensure(rid, ME)
    assert img.path and img.pulled and cat.counters["pull"] == 1
    again = await cat.ensure(rid, ME)
    assert again.path == img.path and cat.counters["pull"] == 1
    assert (await cat.ensure("site:nb.sif", ME)).path.endswith("nb.sif")
    name = os.path.basename(img.path)
    assert (await cat.resolve("cache:" + name, ME)).ref == "docker://127.0.0.1:5000/demo/tiny:latest"
    with pytest.raises(ImageNotFound):
        await cat.resolve("cache:missing.sif", ME)


def test_check_local_image(tmp_path):
    from jupyter_hpc.images import check_local_image

    sif = tmp_path / "nb.sif"
    sif.write_bytes(b"")
    sandbox = tmp_path / "box"
    (sandbox / ".singularity.d").mkdir(parents=True)
    other = tmp_path / "passwd"
    other.write_text("x")
    (tmp_path / "escape.sif").symlink_to(other)
    assert check_local_image(str(sif)) == str(sif)
    assert check_local_image(str(sandbox)) == str(sandbox)
    assert check_local_image(str(tmp_path / "only-on-nodes.sif")).endswith("only-on-nodes.sif")
    for bad in (str(tmp_path / "escape.sif"), str(other), str(tmp_path), str(tmp_path / "box" / ".." / "nb.sif"),
                "relative.sif", "-x.sif", str(sif) + "\n"):
        with pytest.raises(ValidationError) as e:
            check_local_image(bad)
        assert e.value.field == "image"
