#!/usr/bin/env python3
"""Container start time per runtime: ``python3 -c 'import jupyter_server'`` in the notebook image.

The anchor is ``apptainer exec notebook.sif``; measured in the same run: ``apptainer exec`` of the
sandbox directory and ``ch-run`` of the Charliecloud image directory (``notebook-ch``), each with
the argv jupyter-hpc's job scripts use (:func:`jupyter_hpc.apptainer.command_argv`). Commands run
as an ordinary user, interleaved, on the testbed. Run as root:
``/opt/jupyter-hpc/venv/bin/python bench/runtime_start.py [--runs 15] [--user alice]``.
"""

from __future__ import annotations

import argparse
import os
import pwd
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from jupyter_hpc.apptainer import command_argv  # noqa: E402


def testbed_env(path: str = "/etc/jupyter-hpc/testbed.env") -> dict:
    env = {}
    with open(path) as f:
        for line in f:
            if "=" in line and not line.startswith("#"):
                k, v = line.strip().split("=", 1)
                env[k] = v
    return env


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--user", default="alice")
    args = ap.parse_args()
    tb = testbed_env()
    code = ["python3", "-c", "import jupyter_server"]
    cases = [
        ("apptainer SIF (anchor)", command_argv(tb["NOTEBOOK_SIF"], code, runtime="apptainer",
                                                 apptainer=tb.get("APPTAINER", "apptainer"))),
        ("apptainer sandbox", command_argv(tb["SANDBOX_DIR"], code, runtime="apptainer",
                                           apptainer=tb.get("APPTAINER", "apptainer"))),
        ("ch-run directory", command_argv(tb["CH_IMAGE_DIR"], code, runtime="charliecloud")),
    ]
    home = pwd.getpwnam(args.user).pw_dir
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "USER": args.user, "LANG": "C.UTF-8"}
    times = {label: [] for label, _ in cases}
    for i in range(args.runs + 1):  # the first round warms the page cache and is dropped
        for label, argv in cases:
            t0 = time.monotonic()
            res = subprocess.run(["/usr/sbin/runuser", "-u", args.user, "--", *argv], env=env, cwd=home,
                                 capture_output=True, text=True, timeout=120)
            elapsed = time.monotonic() - t0
            if res.returncode != 0:
                print(f"{label}: failed: {res.stderr.strip()[-500:]}", file=sys.stderr)
                return 1
            if i:
                times[label].append(elapsed)
    anchor = statistics.median(times[cases[0][0]])
    print(f"\nContainer start + 'import jupyter_server' as {args.user}, median of {args.runs}\n")
    print(f"{'runtime':<24}{'median ms':>10}{'p90 ms':>10}{'vs anchor':>11}")
    for label, _ in cases:
        t = sorted(times[label])
        med = statistics.median(t)
        print(f"{label:<24}{med * 1000:>10.0f}{t[int(len(t) * 0.9) - 1] * 1000:>10.0f}{med / anchor:>10.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
