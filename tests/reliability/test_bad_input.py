"""Hostile values through every entry point; nothing may be submitted.

Entry points: the spawner (hub REST ``user_options`` and the spawn form), the server
extension's REST API (cells, services, image pulls, job ids, output parameters, the
proxy), the ``%%hpc`` / ``%hpc`` magics (IPython run as the user) and the kernel
provisioner (kernelspec metadata and ``jupyter hpc kernelspec install`` arguments).

Every value of :mod:`reliability_corpus` is sent as the user ``mallory`` to every field
it is hostile for (:func:`reliability_corpus.applies`). Only this suite submits jobs as
mallory, so the difference of her Slurm jobs before and after each entry point is the
exact number of hostile requests that were accepted and submitted (figure: must be 0).
Each refusal must carry a clear message naming the field (see
:func:`reliability_support.unclear`).
"""

from __future__ import annotations

import os
import re
import shlex
import urllib.parse
from typing import Any, Dict, List, Optional, Tuple

import pytest
import requests

from conftest import IMAGE, all_job_ids
from reliability_corpus import CORPUS, STRINGS, applies
from reliability_support import (MAGIC_HARNESS, PROVISIONER_HARNESS, hub_login, message_of, run_harness,
                                 scancel, unclear)

pytestmark = [pytest.mark.timeout(900)]

#: user_options of the spawner (REST) and the field names used for the figures.
SPAWN_FIELDS = ("profile", "image", "partition", "gpus", "gpu_type", "cpus", "memory", "time", "account", "venv")
CELL_BASE = {"code": "print('never')", "image": IMAGE, "time": "00:05:00", "memory": "256M", "cpus": 1}
CELL_FIELDS = ("image", "partition", "gpus", "cpus", "memory", "time", "exclusive", "cwd", "venv")
SERVICE_BASE = {"image": IMAGE, "command": ["python3", "-m", "http.server", "{port}"], "name": "web",
                "time": "00:05:00", "memory": "256M"}
SERVICE_FIELDS = ("image", "command", "name", "partition", "gpus", "cpus", "memory", "time", "venv", "instance")
#: A build from a definition file in mallory's home (``build_def``); each case changes one field.
BUILD_DEF = "jhrel-build.def"
BUILD_BASE = {"name": "jhrel-build", "definition": BUILD_DEF, "force": True, "time": "00:05:00", "memory": "256M"}
BUILD_FIELDS = ("name", "definition", "sandbox", "partition", "time", "cpus", "memory", "fakeroot", "force")
VENV_BASE = {"name": "jhrelvenv", "image": IMAGE}
#: (method, path template) of the REST routes that take a job id in the URL.
JOB_ID_ROUTES = (("GET", "jobs/{}"), ("DELETE", "jobs/{}"), ("GET", "jobs/{}/output"), ("GET", "jobs/{}/stats"),
                 ("GET", "cells/{}"), ("DELETE", "cells/{}"), ("GET", "services/{}"), ("DELETE", "services/{}"))


