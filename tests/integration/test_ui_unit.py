"""Unit tests of the JupyterLab extension (vitest: models and REST handler).

They need no testbed, only Node.js and the npm dependencies that
``labextension/build.sh`` installs; skipped when those are missing.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

LABEXT_SRC = Path(__file__).resolve().parents[2] / "labextension"


def test_labextension_unit_tests():
    vitest = LABEXT_SRC / "node_modules" / ".bin" / "vitest"
    if not shutil.which("node") or not vitest.exists():
        pytest.skip("npm dependencies not installed (run labextension/build.sh)")
    result = subprocess.run([str(vitest), "run", "--reporter=verbose"], cwd=str(LABEXT_SRC),
                            capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-8000:]
    assert " passed" in output
