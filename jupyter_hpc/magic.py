"""IPython magics: ``%%hpc`` runs a cell as a Slurm job inside an image; ``%hpc jobs`` lists jobs.

``%load_ext jupyter_hpc`` registers them. They talk to Slurm directly (no
Jupyter server needed) through the same submission code as the REST API
(:class:`jupyter_hpc.celljob.CellJobManager`), as the user the kernel runs as::

    %%hpc --image site:notebook.sif --partition gpu --gpus 1 --time 00:10:00 --wait
    import torch; print(torch.cuda.device_count())

Options: ``--image`` (id from the image catalog, or a path inside an allowed
image directory), ``--partition``, ``--gpus``, ``--cpus``, ``--mem``,
``--time``, ``--venv NAME`` (the user's venv ``~/.jupyter-hpc/venvs/NAME`` first on the path,
see :mod:`jupyter_hpc.venvs`), ``--exclusive`` (the whole node, for clean measurements; the job's run record
- node, CPU model, CPU counts, exclusive - is shown when it ends), ``--wait`` (show the outputs here when the job
runs; otherwise the job id is shown and ``%hpc output JOBID`` fetches them later).
The options line is taken literally (no IPython ``$name``/``{expr}`` expansion).
``%hpc build NAME --definition FILE | --sandbox DIR [--force] [--wait]`` builds a SIF into
``~/images`` as a job (:mod:`jupyter_hpc.builds`); ``%hpc venv create NAME --image IMAGE``,
``%hpc venv list``, ``%hpc venv remove NAME`` manage venvs (:mod:`jupyter_hpc.venvs`).
Line magic: ``%hpc jobs`` (own jobs, with the live vitals of running ones: CPU load,
memory now and peak, elapsed time of the limit, GPU use), ``%hpc stats JOBID`` (the
vitals of one job in detail), ``%hpc output JOBID``, ``%hpc cancel JOBID``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
import threading
import time
from typing import Any, Coroutine, Optional

from . import validate
from .validate import ValidationError

POLL_SECONDS = 0.5
#: Longest options line accepted (shlex needs time quadratic in the length of one word).
MAX_LINE = 8192


def _run_async(coro: Coroutine) -> Any:
    """Run a coroutine to completion from synchronous magic code.

    Inside a kernel an event loop is already running in this thread, so the
    coroutine runs on a private loop in a helper thread.
    """
    result: dict = {}

    def target():
        try:
            result["value"] = asyncio.run(coro)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            result["error"] = e

    thread = threading.Thread(target=target, name="jupyter-hpc-magic")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result.get("value")


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise ValidationError("options", message)


def cell_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="%%hpc", add_help=False)
    p.add_argument("--image", required=False)
    p.add_argument("--partition")
    p.add_argument("--gpus")
    p.add_argument("--cpus")
    p.add_argument("--mem", dest="memory")
    p.add_argument("--time")
    p.add_argument("--exclusive", action="store_true")
    p.add_argument("--venv")
    p.add_argument("--wait", action="store_true")
    return p


def build_parser() -> argparse.ArgumentParser:
    """``%hpc build NAME (--definition FILE | --sandbox DIR) [--force] [--fakeroot|--no-fakeroot] [--wait]``."""
    p = _Parser(prog="%hpc build", add_help=False)
    p.add_argument("name")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--definition")
    src.add_argument("--sandbox")
    p.add_argument("--force", action="store_true")
    p.add_argument("--fakeroot", action="store_true", default=None)
    p.add_argument("--no-fakeroot", dest="fakeroot", action="store_false")
    p.add_argument("--partition")
    p.add_argument("--time")
    p.add_argument("--wait", action="store_true")
    return p


def venv_parser() -> argparse.ArgumentParser:
    """``%hpc venv create NAME --image IMAGE`` / ``%hpc venv list`` / ``%hpc venv remove NAME``."""
    p = _Parser(prog="%hpc venv", add_help=False)
    p.add_argument("action", choices=["create", "list", "remove"])
    p.add_argument("name", nargs="?")
    p.add_argument("--image")
    return p


def check_line(line: str) -> str:
    if len(line) > MAX_LINE:
        raise ValidationError("options", f"the options line is longer than {MAX_LINE} characters")
    return line


def parse_cell_options(line: str) -> dict:
    """``%%hpc`` options as a request body (without ``code``)."""
    check_line(line)
    try:
        words = shlex.split(line)
    except ValueError as e:
        raise ValidationError("options", str(e)) from None
    ns = cell_parser().parse_args(words)
    body = {k: v for k, v in vars(ns).items() if v is not None and k != "wait"}
    if not ns.exclusive:
        body.pop("exclusive", None)
    return {"body": body, "wait": ns.wait}


class HPCMagicsRuntime:
    """Slurm/image clients and the cell-job manager used by the magics (one per kernel)."""

    def __init__(self, config=None):
        from .celljob import CellJobManager
        from .cluster import SlurmClient
        from .extension import current_username
        from .images import ImageCatalog
        from .runtime import ContainerRuntime

        self.username = current_username()
        kwargs = {"config": config} if config is not None else {}
        self.slurm = SlurmClient(run_as_user=False, **kwargs)
        self.catalog = ImageCatalog(**kwargs)
        self.runtime = ContainerRuntime(**kwargs)
        defaults = {"time": "00:30:00", "cpus": 1, "memory": "1G", "gpus": 0}
        self.cells = CellJobManager(slurm=self.slurm, catalog=self.catalog, username=self.username,
                                    default_resources=defaults, runtime=self.runtime)
        from .vitals import VitalsCollector

        self.vitals = VitalsCollector(self.slurm)

    async def own_jobs(self):
        jobs = await self.slurm.squeue(user=self.username)
        return sorted((j for j in jobs.values() if j.user == self.username),
                      key=lambda j: int(j.job_id.split("_")[0]))

    async def jobs_with_vitals(self):
        """``[(JobInfo, vitals dict or None)]``: vitals for the running jobs."""
        jobs = await self.own_jobs()
        running = [j for j in jobs if j.is_running]
        vitals = {v["job_id"]: v for v in await self.vitals.many(running)}
        return [(j, vitals.get(j.job_id)) for j in jobs]

    async def job_vitals(self, job_id: str):
        jobs = await self.slurm.squeue(job_ids=[job_id])
        info = jobs.get(job_id)
        if info is None:
            raise ValidationError("job id", f"job {job_id} is not known to Slurm")
        if info.user != self.username:
            raise ValidationError("job id", f"job {job_id} is not yours")
        return await self.vitals.vitals(info)


def _show_output(out: dict) -> None:
    from IPython.display import display

    kind = out.get("output_type")
    if kind == "stream":
        stream = sys.stderr if out.get("name") == "stderr" else sys.stdout
        stream.write(out.get("text", ""))
        stream.flush()
    elif kind in ("display_data", "execute_result"):
        display(out.get("data", {}), raw=True, metadata=out.get("metadata") or {})
    elif kind == "error":
        sys.stderr.write("\n".join(out.get("traceback") or [f"{out.get('ename')}: {out.get('evalue')}"]) + "\n")
        sys.stderr.flush()


def _print_new(path: str, offset: int) -> int:
    """Print what was appended to ``path`` since ``offset``; returns the new offset."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except OSError:
        return offset
    if data:
        sys.stdout.write(data.decode(errors="replace"))
        sys.stdout.flush()
    return offset + len(data)


