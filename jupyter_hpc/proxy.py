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

Upstream, GET responses stream through: a body of known length goes from the
service's socket into two alternating buffers and from there to the browser's
socket without further copies (:class:`_LendingHTTP1Connection`). Connections to
a service are kept alive in a :class:`ConnectionPool` keyed by job id
(``HPCExtension.proxy_keepalive_seconds``).
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any, Awaitable, Dict, List, Optional, Tuple

from jupyter_server.utils import url_path_join
from jupyter_server_proxy.handlers import ProxyHandler
from tornado import httpclient, httputil, simple_httpclient, web
from tornado.http1connection import HTTP1Connection, HTTP1ConnectionParameters
from tornado.ioloop import IOLoop
from tornado.iostream import IOStream, StreamClosedError
from tornado.tcpclient import TCPClient
from tornado.netutil import DefaultLoopResolver, Resolver

from . import validate
from .validate import ValidationError

AUTH_RESOURCE = "jupyter_hpc"
_CACHE_KEY = "jupyter_hpc_proxy_targets"
_RESOLVER_KEY = "jupyter_hpc_proxy_resolver"
_POOL_KEY = "jupyter_hpc_proxy_pool"
#: Response headers of streamed downloads not passed on (tornado frames the response
#: itself; the body is forwarded byte for byte, so Content-Length stays true).
_NOT_FORWARDED = ("Transfer-Encoding", "Connection", "Keep-Alive")
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


class ConnectionPool:
    """Idle keep-alive connections to services, one list per service job.

    Keyed by job id (not host:port), so a connection opened for one job never
    serves a request for another job that later listens on the same address.
    A connection is handed out again only while it is younger than ``idle_seconds``
    since its last response, and only if the service has not closed it meanwhile
    (checked without blocking before reuse).
    """

    def __init__(self, idle_seconds: float = 4.0, per_job: int = 16) -> None:
        self.idle_seconds = idle_seconds
        self.per_job = per_job
        self._idle: Dict[str, List[Tuple[float, Tuple[str, int], IOStream]]] = {}
        self._sweep_handle: Any = None
        self.counters = {"opened": 0, "reused": 0, "discarded": 0}

    def acquire(self, key: str, address: Tuple[str, int]) -> Optional[IOStream]:
        """A live idle connection of ``key`` to ``address``, or None."""
        limit = time.monotonic() - self.idle_seconds
        idle = self._idle.get(key)
        while idle:
            released, addr, stream = idle.pop()
            if released >= limit and addr == address and _still_open(stream):
                self.counters["reused"] += 1
                return stream
            self.counters["discarded"] += 1
            stream.close()
        self._idle.pop(key, None)
        return None

    def release(self, key: str, address: Tuple[str, int], stream: IOStream) -> None:
        """Keep ``stream`` (a complete response was read from it) for the next request of ``key``."""
        if self.idle_seconds <= 0 or stream.closed():
            stream.close()
            return
        idle = self._idle.setdefault(key, [])
        idle.append((time.monotonic(), address, stream))
        while len(idle) > self.per_job:
            idle.pop(0)[2].close()
        self._schedule_sweep()

    def _schedule_sweep(self) -> None:
        # Expired connections are closed even when no further request comes.
        if self._sweep_handle is None and self._idle:
            self._sweep_handle = IOLoop.current().call_later(self.idle_seconds + 0.5, self._timed_sweep)

    def _timed_sweep(self) -> None:
        self._sweep_handle = None
        self._sweep()
        self._schedule_sweep()

    def drop(self, key: str) -> None:
        """Close every idle connection of ``key`` (the service stopped, or one turned out stale)."""
        for _, _, stream in self._idle.pop(key, []):
            stream.close()

    def close(self) -> None:
        for key in list(self._idle):
            self.drop(key)
        if self._sweep_handle is not None:
            IOLoop.current().remove_timeout(self._sweep_handle)
            self._sweep_handle = None

    def idle(self, key: str) -> int:
        return len(self._idle.get(key, ()))

    def _sweep(self) -> None:
        limit = time.monotonic() - self.idle_seconds
        for key in list(self._idle):
            kept = []
            for entry in self._idle[key]:
                if entry[0] >= limit:
                    kept.append(entry)
                else:
                    entry[2].close()
            if kept:
                self._idle[key] = kept
            else:
                del self._idle[key]


