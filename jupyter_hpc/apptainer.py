"""Pure Apptainer helpers: argv builders and ``inspect`` output parsing.

Nothing here runs a command. Every value that ends up in an argv is either a
path (checked for characters that would change the meaning of a bind
specification) or validated with :mod:`jupyter_hpc.validate`.
Written against Apptainer 1.4 (``--no-https`` for plain-HTTP registries).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from .validate import ValidationError

Bind = Union[str, Tuple[str, str], Tuple[str, str, str]]

_CTRL = re.compile(r"[\x00-\x1f\x7f]")
_BIND_MODES = {"ro", "rw"}
_INSTANCE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
_APP = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")

#: Registry references accepted for pulls: docker://host[:port]/path[:tag|@sha256:<64 hex>],
#: oras://..., library://... Lower-case repository paths as required by the OCI spec.
REF_RE = re.compile(
    r"^(?P<scheme>docker|oras|library)://"
    r"(?P<host>(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*(?::[0-9]{1,5})?/)?"
    r"(?P<path>[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*){0,8})"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?"
    r"(?:@(?P<digest>sha256:[a-f0-9]{64}))?\Z"
)


def check_path(value: Any, field: str = "path", allow_relative: bool = False) -> str:
    """A path usable in an apptainer argv: no control characters, no leading ``-``.

    ``,`` and ``:`` are refused too, because they separate bind specifications.
    """
    if not isinstance(value, str) or not value:
        raise ValidationError(field, "must be a non-empty path")
    if len(value) > 4096:
        raise ValidationError(field, "is too long")
    if _CTRL.search(value):
        raise ValidationError(field, "contains control characters")
    if value.startswith("-"):
        raise ValidationError(field, "must not start with '-'")
    if not allow_relative and not value.startswith("/"):
        raise ValidationError(field, f"{value[:80]!r} must be an absolute path")
    if "," in value or ":" in value:
        raise ValidationError(field, f"{value[:80]!r} must not contain ',' or ':'")
    return value


def check_image(value: Any) -> str:
    """An image to run: an absolute path (SIF file or sandbox directory) or a validated ref."""
    if isinstance(value, str) and "://" in value:
        return check_ref(value)
    return check_path(value, "image")


def check_ref(value: Any) -> str:
    """A registry reference (see :data:`REF_RE`)."""
    if not isinstance(value, str) or len(value) > 512 or not REF_RE.match(value):
        raise ValidationError(
            "image reference",
            f"{str(value)[:120]!r} is not an image reference like docker://registry.example.org/group/name:tag",
        )
    return value


def ref_host(ref: str) -> Optional[str]:
    """``docker://127.0.0.1:5000/demo/tiny:latest`` -> ``127.0.0.1:5000`` (``None`` for Docker Hub)."""
    m = REF_RE.match(ref)
    if not m or not m.group("host"):
        return None
    host = m.group("host").rstrip("/")
    # docker://name/path: the first component is a host only if it looks like one
    if "." in host or ":" in host or host == "localhost":
        return host
    return None


def bind_parts(bind: Bind) -> Tuple[str, str, Optional[str]]:
    """``(src, dst, mode)`` / ``(src, dst)`` / ``src`` -> checked ``(src, dst, mode or None)``."""
    if isinstance(bind, str):
        path = check_path(bind, "bind")
        return path, path, None
    if len(bind) == 2:
        src, dst = bind
        mode = None
    elif len(bind) == 3:
        src, dst, mode = bind
    else:
        raise ValidationError("bind", f"{bind!r} must be (source, destination[, mode])")
    if mode and mode not in _BIND_MODES:
        raise ValidationError("bind mode", f"{mode!r} must be 'ro' or 'rw'")
    return check_path(src, "bind source"), check_path(dst, "bind destination"), mode or None


def bind_spec(bind: Bind) -> str:
    """``(src, dst, mode)`` / ``(src, dst)`` / ``src`` -> ``src:dst[:mode]`` (``src`` alone stays ``src``)."""
    if isinstance(bind, str):
        return bind_parts(bind)[0]
    src, dst, mode = bind_parts(bind)
    return f"{src}:{dst}" + (f":{mode}" if mode else "")


