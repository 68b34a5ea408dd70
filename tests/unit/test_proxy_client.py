"""The proxy's HTTP client: large body reads and remembered node lookups (a local tornado server, no cluster)."""

import asyncio
import random
import socket

import pytest

from tornado import httpclient, web
from tornado.iostream import StreamClosedError
from tornado.netutil import bind_sockets
from tornado.httpserver import HTTPServer

from jupyter_hpc.proxy import READ_BYTES, ConnectionPool, NodeResolver, ProxyHTTPClient

BODY = bytes(range(256)) * (12 * 1024)  # 3 MiB


#: No repeating pattern: a piece delivered twice, out of order or overwritten shows.
RANDOM_BODY = random.Random(4).randbytes(5 * 1024 * 1024 + 123)


class Big(web.RequestHandler):
    def get(self):
        self.set_header("Content-Type", "application/octet-stream")
        self.write(BODY)


class RandomBody(web.RequestHandler):
    def get(self):
        self.write(RANDOM_BODY)


async def _serve():
    sockets = bind_sockets(0, "127.0.0.1", family=socket.AF_INET)
    server = HTTPServer(web.Application([("/big", Big), ("/random", RandomBody)]))
    server.add_sockets(sockets)
    return server, sockets[0].getsockname()[1]


async def test_streamed_body_arrives_whole_in_large_reads():
    server, port = await _serve()
    chunks = []
    client = ProxyHTTPClient(force_instance=True, max_body_size=64 << 20, max_buffer_size=64 << 20,
                             resolver=NodeResolver())
    try:
        r = await client.fetch(httpclient.HTTPRequest(f"http://127.0.0.1:{port}/big",
                                                      streaming_callback=chunks.append))
    finally:
        client.close()
        server.stop()
    assert r.code == 200 and b"".join(chunks) == BODY
    # never more than READ_BYTES at once, and larger than tornado's 64 KiB default at least once
    assert max(len(c) for c in chunks) <= READ_BYTES
    assert max(len(c) for c in chunks) > 64 * 1024, [len(c) for c in chunks][:20]


class CountingResolver(NodeResolver):
    def initialize(self, **kwargs):
        super().initialize(**kwargs)
        self.asked = 0
        inner = self._inner

        class Counted:
            async def resolve(_, host, port, family):
                self.asked += 1
                return await inner.resolve(host, port, family)

        self._inner = Counted()


async def test_node_names_are_looked_up_once_within_the_ttl():
    resolver = CountingResolver(ttl=60)
    first = await resolver.resolve("localhost", 8000, socket.AF_INET)
    again = await resolver.resolve("localhost", 8000, socket.AF_INET)
    assert first == again and resolver.asked == 1
    assert first and first[0][0] == socket.AF_INET
    await resolver.resolve("localhost", 8001, socket.AF_INET)  # another port: another entry
    assert resolver.asked == 2
    expired = CountingResolver(ttl=0)
    await expired.resolve("localhost", 8000, socket.AF_INET)
    await expired.resolve("localhost", 8000, socket.AF_INET)
    assert expired.asked == 2


# -- kept-alive connections ---------------------------------------------------------------------


class Small(web.RequestHandler):
    def get(self):
        self.write(f"{self.request.connection.stream.socket.getpeername()[1]}")


class Close(web.RequestHandler):
    def get(self):
        self.set_header("Connection", "close")
        self.write("bye")


class Unframed(web.RequestHandler):
    """Answers without Content-Length or chunking: the body ends when the connection closes."""

    async def get(self):
        stream = self.request.connection.detach()
        await stream.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close")
        stream.close()


async def _serve_small(idle_timeout: float = 3600):
    sockets = bind_sockets(0, "127.0.0.1", family=socket.AF_INET)
    app = web.Application([("/small", Small), ("/close", Close), ("/unframed", Unframed)])
    server = HTTPServer(app, idle_connection_timeout=idle_timeout)
    server.add_sockets(sockets)
    return server, sockets[0].getsockname()[1]


