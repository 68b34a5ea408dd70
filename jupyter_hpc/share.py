"""``jupyter-hpc-share``: a JupyterHub service that shares the web UI of a running service job.

The owner of a service job (started with ``POST services`` of the server extension)
shares its web UI with named hub users and hub groups. A person it is shared with
opens ``{hub}/services/jupyter-hpc-share/<owner>/<job_id>/`` with their own hub
login (JupyterHub OAuth) and reaches that one job's registered ``node:port`` - never
the owner's notebook server, files or other jobs.

Run it as a JupyterHub *managed service* (the hub starts it with its API token and
OAuth client in the environment)::

    c.JupyterHub.services = [{
        "name": "jupyter-hpc-share",
        "url": "http://127.0.0.1:10101",
        "command": [sys.executable, "-m", "jupyter_hpc.share"],
        "user": "jupyterhub-share",      # any account that may run squeue
        "oauth_no_confirm": True,
    }]

See ``docs/sharing.md`` for the roles and scopes it needs. What it does:

- **Shares** are registered by the owner's single-user server (the server extension
  calls ``PUT {prefix}api/shares/<job_id>`` with the server's own hub API token). The
  token identifies the owner; the service then checks with ``squeue`` that the job is
  that user's, RUNNING, marked ``kind=service`` in its comment and has registered a
  host that is its own node. Users and groups are checked against the hub.
- **Visits** (``{prefix}<owner>/<job_id>/<path>``, HTTP and websockets) need a hub
  login with access to this service; the visitor must be the owner, a listed user or
  a member of a listed group (group members are asked from the hub). The target is
  always the ``host:port`` Slurm reports for the job, re-checked every
  :attr:`ShareService.target_cache_seconds`. The visitor's hub credentials (the
  ``Authorization`` header, ``?token=``, the hub's and this service's cookies) are not
  forwarded; cookies the web UI sets are confined to its own share path.
- **Ends**: revoking removes the share at once; a sweep every
  :attr:`ShareService.sweep_interval` seconds (and every visit) drops shares whose job
  no longer runs.
- **Logging**: every visit (allowed or refused) is logged with the visitor's hub user
  name on the ``jupyter_hpc.share.access`` logger (the hub's log for a managed service).

The proxying itself is jupyter-server-proxy's :class:`ProxyHandler`, mixed with
JupyterHub's :class:`HubOAuthenticated` as in jupyter-server-proxy's standalone proxy.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple
from urllib.parse import parse_qsl, quote, urlencode

from jupyter_server_proxy.handlers import ProxyHandler
from jupyterhub.services.auth import HubOAuthCallbackHandler, HubOAuthenticated, UserNotAllowed
from tornado import httpclient, web
from tornado.websocket import WebSocketHandler
from traitlets import Bool, Float, Integer, Unicode, default
from traitlets.config import Application

from . import validate
from ._version import __version__
from .sharing import group_name, share_request  # noqa: F401 - part of this module's API
from .slurm import JobInfo
from .validate import ValidationError

SERVICE_NAME = "jupyter-hpc-share"
access_log = logging.getLogger("jupyter_hpc.share.access")


# ---------------------------------------------------------------------------------------------
# pure parts: the store, the job check, header and cookie handling
# ---------------------------------------------------------------------------------------------


@dataclass
class Share:
    owner: str
    job_id: str
    users: List[str] = field(default_factory=list)
    groups: List[str] = field(default_factory=list)
    name: Optional[str] = None
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)

    def to_dict(self, prefix: str) -> Dict[str, Any]:
        d = asdict(self)
        d["url"] = share_url(prefix, self.owner, self.job_id)
        return d


def share_url(prefix: str, owner: str, job_id: str) -> str:
    return f"{prefix}{quote(owner)}/{quote(job_id)}/"


class ShareStore:
    """Shares by ``(owner, job_id)``; optionally kept in a JSON file (mode 0600)."""

    def __init__(self, path: str = ""):
        self.path = path
        self._shares: Dict[Tuple[str, str], Share] = {}

    def get(self, owner: str, job_id: str) -> Optional[Share]:
        return self._shares.get((owner, job_id))

    def set(self, owner: str, job_id: str, users: Iterable[str], groups: Iterable[str],
            name: Optional[str] = None) -> Share:
        share = self._shares.get((owner, job_id))
        if share is None:
            share = Share(owner=owner, job_id=job_id, name=name)
            self._shares[(owner, job_id)] = share
        share.users = sorted(set(users))
        share.groups = sorted(set(groups))
        share.name = name or share.name
        share.updated = time.time()
        self.save()
        return share

    def remove(self, owner: str, job_id: str) -> Optional[Share]:
        share = self._shares.pop((owner, job_id), None)
        if share is not None:
            self.save()
        return share

    def all(self) -> List[Share]:
        return list(self._shares.values())

    def of_owner(self, owner: str) -> List[Share]:
        return sorted((s for s in self._shares.values() if s.owner == owner), key=lambda s: int(s.job_id.split("_")[0]))

    def load(self) -> None:
        if not self.path:
            return
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            logging.getLogger(__name__).warning("ignoring unreadable share state %s: %s", self.path, e)
            return
        for item in data.get("shares", []) if isinstance(data, dict) else []:
            try:
                owner = validate.username(item["owner"])
                job_id = validate.job_id(item["job_id"])
                users, groups = share_request({"users": item.get("users") or [], "groups": item.get("groups") or []})
            except (KeyError, TypeError, ValidationError):
                continue
            share = Share(owner=owner, job_id=job_id, users=users, groups=groups,
                          name=item.get("name") if isinstance(item.get("name"), str) else None,
                          created=float(item.get("created") or time.time()),
                          updated=float(item.get("updated") or time.time()))
            self._shares[(owner, job_id)] = share

    def save(self) -> None:
        if not self.path:
            return
        tmp = f"{self.path}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "w", encoding="utf-8") as f:
            json.dump({"shares": [asdict(s) for s in self._shares.values()]}, f)
        os.replace(tmp, self.path)


def service_target(info: Optional[JobInfo], owner: str) -> Tuple[Optional[Tuple[str, int]], str]:
    """``((host, port), "")`` when ``info`` is a running service job of ``owner`` with a registered
    endpoint on its own node, else ``(None, reason)``."""
    if info is None:
        return None, "Slurm does not know this job (any more)"
    if info.user != owner:
        return None, "the job does not belong to this user"
    if info.kind != "service":
        return None, "the job is not a jupyter-hpc service"
    if not info.is_running:
        return None, f"the job is not running ({info.state})"
    endpoint, node = info.endpoint, info.node
    if endpoint is None or not node:
        return None, "the service has not registered its port yet"
    host, port = endpoint
    if host.split(".")[0] != node.split(".")[0]:
        return None, "the job registered a host that is not its node"
    return (host, port), ""


def may_visit(share: Optional[Share], visitor: str, owner: str, member_of: Set[str]) -> bool:
    """Whether ``visitor`` (member of ``member_of`` among the share's groups) may open the share."""
    if visitor == owner:
        return True
    if share is None:
        return False
    return visitor in share.users or bool(member_of & set(share.groups))


def strip_credentials(headers, own_cookie_names: Iterable[str]) -> None:
    """Remove the visitor's hub credentials from request headers (in place)."""
    for name in ("Authorization", "Proxy-Authorization"):
        if name in headers:
            del headers[name]
    cookie = headers.get("Cookie")
    if cookie is None:
        return
    own = set(own_cookie_names)
    kept = []
    for part in cookie.split(";"):
        name = part.split("=", 1)[0].strip()
        if not name:
            continue
        bare = name[len("__Host-"):] if name.startswith("__Host-") else name
        if name in own or bare in own or bare == "_xsrf" or bare.startswith(("jupyterhub-", "service-")):
            continue
        kept.append(part.strip())
    del headers["Cookie"]
    if kept:
        headers["Cookie"] = "; ".join(kept)


def strip_token_query(query: str) -> str:
    """The query string without ``token=`` (a hub token in the URL is never forwarded)."""
    if not query:
        return ""
    pairs = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k != "token"]
    return urlencode(pairs)


