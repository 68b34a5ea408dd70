"""Owner-checked proxy to the web UIs of service jobs.

``{base_url}jupyter-hpc/proxy/<job_id>/<path>`` forwards HTTP and websockets to
the ``host:port`` that the job registered in its Slurm comment. It is built on
jupyter-server-proxy's :class:`~jupyter_server_proxy.handlers.ProxyHandler`
(request/response and websocket relaying, hop-by-hop header handling); this
module only decides *where* a request may go:

- the request must be authenticated and authorized (``jupyter_hpc`` resource),
  checked in ``prepare`` so that it also covers websocket upgrades;
- the job id must be a Slurm job id;
- the job must be one this server started as a service (recorded under the
  user's services directory), belong to the server's user, be RUNNING, carry
  ``kind=service`` in its comment, and have registered a host that is its own node.

Anything else is answered 404 (unknown/not a service/finished) or 403 (not
allowed), before any connection to a node is made. The target never comes from
the request: the URL only names a job id.
"""

from __future__ import annotations

import time
from typing import Dict, Optional, Tuple

from jupyter_server.utils import url_path_join
from jupyter_server_proxy.handlers import ProxyHandler
from tornado import httpclient, web

from . import validate
from .validate import ValidationError

AUTH_RESOURCE = "jupyter_hpc"
_CACHE_KEY = "jupyter_hpc_proxy_targets"


def _cache(settings) -> Dict[str, Tuple[float, Tuple[str, int]]]:
    return settings.setdefault(_CACHE_KEY, {})


def forget_target(settings, job_id: str) -> None:
    """Drop a cached target (called when a service is stopped)."""
    _cache(settings).pop(job_id, None)


class ServiceProxyHandler(ProxyHandler):
    """Proxies ``/jupyter-hpc/proxy/<job_id>/...`` to the service's node and port."""

    auth_resource = AUTH_RESOURCE

    def initialize(self, **kwargs):
        self._target: Optional[Tuple[str, int]] = None
        self._job_id: Optional[str] = None

    @property
    def ext(self):
        return self.settings["jupyter_hpc"]

    async def prepare(self, *args, **kwargs):
        # Authentication (403 for unauthenticated websocket upgrades, login redirect otherwise).
        await super().prepare(*args, **kwargs)
        user = self.current_user
        if not user:
            raise web.HTTPError(403)
        method = self.request.method.upper()
        action = "read" if method in ("GET", "HEAD", "OPTIONS") and not self._is_upgrade() else "write"
        if not self.authorizer.is_authorized(self, user, action, AUTH_RESOURCE):
            raise web.HTTPError(403, "not authorized to use the jupyter-hpc proxy")
        job_id = self.path_kwargs.get("job_id") or (self.path_args[0] if self.path_args else "")
        try:
            job_id = validate.job_id(job_id)
        except ValidationError:
            raise web.HTTPError(404, "not a job id") from None
        target = await self._lookup(job_id)
        if target is None:
            raise web.HTTPError(404, f"job {job_id} is not a running service of this user")
        self._job_id = job_id
        self._target = target
        # Host allow-list of the base class: exactly the checked target host.
        self.host_allowlist = [target[0]]

    def _is_upgrade(self) -> bool:
        return self.request.headers.get("Upgrade", "").lower() == "websocket"

    async def _lookup(self, job_id: str) -> Optional[Tuple[str, int]]:
        cache = _cache(self.settings)
        now = time.monotonic()
        hit = cache.get(job_id)
        if hit and now - hit[0] < self.ext.proxy_cache_seconds:
            return hit[1]
        try:
            target = await self.ext.services.target(job_id)
        except Exception as e:  # noqa: BLE001 - any failure to verify the job means "no access"
            self.log.warning("jupyter-hpc proxy: cannot check job %s: %s", job_id, e)
            raise web.HTTPError(503, "cannot check the job with Slurm right now") from None
        if target is None:
            cache.pop(job_id, None)
            return None
        cache[job_id] = (now, target)
        return target

    def _get_context_path(self, host, port):
        return url_path_join(self.base_url, "jupyter-hpc", "proxy", self._job_id or "")

    def proxy_request_headers(self):
        """Forwarded headers, without this server's credentials (token header, login/xsrf cookies)."""
        headers = super().proxy_request_headers()
        if "Authorization" in headers:
            del headers["Authorization"]
        cookie = headers.get("Cookie")
        if cookie:
            own = {self.cookie_name, "_xsrf"}
            kept = []
            for part in cookie.split(";"):
                name = part.split("=", 1)[0].strip()
                if name in own or name.startswith(("username-", "jupyterhub-")):
                    continue
                kept.append(part.strip())
            del headers["Cookie"]
            if kept:
                headers["Cookie"] = "; ".join(kept)
        return headers

    async def _proxy_buffered(self, host, port, proxied_path, body, client):
        # jupyter-server-proxy buffers the response; tornado's default client limit (100 MB)
        # would make larger downloads fail, so use a client with the configured limit.
        limit = int(self.ext.proxy_max_body_mb * 1024 * 1024)
        client = httpclient.AsyncHTTPClient(force_instance=True, max_body_size=limit, max_buffer_size=limit)
        try:
            return await super()._proxy_buffered(host, port, proxied_path, body, client)
        finally:
            client.close()

    # --- methods: the target always comes from prepare() ---

    def _path(self, proxied_path: Optional[str]) -> str:
        return proxied_path or "/"

    async def http_get(self, job_id, proxied_path=None):
        return await self.proxy(self._target[0], self._target[1], self._path(proxied_path))

    async def open(self, job_id, proxied_path=None):
        return await self.proxy_open(self._target[0], self._target[1], self._path(proxied_path))

    def post(self, job_id, proxied_path=None):
        return self.proxy(self._target[0], self._target[1], self._path(proxied_path))

    def put(self, job_id, proxied_path=None):
        return self.proxy(self._target[0], self._target[1], self._path(proxied_path))

    def delete(self, job_id, proxied_path=None):
        return self.proxy(self._target[0], self._target[1], self._path(proxied_path))

    def head(self, job_id, proxied_path=None):
        return self.proxy(self._target[0], self._target[1], self._path(proxied_path))

    def patch(self, job_id, proxied_path=None):
        return self.proxy(self._target[0], self._target[1], self._path(proxied_path))

    def options(self, job_id, proxied_path=None):
        return self.proxy(self._target[0], self._target[1], self._path(proxied_path))


def proxy_handlers():
    return [
        (r"/jupyter-hpc/proxy/(?P<job_id>[^/]+)(?P<proxied_path>/.*)?", ServiceProxyHandler),
    ]
