"""Execute a notebook with nbclient and save it with its outputs (run as a test user).

``python notebook_runner.py IN.ipynb OUT.ipynb [--kernel NAME] [--cwd DIR] [--timeout S]
[--startup-timeout S] [--pause-at-tag TAG]``

Cells run one by one in a single kernel (``--kernel``, default: the notebook's
kernelspec). With ``--pause-at-tag TAG`` the runner stops before the first
cell tagged TAG, writes the notebook so far to OUT, prints ``PAUSED`` and
waits for a line on its standard input before it goes on (a test looks at what
the earlier cells started meanwhile). Exit status 0 when every cell ran
without error, 1 otherwise (the failing cell's error is printed and saved).
"""

import argparse
import asyncio
import sys

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError


async def run(args) -> int:
    nb = nbformat.read(args.input, as_version=4)
    kernel = args.kernel or nb.metadata.get("kernelspec", {}).get("name") or "python3"
    client = NotebookClient(nb, timeout=args.timeout, startup_timeout=args.startup_timeout, kernel_name=kernel,
                            resources={"metadata": {"path": args.cwd}})
    client.reset_execution_trackers()
    status = 0
    paused = False
    async with client.async_setup_kernel():
        for index, cell in enumerate(nb.cells):
            if args.pause_at_tag and not paused and args.pause_at_tag in cell.metadata.get("tags", []):
                paused = True
                nbformat.write(nb, args.output)
                print("PAUSED", flush=True)
                await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
            try:
                await client.async_execute_cell(cell, index, execution_count=client.code_cells_executed + 1)
            except CellExecutionError as e:
                print(f"cell {index} failed:\n{e}", flush=True)
                status = 1
                break
    nbformat.write(nb, args.output)
    return status


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--kernel")
    p.add_argument("--cwd", default=".")
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--startup-timeout", type=float, default=120)
    p.add_argument("--pause-at-tag")
    sys.exit(asyncio.run(run(p.parse_args())))


if __name__ == "__main__":
    main()