def confine_cookie(set_cookie: str, path_prefix: str) -> str:
    """Rewrite one ``Set-Cookie`` value so the cookie lives below ``path_prefix`` only.

    ``Path=/x`` becomes ``Path=<prefix>/x``; ``Domain`` is dropped (host-only cookie).
    """
    parts = [p.strip() for p in set_cookie.split(";")]
    if not parts or "=" not in parts[0]:
        return set_cookie
    out = [parts[0]]
    path = "/"
    for attr in parts[1:]:
        key = attr.split("=", 1)[0].strip().lower()
        if key == "path":
            path = attr.split("=", 1)[1].strip() if "=" in attr else "/"
            continue
        if key == "domain":
            continue
        out.append(attr)
    if not path.startswith("/"):
        path = "/" + path
    out.append("Path=" + path_prefix.rstrip("/") + path)
    return "; ".join(out)


# ---------------------------------------------------------------------------------------------
# the service
# ---------------------------------------------------------------------------------------------


class ShareService(Application):
    """JupyterHub service sharing web UIs of running jupyter-hpc service jobs."""

    name = SERVICE_NAME
    version = __version__
    description = __doc__

    aliases = {
        "ip": "ShareService.ip",
        "port": "ShareService.port",
        "state-file": "ShareService.state_file",
        "config": "ShareService.config_file",
        "log-level": "Application.log_level",
    }

    @default("log_level")
    def _default_log_level(self):
        return logging.INFO

    config_file = Unicode("", help="Python configuration file to load (traitlets `c.ShareService.*`).").tag(config=True)

    ip = Unicode(help="Address to listen on. Default: the host of $JUPYTERHUB_SERVICE_URL, else 127.0.0.1.").tag(config=True)

    @default("ip")
    def _default_ip(self):
        from urllib.parse import urlparse

        url = os.environ.get("JUPYTERHUB_SERVICE_URL", "")
        return (urlparse(url).hostname if url else None) or "127.0.0.1"

    port = Integer(help="Port to listen on. Default: the port of $JUPYTERHUB_SERVICE_URL, else 10101.").tag(config=True)

    @default("port")
    def _default_port(self):
        from urllib.parse import urlparse

        url = os.environ.get("JUPYTERHUB_SERVICE_URL", "")
        return (urlparse(url).port or 10101) if url else 10101

    prefix = Unicode(help="URL prefix of the service (default $JUPYTERHUB_SERVICE_PREFIX).").tag(config=True)

    @default("prefix")
    def _default_prefix(self):
        return os.environ.get("JUPYTERHUB_SERVICE_PREFIX", f"/services/{SERVICE_NAME}/")

    state_file = Unicode(
        "",
        help="JSON file keeping the shares across restarts of the service (written with mode 0600). "
        "Empty: shares live in memory only and end when the service restarts.",
    ).tag(config=True)

    target_cache_seconds = Float(
        2.0, help="How long a successful squeue check of a shared job is reused by visits before Slurm is asked again."
    ).tag(config=True)

    sweep_interval = Float(
        10.0, help="Seconds between checks that drop shares whose job no longer runs (one squeue for all shares)."
    ).tag(config=True)

    group_cache_seconds = Float(
        10.0, help="How long the members of a hub group are reused before the hub is asked again."
    ).tag(config=True)

    check_names = Bool(
        True,
        help="Refuse shares with user or group names the hub does not know (needs the scopes "
        "read:users:name and read:groups for this service).",
    ).tag(config=True)

    max_body_mb = Float(
        1024.0,
        help="Largest request body (uploads) and proxied response (downloads), in MB. Both are held in "
        "this service's memory while they are forwarded.",
    ).tag(config=True)

    response_headers = Unicode(
        "",
        help="Extra header added to every proxied response, as 'Name: value' (e.g. "
        "'Content-Security-Policy: sandbox allow-scripts allow-forms allow-downloads' for sites without "
        "JupyterHub.subdomain_host that host untrusted web UIs; this breaks UIs that need same-origin features).",
    ).tag(config=True)

    def initialize(self, argv=None):
        super().initialize(argv)
        if self.config_file:
            self.load_config_file(self.config_file)
        from .cluster import SlurmClient

        if not self.prefix.endswith("/"):
            self.prefix += "/"
        self.slurm = SlurmClient(parent=self, run_as_user=False)
        self.store = ShareStore(self.state_file)
        self.store.load()
        self._targets: Dict[str, Tuple[float, Optional[JobInfo]]] = {}
        self._groups: Dict[str, Tuple[float, Set[str]]] = {}
        self.hub_api_url = os.environ.get("JUPYTERHUB_API_URL", "").rstrip("/")
        self._hub_token = os.environ.get("JUPYTERHUB_API_TOKEN", "")
        self._sockets: Dict[Tuple[str, str], Set[Any]] = {}

    # -- open websockets ---------------------------------------------------------------

    def socket_opened(self, handler) -> None:
        self._sockets.setdefault((handler.owner, handler.job_id), set()).add(handler)

    def socket_closed(self, handler) -> None:
        key = (handler.owner, handler.job_id)
        handlers = self._sockets.get(key)
        if handlers is not None:
            handlers.discard(handler)
            if not handlers:
                del self._sockets[key]

    async def enforce(self, owner: str, job_id: str, reason: str) -> None:
        """Close the open websockets of visitors who may no longer open this share."""
        share = self.store.get(owner, job_id)
        for handler in list(self._sockets.get((owner, job_id), ())):
            member = await self.member_of(handler.visitor, share.groups) if share is not None else set()
            if share is None and reason == "job ended" or not may_visit(share, handler.visitor, owner, member):
                access_log.info("share access ended: user=%s owner=%s job=%s websocket closed (%s)",
                                handler.visitor, owner, job_id, reason)
                handler.close(1008, reason)

    # -- Slurm -----------------------------------------------------------------------

    async def job(self, job_id: str, max_age: Optional[float] = None) -> Optional[JobInfo]:
        max_age = self.target_cache_seconds if max_age is None else max_age
        now = time.monotonic()
        hit = self._targets.get(job_id)
        if hit is not None and now - hit[0] < max_age:
            return hit[1]
        jobs = await self.slurm.squeue(job_ids=[job_id])
        info = jobs.get(job_id)
        self._targets[job_id] = (now, info)
        if len(self._targets) > 5000:
            self._targets.clear()
        return info

    async def target(self, owner: str, job_id: str, max_age: Optional[float] = None):
        info = await self.job(job_id, max_age)
        target, reason = service_target(info, owner)
        if target is None:
            share = self.store.remove(owner, job_id)
            if share is not None:
                self.log.info("share of job %s of %s ended: %s", job_id, owner, reason)
            await self.enforce(owner, job_id, "job ended")
        return target, reason, info

    async def sweep(self) -> None:
        """Drop shares whose job no longer runs (one squeue for all of them)."""
        shares = self.store.all()
        if not shares:
            return
        try:
            jobs = await self.slurm.squeue(job_ids=sorted({s.job_id for s in shares}))
        except Exception as e:  # noqa: BLE001 - keep the shares until Slurm answers again
            self.log.warning("share sweep: squeue failed: %s", e)
            return
        now = time.monotonic()
        for s in shares:
            info = jobs.get(s.job_id)
            self._targets[s.job_id] = (now, info)
            target, reason = service_target(info, s.owner)
            if target is None:
                self.store.remove(s.owner, s.job_id)
                self.log.info("share of job %s of %s ended: %s", s.job_id, s.owner, reason)
                await self.enforce(s.owner, s.job_id, "job ended")

    # -- hub -------------------------------------------------------------------------

    async def hub_get(self, path: str) -> Tuple[int, Any]:
        from tornado.httpclient import AsyncHTTPClient, HTTPRequest

        if not self.hub_api_url or not self._hub_token:
            return 503, None
        req = HTTPRequest(self.hub_api_url + path, headers={"Authorization": f"token {self._hub_token}"},
                          request_timeout=20)
        resp = await AsyncHTTPClient().fetch(req, raise_error=False)
        if resp.code == 200:
            try:
                return 200, json.loads(resp.body)
            except ValueError:
                return 502, None
        return resp.code, None

    async def members(self, group: str) -> Set[str]:
        now = time.monotonic()
        hit = self._groups.get(group)
        if hit is not None and now - hit[0] < self.group_cache_seconds:
            return hit[1]
        code, data = await self.hub_get(f"/groups/{quote(group)}")
        users = set(data.get("users") or []) if code == 200 and isinstance(data, dict) else set()
        if code not in (200, 404):
            self.log.warning("cannot read hub group %s (HTTP %s): its members are not let in", group, code)
        self._groups[group] = (now, users)
        return users

    async def member_of(self, visitor: str, groups: Iterable[str]) -> Set[str]:
        out = set()
        for g in groups:
            if visitor in await self.members(g):
                out.add(g)
        return out

    async def unknown_name(self, users: List[str], groups: List[str]) -> Optional[Tuple[str, str]]:
        """``(field, message)`` for the first user/group the hub does not know, or ``None``."""
        if not self.check_names:
            return None
        for kind, names in (("users", users), ("groups", groups)):
            for name in names:
                code, _ = await self.hub_get(f"/{kind}/{quote(name)}")
                if code == 404:
                    return kind, f"JupyterHub has no {kind[:-1]} named {name!r}"
                if code != 200:
                    self.log.warning("cannot check hub %s %s (HTTP %s); accepting it", kind[:-1], name, code)
        return None

    # -- app -------------------------------------------------------------------------

    def make_app(self):
        p = re.escape(self.prefix)
        handlers = [
            (rf"{p}?", IndexHandler),
            (rf"{p}oauth_callback", HubOAuthCallbackHandler),
            (rf"{p}api/info", InfoHandler),
            (rf"{p}api/shares", SharesHandler),
            (rf"{p}api/shares/(?P<job_id>[^/]+)", ShareHandler),
            (rf"{p}(?P<owner>[^/]+)/(?P<job_id>[^/]+)", AddSlashHandler),
            (rf"{p}(?P<owner>[^/]+)/(?P<job_id>[^/]+)(?P<proxied_path>/.*)", ShareProxyHandler),
        ]
        settings = {
            "jupyter_hpc_share": self,
            "cookie_secret": os.urandom(32),
            "base_url": self.prefix,
            "log_function": self._log_request,
            "xsrf_cookies": False,
        }
        return web.Application(handlers, **settings)

    def _log_request(self, handler):
        status = handler.get_status()
        level = logging.INFO if status < 400 else logging.WARNING
        if isinstance(handler, ShareProxyHandler):
            return  # visits are logged with the user name by the handler itself
        self.log.log(level, "%d %s %s (%.1f ms)", status, handler.request.method, handler.request.path,
                     1000.0 * handler.request.request_time())

    def start(self):
        from tornado import httpserver, ioloop

        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[%(levelname)1.1s %(asctime)s jupyter-hpc-share] %(message)s"))
        access_log.addHandler(handler)
        access_log.setLevel(logging.INFO)
        access_log.propagate = False
        app = self.make_app()
        limit = int(self.max_body_mb * 1024 * 1024)
        server = httpserver.HTTPServer(app, xheaders=True, max_body_size=limit, max_buffer_size=limit)
        server.listen(self.port, self.ip)
        self.log.info("%s %s listening on %s:%s, prefix %s, %d share(s) loaded", SERVICE_NAME, __version__,
                      self.ip, self.port, self.prefix, len(self.store.all()))
        loop = ioloop.IOLoop.current()
        ioloop.PeriodicCallback(lambda: asyncio.ensure_future(self.sweep()), self.sweep_interval * 1000).start()
        loop.start()


