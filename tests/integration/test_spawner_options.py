"""Spawner option checks without a cluster: profiles, limits, hostile values, the HTML form.

These are pure (no Slurm, no hub) and run anywhere; the REST path through a
real hub is covered by test_spawner.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from jupyter_hpc.slurm import Partition
from jupyter_hpc.spawners import options as o
from jupyter_hpc.validate import ValidationError

PARTS = [
    Partition(name="cpu", default=True, nodes=1, cpus=32, memory_mb=16000, max_time_minutes=1440, gpus={"tesla": 2}),
    Partition(name="gpu", nodes=1, cpus=32, memory_mb=16000, max_time_minutes=1440, gpus={"tesla": 2}),
    Partition(name="small", nodes=1, cpus=4, memory_mb=4000, max_time_minutes=60),
]


@dataclass
class Img:
    id: str
    title: str = ""
    description: str = ""
    gpu: bool = False
    owner: str = "site"
    path: str = "/x"


IMAGES = [Img("site:notebook.sif", "Notebook", "<b>base</b>", True), Img("site:notebook-sandbox"), Img("user:mine.sif", owner="alice")]
PROFILES = [
    o.Profile.from_config({"name": "standard", "defaults": {"partition": "cpu", "memory": "2G"},
                           "limits": {"cpus": 8, "memory": "8G", "time": "04:00:00", "gpus": 0}, "partitions": ["cpu", "small"]}),
    o.Profile.from_config({"name": "gpu", "defaults": {"partition": "gpu", "gpus": 1}, "limits": {"gpus": 1},
                           "partitions": ["gpu"], "images": ["site:notebook.sif"]}),
]


def resolve(raw, profiles=PROFILES, **kw):
    return o.resolve_options(raw, partitions=PARTS, images=IMAGES, profiles=profiles,
                             defaults={"cpus": 1, "memory": "1G", "time": "01:00:00"}, **kw)


def test_defaults_come_from_the_first_profile():
    s = resolve({})
    assert (s.profile, s.partition, s.cpus, s.memory, s.time, s.gpus, s.image_id) == (
        "standard", "cpu", 1, "2048M", "01:00:00", 0, "site:notebook.sif")


def test_gpu_profile_defaults_and_limits():
    s = resolve({"profile": "gpu"})
    assert (s.partition, s.gpus, s.image_id) == ("gpu", 1, "site:notebook.sif")
    with pytest.raises(ValidationError) as e:
        resolve({"profile": "gpu", "gpus": 2})
    assert e.value.field == "gpus"
    with pytest.raises(ValidationError) as e:
        resolve({"profile": "gpu", "image": "site:notebook-sandbox"})
    assert e.value.field == "image"


def test_without_profiles_the_partition_and_node_bound_apply():
    s = resolve({"partition": "small", "cpus": "4", "memory": "4000M", "time": "60"}, profiles=[])
    assert (s.partition, s.cpus, s.memory, s.time, s.profile) == ("small", 4, "4000M", "01:00:00", None)
    for raw, field in [({"partition": "small", "cpus": 5}, "cpus"), ({"partition": "small", "time": "02:00:00"}, "time"),
                       ({"partition": "small", "gpus": 1}, "gpus"), ({"partition": "gpu", "gpu_type": "a100", "gpus": 1}, "gpu_type"),
                       ({"partition": "gpu", "gpus": 3}, "gpus")]:
        with pytest.raises(ValidationError) as e:
            resolve(raw, profiles=[])
        assert e.value.field == field, raw


@pytest.mark.parametrize("raw,field", [
    ({"partition": "cpu\n#SBATCH --uid=0"}, "partition"),
    ({"partition": "--uid=0"}, "partition"),
    ({"image": "$(id)"}, "image"),
    ({"image": "/etc/passwd"}, "image"),
    ({"account": "a;b"}, "account"),
    ({"memory": "1G\n"}, "memory"),
    ({"cpus": "1 2"}, "cpus"),
    ({"cpus": 1.5}, "cpus"),
    ({"time": "99:99:99"}, "time"),
    ({"gpus": 10000}, "gpus"),
    ({"gpu_type": "tesla;x", "profile": "gpu"}, "gpu_type"),
    ({"profile": ["gpu"]}, "profile"),
    ({"nodes": 2}, "user_options"),
    ({"partition": "gpu"}, "partition"),
    ({"memory": "9G"}, "memory"),
])
def test_hostile_values_are_refused(raw, field):
    with pytest.raises(ValidationError) as e:
        resolve(raw)
    assert e.value.field == field
    assert "\n" not in e.value.message


def test_user_options_must_be_a_mapping():
    with pytest.raises(ValidationError):
        resolve(["image"])


def test_allowed_accounts():
    assert resolve({"account": "proj1"}, allowed_accounts=["proj1"]).account == "proj1"
    with pytest.raises(ValidationError):
        resolve({"account": "proj2"}, allowed_accounts=["proj1"])


def test_form_data_and_form_html():
    assert o.options_from_form({"image": ["site:notebook.sif"], "cpus": [""], "_xsrf": ["t"], "x": ["1"]}) == {
        "image": "site:notebook.sif", "x": "1"}
    html = o.render_form(partitions=PARTS, images=IMAGES, profiles=PROFILES, defaults={"cpus": 1})
    assert 'name="profile"' in html and 'value="gpu"' in html
    assert 'value="site:notebook.sif"' in html and "[GPU-ready]" in html
    assert "<b>" not in html and "&lt;b&gt;" in html
    assert 'name="partition"' in html and "tesla:2" in html
    # no venvs: a text field; venvs: a list with "(none)" first, names escaped
    assert '<input class="form-control" type="text" id="hpc-venv"' in html
    html = o.render_form(partitions=PARTS, images=IMAGES, venvs=["analysis", "x<y>"], previous={"venv": "analysis"})
    assert '<select class="form-control form-select" id="hpc-venv" name="venv">' in html
    assert '<option value="analysis" selected>analysis</option>' in html and "x&lt;y&gt;" in html


def test_profile_configuration_errors():
    with pytest.raises(ValueError):
        o.Profile.from_config({"name": "x", "limits": {"nodes": 3}})
    with pytest.raises(ValueError):
        o.Profile.from_config({"name": "x", "bogus": 1})
