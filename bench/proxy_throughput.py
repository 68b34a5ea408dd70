#!/usr/bin/env python3
"""Proxy throughput and latency: a 50 MB download and small requests through
``/jupyter-hpc/proxy/<job_id>/`` versus directly to the service's node:port.

The service is the test web app of tests/integration/server_fixtures.py, started through the REST
API as a real Slurm job in the notebook image. Run as root on the testbed:
``/opt/jupyter-hpc/venv/bin/python bench/proxy_throughput.py [--mb 50] [--requests 200]``.

A second server of the same user, whose proxy opens a new connection to the service for every
request (``proxy_keepalive_seconds=0``), shows what the keep-alive pool gains ("proxy, no pool").
Two plain TCP relays (bench/tcp_relay.py) to the same service are measured in the same run as
reference points: ``splice`` (kernel zero-copy) and ``copy`` (the cheapest relay through user
space). On a small machine where client, proxy and service share the CPUs, they show how much of
the gap to "direct" any relay has, whatever its implementation.

``--link-gbit N`` puts the service behind an N Gbit/s link, as a compute node is in a real
cluster: an htb class on ``lo`` for the traffic to and from the service's port only (so the
direct path, the relays and the proxy's upstream hop all cross it; browser to Jupyter server
does not). It is removed when the benchmark ends.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import requests

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "integration"))
from server_fixtures import free_port, server_for, start_service  # noqa: E402

RELAY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tcp_relay.py")


def shape_link(port: int, gbit: float) -> None:
    """Traffic to and from ``port`` on lo limited to ``gbit`` Gbit/s; the rest (practically) unlimited."""
    shown = subprocess.run(["tc", "qdisc", "show", "dev", "lo"], capture_output=True, text=True, check=True).stdout
    if "noqueue" not in shown:
        raise SystemExit(f"lo already has a queueing discipline ({shown.strip()}); not touching it")
    tc = ["tc"]
    for argv in (
        # htb: the default class is left (practically) unlimited, class 1:20 is the link
        ["qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "10", "r2q", "100000"],
        ["class", "add", "dev", "lo", "parent", "1:", "classid", "1:10", "htb", "rate", "100gbit",
         "ceil", "100gbit", "burst", "64mb", "cburst", "64mb"],
        ["class", "add", "dev", "lo", "parent", "1:", "classid", "1:20", "htb", "rate", f"{gbit}gbit",
         "ceil", f"{gbit}gbit", "burst", "8mb", "cburst", "8mb"],
        ["filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "prio", "1", "u32",
         "match", "ip", "sport", str(port), "0xffff", "flowid", "1:20"],
        ["filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "prio", "1", "u32",
         "match", "ip", "dport", str(port), "0xffff", "flowid", "1:20"],
    ):
        subprocess.run(tc + argv, check=True)


def unshape_link() -> None:
    subprocess.run(["tc", "qdisc", "del", "dev", "lo", "root"], check=False, capture_output=True)


def start_relays(host: str, port: int):
    """The reference relays to host:port: [(label, url, process)]."""
    out = []
    for mode in ("splice", "copy"):
        listen = free_port()
        proc = subprocess.Popen([sys.executable, RELAY, str(listen), host, str(port), mode])
        out.append((f"{mode} relay", f"http://127.0.0.1:{listen}", proc))
    deadline = time.monotonic() + 10
    for _, url, _ in out:
        while True:
            try:
                requests.get(url + "/small", timeout=5).raise_for_status()
                break
            except requests.RequestException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    return out


def download(session, url, headers, mb) -> float:
    t0 = time.monotonic()
    r = session.get(url, headers=headers, params={"mb": str(mb)}, stream=True, timeout=600)
    r.raise_for_status()
    n = 0
    for chunk in r.iter_content(1024 * 1024):
        n += len(chunk)
    elapsed = time.monotonic() - t0
    if n != mb * 1024 * 1024:
        raise RuntimeError(f"got {n} bytes")
    return elapsed


def latencies(session, url, headers, count):
    out = []
    for _ in range(count):
        t0 = time.monotonic()
        r = session.get(url, headers=headers, timeout=60)
        r.raise_for_status()
        out.append(time.monotonic() - t0)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=5, help="rounds; each downloads once per path")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--user", default="alice")
    ap.add_argument("--no-references", action="store_true", help="skip the reference TCP relays")
    ap.add_argument("--no-fresh", action="store_true",
                    help="skip the second server whose proxy opens a new connection for every request")
    ap.add_argument("--link-gbit", type=float, default=0,
                    help="put the service behind a link of this many Gbit/s (tc on lo; root only)")
    args = ap.parse_args()
    # Default proxy settings (the tests switch the ownership-check cache off).
    server = server_for(args.user, "/opt/jupyter-hpc/venv", extra_args=())
    # The same user's second server with the keep-alive pool off: what pooling gains, same run.
    fresh = None if args.no_fresh else server_for(
        args.user, "/opt/jupyter-hpc/venv", extra_args=("--HPCExtension.proxy_keepalive_seconds=0",))
    job_id = None
    relays = []
    shaped = False
    try:
        svc = start_service(server)
        job_id = svc["job_id"]
        proxied = server.url(f"jupyter-hpc/proxy/{job_id}")
        info = requests.get(proxied + "/info", headers=server.headers(), timeout=30).json()
        node = server.api("GET", f"services/{job_id}").json()["node"]
        direct = f"http://{node}:{info['port_env']}"
        if args.link_gbit > 0:
            shape_link(int(info["port_env"]), args.link_gbit)
            shaped = True
        if not args.no_references:
            relays = start_relays(node, int(info["port_env"]))
        rows = []
        paths = [("proxy", proxied, server.headers()), ("direct", direct, {})]
        if fresh is not None:
            paths.append(("proxy, no pool", fresh.url(f"jupyter-hpc/proxy/{job_id}"), fresh.headers()))
        paths += [(label, url, {}) for label, url, _ in relays]
        times = {label: [] for label, _, _ in paths}
        lat = {label: [] for label, _, _ in paths}
        # Interleaved: every round measures every path, so drifts of the machine hit all alike.
        rounds = max(args.repeat, 1)
        per_round = max(args.requests // rounds, 1)
        with requests.Session() as s:
            for label, base, headers in paths:
                download(s, base + "/big", headers, 1)  # warm-up
            for _ in range(rounds):
                for label, base, headers in paths:
                    times[label].append(download(s, base + "/big", headers, args.mb))
                    lat[label] += latencies(s, base + "/small", headers, per_round)
        for label, _, _ in paths:
            ls = sorted(lat[label])
            rows.append((label, args.mb / statistics.median(times[label]), statistics.median(ls) * 1000,
                         ls[int(len(ls) * 0.95) - 1] * 1000))
    finally:
        if shaped:
            unshape_link()
        for _, _, proc in relays:
            proc.kill()
            proc.wait()
        if job_id:
            server.api("DELETE", f"services/{job_id}")
        server.stop()
        if fresh is not None:
            fresh.stop()
    print(f"\nService job {job_id}: {args.mb} MB download (median of {args.repeat}) and "
          f"{args.requests} small GETs (keep-alive), interleaved over {args.repeat} rounds"
          + (f"; service behind a {args.link_gbit:g} Gbit/s link" if args.link_gbit > 0 else "; loopback") + "\n")
    print(f"{'path':<16}{'MB/s':>10}{'p50 ms':>10}{'p95 ms':>10}{'MB/s / direct':>15}{'p50 - direct':>14}")
    dm, dl = rows[1][1], rows[1][2]
    for label, mbps, p50, p95 in rows:
        print(f"{label:<16}{mbps:>10.1f}{p50:>10.2f}{p95:>10.2f}{mbps / dm:>15.2f}{p50 - dl:>+14.2f}")
    pm, pl = rows[0][1], rows[0][2]
    print(f"\nthroughput ratio proxy/direct: {pm / dm:.2f}; p50 latency ratio proxy/direct: {pl / dl:.2f}; "
          f"p50 added by the proxy: {pl - dl:+.2f} ms")
    for label, mbps, p50, _ in rows[2:]:
        print(f"throughput ratio proxy/{label}: {pm / mbps:.2f}; p50 proxy - {label}: {pl - p50:+.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
