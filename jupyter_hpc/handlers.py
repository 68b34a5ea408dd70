"""REST API of the jupyter-hpc server extension (``{base_url}jupyter-hpc/api/...``).

Described normatively by ``docs/openapi.yaml``. Every handler is an
authenticated, authorized :class:`APIHandler`; errors are JSON
``{"message": ..., "field": ...}`` with real status codes (400 invalid value,
403 not the caller's job, 404 unknown, 503 Slurm unreachable).

The server runs as the user, so "the caller's jobs" are the jobs of the user
this process runs as; no path is ever taken from a request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import time
from typing import Any, Dict, Optional

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from tornado import web

from . import validate
from .celljob import NotFound
from .cluster import SlurmError, SlurmRequestError, SlurmUnavailable
from .slurm import JobInfo
from .validate import ValidationError

API = "jupyter-hpc/api"
AUTH_RESOURCE = "jupyter_hpc"
JOB_ID = r"(?P<job_id>[^/]+)"
JOB_KINDS = ("cell", "service", "kernel", "server", "build")


class ApiError(web.HTTPError):
    """An error answer with a message and the offending field."""

    def __init__(self, status: int, message: str, field: Optional[str] = None):
        super().__init__(status, message.replace("%", "%%"))
        self.message = message
        self.field = field


class HPCHandler(APIHandler):
    """Common base: JSON errors, access to the extension, error mapping."""

    auth_resource = AUTH_RESOURCE

    @property
    def ext(self):
        return self.settings["jupyter_hpc"]

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.set_header("Content-Type", "application/json")
        exc = kwargs.get("exc_info", (None, None, None))[1]
        reply: Dict[str, Any] = {"message": self._reason, "field": None}
        if isinstance(exc, ApiError):
            reply = {"message": exc.message, "field": exc.field}
        elif isinstance(exc, web.HTTPError) and exc.log_message:
            reply["message"] = exc.log_message % exc.args if exc.args else exc.log_message
        elif exc is not None and status_code >= 500:
            reply["message"] = "internal error; see the server log"
        self.finish(json.dumps(reply))

    def json_body(self) -> Dict[str, Any]:
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            raise ApiError(400, "the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        return body

    def reply(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data, default=str))

    async def call(self, coro):
        """Await ``coro`` and turn known errors into API errors."""
        try:
            return await coro
        except ValidationError as e:
            raise ApiError(400, e.message, e.field) from None
        except SlurmRequestError as e:
            raise ApiError(400, e.message or str(e), e.field or None) from None
        except SlurmUnavailable as e:
            self.log.warning("Slurm unavailable: %s", e)
            raise ApiError(503, "Slurm is not answering; try again later") from None
        except SlurmError as e:
            self.log.error("Slurm command failed: %s", e)
            raise ApiError(502, f"Slurm command failed: {(e.stderr or e.reason or '').strip()[:500]}") from None

    def job_id_arg(self, job_id: str) -> str:
        try:
            return validate.job_id(job_id)
        except ValidationError as e:
            raise ApiError(400, e.message, "job_id") from None

    async def own_job(self, job_id: str) -> JobInfo:
        """The job if it exists and is the caller's: 404 unknown, 403 someone else's."""
        jobs = await self.call(self.ext.slurm.squeue(job_ids=[job_id]))
        info = jobs.get(job_id)
        if info is None:
            raise ApiError(404, f"job {job_id} is not known to Slurm", "job_id")
        if info.user != self.ext.username:
            raise ApiError(403, f"job {job_id} is not yours", "job_id")
        return info


def job_kind(info: JobInfo) -> str:
    kind = info.kind
    return kind if kind in JOB_KINDS else "other"


def job_dict(info: JobInfo) -> Dict[str, Any]:
    meta = info.meta
    return {
        "id": info.job_id,
        "name": info.name,
        "kind": job_kind(info),
        "state": info.state,
        "reason": info.reason,
        "nodes": info.nodes,
        "partition": info.partition,
        "elapsed": info.elapsed,
        "time_limit": info.time_limit,
        "start_time": info.start_time,
        "gpus": info.gpu_count,
        "image": meta.get("image"),
    }


def image_dict(image: Any) -> Dict[str, Any]:
    if hasattr(image, "to_dict"):
        data = image.to_dict()
    else:
        data = dataclasses.asdict(image)
    keys = ("id", "name", "title", "description", "format", "path", "ref", "size", "gpu", "labels", "apps",
            "owner", "pulled", "runtime")
    return {k: data.get(k) for k in keys}


# -- images ---------------------------------------------------------------------------------


class ImagesHandler(HPCHandler):
    @web.authenticated
    @authorized
    async def get(self):
        images = await self.call(self.ext.catalog.list_images(self.ext.username))
        q = (self.get_query_argument("q", "") or "").lower()
        out = []
        for img in images:
            d = image_dict(img)
            text = " ".join(str(d.get(k) or "") for k in ("id", "name", "title", "description", "ref")).lower()
            if not q or q in text:
                out.append(d)
        runtime = await self.ext.cells.runtime_info()
        self.reply({"images": out, "runtime": runtime.to_dict() if runtime is not None else None})


class ImageHandler(HPCHandler):
    @web.authenticated
    @authorized
    async def get(self, image_id: str):
        if len(image_id) > 512 or any(ord(c) < 32 for c in image_id):
            raise ApiError(400, "invalid image id", "image")
        try:
            img = await self.ext.catalog.resolve(image_id, self.ext.username)
        except ValidationError as e:
            raise ApiError(404, f"unknown image: {e.message}", "image") from None
        except (LookupError, OSError, ValueError):
            raise ApiError(404, f"unknown image {image_id[:100]!r}", "image") from None
        d = image_dict(img)
        d["def_file"] = None
        definition = getattr(self.ext.catalog, "definition", None)
        if definition is not None:
            try:
                d["def_file"] = await definition(img)
            except (LookupError, OSError, SlurmError, ValueError) as e:
                self.log.debug("no definition file for %s: %s", img.id, e)
        self.reply(d)


def pull_dict(pull: Dict[str, Any]) -> Dict[str, Any]:
    return {k: pull.get(k) for k in ("ref", "state", "progress", "message", "image_id")}


class PullHandler(HPCHandler):
    @web.authenticated
    @authorized
    async def post(self):
        if not self.ext.allow_pull:
            raise ApiError(403, "pulling images is disabled on this site")
        body = self.json_body()
        ref = body.get("ref")
        try:
            from .apptainer import check_ref

            ref = check_ref(ref)
        except ValidationError as e:
            raise ApiError(400, e.message, "ref") from None
        pulls = self.ext.pulls
        current = pulls.get(ref)
        if current is None or current["state"] != "pulling":
            current = {"ref": ref, "state": "pulling", "progress": None, "message": "", "image_id": None,
                       "started": time.time()}
            pulls[ref] = current
            current["task"] = asyncio.ensure_future(run_pull(self.ext, current))
        self.reply(pull_dict(current), 202)


async def run_pull(ext, entry: Dict[str, Any]) -> None:
    """Pull ``entry["ref"]`` with the extension's catalog, keeping ``entry`` up to date."""

    def progress(value=None, message=None, **kwargs):
        if isinstance(value, (int, float)):
            entry["progress"] = max(0.0, min(1.0, float(value)))
        if message:
            entry["message"] = str(message)[:500]

    try:
        image = await ext.catalog.pull(entry["ref"], ext.username, progress=progress)
    except ValidationError as e:
        entry.update(state="error", message=e.message)
    except Exception as e:  # noqa: BLE001 - the error is reported to the user through the pull state
        ext.log.warning("pull of %s failed: %s", entry["ref"], e)
        entry.update(state="error", message=str(getattr(e, "message", e))[-1000:])
    else:
        entry.update(state="done", progress=1.0, image_id=image.id, message="")


