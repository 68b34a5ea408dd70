#!/usr/bin/env python3
"""slurmctld RPC load of server polling: shared JobWatcher vs vanilla batchspawner.

Runs as root on the testbed. For each size N (default 100 and 200) it submits
N held jobs (``sbatch --hold``, standing in for N running single-user servers)
and then, for ``--duration`` seconds each:

- ``idle``: no poller (background RPC rate of the testbed);
- ``apptainer``: N real :class:`ApptainerSlurmSpawner` objects whose ``poll()``
  runs every ``--poll-interval`` s (JupyterHub's ``Spawner.poll_interval``,
  default 30 s) and reads the shared watcher's cache; the watcher runs one
  ``squeue`` per ``--watcher-interval``;
- ``batchspawner``: N real :class:`batchspawner.SlurmSpawner` objects
  (``exec_prefix = runuser -u {username} --``) whose ``poll()`` runs one
  ``squeue -j ID`` each per poll interval.

slurmctld's RPC counters are reset with ``sdiag --reset`` before each phase and
read with ``sdiag`` after it; the table shows RPCs per minute (all message
types, and job-information requests alone) and the ratio between the two
spawners. Other activity on the machine is included in every phase; the
``idle`` row shows how much.

    /opt/jupyter-hpc/venv/bin/python bench/slurmctld_load.py --sizes 100 200 --duration 60
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import subprocess
import sys
import time
from types import SimpleNamespace
from typing import Dict, List, Tuple

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "integration"))

JOB_NAME = "bench-held"


def sdiag_reset() -> None:
    subprocess.run(["sdiag", "--reset"], check=True, capture_output=True, timeout=30)


def sdiag_counts() -> Tuple[Dict[str, int], Dict[str, int]]:
    """(RPC counts by message type, RPC counts by user) since the last reset."""
    out = subprocess.run(["sdiag"], check=True, capture_output=True, text=True, timeout=30).stdout
    section = out.split("Remote Procedure Call statistics by message type", 1)[-1]
    by_type_text, _, by_user_text = section.partition("Remote Procedure Call statistics by user")
    by_user_text = by_user_text.split("Pending RPC statistics", 1)[0]
    by_type: Dict[str, int] = {}
    for name, count in re.findall(r"^\s*([A-Z_]+)\s+\(\s*\d+\)\s+count:(\d+)", by_type_text, re.M):
        by_type[name] = by_type.get(name, 0) + int(count)
    by_user: Dict[str, int] = {}
    for name, count in re.findall(r"^\s*([a-z_][a-z0-9_.-]*)\s+\(\s*\d+\)\s+count:(\d+)", by_user_text, re.M):
        by_user[name] = by_user.get(name, 0) + int(count)
    return by_type, by_user


def submit_held(n: int, user: str, partition: str) -> List[str]:
    ids = []
    for _ in range(n):
        r = subprocess.run(
            ["runuser", "-u", user, "--", "sbatch", "--parsable", "--hold", "--job-name=" + JOB_NAME,
             "--partition=" + partition, "--mem=16M", "--time=00:10:00", "--output=/dev/null", "--wrap", "sleep 600"],
            check=True, capture_output=True, text=True, timeout=60, cwd="/",
        )
        ids.append(r.stdout.strip().split(";")[0])
    return ids


def cancel_held() -> None:
    subprocess.run(["scancel", "--name=" + JOB_NAME], check=False, timeout=120)


def _as_user_client_class():
    from jupyter_hpc.cluster import SlurmClient

    class AsUserClient(SlurmClient):
        def __init__(self, bench_user: str, **kw):
            super().__init__(**kw)
            self.bench_user = bench_user

        async def squeue(self, job_ids=None, user=None, states="all", as_user=None):
            return await super().squeue(job_ids, user=user, states=states, as_user=self.bench_user)

    return AsUserClient


def _AsUserClient(user: str):
    return _as_user_client_class()(user)


def make_user(name: str):
    return SimpleNamespace(name=name, url=f"/user/{name}/", escaped_name=name)


async def run_pollers(spawners, poll_interval: float, duration: float) -> int:
    """Call every spawner's poll() once per poll_interval (random phase) for duration seconds."""
    polls = 0
    stop_at = time.monotonic() + duration

    async def loop(sp):
        nonlocal polls
        await asyncio.sleep(random.uniform(0, poll_interval))
        while time.monotonic() < stop_at:
            status = await sp.poll()
            polls += 1
            if status is not None:
                print(f"  warning: poll() of job {sp.job_id or '?'} returned {status}", file=sys.stderr)
            await asyncio.sleep(poll_interval)

    await asyncio.gather(*(loop(sp) for sp in spawners))
    return polls