def describe_run(run: dict) -> str:
    """One line from a run record: ``ran on vm (Intel Xeon, 32 of 32 CPUs allocated, exclusive)``."""
    excl = {True: "exclusive", False: "shared node", None: "exclusive: unknown"}[run.get("exclusive")]
    cpus = f"{run.get('alloc_cpus', '?')} of {run.get('node_cpus', '?')} CPUs allocated"
    return f"ran on {run.get('node', '?')} ({run.get('cpu_model', 'unknown CPU')}, {cpus}, {excl})"


def jobs_table(jobs_and_vitals) -> list:
    """Rows (header first) of ``%hpc jobs``: one per job, vitals columns for running jobs."""
    from .vitals import format_seconds, summary_line

    rows = [("JOBID", "NAME", "KIND", "STATE", "PARTITION", "NODES", "TIME/LIMIT", "CPU", "MEMORY (PEAK)", "GPU")]
    for j, v in jobs_and_vitals:
        kind = j.kind if j.kind in ("cell", "service", "kernel", "server", "build") else "other"
        if v is not None:
            cols = summary_line(v)
        else:
            limit = format_seconds(j.time_limit * 60) if j.time_limit else "unlimited"
            cols = {"time": f"{format_seconds(j.elapsed or 0)}/{limit}", "cpu": "", "memory": "", "gpu": ""}
        rows.append((j.job_id, j.name or "", kind, j.state, j.partition or "", j.nodes or "",
                     cols["time"], cols["cpu"], cols["memory"], cols["gpu"]))
    return rows