class Tally:
    """Refusals of one entry point; submissions are counted from Slurm by the caller."""

    def __init__(self, figures, entry_point: str, also=()):
        self.figures = figures
        self.also = tuple(also)
        self.entry_point = entry_point
        self.requests = 0
        self.accepted: List[str] = []
        self.unclear: List[str] = []
        self.http_layer = 0  # refused by the HTTP server itself (e.g. a 1 MB URL), no handler involved

    def refused(self, label: str, field: str, message: Optional[str]) -> None:
        self.requests += 1
        why = unclear(message, field, self.also)
        if why:
            self.unclear.append(f"{field}={label}: {why}")
        self.figures.hostile(self.entry_point, label, unclear=f"{field}={label}: {why}" if why else None)

    def accepted_request(self, label: str, field: str, detail: str = "") -> None:
        self.requests += 1
        self.accepted.append(f"{field}={label} {detail}".strip())
        self.figures.hostile(self.entry_point, label, refused=0)

    def http(self, label: str, field: str, response: Optional[requests.Response], ok_codes=(400, 403, 404),
             error: str = "") -> None:
        """Record an HTTP answer: a status in ``ok_codes`` is a refusal."""
        if response is None or response.status_code in (413, 414, 431):
            # the HTTP server refused the request before any handler (e.g. a URL longer than it accepts)
            self.http_layer += 1
            status = error if response is None else f"HTTP {response.status_code}"
            self.refused(label, field, f"{field}: request refused by the HTTP server ({status})")
            return
        if response.status_code in ok_codes:
            self.refused(label, field, message_of(response))
        else:
            self.accepted_request(label, field, f"-> HTTP {response.status_code} {response.text[:200]!r}")

    def finish(self, before: set, after: set, controls=()) -> Tuple[int, List[str]]:
        """Count the jobs submitted meanwhile (the valid control requests' jobs excepted)."""
        scancel(controls)
        new = sorted(after - before - {str(c) for c in controls})
        scancel(new)
        self.figures.submitted(self.entry_point, len(new), f"(ids {', '.join(new)})" if new else "")
        if self.http_layer:
            self.figures.note(f"{self.entry_point}: {self.http_layer} requests refused by the HTTP server "
                              "itself (URL too long)")
        problems = []
        if new:
            problems.append(f"{self.entry_point}: {len(new)} job(s) submitted: {new}")
        if self.accepted:
            problems.append(f"{self.entry_point}: accepted {self.accepted[:10]}")
        if self.unclear:
            problems.append(f"{self.entry_point}: unclear refusals {self.unclear[:10]}")
        return len(new), problems


@pytest.fixture(scope="module")
def build_def(hostile_user):
    """A definition file in mallory's home (a valid build source) and cleanup of what builds leave."""
    import pwd
    import shutil

    pw = pwd.getpwnam(hostile_user)
    path = os.path.join(pw.pw_dir, BUILD_DEF)
    with open(path, "w") as f:
        f.write("Bootstrap: localimage\nFrom: /opt/jupyter-hpc/images/notebook.sif\n")
    os.chown(path, pw.pw_uid, pw.pw_gid)
    yield path
    for leftover in (path, os.path.join(pw.pw_dir, "images", BUILD_BASE["name"] + ".sif")):
        if os.path.lexists(leftover):
            os.unlink(leftover)
    shutil.rmtree(os.path.join(pw.pw_dir, ".jupyter-hpc", "venvs", VENV_BASE["name"]), ignore_errors=True)


def cases(fields, values=CORPUS):
    for field in fields:
        for label, value in values:
            if applies(field, value):
                yield field, label, value


# -- the spawner ---------------------------------------------------------------------------------


def test_spawner_rest_user_options(hub, hostile_user, escape_links, figures):
    tally = Tally(figures, "spawner REST user_options")
    before = all_job_ids(hostile_user)
    for field, label, value in cases(SPAWN_FIELDS):
        r = hub.spawn(hostile_user, {field: value})
        if r.status_code != 400:
            tally.accepted_request(label, field, f"-> HTTP {r.status_code}")
            hub.stop_server(hostile_user)
            continue
        tally.refused(label, field, message_of(r))
    for label, value in STRINGS:  # the value as an option name
        r = hub.spawn(hostile_user, {value: "x"})
        if r.status_code != 400:
            tally.accepted_request(label, "unknown-option", f"-> HTTP {r.status_code}")
            hub.stop_server(hostile_user)
            continue
        tally.refused(label, "unknown-option", message_of(r))
    _, problems = tally.finish(before, all_job_ids(hostile_user))
    assert hub.server(hostile_user) is None or not hub.server(hostile_user).get("ready")
    assert not problems, problems


