"""Allow-list validation of every value that can reach a batch script or a command line.

Each validator takes the raw value (from a form, a REST body, a magic's
arguments or a kernelspec), returns the normalised value, or raises
:class:`ValidationError` naming the field and saying what is allowed.
Validators never try to "clean" a value: anything outside the allow-list is
refused.
"""

from __future__ import annotations

import os
import re
from typing import Any, Iterable, Optional


class ValidationError(ValueError):
    """A user-supplied value was refused. ``field`` names the input."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,63}$")
_USER = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
_JOBID = re.compile(r"^[0-9]{1,12}(_[0-9]{1,9})?$")
_TIME = re.compile(
    r"^(?:(?P<days>\d{1,3})-(?P<dh>\d{1,2})(?::(?P<dm>\d{1,2})(?::(?P<ds>\d{1,2}))?)?"
    r"|(?P<h>\d{1,4}):(?P<m>\d{1,2}):(?P<s>\d{1,2})"
    r"|(?P<mm>\d{1,6})(?::(?P<ss>\d{1,2}))?)$"
)
_MEM = re.compile(r"^(?P<num>[0-9]{1,9})(?P<unit>[KMGT]?)B?$", re.IGNORECASE)
_GPU_TYPE = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]{0,127}$")
#: Characters never accepted in free-text values (job names, commands shown in UIs).
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f;&|`$<>\\\"'*?!{}()\[\]#~]")


def _text(field: str, value: Any, max_len: int = 256) -> str:
    if not isinstance(value, str):
        raise ValidationError(field, f"must be a string, got {type(value).__name__}")
    if len(value) > max_len:
        raise ValidationError(field, f"is longer than {max_len} characters")
    if value != value.strip():
        raise ValidationError(field, "must not start or end with whitespace")
    if not value:
        raise ValidationError(field, "must not be empty")
    if value.startswith("-"):
        raise ValidationError(field, "must not start with '-'")
    if not value.isascii():
        raise ValidationError(field, "must contain ASCII characters only")
    return value


def name(value: Any, field: str = "name") -> str:
    """A Slurm partition, account, QOS, job name or image name: ``[A-Za-z0-9_.+-]``, <= 64 chars."""
    value = _text(field, value, 64)
    if not _NAME.match(value):
        raise ValidationError(field, f"{value!r} may contain only letters, digits, '_', '.', '+' and '-'")
    return value


def partition(value: Any) -> str:
    return name(value, "partition")


def account(value: Any) -> str:
    return name(value, "account")


def job_name(value: Any) -> str:
    return name(value, "job name")


def username(value: Any) -> str:
    """A POSIX user name as accepted by Debian's adduser (lower case)."""
    value = _text("user", value, 32)
    if not _USER.match(value):
        raise ValidationError("user", f"{value!r} is not a valid user name")
    return value


_HUB_GROUP = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@+-]{0,63}$")


def hub_group(value: Any, field: str = "groups") -> str:
    """A JupyterHub group name: ``[A-Za-z0-9_.@+-]``, <= 64 characters, not starting with '-', '.', '@' or '+'."""
    value = _text(field, value, 64)
    if not _HUB_GROUP.match(value):
        raise ValidationError(field, f"{value!r} is not an accepted group name (letters, digits and _.@+- only)")
    return value


def job_id(value: Any) -> str:
    """A Slurm job id (``123`` or array element ``123_4``); ints are accepted."""
    if isinstance(value, bool):
        raise ValidationError("job id", "must be a number")
    if isinstance(value, int):
        value = str(value)
    value = _text("job id", value, 24)
    if not _JOBID.match(value):
        raise ValidationError("job id", f"{value!r} is not a Slurm job id (digits only)")
    return value


