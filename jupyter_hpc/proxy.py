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

import json
import socket
import time
from typing import Any, Awaitable, Dict, List, Optional, Tuple

from jupyter_server.utils import url_path_join
from jupyter_server_proxy.handlers import ProxyHandler
from tornado import httpclient, httputil, simple_httpclient, web
from tornado.netutil import DefaultLoopResolver, Resolver

from . import validate
from .validate import ValidationError

AUTH_RESOURCE = "jupyter_hpc"
_CACHE_KEY = "jupyter_hpc_proxy_targets"
_RESOLVER_KEY = "jupyter_hpc_proxy_resolver"
#: Response headers of streamed downloads not passed on (tornado frames the response
#: itself; the body is forwarded byte for byte, so Content-Length stays true).
_NOT_FORWARDED = ("Transfer-Encoding", "Connection", "Keep-Alive")
_FLUSH_BYTES = 1024 * 1024
#: Size of the reads from a service (tornado's default is 64 KiB): a large download then
#: costs a few dozen reads and writes per 50 MB instead of hundreds.
READ_BYTES = 1024 * 1024


class NodeResolver(Resolver):
    """Name lookups of service nodes, remembered for ``ttl`` seconds.

    tornado resolves every request's host in a thread; the nodes of running services
    change rarely, and the proxy asks for the same few names on every request.
    """

    def initialize(self, ttl: float = 60.0, max_entries: int = 1024) -> None:  # type: ignore[override]
        self._inner = DefaultLoopResolver()
        self._ttl = ttl
        self._max = max_entries
        self._known: Dict[Tuple[str, int, int], Tuple[float, List[Tuple[int, Any]]]] = {}

    async def resolve(self, host: str, port: int, family: socket.AddressFamily = socket.AF_UNSPEC):
        key = (host, port, int(family))
        now = time.monotonic()
        hit = self._known.get(key)
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        addresses = await self._inner.resolve(host, port, family)
        if len(self._known) >= self._max:
            self._known.clear()
        self._known[key] = (now, addresses)
        return addresses