def _common(
    *,
    binds: Iterable[Bind] = (),
    nv: bool = False,
    cleanenv: bool = True,
    containall: bool = False,
    pwd: Optional[str] = None,
    home: Optional[str] = None,
    env_file: Optional[str] = None,
    writable: bool = False,
    app: Optional[str] = None,
    extra: Sequence[str] = (),
) -> List[str]:
    argv: List[str] = []
    if nv:
        argv.append("--nv")
    if cleanenv:
        argv.append("--cleanenv")
    if containall:
        argv.append("--containall")
    if writable:
        argv.append("--writable")
    for b in binds:
        argv.extend(["--bind", bind_spec(b)])
    if home:
        argv.extend(["--home", check_path(home, "home")])
    if pwd:
        argv.extend(["--pwd", check_path(pwd, "pwd")])
    if env_file:
        argv.extend(["--env-file", check_path(env_file, "env file")])
    if app:
        if not _APP.match(app):
            raise ValidationError("app", f"{app!r} is not an app name")
        argv.extend(["--app", app])
    argv.extend(str(e) for e in extra)
    return argv


def exec_argv(
    image: str,
    argv: Sequence[str],
    *,
    binds: Iterable[Bind] = (),
    nv: bool = False,
    cleanenv: bool = True,
    containall: bool = False,
    pwd: Optional[str] = None,
    home: Optional[str] = None,
    env_file: Optional[str] = None,
    writable: bool = False,
    app: Optional[str] = None,
    extra: Sequence[str] = (),
    apptainer: str = "apptainer",
) -> List[str]:
    """``apptainer exec [options] IMAGE ARGV...``.

    ``argv`` is the command inside the container; its elements are passed as
    separate arguments (never through a shell). ``extra``: site-configured
    options placed before the image, passed verbatim.
    """
    if not argv:
        raise ValidationError("command", "must not be empty")
    return (
        [apptainer, "exec"]
        + _common(binds=binds, nv=nv, cleanenv=cleanenv, containall=containall, pwd=pwd, home=home,
                  env_file=env_file, writable=writable, app=app, extra=extra)
        + [check_image(image)]
        + [str(a) for a in argv]
    )


def run_argv(
    image: str,
    args: Sequence[str] = (),
    *,
    binds: Iterable[Bind] = (),
    nv: bool = False,
    cleanenv: bool = True,
    containall: bool = False,
    pwd: Optional[str] = None,
    home: Optional[str] = None,
    env_file: Optional[str] = None,
    writable: bool = False,
    app: Optional[str] = None,
    extra: Sequence[str] = (),
    apptainer: str = "apptainer",
) -> List[str]:
    """``apptainer run [options] IMAGE ARGS...`` (the image's runscript)."""
    return (
        [apptainer, "run"]
        + _common(binds=binds, nv=nv, cleanenv=cleanenv, containall=containall, pwd=pwd, home=home,
                  env_file=env_file, writable=writable, app=app, extra=extra)
        + [check_image(image)]
        + [str(a) for a in args]
    )


#: Where a job runs its command: inside the image (``apptainer exec``) or, where
#: containers cannot run, directly on the node (see :mod:`jupyter_hpc.runtime`).
RUNTIMES = ("apptainer", "charliecloud", "host")


def check_runtime(value: Any) -> str:
    if value not in RUNTIMES:
        raise ValidationError("runtime", f"{str(value)[:40]!r} is not one of {', '.join(RUNTIMES)}")
    return value