class PullsHandler(HPCHandler):
    @web.authenticated
    @authorized
    async def get(self):
        self.reply({"pulls": [pull_dict(p) for p in self.ext.pulls.values()]})


# -- partitions and jobs -------------------------------------------------------------------


class PartitionsHandler(HPCHandler):
    @web.authenticated
    @authorized
    async def get(self):
        parts = await self.call(self.ext.slurm.partitions())
        allowed = self.ext.allowed_partitions
        out = []
        for p in parts:
            if allowed and p.name not in allowed:
                continue
            out.append({k: v for k, v in p.to_dict().items()
                        if k in ("name", "default", "state", "nodes", "cpus", "memory_mb", "max_time_minutes",
                                 "gpus")})
        self.reply({"partitions": out})


class JobsHandler(HPCHandler):
    @web.authenticated
    @authorized
    async def get(self):
        jobs = await self.call(self.ext.slurm.squeue(user=self.ext.username))
        own = [job_dict(j) for j in jobs.values() if j.user == self.ext.username]
        self.reply({"jobs": own})


class JobHandler(HPCHandler):
    @web.authenticated
    @authorized
    async def get(self, job_id: str):
        job_id = self.job_id_arg(job_id)
        self.reply(job_dict(await self.own_job(job_id)))

    @web.authenticated
    @authorized
    async def delete(self, job_id: str):
        job_id = self.job_id_arg(job_id)
        info = await self.own_job(job_id)
        if not info.is_finished:
            await self.call(self.ext.slurm.cancel(job_id))
        self.ext.cells.forget(job_id)
        self.reply({"job_id": job_id, "state": info.state if info.is_finished else "CANCELLING"}, 202)