class _BulkReadConnection(simple_httpclient._HTTPConnection):
    """tornado's client connection, reading the response body in ``READ_BYTES`` pieces."""

    def _create_connection(self, stream):
        stream.read_chunk_size = max(stream.read_chunk_size, min(READ_BYTES, stream.max_buffer_size // 2))
        connection = super()._create_connection(stream)
        connection.params.chunk_size = max(connection.params.chunk_size, READ_BYTES)
        return connection


class ProxyHTTPClient(simple_httpclient.SimpleAsyncHTTPClient):
    """tornado's HTTP client with larger body reads (see :class:`_BulkReadConnection`)."""

    def _connection_class(self) -> type:
        return _BulkReadConnection


def _cache(settings) -> Dict[str, Tuple[float, Tuple[str, int]]]:
    return settings.setdefault(_CACHE_KEY, {})


class ProxyRefused(web.HTTPError):
    """A request the proxy does not forward; answered as ``{"message", "field"}`` like the REST API."""

    def __init__(self, status: int, message: str, field: Optional[str] = "job_id"):
        super().__init__(status, message.replace("%", "%%"))
        self.message = message
        self.field = field


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
            raise ProxyRefused(403, "authentication required", None)
        method = self.request.method.upper()
        action = "read" if method in ("GET", "HEAD", "OPTIONS") and not self._is_upgrade() else "write"
        if not self.authorizer.is_authorized(self, user, action, AUTH_RESOURCE):
            raise ProxyRefused(403, "not authorized to use the jupyter-hpc proxy", None)
        job_id = self.path_kwargs.get("job_id") or (self.path_args[0] if self.path_args else "")
        try:
            job_id = validate.job_id(job_id)
        except ValidationError:
            raise ProxyRefused(404, "the proxy URL must name a Slurm job id: jupyter-hpc/proxy/<job id>/") from None
        target = await self._lookup(job_id)
        if target is None:
            raise ProxyRefused(404, f"job {job_id} is not a running service of this user")
        self._job_id = job_id
        self._target = target
        # Host allow-list of the base class: exactly the checked target host.
        self.host_allowlist = [target[0]]

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if not isinstance(exc, ProxyRefused):
            return super().write_error(status_code, **kwargs)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"message": exc.message, "field": exc.field}))

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
            raise ProxyRefused(503, "cannot check the job with Slurm right now; try again later") from None
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

    def _client(self) -> httpclient.AsyncHTTPClient:
        # tornado's default client limit (100 MB) would make larger downloads fail.
        limit = int(self.ext.proxy_max_body_mb * 1024 * 1024)
        resolver = self.settings.get(_RESOLVER_KEY)
        if resolver is None:
            resolver = self.settings[_RESOLVER_KEY] = NodeResolver()
        return ProxyHTTPClient(force_instance=True, max_body_size=limit, max_buffer_size=limit, resolver=resolver)

    async def _proxy_buffered(self, host, port, proxied_path, body, client):
        client.close()
        client = self._client()
        try:
            if self.request.method == "GET":
                return await self._proxy_streamed(host, port, proxied_path, client)
            # Other methods: jupyter-server-proxy's buffered path (response rewriting included).
            return await super()._proxy_buffered(host, port, proxied_path, body, client)
        finally:
            client.close()

    async def _proxy_streamed(self, host, port, proxied_path, client) -> None:
        """GET with the response body forwarded chunk by chunk as it arrives.

        Large downloads (data, model files) then neither wait for the whole body
        nor sit in this server's memory; status and headers are handled as in
        jupyter-server-proxy's buffered path (hop-by-hop headers dropped,
        redirects rewritten to stay under the proxy prefix).
        """
        raw_headers: List[str] = []
        started = False

        def start(code: int, reason: Optional[str], headers: httputil.HTTPHeaders) -> None:
            nonlocal started
            started = True
            self.set_status(code, reason)
            self._headers = httputil.HTTPHeaders()
            for name, value in headers.get_all():
                if name in _NOT_FORWARDED:
                    continue
                if name == "Location" and code in (301, 302, 303, 307, 308):
                    value = self._rewrite_location_header(value, host, port, proxied_path)
                self.add_header(name, value)

        def start_from_raw() -> None:
            # header_callback sees one block per response (1xx blocks first): use the last one
            block: List[str] = []
            for line in raw_headers:
                if line.startswith("HTTP/"):
                    block = [line]
                elif block:
                    block.append(line)
            first = httputil.parse_response_start_line(block[0].strip())
            start(first.code, first.reason, httputil.HTTPHeaders.parse("".join(block[1:])))

        pending = 0

        def on_chunk(chunk: bytes) -> Optional[Awaitable[None]]:
            # Written out in blocks of _FLUSH_BYTES; returning the flush makes the
            # client wait for a slow reader (memory stays bounded).
            nonlocal pending
            if not started:
                start_from_raw()
            self.write(chunk)
            pending += len(chunk)
            if pending < _FLUSH_BYTES:
                return None
            pending = 0
            # A large chunk goes out as it came (no copy into a joined buffer).
            return self.flush()

        req = self._build_proxy_request(
            host, port, proxied_path, None, streaming_callback=on_chunk, header_callback=raw_headers.append
        )
        try:
            response = await client.fetch(req, raise_error=False)
        except httpclient.HTTPError as err:
            self._record_activity()
            raise web.HTTPError(599 if err.code == 599 else 502, str(err)) from None
        self._record_activity()
        if response.error and type(response.error) is not httpclient.HTTPError:
            if started:  # the body was cut off after it began: end the response here
                self.log.warning("jupyter-hpc proxy: download from job %s broke off: %s", self._job_id, response.error)
                return
            raise web.HTTPError(502, f"the service did not answer: {response.error}")
        if not started:
            start(response.code, response.reason, response.headers)

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