def command_argv(image: str, argv: Sequence[str], *, runtime: str = "apptainer", **options: Any) -> List[str]:
    """The argv that runs ``argv`` with ``image`` under ``runtime``.

    ``apptainer``: :func:`exec_argv` (``options`` are its keyword arguments).
    ``charliecloud``: :func:`jupyter_hpc.charliecloud.exec_argv` (``pwd``, ``writable``,
    ``ch_run``; the user's home comes with ``--home``, other binds are not made).
    ``host``: ``argv`` itself, run directly on the node. The image is still
    checked (it names the software the user asked for); container options
    (binds, ``--nv``, ``--cleanenv``, home, ...) have no meaning there and are ignored.
    """
    if check_runtime(runtime) == "apptainer":
        return exec_argv(image, argv, **options)
    if runtime == "charliecloud":
        from . import charliecloud

        env_file = charliecloud.environment_file(image)
        has_env = os.path.isfile(env_file)
        wrap = charliecloud.ENV_WRAP if not has_env and os.path.isdir(charliecloud.apptainer_env_dir(image)) else ()
        return charliecloud.exec_argv(image, argv, pwd=options.get("pwd"),
                                      writable=bool(options.get("writable")),
                                      ch_run=options.get("ch_run", "ch-run"),
                                      env_file=env_file if has_env else None, wrap=wrap)
    if not argv:
        raise ValidationError("command", "must not be empty")
    check_image(image)
    return [str(a) for a in argv]


def probe_argv(image: str, apptainer: str = "apptainer") -> List[str]:
    """``apptainer exec IMAGE true``: whether containers can run here at all."""
    return exec_argv(image, ["true"], cleanenv=True, apptainer=apptainer)


def instance_name(value: Any) -> str:
    if not isinstance(value, str) or not _INSTANCE.match(value):
        raise ValidationError("instance", f"{str(value)[:64]!r} is not an instance name")
    return value


def instance_start_argv(
    image: str,
    name: str,
    args: Sequence[str] = (),
    *,
    binds: Iterable[Bind] = (),
    nv: bool = False,
    cleanenv: bool = True,
    containall: bool = False,
    home: Optional[str] = None,
    env_file: Optional[str] = None,
    writable: bool = False,
    extra: Sequence[str] = (),
    apptainer: str = "apptainer",
) -> List[str]:
    """``apptainer instance start [options] IMAGE NAME [ARGS]``."""
    return (
        [apptainer, "instance", "start"]
        + _common(binds=binds, nv=nv, cleanenv=cleanenv, containall=containall, home=home,
                  env_file=env_file, writable=writable, extra=extra)
        + [check_image(image), instance_name(name)]
        + [str(a) for a in args]
    )


def instance_list_argv(name: Optional[str] = None, apptainer: str = "apptainer") -> List[str]:
    """``apptainer instance list --json [NAME]``."""
    argv = [apptainer, "instance", "list", "--json"]
    if name:
        argv.append(instance_name(name))
    return argv


def parse_instance_list(text: str) -> List[Dict[str, Any]]:
    """``{"instances": [{"instance": "x", "pid": 1, "img": "/p.sif", ...}]}`` -> the list."""
    try:
        data = json.loads(text or "{}")
    except json.JSONDecodeError:
        return []
    items = data.get("instances") if isinstance(data, dict) else None
    return [i for i in items or [] if isinstance(i, dict)]


def instance_stop_argv(name: Optional[str] = None, *, all: bool = False, force: bool = False,
                       apptainer: str = "apptainer") -> List[str]:
    argv = [apptainer, "instance", "stop"]
    if force:
        argv.append("--force")
    if all:
        argv.append("--all")
    elif name:
        argv.append(instance_name(name))
    else:
        raise ValidationError("instance", "a name (or all=True) is required")
    return argv


def inspect_argv(image: str, *, json_output: bool = True, labels: bool = True, what: Optional[str] = None,
                 app: Optional[str] = None, apptainer: str = "apptainer") -> List[str]:
    """``apptainer inspect --json --labels IMAGE``.

    ``what`` selects another section instead of labels: ``deffile``, ``runscript``,
    ``environment``, ``helpfile``, ``list-apps``.
    """
    argv = [apptainer, "inspect"]
    if json_output:
        argv.append("--json")
    if what:
        if what not in ("deffile", "runscript", "environment", "helpfile", "list-apps", "startscript", "test"):
            raise ValidationError("inspect", f"{what!r} is not an inspect section")
        argv.append("--" + what)
    elif labels:
        argv.append("--labels")
    if app:
        if not _APP.match(app):
            raise ValidationError("app", f"{app!r} is not an app name")
        argv.extend(["--app", app])
    argv.append(check_path(image, "image"))
    return argv