# ---------------------------------------------------------------------------------------------
# handlers
# ---------------------------------------------------------------------------------------------


class ShareAuthMixin(HubOAuthenticated):
    """Async hub authentication shared by the API, the index page and the proxy."""

    @property
    def service(self) -> ShareService:
        return self.settings["jupyter_hpc_share"]

    @property
    def log(self):
        return self.service.log

    async def authenticate(self) -> Optional[Dict[str, Any]]:
        if hasattr(self, "_hub_auth_user_cache"):
            return self._hub_auth_user_cache
        model = await self.hub_auth.get_user(self, sync=False)
        if not model:
            self._hub_auth_user_cache = None
            return None
        try:
            model = self.check_hub_user(model)
        except UserNotAllowed:
            self._hub_auth_user_cache = None
            raise web.HTTPError(403, f"{model.get('kind', 'user')} {model.get('name')} may not use "
                                     f"{SERVICE_NAME} (missing scope access:services!service="
                                     f"{SERVICE_NAME})") from None
        self._hub_auth_user_cache = model
        return model

class APIBase(ShareAuthMixin, web.RequestHandler):
    """JSON API: token (or cookie) authentication, no login redirects."""

    def get_login_url(self):
        raise web.HTTPError(403, "authentication required")

    async def prepare(self):
        model = await self.authenticate()
        if not model:
            raise web.HTTPError(403, "authentication required (a JupyterHub token)")
        if model.get("kind", "user") != "user":
            raise web.HTTPError(403, "only hub users share services")
        self.user_name = model["name"]

    def write_error(self, status_code, **kwargs):
        exc = kwargs.get("exc_info", (None, None, None))[1]
        field_name = getattr(exc, "field", None)
        message = _error_message(exc) or self._reason
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"message": message, "field": field_name}))

    def reply(self, data: Any, status: int = 200):
        self.set_status(status)
        if status == 204:
            self.finish()
            return
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data))