def test_spawner_form(hub, hostile_user, escape_links, figures):
    tally = Tally(figures, "spawner form")
    session, _ = hub_login(hub, hostile_user)
    page = session.get(hub.url + "/hub/spawn", timeout=60)
    assert page.status_code == 200, page.text[:300]
    before = all_job_ids(hostile_user)
    for field in ("partition", "image", "memory"):
        for label, value in STRINGS:
            m = re.search(r'name="_xsrf" value="([^"]+)"', page.text)
            xsrf = m.group(1) if m else session.cookies.get("_xsrf")
            r = session.post(hub.url + "/hub/spawn", data={"_xsrf": xsrf, field: value}, timeout=120)
            m = re.search(r"(Invalid server option[^<]*)", r.text)
            if m:
                tally.refused(label, field, m.group(1))
                page = r
            else:
                tally.accepted_request(label, field, f"-> HTTP {r.status_code} {r.url}")
                if hub.server(hostile_user):
                    hub.stop_server(hostile_user)
                page = session.get(hub.url + "/hub/spawn", timeout=60)
    _, problems = tally.finish(before, all_job_ids(hostile_user))
    assert not problems, problems


# -- the server extension -------------------------------------------------------------------------


def _safe(server, method: str, path: str, body: Any = None) -> Tuple[Optional[requests.Response], str]:
    try:
        return server.api(method, path, body, timeout=60), ""
    except requests.RequestException as e:
        return None, type(e).__name__


def test_server_extension_rest(mallory_srv, hostile_user, escape_links, build_def, figures):
    tally = Tally(figures, "server extension REST")
    before = all_job_ids(hostile_user)
    # controls: the valid requests the hostile ones are derived from are submitted
    controls = []
    for path, body in (("cells", CELL_BASE), ("builds", BUILD_BASE)):
        control = mallory_srv.api("POST", path, body)
        assert control.status_code == 201, (path, control.text)
        controls.append(control.json()["job_id"])
    for field, label, value in cases(BUILD_FIELDS):
        body = dict(BUILD_BASE, **{field: value})
        if field == "sandbox":
            del body["definition"]
        r, err = _safe(mallory_srv, "POST", "builds", body)
        tally.http(label, field, r, (400,), err)
    for field, label, value in cases(("name", "image")):
        r, err = _safe(mallory_srv, "POST", "venvs", dict(VENV_BASE, **{field: value}))
        tally.http(label, field, r, (400,), err)
    for field, label, value in cases(CELL_FIELDS):
        r, err = _safe(mallory_srv, "POST", "cells", dict(CELL_BASE, **{field: value}))
        tally.http(label, field, r, (400,), err)
    for field, label, value in cases(SERVICE_FIELDS):
        body = dict(SERVICE_BASE, **{field: [value] if field == "command" else value})
        r, err = _safe(mallory_srv, "POST", "services", body)
        tally.http(label, field, r, (400,), err)
    for label, value in CORPUS:
        r, err = _safe(mallory_srv, "POST", "images/pull", {"ref": value})
        tally.http(label, "ref", r, (400,), err)
    for label, value in STRINGS:
        quoted = urllib.parse.quote(value, safe="")
        for method, template in JOB_ID_ROUTES:
            r, err = _safe(mallory_srv, method, template.format(quoted))
            tally.http(label, "job_id", r, (400, 404), err)
        r, err = _safe(mallory_srv, "GET", "images/" + quoted)
        tally.http(label, "image", r, (400, 404), err)
        for method in ("GET", "DELETE"):
            r, err = _safe(mallory_srv, method, "venvs/" + quoted)
            tally.http(label, "name", r, (400, 404), err)
        for field, path in (("stream", "jobs/1/output?stream={}"), ("offset", "jobs/1/output?offset={}"),
                            ("since", "cells/1?since={}")):
            r, err = _safe(mallory_srv, "GET", path.format(quoted))
            tally.http(label, field, r, (400,), err)
        try:
            r = requests.get(mallory_srv.url(f"jupyter-hpc/proxy/{quoted}/x"), headers=mallory_srv.headers(),
                             timeout=60, allow_redirects=False)
            err = ""
        except requests.RequestException as e:
            r, err = None, type(e).__name__
        tally.http(label, "job_id", r, (403, 404), err)
    # bodies that are not JSON objects
    for label, raw in (("not-json", "{"), ("json-list-body", "[1]"), ("json-string-body", '"x"'),
                       ("one-megabyte-body", "[" + "1," * (512 * 1024) + "1]")):
        for path in ("cells", "services", "images/pull", "builds", "venvs"):
            r, err = _safe(mallory_srv, "POST", path, raw)
            tally.http(label, "body", r, (400,), err)
    _, problems = tally.finish(before, all_job_ids(hostile_user), controls)
    pulls = mallory_srv.api("GET", "images/pulls").json()["pulls"]
    assert [p["ref"] for p in pulls] == [], pulls  # no hostile reference was ever pulled
    assert not os.path.exists("/tmp/jhpc-rel-pwned")
    assert not problems, problems


