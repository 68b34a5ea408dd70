"""Kernel start-to-idle time: Slurm + Apptainer provisioner vs a local ipykernel.

Both kernels are started in the same run with jupyter_client's
AsyncKernelManager, alternately, ``--runs`` times each (default 5). The time
is measured from ``start_kernel()`` until the kernel answers a
``kernel_info_request`` (it is idle and usable); shutdown is not timed.
Prints the median of each and their ratio.

Run as a user who may submit jobs and run Apptainer (root re-runs itself as
``--user``, default alice, on the testbed)::

    /opt/jupyter-hpc/venv/bin/python bench/kernel_start.py --runs 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def write_specs(root: str, image: str, partition: str) -> None:
    from jupyter_hpc.cli import build_kernel_json

    hpc = build_kernel_json(image=image, display_name="bench HPC", partition=partition, time="00:10:00",
                            cpus=1, memory="512M")
    local = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "bench local",
        "language": "python",
    }
    for name, spec in (("bench-hpc", hpc), ("bench-local", local)):
        os.makedirs(os.path.join(root, "kernels", name), exist_ok=True)
        with open(os.path.join(root, "kernels", name, "kernel.json"), "w") as f:
            json.dump(spec, f)


async def start_to_idle(name: str) -> tuple:
    from jupyter_client.manager import AsyncKernelManager

    km = AsyncKernelManager(kernel_name=name)
    t0 = time.perf_counter()
    await km.start_kernel(cwd=os.path.expanduser("~"))
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=120)
        elapsed = time.perf_counter() - t0
        job = getattr(km.provisioner, "job_id", None)
    finally:
        kc.stop_channels()
        await km.shutdown_kernel(now=False)
    return elapsed, job


async def main_async(args) -> int:
    with tempfile.TemporaryDirectory(prefix="jhpc-bench-") as root:
        write_specs(root, args.image, args.partition)
        os.environ["JUPYTER_PATH"] = root
        times = {"bench-local": [], "bench-hpc": []}
        for i in range(args.runs):
            for name in ("bench-local", "bench-hpc"):
                elapsed, job = await start_to_idle(name)
                times[name].append(elapsed)
                extra = f" (job {job})" if job else ""
                print(f"run {i + 1}: {name:12s} {elapsed:6.2f} s{extra}", flush=True)
        local = statistics.median(times["bench-local"])
        hpc = statistics.median(times["bench-hpc"])
        print()
        print(f"local ipykernel (LocalProvisioner), median of {args.runs}: {local:.2f} s")
        print(f"Slurm + Apptainer (hpc-slurm-provisioner), median of {args.runs}: {hpc:.2f} s")
        print(f"ratio hpc / local: {hpc / local:.1f}x")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--image", default="/opt/jupyter-hpc/images/notebook.sif")
    parser.add_argument("--partition", default="cpu")
    parser.add_argument("--user", default="alice", help="user to run as when started as root")
    args = parser.parse_args()
    if os.geteuid() == 0:
        argv = ["runuser", "-u", args.user, "--", sys.executable, os.path.abspath(__file__),
                "--runs", str(args.runs), "--image", args.image, "--partition", args.partition]
        import pwd

        home = pwd.getpwnam(args.user).pw_dir
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "SLURM_CONF")}
        env.update(HOME=home, USER=args.user, LOGNAME=args.user)
        return subprocess.call(argv, cwd=home, env=env)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