def integer(value: Any, field: str, minimum: int = 0, maximum: Optional[int] = None) -> int:
    """An integer in ``[minimum, maximum]``; numeric strings are accepted."""
    if isinstance(value, bool):
        raise ValidationError(field, "must be a whole number")
    if isinstance(value, str):
        if not re.fullmatch(r"[0-9]{1,9}", value.strip()) or value != value.strip():
            raise ValidationError(field, f"{value[:40]!r} is not a whole number")
        value = int(value)
    if not isinstance(value, int):
        raise ValidationError(field, f"must be a whole number, got {type(value).__name__}")
    if value < minimum:
        raise ValidationError(field, f"must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValidationError(field, f"must be at most {maximum}, got {value}")
    return value


def cpus(value: Any, maximum: Optional[int] = None) -> int:
    return integer(value, "cpus", 1, maximum if maximum is not None else 4096)


def gpus(value: Any, maximum: Optional[int] = None) -> int:
    return integer(value, "gpus", 0, maximum if maximum is not None else 64)


def gpu_type(value: Any) -> str:
    value = _text("gpu type", value, 32)
    if not _GPU_TYPE.match(value):
        raise ValidationError("gpu type", f"{value!r} is not a GPU type name")
    return value


def time_limit_minutes(value: Any) -> int:
    """Parse a Slurm time limit (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH[:MM[:SS]]``) to minutes."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    value = _text("time", value, 16)
    m = _TIME.match(value)
    if not m:
        raise ValidationError(
            "time", f"{value!r} is not a Slurm time limit; use MM, HH:MM:SS or D-HH:MM:SS (e.g. 01:00:00)"
        )
    g = {k: int(v) if v is not None else 0 for k, v in m.groupdict().items()}
    if m.group("days") is not None:
        if g["dh"] > 23 or g["dm"] > 59 or g["ds"] > 59:
            raise ValidationError("time", f"{value!r} has hours > 23 or minutes/seconds > 59")
        seconds = ((g["days"] * 24 + g["dh"]) * 60 + g["dm"]) * 60 + g["ds"]
    elif m.group("h") is not None:
        if g["m"] > 59 or g["s"] > 59:
            raise ValidationError("time", f"{value!r} has minutes or seconds > 59")
        seconds = (g["h"] * 60 + g["m"]) * 60 + g["s"]
    else:
        if g["ss"] > 59:
            raise ValidationError("time", f"{value!r} has seconds > 59")
        seconds = g["mm"] * 60 + g["ss"]
    minutes = (seconds + 59) // 60
    if minutes < 1:
        raise ValidationError("time", "must be at least one minute")
    if minutes > 366 * 24 * 60:
        raise ValidationError("time", "must be at most 366 days")
    return minutes


def time_limit(value: Any, max_minutes: Optional[int] = None) -> str:
    """Validate a Slurm time limit and return it as ``D-HH:MM:00`` / ``HH:MM:00``."""
    minutes = time_limit_minutes(value)
    if max_minutes is not None and minutes > max_minutes:
        raise ValidationError("time", f"{value!r} is longer than the limit of {format_minutes(max_minutes)}")
    return format_minutes(minutes)


def format_minutes(minutes: int) -> str:
    days, rem = divmod(minutes, 24 * 60)
    h, m = divmod(rem, 60)
    return f"{days}-{h:02d}:{m:02d}:00" if days else f"{h:02d}:{m:02d}:00"


_UNIT_MB = {"": 1, "K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}


def memory_mb(value: Any) -> int:
    """Parse a Slurm memory size (``512``, ``512M``, ``4G``, ``1T``; MB when no unit) into MB."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    value = _text("memory", value, 16)
    m = _MEM.match(value)
    if not m:
        raise ValidationError("memory", f"{value!r} is not a memory size; use e.g. 512M, 4G or 1T")
    mb = int(int(m.group("num")) * _UNIT_MB[m.group("unit").upper()])
    if mb < 1:
        raise ValidationError("memory", "must be at least 1M")
    if mb > 64 * 1024 * 1024:
        raise ValidationError("memory", f"{value!r} is larger than 64T")
    return mb


def memory(value: Any, max_mb: Optional[int] = None) -> str:
    """Validate a memory size and return it in Slurm syntax (``<N>M``)."""
    mb = memory_mb(value)
    if max_mb is not None and mb > max_mb:
        raise ValidationError("memory", f"{value!r} is more than the limit of {max_mb}M")
    return f"{mb}M"


def choice(value: Any, allowed: Iterable[str], field: str) -> str:
    """A value that must be one of ``allowed`` (exact match)."""
    allowed = list(allowed)
    if not isinstance(value, str) or value not in allowed:
        shown = ", ".join(allowed[:20]) or "(none configured)"
        raise ValidationError(field, f"{str(value)[:64]!r} is not one of: {shown}")
    return value


def boolean(value: Any, field: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
        return True
    if isinstance(value, str) and value.lower() in ("false", "0", "no", "off", ""):
        return False
    raise ValidationError(field, "must be true or false")


def env_name(value: Any) -> str:
    value = _text("environment variable", value, 128)
    if not _ENV_NAME.match(value):
        raise ValidationError("environment variable", f"{value!r} is not an upper-case variable name")
    return value


def safe_text(value: Any, field: str, max_len: int = 256) -> str:
    """Free text shown to people (titles, labels): no control or shell meta characters."""
    value = _text(field, value, max_len)
    if _FORBIDDEN.search(value):
        raise ValidationError(field, "contains control or shell special characters")
    return value


def path_within(path: Any, roots: Iterable[str], field: str = "path") -> str:
    """Resolve ``path`` (following symlinks) and require it to lie inside one of ``roots``.

    Returns the resolved real path. Refuses ``..`` escapes and symlinks that
    point outside the allowed directories.
    """
    if not isinstance(path, str) or not path or "\x00" in path or "\n" in path:
        raise ValidationError(field, "is not a valid path")
    if len(path) > 4096:
        raise ValidationError(field, "is too long")
    real = os.path.realpath(path)
    for root in roots:
        root_real = os.path.realpath(root)
        if real == root_real or real.startswith(root_real.rstrip("/") + "/"):
            return real
    raise ValidationError(field, f"{path[:200]!r} is outside the allowed directories")
