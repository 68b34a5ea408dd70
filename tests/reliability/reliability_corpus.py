"""Hostile values sent through every entry point of jupyter-hpc.

Each entry is ``(label, value)``. Every value must be refused by every field it
is sent to (a few field-specific exceptions are listed in :func:`applies`).
Values that point at a registry only ever name ``127.0.0.1``.
"""

from __future__ import annotations

import re
from typing import Any, List, Tuple

MB = 1024 * 1024

#: The user who sends hostile values (created by the suite; nobody else submits as her,
#: so counting her Slurm jobs before and after is exact).
HOSTILE_USER = "mallory"
#: Symlinks created by the suite in ~mallory/images that point out of it.
ESCAPE_LINK = "jhpc-rel-escape.sif"  # -> /etc/passwd
ESCAPE_DIR_LINK = "jhpc-rel-escape-dir"  # -> /home/alice/images

STRINGS: List[Tuple[str, str]] = [
    # -- line breaks and script injection
    ("newline", "cpu\nid"),
    ("carriage-return", "cpu\rid"),
    ("sbatch-directive-line", "cpu\n#SBATCH --uid=0"),
    ("sbatch-directive", "#SBATCH --wrap=id"),
    ("unicode-line-separator", "cpu\u2028id"),
    ("next-line-char", "cpu\u0085id"),
    ("tab", "cpu\tid"),
    ("semicolon", "cpu;id"),
    ("command-substitution", "$(id)"),
    ("backticks", "`id`"),
    ("variable-expansion", "${IFS}id"),
    ("pipe", "cpu|id"),
    ("and-chain", "cpu&&id"),
    ("redirect", "cpu>/tmp/jhpc-rel-pwned"),
    ("process-substitution", "<(id)"),
    ("single-quote", "cpu'id"),
    ("double-quote", 'cpu"id'),
    ("backslash", "cpu\\nid"),
    ("brace-placeholder", "{port}"),
    ("percent-format", "%j%u%x"),
    # -- option injection
    ("leading-dash", "-p"),
    ("long-option", "--uid=0"),
    ("wrap-option", "--wrap=id"),
    ("wrap-with-shell", "--wrap=/bin/sh -c id"),
    ("option-after-space", "1 --uid=0"),
    ("partition-list", "cpu,gpu"),
    ("gres-string", "gpu:tesla:2"),
    ("space", "cpu gpu"),
    # -- paths
    ("traversal", "../../etc/passwd"),
    ("absolute-secret", "/etc/shadow"),
    ("traversal-in-image-dir", "/opt/jupyter-hpc/images/../../../etc/passwd"),
    ("other-users-image", "/home/mallory/images/../../alice/images/alice-private.sif"),
    ("user-image-traversal", "user:../../alice/images/alice-private.sif"),
    ("site-image-traversal", "site:../../../etc/passwd"),
    ("image-with-injection", "site:notebook.sif;id"),
    ("image-with-directive", "site:notebook.sif\n#SBATCH --uid=0"),
    ("tilde-other-user", "~root/.ssh"),
    ("symlink-out-of-image-dir", "user:" + ESCAPE_LINK),
    ("symlink-dir-out-of-image-dir", "user:" + ESCAPE_DIR_LINK + "/alice-private.sif"),
    ("symlink-path-out-of-image-dir", "/home/mallory/images/" + ESCAPE_LINK),
    ("other-users-private-image", "/home/alice/images/alice-private.sif"),
    ("other-users-image-id", "user:alice-private.sif"),
    ("file-url", "file:///etc/passwd"),
    ("registry-injection", "docker://127.0.0.1:5000/demo/tiny:latest;id"),
    ("registry-option", "docker://127.0.0.1:5000/demo/tiny:latest --no-https"),
    ("registry-traversal", "docker://127.0.0.1:5000/../../etc/passwd"),
    ("registry-newline", "oras://127.0.0.1:5000/demo/tiny\nid"),
    # -- numbers
    ("huge-number", "99999999999999999999"),
    ("float-overflow", "1e309"),
    ("negative", "-1"),
    ("negative-zero", "-0"),
    ("nan", "NaN"),
    ("infinity", "inf"),
    ("fraction", "1.5"),
    ("hex", "0x10"),
    ("plus-sign", "+1"),
    ("padded", " 1"),
    ("zero-time", "00:00:00"),
    ("overlong-time", "9999-00:00:00"),
    ("zero-memory", "0M"),
    ("huge-memory", "999999999T"),
    ("non-numeric", "abc"),
    # -- unicode tricks
    ("rtl-override", "cpu\u202e"),
    ("homoglyph", "\u0441pu"),
    ("fullwidth", "\uff43\uff50\uff55"),
    ("fullwidth-digits", "\uff11\uff12"),
    ("arabic-indic-digit", "\u0663"),
    ("zero-width-space", "c\u200bpu"),
    ("combining-mark", "1\u0301"),
    ("nul", "cpu\x00id"),
    ("del", "cpu\x7f"),
    # -- size
    ("one-megabyte", "A" * MB),
    ("one-megabyte-newlines", "\n" * MB),
]

#: JSON-only values (REST bodies); not sent where only strings can travel.
JSON_VALUES: List[Tuple[str, Any]] = [
    ("json-true", True),
    ("json-list", ["cpu"]),
    ("json-object", {"$ne": None}),
    ("json-float", 1.5),
    ("json-negative", -1),
    ("json-huge-int", 10 ** 30),
]

CORPUS: List[Tuple[str, Any]] = STRINGS + JSON_VALUES

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,63}$")
_CTRL = re.compile(r"[\x00-\x1f\x7f]")
NAME_FIELDS = ("name", "account", "qos", "job_name")
#: Fields whose legitimate values are JSON booleans.
BOOL_FIELDS = ("exclusive", "instance", "fakeroot", "force")


def applies(field: str, value: Any) -> bool:
    """Whether ``value`` is hostile for ``field`` (some fields legitimately accept some of them).

    - ``name`` (service or kernelspec name), ``account``, ``qos``, ``job_name``: plain names
      such as ``99999999999999999999`` are well-formed; whether an account or QOS exists and
      may be used is Slurm's decision (and ``allowed_accounts`` where a site sets it).
    - ``command``, ``python`` (argv elements): free text run without a shell; only control
      characters, a leading ``-`` in the program, non-strings and oversized elements are hostile.
    - ``exclusive``, ``instance``, ``fakeroot``, ``force``: JSON booleans are their legitimate values.
    """
    if field in NAME_FIELDS:
        return not (isinstance(value, str) and _NAME.match(value))
    if field in BOOL_FIELDS:
        return not isinstance(value, bool)
    if field in ("command", "python"):
        return not isinstance(value, str) or bool(_CTRL.search(value)) or value.startswith("-") or len(value) > 4096 \
            or value == ""
    return True


def strings() -> List[Tuple[str, str]]:
    return list(STRINGS)


def short(value: Any, n: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= n else text[:n] + "..."