# -- the %%hpc magic --------------------------------------------------------------------------------



MAGIC_OPTIONS = (("image", "image"), ("partition", "partition"), ("gpus", "gpus"), ("cpus", "cpus"),
                 ("mem", "memory"), ("time", "time"), ("venv", "venv"))
#: ``%hpc build`` / ``%hpc venv`` lines: (field, line template with {v} = the quoted value).
MAGIC_LINES = (
    ("name", "build {v} --definition=" + BUILD_DEF + " --force --time=00:05:00"),
    ("definition", "build jhrel-build --definition={v} --force --time=00:05:00"),
    ("sandbox", "build jhrel-build --sandbox={v} --force --time=00:05:00"),
    ("partition", "build jhrel-build --definition=" + BUILD_DEF + " --force --time=00:05:00 --partition={v}"),
    ("time", "build jhrel-build --definition=" + BUILD_DEF + " --force --time={v}"),
    ("name", "venv create {v} --image=" + IMAGE),
    ("image", "venv create jhrelvenv --image={v}"),
    ("venv", "venv remove {v}"),
)
MAGIC_ACCEPTED = ("Submitted cell job", "cancel requested", "Submitted build of", "Created venv", "Removed venv")


def test_magic(tb, hostile_user, escape_links, build_def, user_tmpdir, figures):
    # argparse refuses some lines as a whole ("%hpc: options: ..."), before any value is looked at
    tally = Tally(figures, "%%hpc magic", also=("options",))
    payload = [{"kind": "cell", "option": "image", "value": IMAGE},
               {"kind": "raw", "line": MAGIC_LINES[0][1].format(v="jhrel-build")}]
    meta = [("control", ""), ("control", "")]
    for option, field in MAGIC_OPTIONS:
        for label, value in STRINGS:
            payload.append({"kind": "cell", "option": option, "value": value})
            meta.append((label, field))
    for option in ("output", "cancel"):
        for label, value in STRINGS:
            payload.append({"kind": "line", "option": option, "value": value})
            meta.append((label, "job_id"))
    for field, template in MAGIC_LINES:
        for label, value in STRINGS:
            if field == "name" and not applies("name", value):
                continue
            payload.append({"kind": "raw", "line": template.format(v=shlex.quote(value))})
            meta.append((label, field))
    before = all_job_ids(hostile_user)
    results = run_harness(hostile_user, user_tmpdir(hostile_user), MAGIC_HARNESS, payload,
                          argv0=[f"{tb['VENV']}/bin/ipython", "--no-banner", "--colors=nocolor", "--quick"])
    assert len(results) == len(payload)
    control = re.search(r"Submitted cell job (\d+)", results[0]["text"])
    assert control, f"the valid %%hpc control was not submitted: {results[0]['text'][-2000:]}"
    build = re.search(r"Submitted build of \S+ as job (\d+)", results[1]["text"])
    assert build, f"the valid %hpc build control was not submitted: {results[1]['text'][-2000:]}"
    for (label, field), res in zip(meta[2:], results[2:]):
        text = res["text"]
        if any(marker in text for marker in MAGIC_ACCEPTED):
            tally.accepted_request(label, field, text[:200])
            continue
        refusal = [ln for ln in text.splitlines() if ln.startswith("%hpc")]
        tally.refused(label, field, refusal[0] if refusal else text)
    _, problems = tally.finish(before, all_job_ids(hostile_user), [control.group(1), build.group(1)])
    assert not problems, problems