def _error_message(exc: Any) -> Optional[str]:
    if isinstance(exc, web.HTTPError) and exc.log_message:
        return exc.log_message % exc.args if exc.args else exc.log_message.replace("%%", "%")
    return None


def _http_error(status: int, message: str, field_name: Optional[str] = None):
    err = web.HTTPError(status, message.replace("%", "%%"))
    err.field = field_name  # type: ignore[attr-defined]
    return err


class InfoHandler(APIBase):
    async def get(self):
        self.reply({"name": SERVICE_NAME, "version": __version__, "user": self.user_name, "prefix": self.service.prefix})


class SharesHandler(APIBase):
    async def get(self):
        """The caller's shares and the shares the caller may open."""
        svc = self.service
        own = [s.to_dict(svc.prefix) for s in svc.store.of_owner(self.user_name)]
        others = []
        for s in svc.store.all():
            if s.owner == self.user_name:
                continue
            member = await svc.member_of(self.user_name, s.groups)
            if may_visit(s, self.user_name, s.owner, member):
                others.append(s.to_dict(svc.prefix))
        self.reply({"shares": own, "shared_with_me": others})


class ShareHandler(APIBase):
    def _job_id(self, job_id: str) -> str:
        try:
            return validate.job_id(job_id)
        except ValidationError as e:
            raise _http_error(400, e.message, "job_id") from None

    async def get(self, job_id):
        job_id = self._job_id(job_id)
        share = self.service.store.get(self.user_name, job_id)
        if share is None:
            raise _http_error(404, f"job {job_id} of {self.user_name} is not shared", "job_id")
        target, _, _ = await self.service.target(self.user_name, job_id)
        if target is None:
            raise _http_error(404, f"job {job_id} is no longer a running service; its share has ended", "job_id")
        self.reply(share.to_dict(self.service.prefix))

    async def put(self, job_id):
        job_id = self._job_id(job_id)
        try:
            body = json.loads(self.request.body or b"{}")
            users, groups = share_request(body)
        except ValueError as e:
            if isinstance(e, ValidationError):
                raise _http_error(400, e.message, e.field) from None
            raise _http_error(400, "the request body is not valid JSON") from None
        svc = self.service
        info = await svc.job(job_id, max_age=0)
        if info is None:
            raise _http_error(404, f"Slurm does not know job {job_id}", "job_id")
        if info.user != self.user_name:
            raise _http_error(403, f"job {job_id} is not yours", "job_id")
        target, reason, _ = await svc.target(self.user_name, job_id, max_age=0)
        if target is None:
            raise _http_error(409, f"job {job_id} cannot be shared: {reason}", "job_id")
        users = [u for u in users if u != self.user_name]
        problem = await svc.unknown_name(users, groups)
        if problem:
            raise _http_error(400, problem[1], problem[0])
        if not users and not groups:
            svc.store.remove(self.user_name, job_id)
            svc.log.info("share of job %s revoked by %s (empty share list)", job_id, self.user_name)
            await svc.enforce(self.user_name, job_id, "share revoked")
            self.reply({"owner": self.user_name, "job_id": job_id, "users": [], "groups": [], "name": info.meta.get("name"),
                        "url": share_url(svc.prefix, self.user_name, job_id), "created": None, "updated": time.time()})
            return
        share = svc.store.set(self.user_name, job_id, users, groups, name=info.meta.get("name"))
        svc.log.info("job %s of %s shared with users %s and groups %s", job_id, self.user_name,
                     ",".join(users) or "-", ",".join(groups) or "-")
        await svc.enforce(self.user_name, job_id, "share changed")
        self.reply(share.to_dict(svc.prefix))

    async def delete(self, job_id):
        job_id = self._job_id(job_id)
        share = self.service.store.remove(self.user_name, job_id)
        if share is None:
            raise _http_error(404, f"job {job_id} of {self.user_name} is not shared", "job_id")
        self.service.log.info("share of job %s revoked by %s", job_id, self.user_name)
        await self.service.enforce(self.user_name, job_id, "share revoked")
        self.reply(None, 204)