def parse_inspect(text: str) -> Dict[str, Any]:
    """Parse ``apptainer inspect --json ...`` output.

    Apptainer 1.x prints ``{"data": {"attributes": {"labels": {...}, "deffile": ...}}, "type": "container"}``.
    Returns the ``attributes`` dict (``labels`` always present, ``{}`` when none).
    A plain ``{label: value}`` object (older versions, ``labels.json``) is
    accepted as the labels.
    """
    try:
        data = json.loads(text or "{}")
    except json.JSONDecodeError as e:
        raise ValueError(f"apptainer inspect printed no JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError("apptainer inspect JSON is not an object")
    attrs = None
    if isinstance(data.get("data"), dict):
        attrs = data["data"].get("attributes")
    elif isinstance(data.get("attributes"), dict):
        attrs = data["attributes"]
    if attrs is None:
        attrs = {"labels": data}
    if not isinstance(attrs, dict):
        attrs = {}
    labels = attrs.get("labels")
    attrs["labels"] = {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}
    return attrs


def parse_labels(text: str) -> Dict[str, str]:
    """Labels from inspect JSON or from a sandbox's ``.singularity.d/labels.json``."""
    return parse_inspect(text)["labels"]


def parse_apps(text: str) -> List[str]:
    """``apptainer inspect --list-apps`` (plain or JSON) -> app names."""
    text = (text or "").strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            return []
        apps = (data.get("data") or {}).get("attributes", {}).get("apps") if isinstance(data, dict) else None
        if isinstance(apps, str):
            return [a for a in apps.split() if _APP.match(a)]
        if isinstance(apps, list):
            return [str(a) for a in apps if _APP.match(str(a))]
        return []
    return [a for a in text.split() if _APP.match(a)]


def pull_argv(ref: str, dest: str, *, insecure: bool = False, force: bool = False,
              disable_cache: bool = False, apptainer: str = "apptainer") -> List[str]:
    """``apptainer pull [--force] [--no-https] DEST REF``.

    ``insecure``: plain HTTP to the registry (Apptainer 1.4: ``--no-https``);
    only for registries the site listed as insecure.
    """
    argv = [apptainer, "pull"]
    if force:
        argv.append("--force")
    if insecure:
        argv.append("--no-https")
    if disable_cache:
        argv.append("--disable-cache")
    argv.extend([check_path(dest, "destination"), check_ref(ref)])
    return argv


def build_argv(dest: str, source: str, *, fakeroot: bool = False, force: bool = False,
               sandbox: bool = False, apptainer: str = "apptainer") -> List[str]:
    """``apptainer build [--fakeroot] [--force] [--sandbox] DEST SOURCE``.

    ``source``: a definition file, a sandbox directory or a registry reference.
    """
    argv = [apptainer, "build"]
    if fakeroot:
        argv.append("--fakeroot")
    if force:
        argv.append("--force")
    if sandbox:
        argv.append("--sandbox")
    argv.append(check_path(dest, "destination"))
    argv.append(check_ref(source) if "://" in str(source) else check_path(source, "source"))
    return argv


def version_argv(apptainer: str = "apptainer") -> List[str]:
    return [apptainer, "version"]


__all__ = [
    "REF_RE",
    "check_path",
    "check_ref",
    "check_image",
    "ref_host",
    "bind_parts",
    "bind_spec",
    "exec_argv",
    "run_argv",
    "RUNTIMES",
    "check_runtime",
    "command_argv",
    "probe_argv",
    "instance_start_argv",
    "instance_list_argv",
    "instance_stop_argv",
    "parse_instance_list",
    "inspect_argv",
    "parse_inspect",
    "parse_labels",
    "parse_apps",
    "pull_argv",
    "build_argv",
    "version_argv",
]
