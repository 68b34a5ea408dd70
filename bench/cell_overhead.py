#!/usr/bin/env python3
"""Cell-job overhead: POST cells -> outputs available, minus the cell's own runtime.

Compared, in the same run, with the plain way: ``sbatch`` of a script that runs the same code in
the same image with ``apptainer exec``, polled with ``squeue`` every 2 s, output read from the
job's file. Both run as a test user on the real testbed (run as root:
``/opt/jupyter-hpc/venv/bin/python bench/cell_overhead.py [--runs 10] [--user alice]``).

Printed: median/min/max of the overhead for both ways and their ratio.
"""

from __future__ import annotations

import argparse
import os
import pwd
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "integration"))
from server_fixtures import server_for  # noqa: E402

CODE = "import time\nt = time.time()\nprint('hello')\ntime.sleep(1)\n"
IMAGE_ID = "site:notebook.sif"
IMAGE_PATH = "/opt/jupyter-hpc/images/notebook.sif"


def cell_once(server) -> float:
    t0 = time.monotonic()
    r = server.api("POST", "cells", {"code": CODE, "image": IMAGE_ID, "time": "00:05:00", "memory": "1G"})
    r.raise_for_status()
    job_id = r.json()["job_id"]
    while True:
        d = server.api("GET", f"cells/{job_id}").json()
        if d["done"]:
            break
        time.sleep(0.1)
    total = time.monotonic() - t0
    if d["status"] != "ok":
        raise RuntimeError(d)
    # the cell's own runtime, measured by the runner
    home = pwd.getpwnam(server.user).pw_dir
    import json

    link = os.path.join(home, ".jupyter-hpc", "jobs", "by-id", job_id)
    with open(os.path.join(os.path.dirname(link), os.readlink(link), "status.json")) as f:
        runtime = json.load(f)["duration"]
    return total - runtime


def sbatch_once(user: str, workdir: str) -> float:
    out = os.path.join(workdir, "out-%j.txt")
    script = (
        "#!/bin/bash\n"
        f"apptainer exec {IMAGE_PATH} python3 -c \"import time; t=time.time(); "
        "print('hello'); time.sleep(1); "
        "print('runtime', time.time()-t)\"\n"
    )
    t0 = time.monotonic()
    proc = subprocess.run(["runuser", "-u", user, "--", "sbatch", "--parsable", "--time=00:05:00", "--mem=1G",
                           f"--output={out}", f"--chdir={workdir}"],
                          input=script, capture_output=True, text=True, check=True)
    job_id = proc.stdout.strip().split(";")[0]
    while True:
        time.sleep(2.0)
        q = subprocess.run(["squeue", "--noheader", "--states=all", f"--jobs={job_id}", "--format=%T"],
                           capture_output=True, text=True)
        state = q.stdout.strip()
        if not state or state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"):
            break
    path = out.replace("%j", job_id)
    text = open(path).read()
    total = time.monotonic() - t0
    runtime = float(text.split("runtime", 1)[1].split()[0])
    return total - runtime


def summary(values):
    return statistics.median(values), min(values), max(values)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--user", default="alice")
    args = ap.parse_args()
    server = server_for(args.user, "/opt/jupyter-hpc/venv")
    workdir = tempfile.mkdtemp(prefix="jhpc-bench-", dir="/tmp")
    pw = pwd.getpwnam(args.user)
    os.chown(workdir, pw.pw_uid, pw.pw_gid)
    try:
        cell_once(server)  # warm-up (page cache, watcher)
        cells, plain = [], []
        for i in range(args.runs):
            cells.append(cell_once(server))
            plain.append(sbatch_once(args.user, workdir))
            print(f"run {i + 1}: cell job {cells[-1]:.2f} s, sbatch+poll {plain[-1]:.2f} s", file=sys.stderr)
    finally:
        server.stop()
        subprocess.run(["rm", "-rf", workdir])
    c, p = summary(cells), summary(plain)
    print(f"\nCell-job overhead (submit -> outputs available, minus the cell's runtime), {args.runs} runs\n")
    print(f"{'method':<34}{'median s':>10}{'min s':>10}{'max s':>10}")
    print(f"{'jupyter-hpc POST cells + poll 0.1s':<34}{c[0]:>10.2f}{c[1]:>10.2f}{c[2]:>10.2f}")
    print(f"{'sbatch + squeue every 2 s':<34}{p[0]:>10.2f}{p[1]:>10.2f}{p[2]:>10.2f}")
    print(f"\nratio (cell job / sbatch+poll, medians): {c[0] / p[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
