"""jupyter_hpc.cellrunner: runs a cell in a fresh Python and writes nbformat outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jupyter_hpc import cellrunner
from jupyter_hpc.celljob import read_outputs, read_status

REPO = Path(__file__).resolve().parents[2]


def run_cell(tmp_path: Path, code: str, timeout: float = 60):
    (tmp_path / "code.py").write_text(code)
    env = dict(os.environ, PYTHONPATH=str(REPO), NO_COLOR="1")
    proc = subprocess.run([sys.executable, "-m", "jupyter_hpc.cellrunner", str(tmp_path)],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=str(tmp_path))
    outputs, _ = read_outputs(str(tmp_path))
    return proc, outputs, read_status(str(tmp_path))


def test_stream_result_and_display(tmp_path):
    proc, outputs, status = run_cell(tmp_path, (
        "import sys\n"
        "print('hello')\n"
        "print('oops', file=sys.stderr)\n"
        "from IPython.display import display, HTML\n"
        "display(HTML('<b>x</b>'))\n"
        "40 + 2\n"
    ))
    assert proc.returncode == 0, proc.stderr
    assert status["status"] == "ok"
    assert outputs[0] == {"output_type": "stream", "name": "stdout", "text": "hello\n"}
    assert outputs[1] == {"output_type": "stream", "name": "stderr", "text": "oops\n"}
    assert outputs[2]["output_type"] == "display_data"
    assert outputs[2]["data"]["text/html"] == "<b>x</b>"
    assert outputs[3]["output_type"] == "execute_result"
    assert outputs[3]["data"]["text/plain"] == "42"
    assert status["outputs"] == len(outputs) == 4


def test_error_gives_traceback_and_exit_1(tmp_path):
    proc, outputs, status = run_cell(tmp_path, "x = 1\nprint('before')\n1/0\n")
    assert proc.returncode == 1
    assert status["status"] == "error" and status["ename"] == "ZeroDivisionError"
    assert outputs[0]["text"] == "before\n"
    err = outputs[-1]
    assert err["output_type"] == "error" and err["ename"] == "ZeroDivisionError"
    assert any("1/0" in line for line in err["traceback"])


def test_syntax_error(tmp_path):
    proc, outputs, status = run_cell(tmp_path, "def (:\n")
    assert proc.returncode == 1
    assert status["status"] == "error"
    assert outputs[-1]["output_type"] == "error"


def test_matplotlib_figure_as_png(tmp_path):
    pytest.importorskip("matplotlib")
    proc, outputs, status = run_cell(tmp_path, (
        "import matplotlib.pyplot as plt\n"
        "plt.plot([1, 2, 3])\n"
        "plt.show()\n"
        "print('drawn')\n"
    ))
    assert proc.returncode == 0, proc.stderr
    kinds = [o["output_type"] for o in outputs]
    assert "display_data" in kinds
    png = next(o for o in outputs if o["output_type"] == "display_data")["data"]["image/png"]
    import base64

    assert base64.b64decode(png)[:8] == b"\x89PNG\r\n\x1a\n"
    assert not any("non-interactive" in o.get("text", "") for o in outputs)


def test_partial_output_is_visible_while_running(tmp_path):
    (tmp_path / "code.py").write_text("import time\nprint('first', flush=True)\ntime.sleep(3)\nprint('second')\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "jupyter_hpc.cellrunner", str(tmp_path)], env=env)
    try:
        deadline = time.monotonic() + 20
        seen = []
        while time.monotonic() < deadline:
            seen, _ = read_outputs(str(tmp_path))
            if seen:
                break
            time.sleep(0.1)
        assert seen and seen[0]["text"] == "first\n"
        assert read_status(str(tmp_path)) is None  # still running
    finally:
        proc.wait(timeout=30)
    outputs, _ = read_outputs(str(tmp_path))
    assert "".join(o["text"] for o in outputs) == "first\nsecond\n"


def test_usage_errors():
    assert cellrunner.main([]) == 2
    assert cellrunner.main(["--x"]) == 2


def test_read_outputs_skips_partial_last_line(tmp_path):
    p = tmp_path / "outputs.jsonl"
    p.write_text(json.dumps({"output_type": "stream", "name": "stdout", "text": "a"}) + "\n" + '{"output_ty')
    outs, nxt = read_outputs(str(tmp_path))
    assert len(outs) == 1 and nxt == 1
    outs, nxt = read_outputs(str(tmp_path), since=1)
    assert outs == [] and nxt == 1


def test_sink_orders_streams_and_displays(tmp_path):
    sink = cellrunner.OutputSink(str(tmp_path / "outputs.jsonl"))
    sink.stream("stdout", "a")
    sink.stream("stdout", "b\n")
    sink.stream("stderr", "e\n")
    sink.emit({"output_type": "display_data", "data": {"text/plain": "d"}, "metadata": {}})
    sink.stream("stdout", "c\n")
    sink.close()
    outs, _ = read_outputs(str(tmp_path))
    assert [(o["output_type"], o.get("text")) for o in outs] == [
        ("stream", "ab\n"), ("stream", "e\n"), ("display_data", None), ("stream", "c\n")]
    assert (tmp_path / "outputs.jsonl").stat().st_mode & 0o077 == 0