def _drained(stream: IOStream) -> bool:
    """The stream is open and holds no unread bytes in tornado's read buffer."""
    return not stream.closed() and not getattr(stream, "_read_buffer_size", 1)


def _still_open(stream: IOStream) -> bool:
    """True if nothing arrived on an idle connection: no close (EOF), no stray bytes."""
    if not _drained(stream):
        return False
    try:
        stream.socket.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return True  # nothing to read: still open and quiet
    except OSError:
        return False
    return False  # EOF (b"") or bytes nobody asked for


class _PoolingTCPClient(TCPClient):
    """Connects through the pool: an idle connection of the job if there is one, else a new one."""

    def __init__(self, resolver: Resolver, pool: Optional[ConnectionPool], key: str, reuse: bool) -> None:
        super().__init__(resolver=resolver)
        self.pool, self.key, self.reuse = pool, key, reuse
        self.reused = False

    async def connect(self, host, port, *args, **kwargs):  # type: ignore[override]
        if self.pool is not None and self.reuse and not kwargs.get("ssl_options"):
            stream = self.pool.acquire(self.key, (host, port))
            if stream is not None:
                self.reused = True
                return stream
        stream = await super().connect(host, port, *args, **kwargs)
        if self.pool is not None:
            self.pool.counters["opened"] += 1
        return stream


class _LendingHTTP1Connection(HTTP1Connection):
    """Client side of one HTTP/1.1 exchange that can lend its read buffers to the body's consumer.

    With ``lend_views``, a body of known length is read straight from the socket into two
    buffers of ``chunk_size`` that take turns, and the consumer (the request's streaming
    callback) gets a ``memoryview`` of the bytes read. The view stays valid until the
    awaitable the consumer returned is done (for the proxy: handed to the browser's socket),
    so a download moves from one socket to the other without the copies of tornado's
    ``read_bytes`` (into its read buffer, then out of it as ``bytes``), and reading the next
    piece overlaps with sending the previous one.
    """

    lend_views = False

    async def _read_fixed_body(self, content_length: int, delegate: httputil.HTTPMessageDelegate) -> None:
        if not self.lend_views:
            return await super()._read_fixed_body(content_length, delegate)
        size = min(self.params.chunk_size, content_length)  # READ_BYTES, see _BulkReadConnection
        buffers: List[memoryview] = []
        in_flight: Optional[Awaitable[None]] = None
        turn = 0
        while content_length > 0:
            if len(buffers) == turn:
                buffers.append(memoryview(bytearray(size)))
            view = buffers[turn]
            # This buffer's previous bytes were sent before the other buffer's were handed on.
            got = await self.stream.read_into(view[:min(size, content_length)], partial=True)
            content_length -= got
            if in_flight is not None:
                await in_flight  # one write at a time (HTTP1Connection keeps a single write future)
            in_flight = delegate.data_received(view[:got])
            turn ^= 1
            if content_length > 0:
                await asyncio.sleep(0)  # other requests get their turn between pieces of a large body
        if in_flight is not None:
            await in_flight


