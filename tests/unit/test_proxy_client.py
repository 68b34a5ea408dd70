"""The proxy's HTTP client: large body reads and remembered node lookups (a local tornado server, no cluster)."""

import socket

from tornado import httpclient, web
from tornado.netutil import bind_sockets
from tornado.httpserver import HTTPServer

from jupyter_hpc.proxy import READ_BYTES, NodeResolver, ProxyHTTPClient

BODY = bytes(range(256)) * (12 * 1024)  # 3 MiB


class Big(web.RequestHandler):
    def get(self):
        self.set_header("Content-Type", "application/octet-stream")
        self.write(BODY)


async def _serve():
    sockets = bind_sockets(0, "127.0.0.1", family=socket.AF_INET)
    server = HTTPServer(web.Application([("/big", Big)]))
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
