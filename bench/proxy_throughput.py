#!/usr/bin/env python3
"""Proxy throughput and latency: a 50 MB download and small requests through
``/jupyter-hpc/proxy/<job_id>/`` versus directly to the service's node:port.

The service is the test web app of tests/integration/server_fixtures.py, started through the REST
API as a real Slurm job in the notebook image. Run as root on the testbed:
``/opt/jupyter-hpc/venv/bin/python bench/proxy_throughput.py [--mb 50] [--requests 200]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import requests

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "integration"))
from server_fixtures import server_for, start_service  # noqa: E402


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
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--user", default="alice")
    args = ap.parse_args()
    # Default proxy settings (the tests switch the ownership-check cache off).
    server = server_for(args.user, "/opt/jupyter-hpc/venv", extra_args=())
    job_id = None
    try:
        svc = start_service(server)
        job_id = svc["job_id"]
        proxied = server.url(f"jupyter-hpc/proxy/{job_id}")
        info = requests.get(proxied + "/info", headers=server.headers(), timeout=30).json()
        node = server.api("GET", f"services/{job_id}").json()["node"]
        direct = f"http://{node}:{info['port_env']}"
        rows = []
        with requests.Session() as s:
            for label, base, headers in (("proxy", proxied, server.headers()), ("direct", direct, {})):
                download(s, base + "/big", headers, 1)  # warm-up
                times = [download(s, base + "/big", headers, args.mb) for _ in range(args.repeat)]
                lat = latencies(s, base + "/small", headers, args.requests)
                rows.append((label, args.mb / statistics.median(times), statistics.median(lat) * 1000,
                             sorted(lat)[int(len(lat) * 0.95) - 1] * 1000))
    finally:
        if job_id:
            server.api("DELETE", f"services/{job_id}")
        server.stop()
    print(f"\nService job {job_id}: {args.mb} MB download (median of {args.repeat}) and "
          f"{args.requests} small GETs (keep-alive)\n")
    print(f"{'path':<8}{'MB/s':>10}{'p50 ms':>10}{'p95 ms':>10}")
    for label, mbps, p50, p95 in rows:
        print(f"{label:<8}{mbps:>10.1f}{p50:>10.2f}{p95:>10.2f}")
    (_, pm, pl, _), (_, dm, dl, _) = rows
    print(f"\nthroughput ratio proxy/direct: {pm / dm:.2f}; p50 latency ratio proxy/direct: {pl / dl:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