async def phase_apptainer(ids: List[str], user: str, poll_interval: float, watcher_interval: float, duration: float):
    from traitlets.config import Config

    from jupyter_hpc.spawners import ApptainerSlurmSpawner
    from jupyter_hpc.watcher import JobWatcher

    JobWatcher.clear_instance()
    # The watcher's squeue runs as the benchmark user so that sdiag's per-user count isolates it
    # from other activity on the machine (the hub runs it as root).
    JobWatcher.instance(interval=watcher_interval, client=_AsUserClient(user))
    cfg = Config()
    cfg.ApptainerSlurmSpawner.watcher_interval = watcher_interval
    spawners = []
    for jid in ids:
        sp = ApptainerSlurmSpawner(user=make_user(user), config=cfg)
        sp.load_state({"job_id": jid})
        spawners.append(sp)
    # hub start: every spawner is polled once (shared refresh), then the steady state is measured
    await asyncio.gather(*(sp.poll() for sp in spawners))
    sdiag_reset()
    polls = await run_pollers(spawners, poll_interval, duration)
    counts = sdiag_counts()
    watcher = JobWatcher.instance()
    squeues = watcher.counters.get("squeue")
    JobWatcher.clear_instance()
    return counts, polls, squeues


async def phase_batchspawner(ids: List[str], user: str, poll_interval: float, duration: float):
    from batchspawner import SlurmSpawner

    spawners = []
    for jid in ids:
        sp = SlurmSpawner(user=make_user(user))
        sp.exec_prefix = "runuser -u {username} --"
        sp.req_homedir = "/"
        sp.req_keepvars = ""
        sp.job_id = jid
        spawners.append(sp)
    sdiag_reset()
    polls = await run_pollers(spawners, poll_interval, duration)
    return sdiag_counts(), polls, None


async def phase_idle(duration: float):
    sdiag_reset()
    await asyncio.sleep(duration)
    return sdiag_counts(), 0, None


def job_info_rpcs(counts: Dict[str, int]) -> int:
    return sum(v for k, v in counts.items() if k.startswith("REQUEST_JOB_INFO"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 200], help="held jobs = spawners per run")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds measured per phase")
    ap.add_argument("--poll-interval", type=float, default=30.0, help="Spawner.poll_interval (JupyterHub default 30)")
    ap.add_argument("--watcher-interval", type=float, default=None,
                    help="ApptainerSlurmSpawner.watcher_interval (default: the spawner's default)")
    ap.add_argument("--user", default="carol")
    ap.add_argument("--partition", default="cpu")
    args = ap.parse_args(argv)
    if args.watcher_interval is None:
        from jupyter_hpc.spawners import ApptainerSlurmSpawner

        args.watcher_interval = ApptainerSlurmSpawner.class_traits()["watcher_interval"].default_value
    if os.geteuid() != 0:
        print("run as root on the testbed (sdiag --reset needs it)", file=sys.stderr)
        return 2

    rows: List[Tuple[int, str, float, float, float, int, object]] = []
    for n in args.sizes:
        cancel_held()
        print(f"submitting {n} held jobs as {args.user} ...", flush=True)
        ids = submit_held(n, args.user, args.partition)
        try:
            for name in ("idle", "apptainer", "batchspawner"):
                print(f"  N={n} {name}: measuring {args.duration:.0f} s ...", flush=True)
                if name == "idle":
                    counts, polls, squeues = asyncio.run(phase_idle(args.duration))
                elif name == "apptainer":
                    counts, polls, squeues = asyncio.run(
                        phase_apptainer(ids, args.user, args.poll_interval, args.watcher_interval, args.duration))
                else:
                    counts, polls, squeues = asyncio.run(
                        phase_batchspawner(ids, args.user, args.poll_interval, args.duration))
                by_type, by_user = counts
                per_min = 60.0 / args.duration
                rows.append((n, name, sum(by_type.values()) * per_min, job_info_rpcs(by_type) * per_min,
                             by_user.get(args.user, 0) * per_min, polls, squeues))
        finally:
            cancel_held()

    print()
    print(f"slurmctld RPCs per minute (sdiag), poll_interval={args.poll_interval:g}s, "
          f"watcher_interval={args.watcher_interval:g}s, {args.duration:g}s per phase")
    print(f"{'servers':>7} {'poller':<14} {'all RPC/min':>12} {'job-info RPC/min':>17} "
          f"{args.user + ' RPC/min':>16} {'poll() calls':>13} {'watcher squeue':>15}")
    for n, name, total, jobinfo, mine, polls, squeues in rows:
        print(f"{n:>7} {name:<14} {total:>12.0f} {jobinfo:>17.0f} {mine:>16.0f} {polls:>13} "
              f"{'' if squeues is None else squeues:>15}")
    print()
    print(f"'{args.user} RPC/min' counts only the pollers' own RPCs (sdiag per-user statistics); the other")
    print("columns include everything else slurmctld served meanwhile (see the idle rows).")
    for n in args.sizes:
        by = {name: mine for m, name, _, _, mine, _, _ in rows if m == n}
        a, b = by["apptainer"] - by["idle"], by["batchspawner"] - by["idle"]
        ratio = (b / a) if a > 0 else float("inf")
        print(f"N={n}: RPC/min of the pollers: shared watcher {a:.0f}, batchspawner {b:.0f} "
              f"-> batchspawner / shared watcher = {ratio:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
