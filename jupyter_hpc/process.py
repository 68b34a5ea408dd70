"""The one place where jupyter-hpc starts external commands.

Every Slurm, Apptainer or helper command goes through :func:`run`: an argv list
(never a shell string), a timeout after which the whole process group is
killed, optional execution as another user through a fixed argv prefix, and a
typed :class:`CommandError` that carries the command, its exit code and its
standard error.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence, Union

log = logging.getLogger(__name__)

#: Prefix used to run a command as another user when the caller is root.
#: ``{username}`` is replaced by the (validated) user name.
RUNUSER_PREFIX = ("runuser", "-u", "{username}", "--")
#: Prefix for a non-root hub with a narrow sudoers rule (``SETENV`` needed to pass env).
SUDO_PREFIX = ("sudo", "-n", "-E", "-u", "{username}", "--")


@dataclass
class CommandResult:
    """What a finished command returned."""

    argv: list
    returncode: int
    stdout: str
    stderr: str
    duration: float = 0.0


@dataclass
class CommandError(Exception):
    """A command that failed: it exited non-zero, timed out or could not start."""

    argv: list
    returncode: Optional[int]
    stderr: str = ""
    stdout: str = ""
    reason: str = field(default="")

    def __post_init__(self):
        super().__init__(str(self))

    @property
    def command(self) -> str:
        """The command as text, for messages only (never executed)."""
        return " ".join(self.argv)

    def __str__(self) -> str:  # pragma: no cover - trivial
        msg = self.reason or f"exited with status {self.returncode}"
        detail = (self.stderr or self.stdout or "").strip()
        if len(detail) > 2000:
            detail = "..." + detail[-2000:]
        text = f"`{self.command}` {msg}"
        if detail:
            text += f": {detail}"
        return text


class CommandTimeout(CommandError):
    """The command ran longer than its timeout and was killed."""


class CommandNotFound(CommandError):
    """The program does not exist or is not executable."""


def as_user(argv: Sequence[str], username: Optional[str], prefix: Sequence[str] = RUNUSER_PREFIX) -> list:
    """Return ``argv`` wrapped so that it runs as ``username``.

    ``username`` must already be validated (see :func:`jupyter_hpc.validate.username`).
    With ``username=None`` the argv is returned unchanged.
    """
    argv = [str(a) for a in argv]
    if not username:
        return argv
    from .validate import username as check_username

    check_username(username)
    return [part.replace("{username}", username) for part in prefix] + argv


async def run(
    argv: Sequence[str],
    *,
    timeout: float = 60.0,
    input: Union[str, bytes, None] = None,
    env: Optional[Mapping[str, str]] = None,
    cwd: Optional[str] = None,
    check: bool = True,
    user: Optional[str] = None,
    user_prefix: Sequence[str] = RUNUSER_PREFIX,
) -> CommandResult:
    """Run ``argv`` and return its :class:`CommandResult`.

    - ``argv`` is a list of strings; nothing is interpreted by a shell.
    - ``timeout``: seconds; on expiry the process group gets SIGTERM, then SIGKILL
      after 2 s, and :class:`CommandTimeout` is raised.
    - ``input``: data written to the command's standard input (e.g. a batch
      script for ``sbatch``), so secrets never need to be on the command line.
    - ``env``: the complete environment of the command (``None``: inherit).
    - ``user``: run as that user through ``user_prefix`` (default ``runuser``).
    - ``check``: raise :class:`CommandError` on a non-zero exit status.
    """
    full = as_user(argv, user, user_prefix)
    if not full:
        raise ValueError("empty argv")
    data = input.encode() if isinstance(input, str) else input
    started = time.monotonic()
    try:
        proc = await asyncio.create_subprocess_exec(
            *full,
            stdin=asyncio.subprocess.PIPE if data is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
    except FileNotFoundError as e:
        raise CommandNotFound(full, None, reason=f"could not be started: {e.strerror} ({full[0]})") from e
    except PermissionError as e:
        raise CommandNotFound(full, None, reason=f"is not executable: {e.strerror} ({full[0]})") from e

    try:
        out, err = await asyncio.wait_for(proc.communicate(data), timeout)
    except asyncio.TimeoutError:
        await _kill(proc)
        raise CommandTimeout(full, None, reason=f"timed out after {timeout:g} s and was killed") from None
    except asyncio.CancelledError:
        await _kill(proc)
        raise

    result = CommandResult(
        argv=full,
        returncode=proc.returncode,
        stdout=out.decode(errors="replace"),
        stderr=err.decode(errors="replace"),
        duration=time.monotonic() - started,
    )
    log.debug("ran %s -> %s in %.3fs", full, proc.returncode, result.duration)
    if check and proc.returncode != 0:
        raise CommandError(full, proc.returncode, result.stderr, result.stdout)
    return result


async def _kill(proc: asyncio.subprocess.Process) -> None:
    """Terminate the process group of ``proc``, escalating to SIGKILL."""
    for sig, wait in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
        if proc.returncode is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        except PermissionError:
            # Running as another user (runuser/sudo): signal the direct child.
            try:
                proc.send_signal(sig)
            except ProcessLookupError:
                return
        try:
            await asyncio.wait_for(proc.wait(), wait)
        except asyncio.TimeoutError:
            continue