def _page(title: str, body: str) -> str:
    import html

    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
            f"<body style='font-family: sans-serif; margin: 2em'><h1>{html.escape(title)}</h1>{body}</body></html>")


class IndexHandler(ShareAuthMixin, web.RequestHandler):
    """A page listing what the visitor shares and what is shared with them."""

    async def get(self):
        import html

        model = await self.authenticate()
        if not model:
            self.redirect(self.get_login_url())
            return
        if model.get("kind", "user") != "user":
            raise web.HTTPError(403)
        svc = self.service
        me = model["name"]
        rows_own, rows_other = [], []
        for s in svc.store.all():
            link = html.escape(share_url(svc.prefix, s.owner, s.job_id))
            label = html.escape(f"{s.name or 'service'} (job {s.job_id} of {s.owner})")
            if s.owner == me:
                who = html.escape(", ".join(s.users + [f"group {g}" for g in s.groups]))
                rows_own.append(f"<li><a href='{link}'>{label}</a>: shared with {who}</li>")
            elif may_visit(s, me, s.owner, await svc.member_of(me, s.groups)):
                rows_other.append(f"<li><a href='{link}'>{label}</a></li>")
        body = (f"<p>Signed in as <b>{html.escape(me)}</b>.</p><h2>Shared with you</h2>"
                + (f"<ul>{''.join(rows_other)}</ul>" if rows_other else "<p>Nothing is shared with you.</p>")
                + "<h2>Your shared services</h2>"
                + (f"<ul>{''.join(rows_own)}</ul>" if rows_own else
                   "<p>None. Share a running service from the HPC sidebar in JupyterLab.</p>"))
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(_page("Shared HPC services", body))