def _load_magics():
    from IPython.core.magic import Magics, line_cell_magic, magics_class, no_var_expand

    @magics_class
    class HPCMagics(Magics):
        """``%%hpc`` / ``%hpc``."""

        _runtime: Optional[HPCMagicsRuntime] = None

        @property
        def runtime(self) -> HPCMagicsRuntime:
            if self._runtime is None:
                self._runtime = HPCMagicsRuntime(config=getattr(self.shell, "config", None))
            return self._runtime

        # The options line is used as written: IPython's $var/{expr} expansion would change
        # values before they are validated, and its cost grows with the square of the length.
        @no_var_expand
        @line_cell_magic
        def hpc(self, line: str, cell: Optional[str] = None):
            try:
                if cell is None:
                    return self._line(line)
                return self._cell(line, cell)
            except ValidationError as e:
                print(f"%hpc: {e.field}: {e.message}", file=sys.stderr)
            except Exception as e:  # noqa: BLE001 - a magic reports errors instead of raising tracebacks
                print(f"%hpc: {type(e).__name__}: {e}", file=sys.stderr)

        def _cell(self, line: str, cell: str):
            opts = parse_cell_options(line)
            body = dict(opts["body"], code=cell)
            rt = self.runtime
            image = body.get("image")
            if isinstance(image, str) and "://" in image:
                self._pull(image)
            result = _run_async(rt.cells.submit(body, cwd=os.getcwd()))
            job_id = result["job_id"]
            if result.get("runtime") == "host":
                from .runtime import HOST_MESSAGE

                print(f"{HOST_MESSAGE}.", flush=True)
            print(f"Submitted cell job {job_id} (image {body.get('image')})", flush=True)
            if not opts["wait"]:
                state = _run_async(rt.cells.state(job_id, 0))
                print(f"job {job_id}: {state.state}. Outputs: %hpc output {job_id}", flush=True)
                return None
            return self._follow(job_id)

        def _pull(self, ref: str) -> None:
            """Bring a registry image into the cache (once; later runs find it there), with progress."""
            rt = self.runtime
            shown = {"last": ""}

            def report(fraction, message):
                text = f"{message} ({fraction:.0%})" if fraction is not None else message
                if text != shown["last"]:
                    shown["last"] = text
                    print(f"%hpc: {text}", flush=True)

            img = _run_async(rt.catalog.ensure(ref, rt.username, progress=report))
            if shown["last"]:
                print(f"%hpc: {ref} is in the image cache: {img.path}", flush=True)

        def _follow(self, job_id: str):
            rt = self.runtime
            since, last_state = 0, None
            while True:
                state = _run_async(rt.cells.state(job_id, since))
                if state.state != last_state and not state.done:
                    where = f" on {state.node}" if state.node else ""
                    reason = f" ({state.reason})" if state.reason and state.state == "PENDING" else ""
                    print(f"job {job_id}: {state.state}{where}{reason}", flush=True)
                    last_state = state.state
                for out in state.outputs:
                    _show_output(out)
                since = state.next
                if state.done:
                    print(f"job {job_id}: {state.state}", flush=True)
                    if state.run:
                        print(f"job {job_id}: {describe_run(state.run)}", flush=True)
                    return None
                time.sleep(POLL_SECONDS)

        def _line(self, line: str):
            words = shlex.split(check_line(line))
            if not words or words[0] == "jobs":
                return self._jobs()
            if words[0] == "stats" and len(words) == 2:
                from .vitals import describe

                v = _run_async(self.runtime.job_vitals(validate.job_id(words[1])))
                print("\n".join(describe(v)))
                return None
            if words[0] == "build":
                return self._build(words[1:])
            if words[0] == "venv":
                return self._venv(words[1:])
            if words[0] in ("output", "cancel") and len(words) == 2:
                job_id = validate.job_id(words[1])
                if words[0] == "output":
                    return self._follow(job_id)
                _run_async(self.runtime.cells.cancel(job_id))
                print(f"job {job_id}: cancel requested")
                return None
            print("usage: %hpc jobs | %hpc stats JOBID | %hpc output JOBID | %hpc cancel JOBID | "
                  "%hpc build NAME --definition FILE|--sandbox DIR [--wait] | "
                  "%hpc venv create NAME --image IMAGE|list|remove NAME | "
                  "%%hpc --image IMAGE [options]", file=sys.stderr)
            return None

        def _build(self, words):
            from . import builds

            ns = build_parser().parse_args(words)
            rt = self.runtime
            body = {"name": ns.name, "force": ns.force, "fakeroot": ns.fakeroot, "partition": ns.partition,
                    "time": ns.time}
            for key in ("definition", "sandbox"):
                value = getattr(ns, key)
                if value:
                    body[key] = os.path.join(os.getcwd(), value)
            result = _run_async(builds.submit(rt.cells, body, [rt.cells.home], apptainer=rt.catalog.apptainer))
            print(f"Submitted build of {result['image']} as job {result['job_id']} (log: {result['log']})", flush=True)
            if not ns.wait:
                return None
            offset = 0
            while True:
                info = _run_async(rt.slurm.squeue(job_ids=[result["job_id"]])).get(result["job_id"])
                offset = _print_new(result["log"], offset)
                if info is None or info.is_finished:
                    offset = _print_new(result["log"], offset)
                    print(f"job {result['job_id']}: {info.state if info else 'ENDED'}", flush=True)
                    return None
                time.sleep(POLL_SECONDS * 2)

        def _venv(self, words):
            from . import venvs

            ns = venv_parser().parse_args(words)
            rt = self.runtime
            home = rt.cells.home
            if ns.action == "list":
                for v in venvs.list_venvs(home):
                    print(f"{v['name']}  {v['path']}  image={v['image'] or '?'}  python={v['python'] or '?'}")
                return None
            if not ns.name:
                raise ValidationError("venv", "a name is required")
            if ns.action == "remove":
                venvs.remove(home, ns.name)
                print(f"Removed venv {ns.name}")
                return None
            if not ns.image:
                raise ValidationError("image", "--image IMAGE is required")

            async def create():
                img = await rt.cells.resolve_image(ns.image)
                mode = await rt.cells.runtime_mode()
                return await venvs.create(home, ns.name, img.id, img.path, apptainer=rt.catalog.apptainer,
                                          python=rt.cells.image_python, runtime=mode)

            info = _run_async(create())
            print(f"Created venv {info['name']} in {info['path']} (Python {info['python'] or '?'}); "
                  f"use it with %%hpc --venv {info['name']}")
            return None

        def _jobs(self):
            rows = jobs_table(_run_async(self.runtime.jobs_with_vitals()))
            widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
            for r in rows:
                print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
            return None

    return HPCMagics


def load_ipython_extension(ipython) -> None:
    ipython.register_magics(_load_magics())
