"""Run one notebook cell inside an image on a compute node.

``python -m jupyter_hpc.cellrunner JOB_DIR`` reads ``JOB_DIR/code.py``,
executes it in a fresh IPython shell (current directory = the notebook's
directory, set by the batch script) and appends every output to
``JOB_DIR/outputs.jsonl`` as one nbformat output object per line:

- ``stream`` (stdout/stderr), flushed incrementally so that partial output is
  visible while the cell runs;
- ``display_data`` from ``display(...)`` and from matplotlib figures that are
  still open when the cell ends (PNG, Agg backend);
- ``execute_result`` for the value of the last expression;
- ``error`` with the traceback.

When the cell has finished, ``JOB_DIR/status.json`` is written (``status``:
``ok`` or ``error``) and the program exits with 0 or 1.

Only the standard library and IPython are needed (both are in every
jupyter-hpc notebook image); matplotlib is used only when the cell imported it.
"""

from __future__ import annotations

import base64
import io
import json
import os
import sys
import threading
import time
import warnings
from typing import Any, Optional

OUTPUTS = "outputs.jsonl"
STATUS = "status.json"
CODE = "code.py"

#: Seconds between forced flushes of buffered stream text.
FLUSH_INTERVAL = 0.25
#: Buffered stream text larger than this is flushed at once.
FLUSH_BYTES = 16 * 1024


class OutputSink:
    """Appends nbformat outputs as JSON lines to a file, one ``write`` per line."""

    def __init__(self, path: str):
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._lock = threading.RLock()
        self._buffers = {"stdout": [], "stderr": []}
        self._last_flush = time.monotonic()
        self.count = 0

    def emit(self, output: dict) -> None:
        """Write one output (after any pending stream text, to keep the order)."""
        with self._lock:
            self._flush_streams()
            self._write(output)

    def stream(self, name: str, text: str) -> None:
        with self._lock:
            # Keep the order between stdout and stderr.
            other = "stderr" if name == "stdout" else "stdout"
            if self._buffers[other]:
                self._flush_one(other)
            self._buffers[name].append(text)
            pending = sum(len(t) for t in self._buffers[name])
            if pending >= FLUSH_BYTES or time.monotonic() - self._last_flush >= FLUSH_INTERVAL:
                self._flush_streams()

    def flush(self) -> None:
        with self._lock:
            self._flush_streams()

    def _flush_streams(self) -> None:
        for name in ("stdout", "stderr"):
            self._flush_one(name)
        self._last_flush = time.monotonic()

    def _flush_one(self, name: str) -> None:
        parts = self._buffers[name]
        if not parts:
            return
        text = "".join(parts)
        parts.clear()
        if text:
            self._write({"output_type": "stream", "name": name, "text": text})

    def _write(self, output: dict) -> None:
        line = (json.dumps(output, default=_json_default) + "\n").encode()
        view = memoryview(line)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self.count += 1

    def close(self) -> None:
        self.flush()
        try:
            os.fsync(self._fd)
        except OSError:
            pass
        os.close(self._fd)


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return str(value)


class CapturedStream(io.TextIOBase):
    """``sys.stdout`` / ``sys.stderr`` replacement that feeds an :class:`OutputSink`."""

    def __init__(self, sink: OutputSink, name: str):
        super().__init__()
        self._sink = sink
        self._name = name

    @property
    def name(self):  # noqa: D401 - file-like attribute
        return f"<{self._name}>"

    @property
    def encoding(self):
        return "utf-8"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text) -> int:
        if isinstance(text, bytes):
            text = text.decode(errors="replace")
        if text:
            self._sink.stream(self._name, text)
        return len(text)

    def flush(self) -> None:
        self._sink.flush()


class _Flusher(threading.Thread):
    """Flushes buffered stream text every :data:`FLUSH_INTERVAL` seconds."""

    def __init__(self, sink: OutputSink):
        super().__init__(daemon=True, name="jupyter-hpc-flusher")
        self._sink = sink
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(FLUSH_INTERVAL):
            self._sink.flush()

    def stop(self) -> None:
        self._stop_event.set()


