"""``%%hpc`` / ``%hpc jobs`` in a real IPython as alice, submitting real Slurm jobs (no server)."""

from __future__ import annotations

import os
import pwd
import re

SCRIPT = r'''
ip = get_ipython()
ip.run_line_magic("load_ext", "jupyter_hpc")
ip.run_cell_magic("hpc", "--image site:notebook.sif --time 00:05:00 --mem 1G --cpus 1 --wait",
                  "print('from magic')\nimport matplotlib.pyplot as plt\nplt.plot([1, 2])\n3 * 3\n")
ip.run_cell_magic("hpc", "--image site:notebook.sif --partition gpu --gpus 1 --time 00:05:00 --wait",
                  "import os\nprint('gpus=' + os.environ.get('CUDA_VISIBLE_DEVICES', 'none'))\n")
ip.run_cell_magic("hpc", "--image site:notebook.sif --wait", "raise KeyError('magic failure')")
ip.run_cell_magic("hpc", "--image site:notebook.sif --gpus 10000", "print('never')")
ip.run_cell_magic("hpc", "--image site:notebook.sif --time abc", "print('never')")
ip.run_cell_magic("hpc", "--image site:notebook.sif --partition 'cpu;id'", "print('never')")
ip.run_line_magic("hpc", "jobs")
'''


def test_magic_as_alice(testbed, run_as, user_jobs, tmp_path):
    home = pwd.getpwnam("alice").pw_dir
    script = os.path.join(home, "jhpc-magic-test.py")
    with open(script, "w") as f:
        f.write(SCRIPT)
    pw = pwd.getpwnam("alice")
    os.chown(script, pw.pw_uid, pw.pw_gid)
    before = set(user_jobs("alice"))
    try:
        proc = run_as("alice", [f"{testbed['VENV']}/bin/ipython", "--no-banner", "--colors=nocolor", script],
                      timeout=300, cwd=home, env={"HOME": home})
    finally:
        os.unlink(script)
    out = proc.stdout + proc.stderr
    submitted = re.findall(r"Submitted cell job (\d+)", out)
    assert len(submitted) == 3, out
    assert "from magic" in out and "\n9\n" in out
    assert re.search(rf"job {submitted[0]}: COMPLETED", out), out
    assert "gpus=0" in out, out
    assert "KeyError" in out and "magic failure" in out and re.search(rf"job {submitted[2]}: FAILED", out), out
    assert "%hpc: gpus:" in out and "%hpc: time:" in out and "%hpc: partition:" in out
    assert "never" not in out.replace("print('never')", "")
    # %hpc jobs lists them as cell jobs
    for jid in submitted:
        assert re.search(rf"^{jid}\s+jupyter-hpc-cell\s+cell\s", out, re.M), out
    assert set(submitted) <= set(user_jobs("alice")) - before