class JobOutputHandler(HPCHandler):
    @web.authenticated
    @authorized
    async def get(self, job_id: str):
        job_id = self.job_id_arg(job_id)
        stream = self.get_query_argument("stream", "stdout", strip=False)
        if stream not in ("stdout", "stderr"):
            raise ApiError(400, "stream must be stdout or stderr", "stream")
        try:
            offset = validate.integer(self.get_query_argument("offset", "0", strip=False), "offset", 0, 2**53)
        except ValidationError as e:
            raise ApiError(400, e.message, "offset") from None
        path = await self._path(job_id, stream)
        max_bytes = self.ext.max_output_bytes
        try:
            with open(path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(min(offset, size))
                chunk = f.read(max_bytes)
        except FileNotFoundError:
            size, chunk = 0, b""
        except (IsADirectoryError, PermissionError):
            raise ApiError(404, f"the {stream} of job {job_id} cannot be read", "stream") from None
        # Do not split a UTF-8 sequence: keep an incomplete tail for the next call.
        text, used = _decode_prefix(chunk)
        new_offset = min(offset, size) + used
        running = await self._running(job_id)
        self.reply({"data": text, "offset": new_offset, "eof": new_offset >= size and not running})

    async def _path(self, job_id: str, stream: str) -> str:
        name = "slurm.out" if stream == "stdout" else "slurm.err"
        try:
            return os.path.join(self.ext.cells.job_dir(job_id), name)
        except NotFound:
            pass
        if self.ext.services.record(job_id) is not None:
            return os.path.join(self.ext.services.services_dir, f"{job_id}.{'out' if stream == 'stdout' else 'err'}")
        info = await self.own_job(job_id)
        path = info.stdout if stream == "stdout" else (info.stderr or info.stdout)
        if not path or not path.startswith("/"):
            raise ApiError(404, f"Slurm reports no {stream} file for job {job_id}", "stream")
        return path.replace("%j", job_id).replace("%u", self.ext.username)

    async def _running(self, job_id: str) -> bool:
        jobs = await self.call(self.ext.slurm.squeue(job_ids=[job_id]))
        info = jobs.get(job_id)
        return bool(info and info.user == self.ext.username and not info.is_finished)


def _decode_prefix(data: bytes):
    for cut in range(0, 4):
        end = len(data) - cut
        if end < 0:
            break
        try:
            return data[:end].decode("utf-8"), end
        except UnicodeDecodeError as e:
            if e.start < end - 4:  # invalid in the middle: not a cut sequence
                return data.decode("utf-8", errors="replace"), len(data)
    return data.decode("utf-8", errors="replace"), len(data)


class JobStatsHandler(HPCHandler):
    """Live vitals of one of the caller's jobs (CPU, memory, time, GPUs; unavailable parts say why)."""

    @web.authenticated
    @authorized
    async def get(self, job_id: str):
        job_id = self.job_id_arg(job_id)
        info = await self.own_job(job_id)
        self.reply(await self.call(self.ext.vitals.vitals(info)))


class VitalsHandler(HPCHandler):
    """Vitals of all the caller's running jobs in one answer (what the sidebar polls)."""

    @web.authenticated
    @authorized
    async def get(self):
        jobs = await self.call(self.ext.slurm.squeue(user=self.ext.username))
        running = [j for j in jobs.values() if j.user == self.ext.username and j.is_running]
        running.sort(key=lambda j: int(j.job_id.split("_")[0]))
        vitals = await self.call(self.ext.vitals.many(running))
        self.reply({"jobs": vitals, "sampled_at": time.time()})


# -- cells ------------------------------------------------------------------------------------


class CellsHandler(HPCHandler):
    @web.authenticated
    @authorized
    async def post(self):
        body = self.json_body()
        code = body.get("code")
        if isinstance(code, str) and len(code.encode()) > self.ext.max_code_bytes:
            raise ApiError(400, f"the code is larger than {self.ext.max_code_bytes} bytes", "code")
        root = self.settings.get("server_root_dir") or self.ext.serverapp.root_dir
        try:
            cwd = self.ext.cells.resolve_cwd(body.get("cwd"), os.path.expanduser(root))
        except ValidationError as e:
            raise ApiError(400, e.message, e.field) from None
        result = await self.call(self.ext.cells.submit(body, cwd=cwd))
        self.reply({"job_id": result["job_id"], "runtime": result["runtime"]}, 201)


class CellHandler(HPCHandler):
    @web.authenticated
    @authorized
    async def get(self, job_id: str):
        job_id = self.job_id_arg(job_id)
        try:
            since = validate.integer(self.get_query_argument("since", "0", strip=False), "since", 0, 10**9)
        except ValidationError as e:
            raise ApiError(400, e.message, "since") from None
        try:
            state = await self.call(self.ext.cells.state(job_id, since))
        except NotFound as e:
            raise ApiError(404, str(e), "job_id") from None
        self.reply(state.to_dict())

    @web.authenticated
    @authorized
    async def delete(self, job_id: str):
        job_id = self.job_id_arg(job_id)
        try:
            await self.call(self.ext.cells.cancel(job_id))
        except NotFound as e:
            raise ApiError(404, str(e), "job_id") from None
        self.reply({"job_id": job_id, "state": "CANCELLING"}, 202)


# -- services ---------------------------------------------------------------------------------


class ServicesHandler(HPCHandler):
    @web.authenticated
    @authorized
    async def get(self):
        self.reply({"services": await self.call(self.ext.services.list())})

    @web.authenticated
    @authorized
    async def post(self):
        body = self.json_body()
        service = await self.call(self.ext.services.start(body))
        self.reply(service, 201)


class ServiceHandler(HPCHandler):
    @web.authenticated
    @authorized
    async def get(self, job_id: str):
        job_id = self.job_id_arg(job_id)
        try:
            self.reply(await self.call(self.ext.services.get(job_id)))
        except LookupError as e:
            raise ApiError(404, str(e), "job_id") from None

    @web.authenticated
    @authorized
    async def delete(self, job_id: str):
        job_id = self.job_id_arg(job_id)
        try:
            await self.call(self.ext.services.stop(job_id))
        except LookupError as e:
            raise ApiError(404, str(e), "job_id") from None
        from .proxy import forget_target

        forget_target(self.settings, job_id)
        await self._end_share(job_id)
        self.reply({"job_id": job_id, "state": "CANCELLING"}, 202)

    async def _end_share(self, job_id: str) -> None:
        """Revoke a share of the stopped service at once (the share service also notices the job end)."""
        if self.ext.sharing.static_reason():
            return
        try:
            await self.ext.sharing.delete(job_id)
        except Exception as e:  # noqa: BLE001 - the share ends with the job anyway
            self.log.info("could not revoke the share of service %s now: %s", job_id, e)


# -- sharing ---------------------------------------------------------------------------------


class SharingMixin:
    async def shares_call(self, coro):
        from .sharing import ShareServiceError, SharingUnavailable

        try:
            return await coro
        except SharingUnavailable as e:
            raise ApiError(501, str(e)) from None
        except ShareServiceError as e:
            raise ApiError(e.status, e.message, e.field) from None
        except ValidationError as e:
            raise ApiError(400, e.message, e.field) from None


class SharingHandler(SharingMixin, HPCHandler):
    """Whether services can be shared here (JupyterHub with the jupyter-hpc-share service)."""

    @web.authenticated
    @authorized
    async def get(self):
        self.reply(await self.ext.sharing.status(fresh=self.get_query_argument("fresh", "") == "1"))


class SharesHandler(SharingMixin, HPCHandler):
    """The caller's shares and the services others share with the caller."""

    @web.authenticated
    @authorized
    async def get(self):
        data = await self.shares_call(self.ext.sharing.list())
        self.reply(data)


class ServiceSharesHandler(SharingMixin, HPCHandler):
    """Share one of the caller's services with hub users and groups, list and revoke."""

    def _service(self, job_id: str) -> dict:
        reason = self.ext.sharing.static_reason()
        if reason:
            raise ApiError(501, reason)
        rec = self.ext.services.record(job_id)
        if rec is None:
            raise ApiError(404, f"job {job_id} is not a service of {self.ext.username}", "job_id")
        return rec

    @web.authenticated
    @authorized
    async def get(self, job_id: str):
        from .sharing import share_dict

        job_id = self.job_id_arg(job_id)
        rec = self._service(job_id)
        share = await self.shares_call(self.ext.sharing.get(job_id))
        self.reply(share_dict(job_id, self.ext.username, share, rec.get("name")))

    @web.authenticated
    @authorized
    async def put(self, job_id: str):
        from .sharing import share_dict, share_request

        job_id = self.job_id_arg(job_id)
        rec = self._service(job_id)
        try:
            users, groups = share_request(self.json_body())
        except ValidationError as e:
            raise ApiError(400, e.message, e.field) from None
        share = await self.shares_call(self.ext.sharing.put(job_id, users, groups))
        self.log.info("service %s shared with users %s, groups %s", job_id, users, groups)
        self.reply(share_dict(job_id, self.ext.username, share, rec.get("name")))

    @web.authenticated
    @authorized
    async def delete(self, job_id: str):
        from .sharing import share_dict

        job_id = self.job_id_arg(job_id)
        rec = self._service(job_id)
        if not await self.shares_call(self.ext.sharing.delete(job_id)):
            raise ApiError(404, f"service {job_id} is not shared", "job_id")
        self.log.info("share of service %s revoked", job_id)
        self.reply(share_dict(job_id, self.ext.username, None, rec.get("name")))


class ServiceInstanceHandler(HPCHandler):
    """The Apptainer instance a service job runs in (``apptainer instance list`` inside the job)."""

    @web.authenticated
    @authorized
    async def get(self, job_id: str):
        job_id = self.job_id_arg(job_id)
        try:
            self.reply(await self.call(self.ext.services.instance(job_id)))
        except LookupError as e:
            raise ApiError(404, str(e), "job_id") from None


# -- image builds -----------------------------------------------------------------------------


class BuildsHandler(HPCHandler):
    """Build a SIF into the user's image directory from a definition file or a sandbox, as a job."""

    @web.authenticated
    @authorized
    async def post(self):
        from . import builds

        body = self.json_body()
        root = os.path.realpath(os.path.expanduser(self.settings.get("server_root_dir") or self.ext.serverapp.root_dir))
        try:
            result = await self.call(builds.submit(self.ext.cells, body, [root], apptainer=self.ext.catalog.apptainer))
        except FileExistsError as e:
            raise ApiError(409, str(e), "name") from None
        self.log.info("image build %s submitted as job %s", result["image"], result["job_id"])
        self.reply(result, 201)


# -- venvs ------------------------------------------------------------------------------------


class VenvsHandler(HPCHandler):
    """The user's Python venvs layered on an image (``~/.jupyter-hpc/venvs``)."""

    @web.authenticated
    @authorized
    async def get(self):
        from . import venvs

        self.reply({"venvs": venvs.list_venvs(self.ext.cells.home)})

    @web.authenticated
    @authorized
    async def post(self):
        from . import venvs

        body = self.json_body()
        try:
            name = venvs.venv_name(body.get("name"))
        except ValidationError as e:
            raise ApiError(400, e.message, "name") from None
        image = await self.call(self.ext.cells.resolve_image(body.get("image")))
        if os.path.lexists(os.path.join(venvs.venv_root(self.ext.cells.home), name)):
            raise ApiError(409, f"a venv {name!r} exists already", "name")
        mode = await self.ext.cells.runtime_mode(image)
        info = await self.call(venvs.create(
            self.ext.cells.home, name, image.id, image.path, apptainer=self.ext.catalog.apptainer,
            python=self.ext.image_python, runtime=mode, timeout=self.ext.venv_create_timeout,
        ))
        self.log.info("venv %s created from image %s", name, image.id)
        self.reply(info, 201)


class VenvHandler(HPCHandler):
    @web.authenticated
    @authorized
    async def get(self, name: str):
        self.reply(self._describe(name))

    @web.authenticated
    @authorized
    async def delete(self, name: str):
        from . import venvs

        self._describe(name)
        await asyncio.get_running_loop().run_in_executor(None, venvs.remove, self.ext.cells.home, name)
        self.set_status(204)
        self.finish()

    def _describe(self, name: str) -> Dict[str, Any]:
        from . import venvs

        try:
            venvs.venv_name(name)
        except ValidationError as e:
            raise ApiError(400, e.message, "name") from None
        try:
            return venvs.describe(self.ext.cells.home, name)
        except ValidationError as e:
            raise ApiError(404, e.message, "name") from None


def handlers():
    """URL patterns relative to the server's base URL."""
    return [
        (rf"/{API}/images", ImagesHandler),
        (rf"/{API}/images/pull", PullHandler),
        (rf"/{API}/images/pulls", PullsHandler),
        (rf"/{API}/images/(?P<image_id>[^/]+)", ImageHandler),
        (rf"/{API}/partitions", PartitionsHandler),
        (rf"/{API}/jobs", JobsHandler),
        (rf"/{API}/jobs/{JOB_ID}", JobHandler),
        (rf"/{API}/jobs/{JOB_ID}/output", JobOutputHandler),
        (rf"/{API}/jobs/{JOB_ID}/stats", JobStatsHandler),
        (rf"/{API}/vitals", VitalsHandler),
        (rf"/{API}/sharing", SharingHandler),
        (rf"/{API}/shares", SharesHandler),
        (rf"/{API}/cells", CellsHandler),
        (rf"/{API}/cells/{JOB_ID}", CellHandler),
        (rf"/{API}/services", ServicesHandler),
        (rf"/{API}/services/{JOB_ID}", ServiceHandler),
        (rf"/{API}/services/{JOB_ID}/shares", ServiceSharesHandler),
        (rf"/{API}/services/{JOB_ID}/instance", ServiceInstanceHandler),
        (rf"/{API}/builds", BuildsHandler),
        (rf"/{API}/venvs", VenvsHandler),
        (rf"/{API}/venvs/(?P<name>[^/]+)", VenvHandler),
    ]