def _make_shell(sink: OutputSink):
    """An IPython shell whose display, result and traceback paths write to ``sink``."""
    from IPython.core.displayhook import DisplayHook
    from IPython.core.displaypub import DisplayPublisher
    from IPython.core.interactiveshell import InteractiveShell

    class SinkDisplayPublisher(DisplayPublisher):
        def publish(self, data, metadata=None, source=None, *, transient=None, update=False, **kwargs):
            sink.emit({"output_type": "display_data", "data": dict(data), "metadata": dict(metadata or {})})

        def clear_output(self, wait=False):
            """Clearing earlier outputs is not supported for cell jobs."""

    class SinkDisplayHook(DisplayHook):
        def start_displayhook(self):
            self._data = None

        def write_output_prompt(self):
            """No prompt: the result is a separate output."""

        def write_format_data(self, format_dict, md_dict=None):
            self._data = (format_dict, md_dict)

        def finish_displayhook(self):
            if self._data is not None:
                data, md = self._data
                sink.emit(
                    {
                        "output_type": "execute_result",
                        "execution_count": 1,
                        "data": dict(data),
                        "metadata": dict(md or {}),
                    }
                )
            self._data = None

    class CellShell(InteractiveShell):
        def _showtraceback(self, etype, evalue, stb):
            sink.emit(
                {
                    "output_type": "error",
                    "ename": getattr(etype, "__name__", str(etype)),
                    "evalue": str(evalue),
                    "traceback": list(stb),
                }
            )

    # ``instance()`` makes IPython.display.display() find this shell.
    shell = CellShell.instance(
        display_pub_class=SinkDisplayPublisher,
        displayhook_class=SinkDisplayHook,
        colors="nocolor" if os.environ.get("NO_COLOR") else "linux",
        history_length=0,
    )
    shell.history_manager.enabled = False
    return shell


def _capture_figures(sink: OutputSink) -> None:
    """Emit every open matplotlib figure as a PNG ``display_data`` and close it."""
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is None:
        return
    for num in list(plt.get_fignums()):
        fig = plt.figure(num)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", bbox_inches="tight")
        width, height = fig.get_size_inches() * fig.dpi
        sink.emit(
            {
                "output_type": "display_data",
                "data": {
                    "image/png": base64.b64encode(buf.getvalue()).decode(),
                    "text/plain": repr(fig),
                },
                "metadata": {"image/png": {"width": int(width), "height": int(height)}},
            }
        )
    plt.close("all")


def run(job_dir: str, code: Optional[str] = None) -> int:
    """Execute the cell of ``job_dir`` and return the exit status (0 ok, 1 error)."""
    if code is None:
        with open(os.path.join(job_dir, CODE), encoding="utf-8") as f:
            code = f.read()
    # Figures are rendered off-screen and captured when the cell ends.
    os.environ["MPLBACKEND"] = "Agg"
    warnings.filterwarnings("ignore", message=".*non-interactive.*cannot be shown")
    started = time.time()
    sink = OutputSink(os.path.join(job_dir, OUTPUTS))
    flusher = _Flusher(sink)
    real_stdout, real_stderr = sys.stdout, sys.stderr
    sys.stdout = CapturedStream(sink, "stdout")
    sys.stderr = CapturedStream(sink, "stderr")
    flusher.start()
    status = {"status": "ok"}
    try:
        shell = _make_shell(sink)
        result = shell.run_cell(code, store_history=False, silent=False)
        try:
            _capture_figures(sink)
        except Exception as e:  # noqa: BLE001 - a broken figure must not hide the cell's own result
            sink.emit({"output_type": "stream", "name": "stderr", "text": f"could not render figure: {e!r}\n"})
        error = result.error_before_exec or result.error_in_exec
        if error is not None:
            status = {"status": "error", "ename": type(error).__name__, "evalue": str(error)}
    except BaseException as e:  # noqa: BLE001 - the status file must be written whatever happened
        status = {"status": "error", "ename": type(e).__name__, "evalue": str(e)}
        sink.emit(
            {"output_type": "error", "ename": type(e).__name__, "evalue": str(e), "traceback": [repr(e)]}
        )
    finally:
        flusher.stop()
        sys.stdout, sys.stderr = real_stdout, real_stderr
        sink.close()
    status["duration"] = round(time.time() - started, 3)
    status["outputs"] = sink.count
    tmp = os.path.join(job_dir, STATUS + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(status, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(job_dir, STATUS))
    return 0 if status["status"] == "ok" else 1


def main(argv: Optional[list] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: python -m jupyter_hpc.cellrunner JOB_DIR", file=sys.stderr)
        return 2
    return run(argv[0])


if __name__ == "__main__":
    sys.exit(main())