async def _get(pool, key, port, path="/small", reuse=True):
    client = ProxyHTTPClient(force_instance=True, resolver=NodeResolver(), pool=pool, pool_key=key, reuse=reuse)
    try:
        r = await client.fetch(f"http://127.0.0.1:{port}{path}", raise_error=False)
        return r, client.reused_connection
    finally:
        client.close()


async def test_a_job_s_requests_share_one_kept_alive_connection():
    server, port = await _serve_small()
    pool = ConnectionPool(idle_seconds=30)
    try:
        answers = [await _get(pool, "101", port) for _ in range(5)]
    finally:
        pool.close()
        server.stop()
    client_ports = {r.body for r, _ in answers}
    assert all(r.code == 200 for r, _ in answers)
    assert len(client_ports) == 1, client_ports  # one TCP connection for all five
    assert [reused for _, reused in answers] == [False, True, True, True, True]
    assert pool.counters["opened"] == 1 and pool.counters["reused"] == 4


async def test_connections_are_not_shared_between_jobs():
    server, port = await _serve_small()
    pool = ConnectionPool(idle_seconds=30)
    try:
        a, _ = await _get(pool, "101", port)
        b, reused = await _get(pool, "102", port)
        assert not reused and a.body != b.body
        assert pool.idle("101") == 1 and pool.idle("102") == 1
        pool.drop("101")
        assert pool.idle("101") == 0
        c, reused = await _get(pool, "101", port)
        assert not reused and c.body not in (a.body, b.body)
    finally:
        pool.close()
        server.stop()


async def test_connections_the_response_ends_are_not_kept():
    server, port = await _serve_small()
    pool = ConnectionPool(idle_seconds=30)
    try:
        r, _ = await _get(pool, "101", port, "/close")
        assert r.code == 200 and r.body == b"bye" and pool.idle("101") == 0
        r, _ = await _get(pool, "101", port, "/unframed")
        assert r.code == 200 and r.body == b"until close" and pool.idle("101") == 0
        r, _ = await _get(pool, "101", port, reuse=False)
        assert r.code == 200 and pool.idle("101") == 1  # a new connection still goes back
    finally:
        pool.close()
        server.stop()


async def test_a_connection_the_service_closed_is_not_reused():
    server, port = await _serve_small(idle_timeout=0.2)
    pool = ConnectionPool(idle_seconds=30)
    try:
        first, _ = await _get(pool, "101", port)
        assert pool.idle("101") == 1
        await asyncio.sleep(0.6)  # the service closes the idle connection
        second, reused = await _get(pool, "101", port)
        assert second.code == 200 and not reused and second.body != first.body
        assert pool.counters["discarded"] == 1
    finally:
        pool.close()
        server.stop()


async def test_idle_connections_expire():
    server, port = await _serve_small()
    pool = ConnectionPool(idle_seconds=0.1)
    try:
        await _get(pool, "101", port)
        await asyncio.sleep(0.3)
        _, reused = await _get(pool, "101", port)
        assert not reused
        disabled = ConnectionPool(idle_seconds=0)
        await _get(disabled, "101", port)
        assert disabled.idle("101") == 0
    finally:
        pool.close()
        server.stop()