# -- the kernel provisioner -------------------------------------------------------------------------



#: kernelspec metadata config of a valid kernel; each case changes one key.
def _metadata_base(tb) -> Dict[str, Any]:
    return {"image": tb["NOTEBOOK_SIF"], "partition": tb["CPU_PARTITION"], "time": "00:05:00",
            "memory": "256M", "cpus": 1}


METADATA_FIELDS = ("image", "partition", "account", "qos", "time", "cpus", "memory", "gpus", "gpu_type", "job_name",
                   "venv")
#: ``jupyter hpc kernelspec install`` option -> field of the figures.
CLI_OPTIONS = (("name", "name"), ("image", "image"), ("partition", "partition"), ("account", "account"),
               ("time", "time"), ("cpus", "cpus"), ("mem", "memory"), ("gpus", "gpus"), ("gpu-type", "gpu_type"),
               ("python", "python"), ("env", "env"), ("venv", "venv"))


def test_provisioner(tb, hostile_user, escape_links, user_tmpdir, figures):
    tally = Tally(figures, "kernel provisioner")
    cli_base = {"name": "{name}", "image": tb["NOTEBOOK_SIF"], "partition": tb["CPU_PARTITION"],
                "time": "00:05:00", "mem": "256M", "cpus": "1"}
    # control: a valid kernelspec installed by the CLI starts a kernel in a job
    payload = [{"kind": "cli", "argv": ["kernelspec", "install"] + [f"--{k}={v}" for k, v in cli_base.items()]}]
    meta = [("control", "", "")]
    for field, label, value in cases(METADATA_FIELDS):
        config = dict(_metadata_base(tb), **{field: value})
        if field == "gpu_type":
            config.update(gpus=1, partition=tb["GPU_PARTITION"])
        payload.append({"kind": "metadata", "config": config})
        meta.append((label, field, "kernelspec metadata"))
    for option, field in CLI_OPTIONS:
        for label, value in STRINGS:
            if not applies(field, value):
                continue
            opts = dict(cli_base)
            if option == "env":
                opts["env"] = f"{value}=1"
            else:
                opts[option] = value
            if option == "gpu-type":
                opts.update(gpus="1", partition=tb["GPU_PARTITION"])
            argv = ["kernelspec", "install"] + [f"--{k}={v}" for k, v in opts.items()]
            payload.append({"kind": "cli", "argv": argv, "start": value.lower() if option == "name" else None})
            meta.append((label, field, "jupyter hpc kernelspec install"))
    before = all_job_ids(hostile_user)
    work = user_tmpdir(hostile_user)
    results = run_harness(hostile_user, work, PROVISIONER_HARNESS, payload, argv0=[tb["PYTHON"]],
                          extra_env={"JUPYTER_PATH": os.path.join(work, "share", "jupyter"),
                                     "JUPYTER_RUNTIME_DIR": os.path.join(work, "runtime")}, timeout=900)
    assert len(results) == len(payload)
    assert results[0]["started"], f"the valid control kernelspec did not start: {results[0]}"
    for (label, field, how), res in zip(meta[1:], results[1:]):
        if res["started"]:
            tally.accepted_request(label, field, f"({how}) {res['message']}")
        else:
            tally.refused(label, field, res["message"])
    _, problems = tally.finish(before, all_job_ids(hostile_user), [results[0]["job"]])
    assert not problems, problems


def test_figure_hostile_values(figures):
    """At least 50 distinct hostile values went through the entry points above."""
    if not figures.hostile_requests:
        pytest.skip("no entry point test ran")
    assert len(figures.hostile_values) >= 50, sorted(figures.hostile_values)
    assert figures.accepted_and_submitted == 0, figures.accepted