class AddSlashHandler(web.RequestHandler):
    def get(self, owner, job_id):
        self.redirect(self.request.path + "/" + (("?" + self.request.query) if self.request.query else ""))


class ShareProxyHandler(ShareAuthMixin, ProxyHandler):
    """``{prefix}<owner>/<job_id>/<path>`` -> the job's registered ``node:port``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.host_allowlist = []
        self._target: Optional[Tuple[str, int]] = None
        self.owner = ""
        self.job_id = ""
        self.visitor = ""
        self._registered = False
        self.update_last_activity = False

        def confine(response):  # jupyter-server-proxy inspects the argument names of plain functions
            self._confine_cookies(response)

        self.rewrite_response = (confine,)

    def set_default_headers(self):
        self.set_header("X-Content-Type-Options", "nosniff")

    def check_origin(self, origin=None):
        return WebSocketHandler.check_origin(self, origin)

    def check_xsrf_cookie(self):
        """Deferred to the proxied web UI, like jupyter-server-proxy."""

    def write_error(self, status_code, **kwargs):
        """A short page for people who follow a link they may not (or no longer) use."""
        import html

        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = _error_message(exc) if status_code < 500 else None
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(_page(f"{status_code}: {self._reason}", f"<p>{html.escape(message or self._reason)}</p>"))

    def _is_upgrade(self) -> bool:
        return self.request.headers.get("Upgrade", "").lower() == "websocket"

    async def prepare(self, *args, **kwargs):
        owner = self.path_kwargs.get("owner", "")
        job_id = self.path_kwargs.get("job_id", "")
        model = await self.authenticate()
        if not model:
            if self.request.method == "GET" and not self._is_upgrade():
                self.redirect(self.get_login_url())
                return
            raise web.HTTPError(403, "authentication required")
        if model.get("kind", "user") != "user":
            raise web.HTTPError(403, "shared services are opened by hub users")
        self.visitor = model["name"]
        try:
            owner = validate.username(owner)
            job_id = validate.job_id(job_id)
        except ValidationError:
            self._log_visit(404, "not a share URL")
            raise web.HTTPError(404) from None
        svc = self.service
        share = svc.store.get(owner, job_id)
        member = await svc.member_of(self.visitor, share.groups) if share is not None else set()
        if not may_visit(share, self.visitor, owner, member):
            status = 404 if share is None else 403
            self._log_visit(status, "not shared with this user", owner, job_id)
            raise web.HTTPError(status, "nothing is shared with you here" if status == 404 else
                                f"this service is not shared with {self.visitor}")
        try:
            target, reason, _ = await svc.target(owner, job_id)
        except Exception as e:  # noqa: BLE001 - no access when Slurm cannot confirm the job
            self._log_visit(503, f"cannot check the job: {e}", owner, job_id)
            raise web.HTTPError(503, "cannot check the job with Slurm right now") from None
        if target is None:
            self._log_visit(404, reason, owner, job_id)
            raise web.HTTPError(404, f"this shared service has ended: {reason}")
        self.owner, self.job_id, self._target = owner, job_id, target
        self.host_allowlist = [target[0]]
        self._log_visit(None, "", owner, job_id)

    def _log_visit(self, status, reason, owner="", job_id=""):
        what = "websocket" if self._is_upgrade() else self.request.method
        if status is None:
            access_log.info("share access: user=%s owner=%s job=%s %s %s", self.visitor or "-", owner, job_id,
                            what, self.request.path)
        else:
            access_log.warning("share access refused (%s): user=%s owner=%s job=%s %s %s: %s", status,
                               self.visitor or "-", owner or "-", job_id or "-", what, self.request.path, reason)

    def _get_context_path(self, host, port):
        return share_url(self.service.prefix, self.owner, self.job_id).rstrip("/")

    def get_client_uri(self, protocol, host, port, proxied_path):
        path = proxied_path if proxied_path.startswith("/") else "/" + proxied_path
        path = quote(path, safe=":/?#[]@!$&'()*+,;=-._~")
        uri = f"{protocol}://{host}:{port}{path}"
        query = strip_token_query(self.request.query)
        return uri + ("?" + query if query else "")

    def proxy_request_headers(self):
        headers = super().proxy_request_headers()
        strip_credentials(headers, {self.hub_auth.cookie_name, self.hub_auth.state_cookie_name})
        return headers

    def _confine_cookies(self, response):
        values = response.headers.get_list("Set-Cookie")
        if values:
            del response.headers["Set-Cookie"]
            for v in values:
                response.headers.add("Set-Cookie", confine_cookie(v, self._get_context_path("", 0)))
        extra = self.service.response_headers
        if extra and ":" in extra:
            name, _, value = extra.partition(":")
            response.headers[name.strip()] = value.strip()

    async def _proxy_buffered(self, host, port, proxied_path, body, client):
        limit = int(self.service.max_body_mb * 1024 * 1024)
        client = httpclient.AsyncHTTPClient(force_instance=True, max_body_size=limit, max_buffer_size=limit)
        try:
            return await super()._proxy_buffered(host, port, proxied_path, body, client)
        finally:
            client.close()

    def _path(self, proxied_path):
        return proxied_path or "/"

    async def http_get(self, owner, job_id, proxied_path=None):
        return await self.proxy(self._target[0], self._target[1], self._path(proxied_path))

    async def open(self, owner, job_id, proxied_path=None):
        await self.proxy_open(self._target[0], self._target[1], self._path(proxied_path))
        self.service.socket_opened(self)
        self._registered = True

    def on_close(self):
        if self._registered:
            self.service.socket_closed(self)
            self._registered = False
        super().on_close()

    def post(self, owner, job_id, proxied_path=None):
        return self.proxy(self._target[0], self._target[1], self._path(proxied_path))

    def put(self, owner, job_id, proxied_path=None):
        return self.proxy(self._target[0], self._target[1], self._path(proxied_path))

    def delete(self, owner, job_id, proxied_path=None):
        return self.proxy(self._target[0], self._target[1], self._path(proxied_path))

    def head(self, owner, job_id, proxied_path=None):
        return self.proxy(self._target[0], self._target[1], self._path(proxied_path))

    def patch(self, owner, job_id, proxied_path=None):
        return self.proxy(self._target[0], self._target[1], self._path(proxied_path))

    def options(self, owner, job_id, proxied_path=None):
        return self.proxy(self._target[0], self._target[1], self._path(proxied_path))



def main(argv: Optional[List[str]] = None) -> None:
    app = ShareService.instance()
    app.initialize(argv if argv is not None else sys.argv[1:])
    app.start()


if __name__ == "__main__":
    main()
