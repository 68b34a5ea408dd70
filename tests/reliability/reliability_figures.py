"""Figures collected by the reliability suite and printed at the end of the run.

Tests add to the process-wide :data:`FIGURES`; ``tests/reliability/conftest.py``
prints :func:`summary_lines` in ``pytest_terminal_summary`` (and writes them as
JSON to ``$JUPYTER_HPC_RELIABILITY_REPORT`` when that is set).
"""

from __future__ import annotations

import json
import math
import threading
from typing import Any, Dict, List, Optional


class Figures:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.hostile_values: set = set()
        self.hostile_requests = 0
        self.accepted_and_submitted = 0
        self.unclear_refusals: List[str] = []
        self.accepted: List[str] = []
        self.entry_points: Dict[str, Dict[str, int]] = {}
        self.cross_tried = 0
        self.cross_succeeded = 0
        self.cross_failures: List[str] = []
        self.servers_lost: Optional[int] = None
        self.notice_seconds: Dict[str, float] = {}
        self.poll_interval: Optional[float] = None
        self.clear_errors: Dict[str, str] = {}
        self.load: Dict[str, Any] = {}
        self.notes: List[str] = []

    # -- hostile input -----------------------------------------------------------------
    def hostile(self, entry_point: str, label: str, requests: int = 1, refused: int = 1,
                unclear: Optional[str] = None) -> None:
        with self._lock:
            self.hostile_values.add(label)
            self.hostile_requests += requests
            ep = self.entry_points.setdefault(entry_point, {"requests": 0, "refused": 0, "submitted": 0})
            ep["requests"] += requests
            ep["refused"] += refused
            if unclear:
                self.unclear_refusals.append(f"{entry_point}: {unclear}")

    def submitted(self, entry_point: str, count: int, detail: str = "") -> None:
        with self._lock:
            ep = self.entry_points.setdefault(entry_point, {"requests": 0, "refused": 0, "submitted": 0})
            ep["submitted"] += count
            self.accepted_and_submitted += count
            if count:
                self.accepted.append(f"{entry_point}: {count} job(s) {detail}")

    # -- other users -------------------------------------------------------------------
    def cross(self, what: str, succeeded: bool) -> None:
        with self._lock:
            self.cross_tried += 1
            if succeeded:
                self.cross_succeeded += 1
                self.cross_failures.append(what)

    # -- faults ---------------------------------------------------------------------------
    def lost(self, count: int) -> None:
        with self._lock:
            self.servers_lost = (self.servers_lost or 0) + count

    def notice(self, what: str, seconds: float, interval: Optional[float] = None) -> None:
        with self._lock:
            self.notice_seconds[what] = seconds
            if interval is not None:
                self.poll_interval = interval

    def error_message(self, situation: str, message: str) -> None:
        with self._lock:
            self.clear_errors[situation] = " ".join(str(message).split())[:300]

    def note(self, text: str) -> None:
        with self._lock:
            self.notes.append(text)

    # -- report ---------------------------------------------------------------------------
    def empty(self) -> bool:
        return not (self.hostile_requests or self.cross_tried or self.servers_lost is not None
                    or self.notice_seconds or self.load or self.clear_errors)

    def as_dict(self) -> Dict[str, Any]:
        return {
            "hostile_values": len(self.hostile_values),
            "hostile_requests": self.hostile_requests,
            "accepted_and_submitted": self.accepted_and_submitted,
            "entry_points": self.entry_points,
            "unclear_refusals": self.unclear_refusals,
            "accepted": self.accepted,
            "cross_user_tried": self.cross_tried,
            "cross_user_succeeded": self.cross_succeeded,
            "cross_user_successes": self.cross_failures,
            "servers_lost": self.servers_lost,
            "notice_seconds": self.notice_seconds,
            "poll_interval": self.poll_interval,
            "clear_errors": self.clear_errors,
            "load": self.load,
            "notes": self.notes,
        }


def percentile(values: List[float], p: float) -> Optional[float]:
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(math.ceil(p / 100.0 * len(s))) - 1))
    return s[k]


def summary_lines(f: Figures) -> List[str]:
    parts = []
    if f.hostile_requests:
        parts.append(f"hostile values {len(f.hostile_values)} ({f.hostile_requests} requests, "
                     f"{len(f.entry_points)} entry points), accepted-and-submitted {f.accepted_and_submitted}")
    if f.cross_tried:
        parts.append(f"cross-user accesses tried {f.cross_tried}, succeeded {f.cross_succeeded}")
    if f.servers_lost is not None:
        parts.append(f"servers lost {f.servers_lost}")
    if f.notice_seconds:
        worst = max(f.notice_seconds.values())
        iv = f" (poll interval {f.poll_interval:g} s)" if f.poll_interval else ""
        parts.append(f"time to notice dead job {worst:.1f} s{iv}")
    if f.load.get("hub_api_p99_ms") is not None:
        parts.append(f"/hub/api p99 during load {f.load['hub_api_p99_ms']:.0f} ms")
    lines = ["reliability: " + "; ".join(parts)] if parts else []
    for ep, c in sorted(f.entry_points.items()):
        lines.append(f"  entry point {ep}: {c['requests']} requests, {c['refused']} refused, {c['submitted']} submitted")
    for what, s in sorted(f.notice_seconds.items()):
        lines.append(f"  noticed {what} after {s:.1f} s")
    if f.load:
        lines.append("  load: " + ", ".join(f"{k}={v}" for k, v in sorted(f.load.items())))
    for situation, msg in sorted(f.clear_errors.items()):
        lines.append(f"  error shown for {situation}: {msg}")
    for item in f.accepted:
        lines.append(f"  ACCEPTED: {item}")
    for item in f.unclear_refusals[:20]:
        lines.append(f"  unclear refusal: {item}")
    for item in f.cross_failures:
        lines.append(f"  CROSS-USER ACCESS: {item}")
    for item in f.notes:
        lines.append(f"  note: {item}")
    return lines


FIGURES = Figures()


def dump(path: str) -> None:
    with open(path, "w") as fh:
        json.dump(FIGURES.as_dict(), fh, indent=2, default=str)
