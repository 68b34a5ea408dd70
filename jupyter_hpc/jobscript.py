"""Batch scripts that run one command inside an Apptainer image.

Shared by the spawner, cell jobs, services and kernels. The script consists of
fixed text written here and argv lists quoted with :func:`shlex.join` /
:func:`shlex.quote`; user input never reaches it unquoted.

Layout of a generated script::

    #!/bin/bash
    #SBATCH ...                     (optional fixed directives)
    set -euo pipefail
    export NAME=<quoted literal>    (optional, non-secret literals)
    <fixed helper functions>
    <setup argv lines>              (optional)
    jhpc_node_info EXCL FILE PRINT  (run record; stderr: "jupyter-hpc: node=... cpus=... exclusive=... cpu_model=...")
    PORT=$(jhpc_pick_port LO HI)    (optional port hand-off, see below)
    export APPTAINERENV_NAME="$NAME" for each named variable present in the job environment
    printf 'jupyter-hpc: starting container %s on %s\\n' IMAGE NODE >&2
    [exec] apptainer exec ... IMAGE ARGV...

With ``runtime="host"`` (containers unavailable, see :mod:`jupyter_hpc.runtime`)
the last lines become ``cd PWD`` (when given), the stderr marker
``jupyter-hpc: runtime=host image=IMAGE node=NODE`` and ``[exec] ARGV...``: the same
command, run directly on the node with the job's environment.

Port hand-off
-------------
With ``port=True`` the job picks a free TCP port on its node (random in
``port_range``, leaving out the node's ephemeral range ``net.ipv4.ip_local_port_range``
unless ``port_range`` lies wholly inside it, since outgoing connections may take such a
port before the server binds it; a port counts as free when nothing accepts a connection
on it, checked with bash's ``/dev/tcp``), exports it as ``PORT`` (also into the
container as ``APPTAINERENV_PORT``) and records ``host=NODE,port=PORT`` in the
job's Slurm comment with ``scontrol update JobId=$SLURM_JOB_ID Comment=...``.
The shared :class:`~jupyter_hpc.watcher.JobWatcher` reads comments with its
regular squeue, so :attr:`jupyter_hpc.slurm.JobInfo.endpoint` becomes
``(host, port)`` without any extra query. Should ``scontrol update`` be refused,
the job writes ``~/.jupyter-hpc/jobs/$SLURM_JOB_ID.json`` (mode 0600) instead;
:func:`read_port_file` reads it.

The command may use the port through the placeholder ``{port}`` anywhere in an
argv element (``--ServerApp.port={port}``): each literal piece of the element
is quoted separately and the placeholders become ``"$PORT"``, so the element
stays one word and nothing else is expanded. Placeholders are only expanded
when ``port=True``; ``{port}`` is then not available as literal text.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from . import apptainer as _apptainer
from . import charliecloud as _charliecloud
from . import slurm, validate
from .slurm import Line
from .validate import ValidationError

PORT_PLACEHOLDER = "{port}"
MARKER_PREFIX = "jupyter-hpc: "
STARTING_MARKER = "jupyter-hpc: starting container"
HOST_MARKER = "jupyter-hpc: runtime=host"

#: How the job names its node in the port hand-off.
HOST_EXPRESSIONS = {
    "hostname": '"$(hostname -s)"',
    "fqdn": '"$(hostname -f)"',
    "nodename": '"${SLURMD_NODENAME:-$(hostname -s)}"',
    "ip": '"$(hostname -I | cut -d" " -f1)"',
}

_HELPERS = r"""
jhpc_port_free() {
    # true when nothing accepts TCP connections on port $1 (loopback and the node's address)
    local addr
    for addr in 127.0.0.1 "$JHPC_HOST_ADDR"; do
        [ -n "$addr" ] || continue
        # connected (0) or no answer within 2 s (124): somebody uses or filters the port
        timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$addr" "$1" 2>/dev/null
        case $? in 0|124) return 1 ;; esac
    done
    return 0
}
jhpc_pick_port() {
    local lo=$1 hi=$2 i p tries elo= ehi=
    # The node's ephemeral range: outgoing connections take ports there at any moment, so a
    # port free now may be gone when the server binds. The part of the range outside it is
    # used; a range wholly inside it is used as it is.
    read -r elo ehi </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || true
    elo=${elo//[^0-9]/}; ehi=${ehi//[^0-9]/}
    if [ -n "$elo" ] && [ -n "$ehi" ]; then
        if [ "$lo" -lt "$elo" ] && [ "$hi" -ge "$elo" ]; then
            hi=$((elo - 1))
        elif [ "$lo" -ge "$elo" ] && [ "$lo" -le "$ehi" ] && [ "$hi" -gt "$ehi" ]; then
            lo=$((ehi + 1))
        fi
    fi
    tries=$(( (hi - lo + 1) * 2 ))
    [ "$tries" -le 100 ] || tries=100
    for i in $(seq 1 "$tries"); do
        p=$(( lo + ( ((RANDOM << 15) | RANDOM) % (hi - lo + 1) ) ))
        if jhpc_port_free "$p"; then
            echo "$p"
            return 0
        fi
    done
    echo "jupyter-hpc: no free port in $lo-$hi" >&2
    return 1
}
jhpc_node_info() {
    # the run record: where the job ran, on which CPU, whether it had the node to itself
    # $1: exclusive (yes/no/unknown), $2: JSON file to write ('' = none), $3: yes = print the marker line
    local model node cpus ncpus alloc excl job
    model=$(grep -m1 -i '^model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//' || true)
    model=$(printf '%s' "${model:-unknown}" | tr -d '"\\' | tr -c '[:print:]' ' ')
    node=$(hostname -s)
    cpus=$(nproc 2>/dev/null || true); cpus=${cpus//[^0-9]/}; cpus=${cpus:-0}
    ncpus=$(nproc --all 2>/dev/null || true); ncpus=${ncpus//[^0-9]/}; ncpus=${ncpus:-0}
    alloc=${SLURM_CPUS_ON_NODE:-}; alloc=${alloc//[^0-9]/}; alloc=${alloc:-0}
    job=${SLURM_JOB_ID:-}; job=${job//[^0-9_]/}
    excl=${1:-unknown}
    if [ "${3:-yes}" = yes ]; then
        # the CPU model goes last: it contains spaces
        printf 'jupyter-hpc: node=%s cpus=%s node_cpus=%s alloc_cpus=%s exclusive=%s job=%s cpu_model=%s\n' \
            "$node" "$cpus" "$ncpus" "$alloc" "$excl" "$job" "$model" >&2
    fi
    if [ -n "${2:-}" ]; then
        case "$excl" in yes) excl=true ;; no) excl=false ;; *) excl=null ;; esac
        (umask 077 && printf '{"node": "%s", "cpus": %s, "node_cpus": %s, "alloc_cpus": %s, "exclusive": %s, "job_id": "%s", "cpu_model": "%s"}\n' \
            "$node" "$cpus" "$ncpus" "$alloc" "$excl" "$job" "$model" > "$2") || echo "jupyter-hpc: could not write the run record" >&2
    fi
    return 0
}
""".strip("\n")

_RECORD_PORT = r"""
jhpc_record_port() {
    # $1: comment prefix, $2: host, $3: port
    if "$JHPC_SCONTROL" update JobId="$SLURM_JOB_ID" Comment="$1host=$2,port=$3" 2>/dev/null; then
        return 0
    fi
    echo "jupyter-hpc: scontrol update refused, writing the port file" >&2
    (umask 077 && mkdir -p "$HOME/.jupyter-hpc/jobs" &&
        printf '{"job_id": "%s", "host": "%s", "port": %s}\n' "$SLURM_JOB_ID" "$2" "$3" \
            > "$HOME/.jupyter-hpc/jobs/$SLURM_JOB_ID.json")
}
""".strip("\n")


def quote_word(element: str, expand_port: bool) -> str:
    """Quote one argv element; with ``expand_port``, ``{port}`` becomes ``"$PORT"``."""
    element = str(element)
    if "\x00" in element:
        raise ValidationError("command", "contains a NUL character")
    if not expand_port or PORT_PLACEHOLDER not in element:
        return shlex.quote(element)
    pieces = element.split(PORT_PLACEHOLDER)
    return '"$PORT"'.join(shlex.quote(p) if p else "" for p in pieces) or '"$PORT"'


def command_line(argv: Sequence[str], expand_port: bool = False, exec_: bool = False) -> Line:
    """An argv as one script line (``exec`` prepended when asked)."""
    words = [quote_word(a, expand_port) for a in argv]
    return Line(("exec " if exec_ else "") + " ".join(words))


def build_container_script(
    image: str,
    argv: Sequence[str],
    *,
    binds: Iterable[_apptainer.Bind] = (),
    nv: bool = False,
    cleanenv: bool = True,
    containall: bool = False,
    pwd: Optional[str] = None,
    home: Optional[str] = None,
    writable: bool = False,
    app: Optional[str] = None,
    apptainer: str = "apptainer",
    apptainer_extra: Sequence[str] = (),
    env_names: Iterable[str] = (),
    exports: Optional[Mapping[str, str]] = None,
    setup: Iterable[Sequence[str]] = (),
    port: bool = False,
    port_range: Tuple[int, int] = (20000, 39999),
    comment: Optional[str] = None,
    host: str = "hostname",
    scontrol: str = "scontrol",
    exec_: bool = True,
    directives: Sequence[str] = (),
    node_info: bool = True,
    runtime: str = "apptainer",
    exclusive: Optional[bool] = None,
    record_file: Optional[str] = None,
    venv: Optional[str] = None,
    instance: bool = False,
    ch_run: str = "ch-run",
) -> str:
    """The batch script that runs ``argv`` inside ``image`` with ``apptainer exec``.

    - ``env_names``: variables of the *job environment* made visible in the
      container (``export APPTAINERENV_NAME="$NAME"`` when set); the values
      never appear in the script. Put secrets here and in ``submit(env=...)``.
    - ``exports``: non-secret literal values (``export NAME='value'``), also
      passed into the container.
    - ``setup``: argv lists run before the container starts (e.g. ``["module", "load", "x"]``).
    - ``port``: pick a free port and record it (see module docs); ``comment``
      is the job's submit comment (:func:`slurm.make_comment`), kept in front of
      ``host=...,port=...``.
    - ``host``: key of :data:`HOST_EXPRESSIONS` (how the node names itself).
    - ``exec_``: replace the shell by apptainer (signals from Slurm reach it directly).
    - ``runtime``: ``"apptainer"``, ``"charliecloud"`` (``ch-run`` with a directory image, see
      :mod:`jupyter_hpc.charliecloud`; the job environment passes through, binds whose
      destination the image lacks are skipped, no instances or apps) or ``"host"`` (run
      ``argv`` directly on the node; container options are ignored, exports and named
      variables are simply part of the job environment).
    - ``ch_run``: the ``ch-run`` command for ``runtime="charliecloud"``.
    - ``node_info``: print the run record on stderr as one marker line
      (``jupyter-hpc: node=N cpus=C node_cpus=T alloc_cpus=A exclusive=yes|no|unknown job=J
      cpu_model=...``; see :func:`run_record`).
    - ``exclusive``: whether the job was submitted with ``--exclusive``
      (:attr:`slurm.JobRequest.exclusive`), written into the run record as given
      (``None``: ``unknown``). The script asks Slurm nothing.
    - ``record_file``: also write the run record as JSON (mode 0600) to this path
      (read it with :func:`read_run_record`); written even when ``node_info`` is
      false, so a job can keep its stderr clean.
    - ``venv``: an already resolved user venv (:func:`jupyter_hpc.venvs.resolve`), bound
      into the container (read-write), ``VIRTUAL_ENV`` set and ``VENV/bin`` put first on
      the container's ``PATH`` (``APPTAINERENV_PREPEND_PATH``; host runtime: ``PATH``).
    - ``instance``: start the image as an Apptainer instance ``jhpc-JOBID``
      (:func:`instance_for_job`; ``apptainer instance start`` with the container
      options) and run ``argv`` inside it (``apptainer exec instance://jhpc-JOBID``).
      The shell stays (``exec_`` is ignored) and stops the instance when the job ends
      (``apptainer instance stop``; also on ``scancel``). Not with ``runtime="host"``.
    """
    _apptainer.check_runtime(runtime)
    host_runtime = runtime == "host"
    lo, hi = port_range
    lo = validate.integer(lo, "port range", 1024, 65535)
    hi = validate.integer(hi, "port range", lo, 65535)
    if host not in HOST_EXPRESSIONS:
        raise ValidationError("host", f"{host!r} is not one of {', '.join(HOST_EXPRESSIONS)}")
    names = [validate.env_name(n) for n in env_names]
    literal = {validate.env_name(k): str(v) for k, v in (exports or {}).items()}
    binds = list(binds)
    if venv is not None:
        venv = _apptainer.check_path(venv, "venv").rstrip("/")
        if not venv:
            raise ValidationError("venv", "must not be /")
        binds.append((venv, venv, "rw"))
        literal["VIRTUAL_ENV"] = venv

    lines: List[slurm.ScriptItem] = [Line(_HELPERS)]
    for step in setup:
        lines.append(list(step))
    if exclusive is not None:
        exclusive = validate.boolean(exclusive, "exclusive")
    if record_file is not None:
        record_file = _apptainer.check_path(record_file, "record file")
    if node_info or record_file:
        excl = "unknown" if exclusive is None else ("yes" if exclusive else "no")
        lines.append(Line(
            f"jhpc_node_info {excl} {shlex.quote(record_file or '')} {'yes' if node_info else 'no'}"
        ))
    if port:
        prefix = comment if comment else slurm.COMMENT_PREFIX
        prefix = validate.safe_text(prefix, "comment", 150)
        if not prefix.startswith(slurm.COMMENT_PREFIX):
            raise ValidationError("comment", f"must start with {slurm.COMMENT_PREFIX!r}")
        if not prefix.endswith((":", ",")):
            prefix += ","
        lines.append(Line(_RECORD_PORT))
        lines.append(Line("JHPC_SCONTROL=" + shlex.quote(scontrol)))
        lines.append(Line(f"JHPC_HOST={HOST_EXPRESSIONS[host]}"))
        lines.append(Line('JHPC_HOST_ADDR=$(getent hosts "$JHPC_HOST" 2>/dev/null | cut -d" " -f1 | head -n1 || true)'))
        lines.append(Line(f"PORT=$(jhpc_pick_port {lo} {hi})"))
        lines.append(Line("export PORT"))
        lines.append(Line("export APPTAINERENV_PORT=\"$PORT\""))
        lines.append(Line(f'jhpc_record_port {shlex.quote(prefix)} "$JHPC_HOST" "$PORT"'))
        lines.append(Line('echo "jupyter-hpc: port=$PORT host=$JHPC_HOST" >&2'))
    if instance and host_runtime:
        raise ValidationError("instance", "Apptainer instances need containers (the runtime is 'host')")
    if runtime == "charliecloud":
        if instance:
            raise ValidationError("instance", "Apptainer instances need the Apptainer runtime; "
                                              "this image runs with Charliecloud")
        lines.extend(_charliecloud_lines(image, argv, binds=binds, venv=venv, pwd=pwd, containall=containall,
                                         writable=writable, app=app, ch_run=ch_run, expand_port=port,
                                         exec_=exec_))
        return slurm.batch_script(lines, exports=literal, directives=directives)
    if host_runtime:
        full = _apptainer.command_argv(image, argv, runtime="host")
        if venv is not None:
            lines.append(Line('export PATH="$VIRTUAL_ENV/bin:$PATH"'))
        if pwd:
            lines.append(["cd", "--", _apptainer.check_path(pwd, "pwd")])
        lines.append(Line(f"printf 'jupyter-hpc: runtime=host image=%s node=%s\\n' {shlex.quote(image)} \"$(hostname -s)\" >&2"))
        lines.append(command_line(full, expand_port=port, exec_=exec_))
        return slurm.batch_script(lines, exports=literal, directives=directives)
    for name in literal:
        lines.append(Line(f'export APPTAINERENV_{name}="${name}"'))
    if venv is not None:
        # apptainer puts APPTAINERENV_PREPEND_PATH in front of the image's own PATH
        lines.append(Line('export APPTAINERENV_PREPEND_PATH="$VIRTUAL_ENV/bin"'))
    for name in names:
        lines.append(Line(f'if [ -n "${{{name}+x}}" ]; then export APPTAINERENV_{name}="${name}"; fi'))

    full = _apptainer.exec_argv(
        image,
        argv,
        binds=binds,
        nv=nv,
        cleanenv=cleanenv,
        containall=containall,
        pwd=pwd,
        home=home,
        writable=writable,
        app=app,
        extra=apptainer_extra,
        apptainer=apptainer,
    )
    lines.append(Line(f"printf 'jupyter-hpc: starting container %s on %s\\n' {shlex.quote(image)} \"$(hostname -s)\" >&2"))
    if instance:
        lines.extend(_instance_lines(image, argv, full, apptainer=apptainer, binds=binds, nv=nv, cleanenv=cleanenv,
                                     containall=containall, home=home, writable=writable, extra=apptainer_extra,
                                     expand_port=port))
        return slurm.batch_script(lines, exports=literal, directives=directives)
    lines.append(command_line(full, expand_port=port, exec_=exec_))
    return slurm.batch_script(lines, exports=literal, directives=directives)


_CH_HELPERS = r"""
jhpc_ch_bind() {
    # bind $1 at $2 when the image has the mount point (ch-run cannot create it)
    case "$2/" in "/home/$USER/"*) return 0 ;; esac   # inside the home that --home binds
    case "$2" in
        /etc/passwd|/etc/group)
            # the host's account files (Slurm resolves SlurmUser and other users) replace the
            # minimal ones ch-run writes
            if [ -z "${JHPC_CH_NO_PASSWD:-}" ]; then JHPC_CH+=(--no-passwd); JHPC_CH_NO_PASSWD=1; fi ;;
    esac
    if [ -e "$JHPC_CH_IMAGE$2" ]; then
        JHPC_CH+=("--bind=$1:$2")
    else
        echo "jupyter-hpc: charliecloud: $2 is not in the image, not bound" >&2
    fi
}
""".strip("\n")


# The image's own environment: Charliecloud's ch/environment, or, for an Apptainer
# sandbox run with ch-run, its /.singularity.d/env scripts sourced in front of the
# command as Apptainer does (a fixed script; the command follows as "$@").
_CH_ENVIRONMENT = r"""
if [ -f "$JHPC_CH_IMAGE/ch/environment" ]; then
    JHPC_CH+=("--set-env=$JHPC_CH_IMAGE/ch/environment")
elif [ -d "$JHPC_CH_IMAGE/.singularity.d/env" ]; then
    JHPC_CH_WRAP=(%s)
fi
""".strip("\n") % " ".join(shlex.quote(w) for w in _charliecloud.ENV_WRAP)


def _charliecloud_lines(image, argv, *, binds, venv, pwd, containall, writable, app, ch_run, expand_port,
                        exec_) -> List[slurm.ScriptItem]:
    """``ch-run`` built up in a bash array (binds checked on the node), then run."""
    if app:
        raise ValidationError("app", "SCIF apps need the Apptainer runtime; this image runs with Charliecloud")
    image = _charliecloud.check_image(image)
    head = _charliecloud.base_argv(ch_run=ch_run, private_tmp=containall, writable=writable)
    tail = _charliecloud.command_argv(image, argv, pwd=pwd)
    out: List[slurm.ScriptItem] = [
        Line(_CH_HELPERS),
        # ch-run --home needs USER; a job environment may lack it
        Line('USER="${USER:-$(id -un)}"'),
        Line("export USER"),
        Line("JHPC_CH_IMAGE=" + shlex.quote(image)),
        Line("JHPC_CH=(" + " ".join(shlex.quote(w) for w in head) + ")"),
        Line("JHPC_CH_WRAP=()"),
        Line(_CH_ENVIRONMENT),
    ]
    if venv is not None:
        out.append(Line("JHPC_CH+=(" + " ".join(shlex.quote(w) for w in _charliecloud.venv_argv(venv)) + ")"))
    for b in binds:
        src, dst, _ = _apptainer.bind_parts(b)
        out.append(Line(f"jhpc_ch_bind {shlex.quote(src)} {shlex.quote(dst)}"))
    out.append(Line("printf 'jupyter-hpc: starting container %s on %s\\n' "
                    f"{shlex.quote(image)} \"$(hostname -s)\" >&2"))
    out.append(Line("echo 'jupyter-hpc: runtime=charliecloud' >&2"))
    words = [quote_word(a, expand_port) for a in tail]
    # the image's environment wrapper (Apptainer sandboxes) goes between "--" and the command
    sep = len(tail) - len(argv)
    words.insert(sep, '"${JHPC_CH_WRAP[@]}"')
    out.append(Line(("exec " if exec_ else "") + '"${JHPC_CH[@]}" ' + " ".join(words)))
    return out


INSTANCE_PREFIX = "jhpc-"
_INSTANCE_WORD = '"$JHPC_INSTANCE"'

_INSTANCE_HELPERS = r"""
jhpc_instance_stop() {
    trap - EXIT TERM INT
    if [ -n "${JHPC_CHILD:-}" ]; then kill -TERM "$JHPC_CHILD" 2>/dev/null || true; fi
    "$JHPC_APPTAINER" instance stop "$JHPC_INSTANCE" >&2 2>/dev/null || true
    echo "jupyter-hpc: instance $JHPC_INSTANCE stopped" >&2
}
""".strip("\n")


def instance_for_job(job_id: Any) -> str:
    """The name of the Apptainer instance a service job starts: ``jhpc-JOBID``."""
    return _apptainer.instance_name(INSTANCE_PREFIX + validate.job_id(job_id))


def _instance_lines(image, argv, full, *, apptainer, binds, nv, cleanenv, containall, home, writable, extra,
                    expand_port) -> List[slurm.ScriptItem]:
    start = _apptainer.instance_start_argv(image, "placeholder", binds=binds, nv=nv, cleanenv=cleanenv,
                                           containall=containall, home=home, writable=writable, extra=extra,
                                           apptainer=apptainer)
    start_words = [shlex.quote(w) for w in start[:-1]] + [_INSTANCE_WORD]
    # the command: the exec argv with the image replaced by the instance (options stay: --pwd, --nv ...)
    words = [quote_word(a, expand_port) for a in full]
    words[len(full) - len(argv) - 1] = '"instance://$JHPC_INSTANCE"'
    return [
        Line("JHPC_APPTAINER=" + shlex.quote(apptainer)),
        Line('JHPC_INSTANCE="' + INSTANCE_PREFIX + '${SLURM_JOB_ID//[^0-9_]/}"'),
        Line(_INSTANCE_HELPERS),
        Line("trap jhpc_instance_stop EXIT"),
        Line("trap 'exit 143' TERM INT"),
        Line(" ".join(start_words) + " >&2"),
        Line('echo "jupyter-hpc: instance=$JHPC_INSTANCE" >&2'),
        # in the background, so that a TERM from Slurm runs the trap at once
        Line(" ".join(words) + " &"),
        Line("JHPC_CHILD=$!"),
        Line('wait "$JHPC_CHILD"'),
    ]


_MARKER_KV = re.compile(r"(\w+)=(.*?)(?=\s\w+=|$)")


def parse_markers(text: str) -> Dict[str, str]:
    """Collect ``jupyter-hpc:`` marker lines from a job's stderr.

    Returns e.g. ``{"node": "n1", "cpus": "2", "cpu_model": "AMD EPYC ...",
    "port": "23456", "host": "n1", "started": "/opt/.../notebook.sif"}``.
    """
    info: Dict[str, str] = {}
    for line in (text or "").splitlines():
        if not line.startswith(MARKER_PREFIX):
            continue
        body = line[len(MARKER_PREFIX):]
        if line.startswith(STARTING_MARKER):
            rest = line[len(STARTING_MARKER):].strip()
            image, _, node = rest.rpartition(" on ")
            info["started"] = image
            info.setdefault("node", node)
            continue
        for key, value in _MARKER_KV.findall(body):
            info[key] = value.strip()
    return info


_BOOL_WORDS = {"yes": True, "true": True, "no": False, "false": False}
_RECORD_INTS = ("cpus", "node_cpus", "alloc_cpus")


def run_record(text: str) -> Dict[str, Any]:
    """The run record of a job from its stderr (the ``node_info`` marker line).

    Returns ``{"node", "cpu_model", "cpus", "node_cpus", "alloc_cpus", "exclusive",
    "job_id"}``: ints for the counts (``cpus``: CPUs the job's processes may use,
    ``node_cpus``: CPUs of the node, ``alloc_cpus``: CPUs Slurm allocated on the node),
    ``True``/``False``/``None`` (not known) for ``exclusive``. Keys the job did not
    print are absent; ``{}`` when the output holds no record.
    """
    markers = parse_markers(text)
    if "cpu_model" not in markers:
        return {}
    record: Dict[str, Any] = {}
    for key in ("node", "cpu_model"):
        if markers.get(key):
            record[key] = markers[key]
    for key in _RECORD_INTS:
        if markers.get(key, "").isdigit():
            record[key] = int(markers[key])
    if "exclusive" in markers:
        record["exclusive"] = _BOOL_WORDS.get(markers["exclusive"].lower())
    if markers.get("job"):
        record["job_id"] = markers["job"]
    return record


def read_run_record(path: str) -> Optional[Dict[str, Any]]:
    """The JSON run record a job wrote to ``record_file`` (``None`` when missing or unreadable).

    Only the known keys with values of the expected types are returned.
    """
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    record: Dict[str, Any] = {}
    for key in ("node", "cpu_model", "job_id"):
        if isinstance(data.get(key), str) and data[key]:
            record[key] = data[key][:300]
    for key in _RECORD_INTS:
        value = data.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            record[key] = value
    if data.get("exclusive", "missing") in (True, False, None):
        record["exclusive"] = data["exclusive"]
    return record


def port_file(home: str, job_id: Any) -> str:
    return os.path.join(home, ".jupyter-hpc", "jobs", f"{validate.job_id(job_id)}.json")


def read_port_file(home: str, job_id: Any) -> Optional[Tuple[str, int]]:
    """Fallback hand-off: ``(host, port)`` from ``~/.jupyter-hpc/jobs/JOBID.json``, or ``None``."""
    try:
        with open(port_file(home, job_id)) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    host, port = data.get("host"), data.get("port")
    if not isinstance(host, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}", host):
        return None
    if not isinstance(port, int) or not 0 < port < 65536:
        return None
    return host, port


__all__ = [
    "PORT_PLACEHOLDER",
    "HOST_EXPRESSIONS",
    "HOST_MARKER",
    "build_container_script",
    "command_line",
    "quote_word",
    "parse_markers",
    "run_record",
    "instance_for_job",
    "read_run_record",
    "read_port_file",
    "port_file",
]
