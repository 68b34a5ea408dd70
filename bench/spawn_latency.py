#!/usr/bin/env python3
"""Spawn-to-ready latency: ApptainerSlurmSpawner (SIF and sandbox image) vs vanilla batchspawner.SlurmSpawner.

Runs as root on the testbed (bash tests/testbed/testbed.sh up). For each
spawner it starts a real JupyterHub (+ configurable-http-proxy) on free ports,
spawns the same user's server N times through the REST API and measures the
time from ``POST /hub/api/users/NAME/server`` until the hub reports the server
ready (client side) and the hub's own "took X seconds to start" (server side).
Each server is stopped (and its job gone) before the next spawn.

The vanilla spawner runs ``jupyterhub-singleuser`` from the testbed venv on the
node (no container) through ``batchspawner-singleuser``; ``exec_prefix`` is
``runuser -u {username} --`` because the testbed has no sudo.

    /opt/jupyter-hpc/venv/bin/python bench/spawn_latency.py --spawns 5
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "integration"))

from hub_fixtures import HubProcess, slurm_jobs, testbed_env  # noqa: E402

VENV = os.environ.get("JUPYTER_HPC_VENV", "/opt/jupyter-hpc/venv")

VANILLA = r'''
c.JupyterHub.spawner_class = "batchspawner.SlurmSpawner"
c.SlurmSpawner.exec_prefix = "runuser -u {{username}} --"
c.SlurmSpawner.req_partition = "{partition}"
c.SlurmSpawner.req_memory = "1G"
c.SlurmSpawner.req_nprocs = "1"
c.SlurmSpawner.req_runtime = "01:00:00"
c.SlurmSpawner.req_options = "--job-name={job_name}"
c.SlurmSpawner.req_prologue = "export PATH={venv}/bin:/usr/sbin:/usr/bin:/sbin:/bin"
c.SlurmSpawner.batch_script = """#!/bin/bash
#SBATCH --output={{{{homedir}}}}/jupyterhub_slurmspawner_%j.log
#SBATCH --chdir={{{{homedir}}}}
#SBATCH --export={{{{keepvars}}}}
#SBATCH --partition={{{{partition}}}}
#SBATCH --time={{{{runtime}}}}
#SBATCH --mem={{{{memory}}}}
#SBATCH --cpus-per-task={{{{nprocs}}}}
#SBATCH {{{{options}}}}
set -euo pipefail
trap 'echo SIGTERM received' TERM
{{{{prologue}}}}
{{{{cmd}}}}
"""
'''

APPTAINER = r'''
c.JupyterHub.spawner_class = "apptainer-slurm"
c.ApptainerSlurmSpawner.job_name = "{job_name}"
c.ApptainerSlurmSpawner.default_partition = "{partition}"
c.ApptainerSlurmSpawner.default_memory = "1G"
c.ApptainerSlurmSpawner.default_time = "01:00:00"
c.ApptainerSlurmSpawner.default_image = "{image}"
c.ImageCatalog.site_dirs = ["{image_dir}"]
'''


def measure(name: str, spawner_config: str, user: str, n: int, workdir: str, job_name: str):
    hub = HubProcess(os.path.join(workdir, name), spawner_config=spawner_config, job_name=job_name)
    hub.start()
    client, server = [], []
    try:
        for i in range(n):
            t0 = time.monotonic()
            r = hub.spawn(user, {} if name.startswith("apptainer") else None)
            if r.status_code not in (201, 202):
                raise RuntimeError(f"{name}: spawn {i}: {r.status_code} {r.text[:300]}\n{hub.log_tail()}")
            hub.wait_ready(user, timeout=180)
            client.append(time.monotonic() - t0)
            hub.stop_server(user)
            deadline = time.monotonic() + 60
            while slurm_jobs(user=user, name=job_name) and time.monotonic() < deadline:
                time.sleep(0.3)
            print(f"  {name:<12} spawn {i + 1}/{n}: {client[-1]:.2f} s", flush=True)
    finally:
        hub.stop()
        subprocess.run(["scancel", "--name=" + job_name], check=False)
    with open(hub.log_path, errors="replace") as f:
        server = [float(x) for x in re.findall(rf"User {user} took ([0-9.]+) seconds to start", f.read())]
    return client, server


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spawns", type=int, default=5, help="spawns per spawner (>= 5 for the median)")
    ap.add_argument("--user", default="alice")
    ap.add_argument("--only", choices=["apptainer", "apptainer-sandbox", "batchspawner"], help="measure one variant only")
    ap.add_argument("--keep", action="store_true", help="keep the hub work directories (logs)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("run as root on the testbed", file=sys.stderr)
        return 2
    env = testbed_env()
    partition = env.get("CPU_PARTITION", "cpu")
    workdir = tempfile.mkdtemp(prefix="jhpc-bench-latency-")
    image_dir = env.get("IMAGE_DIR", "/opt/jupyter-hpc/images")
    configs = {
        "apptainer": APPTAINER.format(job_name="bench-apptainer", partition=partition, image_dir=image_dir,
                                      image="site:notebook.sif"),
        "apptainer-sandbox": APPTAINER.format(job_name="bench-apptainer", partition=partition, image_dir=image_dir,
                                              image="site:notebook-sandbox"),
        "batchspawner": VANILLA.format(job_name="bench-vanilla", partition=partition, venv=VENV),
    }
    results = {}
    for name, cfg in configs.items():
        if args.only and args.only != name:
            continue
        job_name = "bench-apptainer" if name.startswith("apptainer") else "bench-vanilla"
        results[name] = measure(name, cfg, args.user, args.spawns, workdir, job_name)

    print()
    print(f"spawn-to-ready latency, {args.spawns} spawns each, user {args.user}, partition {partition}")
    print(f"{'spawner':<33} {'median':>8} {'min':>8} {'max':>8} {'hub median':>11}")
    label = {"apptainer": "ApptainerSlurmSpawner (SIF)", "apptainer-sandbox": "ApptainerSlurmSpawner (sandbox)",
             "batchspawner": "batchspawner.SlurmSpawner"}
    for name, (client, server) in results.items():
        print(f"{label[name]:<33} {statistics.median(client):>7.2f}s {min(client):>7.2f}s {max(client):>7.2f}s "
              f"{statistics.median(server) if server else float('nan'):>10.2f}s")
    if "batchspawner" in results:
        b = statistics.median(results["batchspawner"][0])
        for name in ("apptainer", "apptainer-sandbox"):
            if name in results:
                a = statistics.median(results[name][0])
                print(f"ratio {label[name]} / batchspawner.SlurmSpawner (median): {a / b:.2f}")
    if args.keep:
        print(f"hub logs under {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
