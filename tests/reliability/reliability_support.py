"""Helpers shared by the reliability test modules (no fixtures here; see conftest.py).

- :func:`unclear` decides whether a refusal message is clear: non-empty, short, no
  traceback, and naming the refused field (or the option it came from).
- :func:`run_harness` runs a Python/IPython script as a test user with a JSON payload
  and returns the JSON it wrote (used for the ``%%hpc`` magic and the kernel provisioner,
  which run in the user's own processes).
- :func:`hub_login` logs a user into the hub with the dummy authenticator's password.
- :func:`ws_status` opens a websocket and reports the handshake status.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import subprocess
import time
from typing import Any, Dict, Iterable, List, Optional, Sequence

import requests

#: Words a clear refusal of ``field`` contains (the first is the field's name).
FIELD_WORDS: Dict[str, Sequence[str]] = {
    "profile": ("profile",),
    "image": ("image",),
    "partition": ("partition",),
    "gpus": ("gpus", "gpu"),
    "gpu_type": ("gpu type", "gpu_type", "gpu-type", "gres", "gpus"),
    "cpus": ("cpus", "cpu"),
    "memory": ("memory", "mem"),
    "time": ("time",),
    "account": ("account",),
    "qos": ("qos",),
    "job_name": ("job name", "job_name"),
    "unknown-option": ("unknown option", "user_options"),
    "cwd": ("cwd", "directory", "path"),
    "exclusive": ("exclusive",),
    "command": ("command",),
    "name": ("name",),
    "ref": ("image reference", "ref"),
    "job_id": ("job id", "job_id", "job"),
    "stream": ("stream",),
    "offset": ("offset",),
    "since": ("since",),
    "python": ("python",),
    "env": ("env", "environment variable"),
    "venv": ("venv",),
    "instance": ("instance",),
    "definition": ("definition",),
    "sandbox": ("sandbox",),
    "fakeroot": ("fakeroot",),
    "force": ("force",),
}

MAX_MESSAGE = 2000


def unclear(message: Optional[str], field: str, also: Sequence[str] = ()) -> Optional[str]:
    """Why ``message`` is not a clear refusal of ``field`` (``None`` when it is clear).

    ``also``: further words that name what was refused (e.g. a whole options line)."""
    if not message or not str(message).strip():
        return "empty message"
    message = str(message)
    if len(message) > MAX_MESSAGE:
        return f"a {len(message)}-character message"
    if "Traceback (most recent call last)" in message:
        return "a traceback instead of a message"
    low = message.lower()
    words = tuple(FIELD_WORDS.get(field, (field,))) + tuple(also)
    if not any(w in low for w in words):
        return f"does not name {words[0]!r}: {message[:160]!r}"
    return None


def short(value: Any, n: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= n else text[:n] + "..."


# -- processes of a user -----------------------------------------------------------------------


def run_harness(user: str, tmpdir: str, script: str, payload: Any, *, argv0: Sequence[str],
                extra_env: Optional[Dict[str, str]] = None, timeout: float = 600) -> Any:
    """Write ``script`` and ``payload`` (JSON) into ``tmpdir`` (the user's), run
    ``argv0 + [script, payload.json, result.json, tmpdir]`` as ``user`` from its home
    and return the JSON the script wrote to ``result.json``."""
    pw = pwd.getpwnam(user)
    paths = {}
    for name, text in (("harness.py", script), ("payload.json", json.dumps(payload))):
        path = os.path.join(tmpdir, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        os.chown(path, pw.pw_uid, pw.pw_gid)
        paths[name] = path
    result = os.path.join(tmpdir, "result.json")
    env = {"HOME": pw.pw_dir, "USER": user, "LOGNAME": user, "LANG": "C.UTF-8"}
    env.update(extra_env or {})
    full = ["runuser", "-u", user, "--", "env", *[f"{k}={v}" for k, v in env.items()],
            *argv0, paths["harness.py"], paths["payload.json"], result, tmpdir]
    proc = subprocess.run(full, capture_output=True, text=True, timeout=timeout, cwd=pw.pw_dir)
    try:
        with open(result, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        raise AssertionError(f"harness {argv0} as {user} wrote no result (rc {proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}") from None


# -- hub -----------------------------------------------------------------------------------------


def hub_login(hub, user: str):
    """A requests session logged into ``hub`` as ``user``; returns (session, xsrf token)."""
    s = requests.Session()
    s.get(hub.url + "/hub/login", timeout=30)
    xsrf = s.cookies.get("_xsrf", path="/hub/") or s.cookies.get("_xsrf")
    r = s.post(hub.url + "/hub/login", data={"username": user, "password": hub.password, "_xsrf": xsrf},
               allow_redirects=False, timeout=30)
    assert r.status_code in (302, 303), (user, r.status_code, r.text[:300])
    xsrf = s.cookies.get("_xsrf", path="/hub/") or s.cookies.get("_xsrf") or xsrf
    return s, xsrf


def user_token(hub, user: str) -> str:
    """A hub API token of ``user`` (created by the user through a cookie session)."""
    s, xsrf = hub_login(hub, user)
    r = s.post(f"{hub.api_url}/users/{user}/tokens", json={"note": "reliability suite", "expires_in": 3600},
               headers={"X-XSRFToken": xsrf or "", "Referer": hub.url + "/hub/token"}, timeout=30)
    assert r.status_code in (200, 201), (r.status_code, r.text[:300])
    return r.json()["token"]


def wait_servers(hub, names: Iterable[str], timeout: float = 180) -> Dict[str, Dict[str, Any]]:
    """Wait until the hub reports each (user, server name) ready; returns {name: server model}."""
    deadline = time.monotonic() + timeout
    pending = list(names)
    ready: Dict[str, Dict[str, Any]] = {}
    while pending and time.monotonic() < deadline:
        for name in list(pending):
            s = hub.server(name)
            if s and s.get("ready"):
                ready[name] = s
                pending.remove(name)
        time.sleep(0.5)
    return ready


def ensure_servers(hub, users: Sequence[str], options: Optional[Dict[str, Any]] = None,
                   timeout: float = 180) -> Dict[str, str]:
    """Make sure each user has a ready default server on ``hub``; returns {user: job id}."""
    for user in users:
        s = hub.server(user)
        if s and (s.get("ready") or s.get("pending")):
            continue
        r = hub.spawn(user, options if options is not None else {"image": "site:notebook.sif"})
        assert r.status_code in (201, 202), (user, r.status_code, r.text[:500])
    ready = wait_servers(hub, users, timeout)
    missing = [u for u in users if u not in ready]
    assert not missing, f"servers not ready: {missing}\n{hub.log_tail()}"
    return {u: ready[u]["state"]["job_id"] for u in users}


# -- websockets ----------------------------------------------------------------------------------


def ws_status(url: str, headers: Sequence[str] = (), timeout: float = 30) -> int:
    """Status of a websocket handshake (101 when it opened)."""
    import websocket

    try:
        conn = websocket.create_connection(url, header=list(headers), timeout=timeout)
    except websocket.WebSocketBadStatusException as e:
        return e.status_code
    except (OSError, websocket.WebSocketException):
        return 0
    conn.close()
    return 101


def job_state(job_id: str) -> str:
    out = subprocess.run(["squeue", "--noheader", "--states=all", "--jobs=" + str(job_id), "--format=%T"],
                         capture_output=True, text=True, timeout=60)
    return (out.stdout.strip().split() or ["GONE"])[0]


def wait_state(job_id: str, states: Iterable[str], timeout: float = 120) -> str:
    states = set(states)
    deadline = time.monotonic() + timeout
    state = job_state(job_id)
    while state not in states and time.monotonic() < deadline:
        time.sleep(0.3)
        state = job_state(job_id)
    return state


def message_of(response: requests.Response) -> str:
    """The error message of a JSON or HTML answer."""
    try:
        data = response.json()
        if isinstance(data, dict):
            message = str(data.get("message") or data.get("reason") or "")
            field = data.get("field")
            # the REST API's errors name the offending input in "field"
            return f"{field}: {message}" if isinstance(field, str) and field else message
    except ValueError:
        pass
    text = response.text or ""
    m = re.search(r"<div class=\"error\">(.*?)</div>", text, re.S) or re.search(r"<p[^>]*>(.*?)</p>", text, re.S)
    return re.sub(r"<[^>]+>", " ", m.group(1)).strip() if m else text[:500]


def scancel(job_ids: Iterable[str]) -> None:
    ids = [str(j) for j in job_ids if j]
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True, timeout=60)


def lines(text: str) -> List[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


# -- scripts run as a user ---------------------------------------------------------------------------

#: IPython script: each payload case runs one ``%%hpc`` (``kind: cell``, ``option``, ``value``)
#: or ``%hpc OPTION VALUE`` (``kind: line``) or a magic as written (``kind: raw``, ``line``
#: and, for ``%%hpc``, ``code``); the result is what the magic printed.
MAGIC_HARNESS = r'''
import contextlib, io, json, shlex, sys
payload, result_path = sys.argv[1], sys.argv[2]
cases = json.load(open(payload))
ip = get_ipython()
ip.run_line_magic("load_ext", "jupyter_hpc")
base = {"image": "site:notebook.sif", "time": "00:05:00", "mem": "256M", "cpus": "1"}
results = []
for case in cases:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            if case["kind"] == "cell":
                opts = dict(base, **{case["option"]: case["value"]})
                line = " ".join(f"--{k}={shlex.quote(v)}" for k, v in opts.items())
                ip.run_cell_magic("hpc", line, "print('never')\n")
            elif case["kind"] == "line":
                ip.run_line_magic("hpc", case["option"] + " " + shlex.quote(case["value"]))
            elif case.get("code") is None:  # "raw": a magic line as written
                ip.run_line_magic("hpc", case["line"])
            else:
                ip.run_cell_magic("hpc", case["line"], case["code"])
        except BaseException as e:  # the magic must not raise; recorded as its answer
            print(f"RAISED {type(e).__name__}: {e}", file=sys.stderr)
    results.append({"text": out.getvalue() + err.getvalue()})
json.dump(results, open(result_path, "w"))
'''

#: Python script: each payload case starts a kernel from a kernelspec written from
#: ``config`` (``kind: metadata``) or installed with ``jupyter hpc`` argv (``kind: cli``,
#: ``{name}`` = a fresh kernelspec name; ``start``: the name to start when it differs).
PROVISIONER_HARNESS = r'''
import asyncio, contextlib, io, json, os, shutil, sys
from jupyter_client.manager import AsyncKernelManager
from jupyter_hpc import cli

payload, result_path, work = sys.argv[1], sys.argv[2], sys.argv[3]
cases = json.load(open(payload))
kernels = os.path.join(work, "share", "jupyter", "kernels")
os.makedirs(kernels, exist_ok=True)


async def start(name):
    km = AsyncKernelManager(kernel_name=name)
    try:
        await asyncio.wait_for(km.start_kernel(), 120)
    except BaseException as e:  # noqa: BLE001 - the refusal is the result
        return {"started": False, "message": str(e) or type(e).__name__, "type": type(e).__name__}
    job = getattr(km.provisioner, "job_id", None)
    await km.shutdown_kernel(now=True)
    return {"started": True, "message": f"kernel started in job {job}", "type": "", "job": job}


async def main():
    results = []
    for i, case in enumerate(cases):
        name = f"jhrel-{i}"
        if case["kind"] == "metadata":
            d = os.path.join(kernels, name)
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, "kernel.json"), "w") as f:
                json.dump({"argv": ["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                           "display_name": name, "language": "python",
                           "metadata": {"kernel_provisioner": {"provisioner_name": "hpc-slurm-provisioner",
                                                               "config": case["config"]}}}, f)
            res = await start(name)
        else:
            argv = [a.replace("{name}", name) for a in case["argv"]] + ["--prefix", work]
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    rc = cli.main(argv)
                except SystemExit as e:
                    rc = e.code
            if rc == 0:
                installed = case.get("start") or name
                res = await start(installed)
                res["installed"] = True
                shutil.rmtree(os.path.join(kernels, installed), ignore_errors=True)
            else:
                res = {"started": False, "message": (err.getvalue() or out.getvalue()).strip(), "type": f"rc {rc}"}
        shutil.rmtree(os.path.join(kernels, name), ignore_errors=True)
        results.append(res)
    json.dump(results, open(result_path, "w"))


asyncio.run(main())
'''