class _BulkReadConnection(simple_httpclient._HTTPConnection):
    """tornado's client connection, reading the response body in ``READ_BYTES`` pieces
    (into lent buffers, see :class:`_LendingHTTP1Connection`, when the request allows it).

    With a pool, the request asks for keep-alive and a connection whose response
    was read completely (framed by Content-Length or chunked encoding, no
    ``Connection: close``, nothing left over) goes back to the pool instead of
    being closed.
    """

    async def run(self) -> None:
        if self._pool() is not None and "Connection" not in self.request.headers:
            self.request.headers["Connection"] = "keep-alive"
        await super().run()

    def _pool(self) -> Optional[ConnectionPool]:
        tcp = self.tcp_client
        return tcp.pool if isinstance(tcp, _PoolingTCPClient) else None

    def _create_connection(self, stream):
        stream.set_nodelay(True)
        lend = bool(getattr(self.request, "streaming_callback_takes_views", False))
        if not lend:  # bodies pass through tornado's read buffer: fill it in large reads
            stream.read_chunk_size = max(stream.read_chunk_size, min(READ_BYTES, stream.max_buffer_size // 2))
        params = HTTP1ConnectionParameters(
            no_keep_alive=self._pool() is None,
            chunk_size=READ_BYTES,
            max_header_size=self.max_header_size,
            max_body_size=self.max_body_size,
            decompress=bool(self.request.decompress_response),
        )
        connection = _LendingHTTP1Connection(stream, True, params, self._sockaddr)
        connection.lend_views = lend
        return connection

    async def headers_received(self, first_line, headers) -> None:
        await super().headers_received(first_line, headers)
        # The final response's status and parsed headers, before its first body chunk
        # (``header_callback`` would hand them over as raw lines to be parsed again).
        callback = getattr(self.request, "response_start_callback", None)
        if callback is not None and not 100 <= first_line.code < 200:
            callback(first_line.code, first_line.reason, headers)

    def _reusable(self) -> bool:
        connection = getattr(self, "connection", None)
        stream = getattr(self, "stream", None)
        if self._pool() is None or connection is None or stream is None or connection.stream is not stream:
            return False
        if not _drained(stream):
            return False
        if self.request.headers.get("Connection", "").lower() != "keep-alive":
            return False
        start_line = getattr(connection, "_response_start_line", None)
        if start_line is None or self.headers is None:
            return False
        return connection._can_keep_alive(start_line, self.headers)

    def _on_end_request(self) -> None:
        if not self._reusable():
            self.stream.close()
            return
        stream = self.connection.detach()
        stream.set_close_callback(None)
        tcp = self.tcp_client
        tcp.pool.release(tcp.key, (self.parsed_hostname, self.parsed.port or 80), stream)


class ProxyHTTPClient(simple_httpclient.SimpleAsyncHTTPClient):
    """tornado's HTTP client with larger body reads and, given a pool, kept-alive connections.

    ``pool``/``pool_key``: the :class:`ConnectionPool` and the job id whose idle
    connections may be used; ``reuse=False`` opens a new connection (the response's
    connection may still go back to the pool).
    """

    def initialize(self, *args: Any, pool: Optional[ConnectionPool] = None, pool_key: str = "",
                   reuse: bool = True, **kwargs: Any) -> None:  # type: ignore[override]
        super().initialize(*args, **kwargs)
        self.tcp_client.close()
        self.tcp_client = _PoolingTCPClient(self.resolver, pool, pool_key, reuse)

    @property
    def reused_connection(self) -> bool:
        """Whether the last request went over a pooled connection."""
        return self.tcp_client.reused

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
    """Drop a cached target and its idle connections (called when a service is stopped)."""
    _cache(settings).pop(job_id, None)
    _drop_connections(settings, job_id)


def _drop_connections(settings, job_id: str) -> None:
    pool = settings.get(_POOL_KEY)
    if pool is not None:
        pool.drop(job_id)


def _stale(error: Optional[BaseException]) -> bool:
    """An error that a kept-alive connection closed by the service gives on its next request."""
    return isinstance(error, (StreamClosedError, ConnectionResetError, BrokenPipeError,
                              simple_httpclient.HTTPStreamClosedError))


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

    def _pool(self) -> Optional[ConnectionPool]:
        seconds = self.ext.proxy_keepalive_seconds
        if seconds <= 0:
            return None
        pool = self.settings.get(_POOL_KEY)
        if pool is None:
            pool = self.settings[_POOL_KEY] = ConnectionPool(seconds)
        return pool

    def _client(self, reuse: bool = True) -> ProxyHTTPClient:
        # tornado's default client limit (100 MB) would make larger downloads fail.
        limit = int(self.ext.proxy_max_body_mb * 1024 * 1024)
        resolver = self.settings.get(_RESOLVER_KEY)
        if resolver is None:
            resolver = self.settings[_RESOLVER_KEY] = NodeResolver()
        return ProxyHTTPClient(force_instance=True, max_body_size=limit, max_buffer_size=limit, resolver=resolver,
                               pool=self._pool(), pool_key=self._job_id or "", reuse=reuse)

    async def _proxy_buffered(self, host, port, proxied_path, body, client):
        client.close()
        if self.request.method == "GET":
            return await self._proxy_streamed(host, port, proxied_path)
        # Other methods: jupyter-server-proxy's buffered path (response rewriting included),
        # always on a new connection: a request that may change state is never sent twice.
        client = self._client(reuse=False)
        try:
            return await super()._proxy_buffered(host, port, proxied_path, body, client)
        finally:
            client.close()

    async def _proxy_streamed(self, host, port, proxied_path) -> None:
        """GET, on a kept-alive connection when one is idle; sent again on a new connection
        if the service had closed that one before answering (GET is idempotent)."""
        for reuse in (True, False):
            client = self._client(reuse=reuse)
            try:
                retry = await self._proxy_streamed_once(host, port, proxied_path, client)
            finally:
                client.close()
            if not retry:  # only a reused connection asks for a retry, so the loop ends after two
                return
            _drop_connections(self.settings, self._job_id or "")

    async def _proxy_streamed_once(self, host, port, proxied_path, client: ProxyHTTPClient) -> bool:
        """GET with the response body forwarded chunk by chunk as it arrives.

        Large downloads (data, model files) then neither wait for the whole body
        nor sit in this server's memory; status and headers are handled as in
        jupyter-server-proxy's buffered path (hop-by-hop headers dropped,
        redirects rewritten to stay under the proxy prefix).
        """
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

        def on_chunk(chunk) -> Awaitable[None]:
            # ``chunk`` may be a view of the client's read buffer, valid until the returned
            # awaitable is done; awaiting the write also holds the download to the browser's pace.
            if self._headers_written and not self._transforms:
                return self.request.connection.write(chunk)  # straight to the browser's socket
            # First piece (it goes out with the headers), or output transforms configured
            # (e.g. ``compress_response``): through RequestHandler.write, which keeps no view.
            self.write(bytes(chunk))
            return self.flush()

        req = self._build_proxy_request(host, port, proxied_path, None, streaming_callback=on_chunk)
        req.response_start_callback = start  # type: ignore[attr-defined]  # see _BulkReadConnection
        req.streaming_callback_takes_views = True  # type: ignore[attr-defined]  # see _LendingHTTP1Connection
        try:
            response = await client.fetch(req, raise_error=False)
        except (httpclient.HTTPError, StreamClosedError, ConnectionError) as err:
            if not started and client.reused_connection and _stale(err):
                return True  # a kept-alive connection the service had closed: send it again
            self._record_activity()
            if started:  # the body was cut off after it began: end the response here
                if self.request.connection.stream.closed():  # the browser left (tab closed, download cancelled)
                    self.log.info("jupyter-hpc proxy: reader of a download from job %s went away", self._job_id)
                else:
                    self.log.warning("jupyter-hpc proxy: download from job %s broke off: %s", self._job_id, err)
                return False
            code = getattr(err, "code", 599)
            raise web.HTTPError(599 if code == 599 else 502, str(err)) from None
        self._record_activity()
        # raise_error=False: only HTTP status errors come back here (any other failure raised above)
        if not started:
            start(response.code, response.reason, response.headers)
        return False

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
