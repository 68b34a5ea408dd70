#!/usr/bin/env python3
"""Plain TCP relays, the reference points of bench/proxy_throughput.py.

``splice``: bytes move socket -> pipe -> socket inside the kernel (zero-copy), the
cheapest relay there is. ``copy``: ``recv_into`` a 1 MiB buffer and ``sendall``, the
cheapest relay that copies through user space. Neither parses HTTP, checks anyone
or can rewrite anything: they show what any relay costs on the machine the
benchmark runs on.

    tcp_relay.py LISTEN_PORT HOST PORT splice|copy
"""

import fcntl
import os
import socket
import sys
import threading

F_SETPIPE_SZ = 1031


def pump_splice(src, dst):
    r, w = os.pipe()
    try:
        fcntl.fcntl(w, F_SETPIPE_SZ, 1 << 20)
    except OSError:
        pass
    try:
        while True:
            n = os.splice(src.fileno(), w, 1 << 20)
            if n == 0:
                break
            while n:
                n -= os.splice(r, dst.fileno(), n)
    except OSError:
        pass
    finally:
        os.close(r)
        os.close(w)
        _close_write(dst)


def pump_copy(src, dst):
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    try:
        while True:
            n = src.recv_into(buf)
            if not n:
                break
            dst.sendall(view[:n])
    except OSError:
        pass
    finally:
        _close_write(dst)


def _close_write(sock):
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def main(listen_port, host, port, mode):
    pump = pump_splice if mode == "splice" else pump_copy
    ls = socket.create_server(("127.0.0.1", listen_port))
    while True:
        c, _ = ls.accept()
        u = socket.create_connection((host, port))
        for s in (c, u):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=pump, args=(c, u), daemon=True).start()
        threading.Thread(target=pump, args=(u, c), daemon=True).start()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4])