async def test_a_request_on_a_connection_closed_in_flight_is_recognised_as_stale():
    """The service closes a kept-alive connection just as the next request arrives (the race the
    liveness check cannot see): the error is one the proxy answers by sending the GET again."""
    from jupyter_hpc.proxy import _stale

    async def serve(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")  # the second request on this connection: no answer
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = ConnectionPool(idle_seconds=30)
    try:
        first, reused = await _get(pool, "101", port, "/")
        assert first.code == 200 and first.body == b"ok" and not reused and pool.idle("101") == 1
        client = ProxyHTTPClient(force_instance=True, resolver=NodeResolver(), pool=pool, pool_key="101")
        try:
            with pytest.raises(Exception) as failed:
                await client.fetch(f"http://127.0.0.1:{port}/", raise_error=False)
            assert client.reused_connection and _stale(failed.value), repr(failed.value)
        finally:
            client.close()
        third, reused = await _get(pool, "101", port, "/", reuse=False)
        assert third.code == 200 and not reused
    finally:
        pool.close()
        server.close()


async def test_expired_connections_are_closed_without_further_requests():
    server, port = await _serve_small()
    pool = ConnectionPool(idle_seconds=0.1)
    try:
        await _get(pool, "101", port)
        stream = pool._idle["101"][0][2]
        await asyncio.sleep(0.9)
        assert stream.closed() and pool.idle("101") == 0
    finally:
        pool.close()
        server.stop()


async def test_status_and_headers_arrive_before_the_first_chunk():
    server, port = await _serve()
    events = []
    client = ProxyHTTPClient(force_instance=True, max_body_size=64 << 20, max_buffer_size=64 << 20,
                             resolver=NodeResolver())
    req = httpclient.HTTPRequest(f"http://127.0.0.1:{port}/big", streaming_callback=lambda c: events.append(len(c)))
    req.response_start_callback = lambda code, reason, headers: events.append((code, reason, headers["Content-Type"]))
    try:
        r = await client.fetch(req)
    finally:
        client.close()
        server.stop()
    assert r.code == 200
    assert events[0] == (200, "OK", "application/octet-stream")
    assert sum(events[1:]) == len(BODY)


# -- bodies read into lent buffers ----------------------------------------------------------------


def _lending_request(url, consume):
    req = httpclient.HTTPRequest(url, streaming_callback=consume)
    req.streaming_callback_takes_views = True
    return req


async def test_lent_buffers_stay_untouched_until_the_consumer_is_done_with_them():
    """The body comes as views of the client's two read buffers; a view's bytes do not change
    before the awaitable the consumer returned for it is done, however slow the consumer is."""
    server, port = await _serve()
    loop = asyncio.get_running_loop()
    got, changed, kinds = [], [], set()

    def consume(view):
        kinds.add(type(view))
        first = bytes(view)
        done = loop.create_future()

        def finish():
            if bytes(view) != first:
                changed.append(len(got))
            got.append(first)
            done.set_result(None)

        loop.call_later(0.002, finish)
        return done

    client = ProxyHTTPClient(force_instance=True, max_body_size=64 << 20, max_buffer_size=64 << 20,
                             resolver=NodeResolver())
    try:
        r = await client.fetch(_lending_request(f"http://127.0.0.1:{port}/random", consume))
    finally:
        client.close()
        server.stop()
    assert r.code == 200 and not changed
    assert b"".join(got) == RANDOM_BODY
    assert kinds == {memoryview}
    assert max(len(c) for c in got) <= READ_BYTES


async def test_a_consumer_that_fails_ends_the_download_and_its_connection():
    """When the browser goes away mid-download (its write fails), reading stops and the
    connection to the service is closed, not kept for the next request."""
    server, port = await _serve()
    pool = ConnectionPool(idle_seconds=30)
    seen = []

    def consume(view):
        seen.append(len(view))
        if len(seen) == 2:
            failed = asyncio.get_running_loop().create_future()
            failed.set_exception(StreamClosedError())
            return failed
        return None

    client = ProxyHTTPClient(force_instance=True, max_body_size=64 << 20, max_buffer_size=64 << 20,
                             resolver=NodeResolver(), pool=pool, pool_key="42")
    try:
        with pytest.raises((StreamClosedError, httpclient.HTTPError)):
            await client.fetch(_lending_request(f"http://127.0.0.1:{port}/random", consume))
        assert sum(seen) < len(RANDOM_BODY) and pool.idle("42") == 0
        # the next request gets a new connection and the whole body
        got = []
        r = await client.fetch(_lending_request(f"http://127.0.0.1:{port}/random", lambda v: got.append(bytes(v))))
        assert r.code == 200 and b"".join(got) == RANDOM_BODY
    finally:
        client.close()
        pool.close()
        server.stop()
