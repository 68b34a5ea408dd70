"""Host tool detection and the catalog settings a hub hands to its servers (no cluster needed)."""

from __future__ import annotations

import json

from jupyter_hpc import hosttools
from jupyter_hpc.images import CATALOG_ENV, ImageCatalog, catalog_from_env


def _fake_fs(paths):
    paths = set(paths)

    def which(cmd):
        for d in ("/usr/bin", "/opt/slurm/bin"):
            if f"{d}/{cmd}" in paths:
                return f"{d}/{cmd}"
        return None

    def glob_(pattern):
        import fnmatch

        return [p for p in paths if fnmatch.fnmatch(p, pattern)]

    return dict(which=which, exists=lambda p: p in paths, glob_=glob_, environ={})


def test_detects_slurm_client_and_apptainer_that_exist():
    fs = _fake_fs({
        "/usr/bin/sbatch", "/usr/bin/squeue", "/opt/slurm/bin/scancel", "/etc/slurm", "/run/munge",
        "/usr/lib64/slurm", "/usr/lib64/libslurm.so.40", "/usr/lib64/libmunge.so.2", "/etc/passwd", "/etc/group",
        "/usr/bin/apptainer", "/etc/apptainer", "/usr/libexec/apptainer",
    })
    found = hosttools.detect_paths(**fs)
    assert found[:3] == ["/usr/bin/sbatch", "/usr/bin/squeue", "/opt/slurm/bin/scancel"]
    for p in ("/etc/slurm", "/run/munge", "/usr/lib64/slurm", "/usr/lib64/libslurm.so.40", "/usr/lib64/libmunge.so.2",
              "/etc/passwd", "/etc/group", "/usr/bin/apptainer", "/etc/apptainer", "/usr/libexec/apptainer"):
        assert p in found
    # nothing that does not exist, nothing twice
    assert "/usr/bin/sinfo" not in found and len(found) == len(set(found))


def test_slurm_conf_directory_from_environment_and_switches():
    fs = _fake_fs({"/site/slurm/slurm.conf", "/site/slurm", "/usr/bin/apptainer"})
    fs["environ"] = {"SLURM_CONF": "/site/slurm/slurm.conf"}
    assert hosttools.detect_paths(**fs) == ["/site/slurm", "/usr/bin/apptainer"]
    assert hosttools.detect_paths(apptainer=False, **fs) == ["/site/slurm"]
    assert hosttools.detect_paths(slurm=False, **fs) == ["/usr/bin/apptainer"]


def test_catalog_defaults_come_from_the_hub_and_explicit_config_wins(monkeypatch):
    settings = {"site_dirs": ["/site/images"], "cache_dir": "/site/cache", "allow_any_pull": False,
                "remote_images": [{"ref": "docker://127.0.0.1:5000/demo/tiny:latest", "gpu": False}],
                "unknown": "dropped"}
    monkeypatch.setenv(CATALOG_ENV, json.dumps(settings))
    assert "unknown" not in catalog_from_env()
    cat = ImageCatalog()
    assert cat.site_dirs == ["/site/images"] and cat.cache_dir == "/site/cache" and cat.allow_any_pull is False
    assert cat.remote_images == settings["remote_images"]
    assert cat.user_dirs == ["{home}/images"]  # not handed over: the built-in default
    assert ImageCatalog(site_dirs=["/mine"]).site_dirs == ["/mine"]
    # what a hub passes on is what it has
    assert ImageCatalog(site_dirs=["/a"], insecure_registries=["127.0.0.1:5000"]).hub_settings()["insecure_registries"] == [
        "127.0.0.1:5000"]


def test_bad_hub_settings_are_ignored(monkeypatch):
    monkeypatch.setenv(CATALOG_ENV, "not json")
    assert catalog_from_env() == {}
    monkeypatch.setenv(CATALOG_ENV, json.dumps(["a"]))
    assert catalog_from_env() == {}
    monkeypatch.setenv(CATALOG_ENV, json.dumps({"site_dirs": "not-a-list", "cache_dir": 5}))
    cat = ImageCatalog()
    assert cat.site_dirs == ["/opt/jupyter-hpc/images"] and cat.cache_dir == "/opt/jupyter-hpc/cache"
