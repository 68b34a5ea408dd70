"""User options of the Apptainer + Slurm spawner: profiles, validation and the HTML form.

Everything here is pure (no Slurm call, no file access): the spawner passes in
the live partition list (``sinfo``) and the user's image catalog, and gets back
either a :class:`SpawnOptions` with normalised values or a
:class:`~jupyter_hpc.validate.ValidationError` naming the field.

The same function checks form submissions and REST API spawns
(``POST /hub/api/users/NAME/server`` with ``user_options``), so both paths
accept exactly the same values.
"""

from __future__ import annotations

import fnmatch
import html
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

from jupyter_hpc import validate
from jupyter_hpc.validate import ValidationError

#: Keys a user may set. Anything else is refused (a typo must not be ignored silently).
OPTION_KEYS = ("profile", "image", "partition", "gpus", "gpu_type", "cpus", "memory", "time", "account", "venv")

#: Keys an admin may put in a profile's ``defaults`` and ``limits``.
DEFAULT_KEYS = ("image", "partition", "gpus", "gpu_type", "cpus", "memory", "time", "account")
LIMIT_KEYS = ("gpus", "cpus", "memory", "time")
PROFILE_KEYS = ("name", "display_name", "description", "defaults", "limits", "images", "partitions", "accounts")


@dataclass
class Profile:
    """An admin-defined preset: defaults, upper limits and the images/partitions it offers."""

    name: str
    display_name: str = ""
    description: str = ""
    defaults: Dict[str, Any] = field(default_factory=dict)
    limits: Dict[str, Any] = field(default_factory=dict)
    #: Image ids or glob patterns (``site:*``); empty = every image of the catalog.
    images: List[str] = field(default_factory=list)
    #: Partition names; empty = every partition the spawner allows.
    partitions: List[str] = field(default_factory=list)
    #: Accounts; empty = any account name (Slurm checks membership).
    accounts: List[str] = field(default_factory=list)

    @classmethod
    def from_config(cls, raw: Mapping[str, Any]) -> "Profile":
        """Build a profile from the ``profiles`` traitlet entry; configuration errors raise ``ValueError``."""
        if not isinstance(raw, Mapping):
            raise ValueError(f"a profile must be a dict, got {type(raw).__name__}")
        unknown = set(raw) - set(PROFILE_KEYS)
        if unknown:
            raise ValueError(f"profile {raw.get('name')!r}: unknown keys {sorted(unknown)}; allowed: {PROFILE_KEYS}")
        name = validate.name(raw.get("name"), "profile name")
        defaults = dict(raw.get("defaults") or {})
        limits = dict(raw.get("limits") or {})
        bad = set(defaults) - set(DEFAULT_KEYS)
        if bad:
            raise ValueError(f"profile {name!r}: unknown default keys {sorted(bad)}; allowed: {DEFAULT_KEYS}")
        bad = set(limits) - set(LIMIT_KEYS)
        if bad:
            raise ValueError(f"profile {name!r}: unknown limit keys {sorted(bad)}; allowed: {LIMIT_KEYS}")
        return cls(
            name=name,
            display_name=str(raw.get("display_name") or name),
            description=str(raw.get("description") or ""),
            defaults=defaults,
            limits=limits,
            images=[str(i) for i in raw.get("images") or []],
            partitions=[validate.partition(p) for p in raw.get("partitions") or []],
            accounts=[validate.account(a) for a in raw.get("accounts") or []],
        )

    def allows_image(self, image_id: str) -> bool:
        return not self.images or any(fnmatch.fnmatchcase(image_id, pat) for pat in self.images)


@dataclass
class Limits:
    """Upper bounds; ``None`` = no bound beyond what the partition offers."""

    cpus: Optional[int] = None
    memory_mb: Optional[int] = None
    time_minutes: Optional[int] = None
    gpus: Optional[int] = None

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> "Limits":
        out = cls()
        if values.get("cpus") not in (None, "", 0):
            out.cpus = validate.cpus(values["cpus"])
        if values.get("memory") not in (None, "", 0):
            out.memory_mb = validate.memory_mb(values["memory"])
        if values.get("time") not in (None, "", 0):
            out.time_minutes = validate.time_limit_minutes(values["time"])
        if values.get("gpus") not in (None, ""):
            out.gpus = validate.gpus(values["gpus"])
        return out

    def tightened(self, other: "Limits") -> "Limits":
        """The stricter of both for every bound."""

        def lo(a, b):
            if a is None:
                return b
            if b is None:
                return a
            return min(a, b)

        return Limits(
            cpus=lo(self.cpus, other.cpus),
            memory_mb=lo(self.memory_mb, other.memory_mb),
            time_minutes=lo(self.time_minutes, other.time_minutes),
            gpus=lo(self.gpus, other.gpus),
        )


@dataclass
class SpawnOptions:
    """Validated, normalised options of one spawn."""

    image_id: str
    partition: str
    cpus: int
    memory: str  # <N>M
    time: str  # HH:MM:00 / D-HH:MM:00
    gpus: int = 0
    gpu_type: Optional[str] = None
    account: Optional[str] = None
    profile: Optional[str] = None
    #: name of one of the user's venvs (``~/.jupyter-hpc/venvs/NAME``), first on the server's path
    venv: Optional[str] = None

    def to_dict(self) -> dict:
        return asdict(self)


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, str) and value == "")


def _short(value: Any) -> str:
    """A user value quoted for an error message: printable ASCII only, at most 40 characters."""
    text = repr(value)
    text = "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in text)
    return text[:40] + ("..." if len(text) > 40 else "")


def image_id_of(image: Any) -> str:
    return getattr(image, "id", None) or image["id"]


_FIELD_NAMES = {"gpu type": "gpu_type", "profile name": "profile"}


def resolve_options(raw: Any, **kwargs) -> SpawnOptions:
    """Check ``raw`` user options against the configuration and the live cluster.

    See :func:`_resolve` for the arguments. Raises :class:`ValidationError`
    whose ``field`` is the user option's key.
    """
    try:
        return _resolve(raw, **kwargs)
    except ValidationError as e:
        field_name = _FIELD_NAMES.get(e.field, e.field)
        if field_name != e.field:
            raise ValidationError(field_name, e.message) from None
        raise


def _resolve(
    raw: Any,
    *,
    partitions: Sequence[Any],
    images: Sequence[Any],
    profiles: Sequence[Profile] = (),
    defaults: Optional[Mapping[str, Any]] = None,
    limits: Optional[Limits] = None,
    allowed_partitions: Sequence[str] = (),
    allowed_accounts: Sequence[str] = (),
) -> SpawnOptions:
    """Check ``raw`` user options against the configuration and the live cluster.

    - ``partitions``: :class:`jupyter_hpc.slurm.Partition` objects from ``sinfo``.
    - ``images``: the user's :class:`jupyter_hpc.images.Image` list (catalog).
    - ``profiles``: admin presets; with profiles configured, the chosen (or first)
      profile's defaults, limits and image/partition lists apply.
    - ``defaults`` / ``limits``: spawner-wide defaults and bounds.

    Raises :class:`ValidationError` (field + message) for anything not allowed.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ValidationError("user_options", "must be a JSON object")
    unknown = [k for k in raw if k not in OPTION_KEYS]
    if unknown:
        shown = ", ".join(_short(k) for k in unknown[:5])
        raise ValidationError("user_options", f"unknown option(s) {shown}; allowed: {', '.join(OPTION_KEYS)}")

    eff_defaults: Dict[str, Any] = dict(defaults or {})
    eff_limits = limits or Limits()
    profile: Optional[Profile] = None
    if profiles:
        names = [p.name for p in profiles]
        wanted = raw.get("profile")
        if _present(wanted):
            validate.choice(wanted, names, "profile")
            profile = profiles[names.index(wanted)]
        else:
            profile = profiles[0]
        eff_defaults.update({k: v for k, v in profile.defaults.items() if _present(v)})
        eff_limits = eff_limits.tightened(Limits.from_values(profile.limits))
    elif _present(raw.get("profile")):
        raise ValidationError("profile", "no profiles are configured on this hub")

    def value(key: str) -> Any:
        v = raw.get(key)
        return v if _present(v) else eff_defaults.get(key)

    # --- partition -------------------------------------------------------
    by_name = {p.name: p for p in partitions}
    offered = [p.name for p in partitions]
    if allowed_partitions:
        offered = [n for n in offered if n in allowed_partitions]
    if profile and profile.partitions:
        offered = [n for n in offered if n in profile.partitions]
    part_name = value("partition")
    if not _present(part_name):
        default_part = [p.name for p in partitions if p.default and p.name in offered]
        part_name = (default_part or offered or [None])[0]
    if part_name is None:
        raise ValidationError("partition", "no partition is available")
    part_name = validate.partition(part_name)
    if part_name not in offered:
        raise ValidationError("partition", f"{part_name!r} is not one of: {', '.join(offered) or '(none)'}")
    part = by_name[part_name]

    # --- CPUs / memory / time -------------------------------------------
    max_cpus = _lo(eff_limits.cpus, part.cpus or None)
    cpus = validate.cpus(value("cpus") if _present(value("cpus")) else 1, max_cpus)
    max_mem = _lo(eff_limits.memory_mb, part.memory_mb or None)
    mem_raw = value("memory")
    if not _present(mem_raw):
        mem_raw = f"{min(1024, max_mem or 1024)}M"
    memory = validate.memory(mem_raw, max_mem)
    max_time = _lo(eff_limits.time_minutes, part.max_time_minutes)
    time_raw = value("time")
    if not _present(time_raw):
        time_raw = validate.format_minutes(min(60, max_time or 60))
    time = validate.time_limit(time_raw, max_time)

    # --- GPUs --------------------------------------------------------------
    gpu_type = value("gpu_type")
    if _present(gpu_type):
        gpu_type = validate.gpu_type(gpu_type)
        if gpu_type not in part.gpus:
            types = ", ".join(part.gpu_types) or "none"
            raise ValidationError("gpu_type", f"partition {part_name!r} has no GPUs of type {gpu_type!r} (types: {types})")
    else:
        gpu_type = None
    gpus_raw = value("gpus")
    gpus = validate.gpus(gpus_raw if _present(gpus_raw) else 0)
    if gpus:
        available = part.max_gpus(gpu_type)
        if not available:
            raise ValidationError("gpus", f"partition {part_name!r} has no GPUs; choose a GPU partition or 0 GPUs")
        bound = _lo(eff_limits.gpus, available)
        if gpus > bound:
            raise ValidationError("gpus", f"at most {bound} GPU(s) can be requested in partition {part_name!r}, got {gpus}")

    # --- account -------------------------------------------------------------
    account = value("account")
    if _present(account):
        account = validate.account(account)
        accounts = list(profile.accounts) if profile and profile.accounts else list(allowed_accounts)
        if accounts:
            validate.choice(account, accounts, "account")
    else:
        account = None

    # --- image -------------------------------------------------------------
    image_id = value("image")
    allowed_ids = [image_id_of(i) for i in images if not profile or profile.allows_image(image_id_of(i))]
    if not _present(image_id):
        if not allowed_ids:
            raise ValidationError("image", "no container image is available to you")
        image_id = allowed_ids[0]
    if not isinstance(image_id, str):
        raise ValidationError("image", "must be an image id (string)")
    if image_id not in allowed_ids:
        shown = ", ".join(allowed_ids[:10]) or "(none)"
        raise ValidationError("image", f"{_short(image_id)} is not an image you may use; choose one of: {shown}")

    # --- venv (the name only; the spawner resolves it inside the user's venv directory) ---
    venv = raw.get("venv")
    if _present(venv):
        from jupyter_hpc.venvs import venv_name

        venv = venv_name(venv)
    else:
        venv = None

    return SpawnOptions(
        venv=venv,
        image_id=image_id,
        partition=part_name,
        cpus=cpus,
        memory=memory,
        time=time,
        gpus=gpus,
        gpu_type=gpu_type,
        account=account,
        profile=profile.name if profile else None,
    )


def _lo(a: Optional[int], b: Optional[int]) -> Optional[int]:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def options_from_form(form_data: Mapping[str, List[str]]) -> Dict[str, Any]:
    """Form fields (lists of strings) -> ``user_options`` (single strings; empty fields dropped).

    Unknown fields are kept so that :func:`resolve_options` refuses them, except
    the hub's own ``_xsrf`` token.
    """
    out: Dict[str, Any] = {}
    for key, values in form_data.items():
        if key == "_xsrf":
            continue
        if isinstance(values, (list, tuple)):
            values = [v for v in values if v != ""]
            if not values:
                continue
            out[key] = values[0] if len(values) == 1 else list(values)
        elif values != "":
            out[key] = values
    return out


# ---------------------------------------------------------------------------
# HTML form
# ---------------------------------------------------------------------------

_e = html.escape


def _select(name: str, label: str, choices: Iterable[tuple], selected: Any, help_text: str = "") -> str:
    opts = []
    for value, text in choices:
        sel = " selected" if str(value) == str(selected) else ""
        opts.append(f'<option value="{_e(str(value))}"{sel}>{_e(str(text))}</option>')
    hint = f'<small class="form-text text-muted">{_e(help_text)}</small>' if help_text else ""
    return (
        f'<div class="form-group mb-3"><label for="hpc-{name}" class="form-label">{_e(label)}</label>'
        f'<select class="form-control form-select" id="hpc-{name}" name="{name}">{"".join(opts)}</select>{hint}</div>'
    )


def _input(name: str, label: str, value: Any, kind: str = "text", help_text: str = "", extra: str = "",
           placeholder: Any = None) -> str:
    hint = f'<small class="form-text text-muted">{_e(help_text)}</small>' if help_text else ""
    shown = "" if value is None else _e(str(value))
    ph = f' placeholder="{_e(str(placeholder))}"' if placeholder not in (None, "") else ""
    return (
        f'<div class="form-group mb-3"><label for="hpc-{name}" class="form-label">{_e(label)}</label>'
        f'<input class="form-control" type="{kind}" id="hpc-{name}" name="{name}" value="{shown}"{ph} {extra}>{hint}</div>'
    )


def render_form(
    *,
    partitions: Sequence[Any],
    images: Sequence[Any],
    profiles: Sequence[Profile] = (),
    defaults: Optional[Mapping[str, Any]] = None,
    limits: Optional[Limits] = None,
    allowed_partitions: Sequence[str] = (),
    previous: Optional[Mapping[str, Any]] = None,
    venvs: Sequence[str] = (),
) -> str:
    """The spawn form (a fragment inside JupyterHub's ``<form>``). Every text is HTML-escaped.

    ``venvs``: names of the user's venvs, offered in a list (a text field when there are none).
    """
    defaults = dict(defaults or {})
    previous = {k: v for k, v in (previous or {}).items() if k in OPTION_KEYS and isinstance(v, (str, int))}
    limits = limits or Limits()
    parts = [p for p in partitions if not allowed_partitions or p.name in allowed_partitions]
    chosen = dict(previous)
    if profiles:
        first = next((p for p in profiles if p.name == chosen.get("profile")), profiles[0])
        shown_defaults = {**defaults, **first.defaults}
    else:
        shown_defaults = defaults
    out = ['<div class="jupyter-hpc-spawn-form">']
    if profiles:
        out.append(
            _select(
                "profile",
                "Profile",
                [(p.name, p.display_name + (f" - {p.description}" if p.description else "")) for p in profiles],
                chosen.get("profile", profiles[0].name),
                "Profiles set defaults and limits; the values below override the defaults within the limits.",
            )
        )
    image_choices = []
    for img in images:
        title = getattr(img, "title", None) or getattr(img, "name", None) or image_id_of(img)
        desc = getattr(img, "description", None) or ""
        gpu = " [GPU-ready]" if getattr(img, "gpu", False) else ""
        if getattr(img, "runtime", None) == "charliecloud":
            gpu += " [Charliecloud]"
        owner = getattr(img, "owner", "site")
        where = "" if owner in (None, "site") else " (your image)"
        image_choices.append((image_id_of(img), f"{title}{gpu}{where}" + (f" - {desc}" if desc else "")))
    out.append(_select("image", "Container image", [("", "(profile / site default)")] + image_choices,
                       chosen.get("image", ""), "The server runs inside this image (Apptainer, or Charliecloud where marked)."))
    part_choices = []
    for p in parts:
        bits = [f"{p.cpus} CPUs", f"{p.memory_mb // 1024} GB" if p.memory_mb >= 1024 else f"{p.memory_mb} MB"]
        if p.gpus:
            bits.append("GPUs " + ", ".join(f"{t}:{n}" for t, n in sorted(p.gpus.items())))
        if p.max_time_minutes:
            bits.append("max " + validate.format_minutes(p.max_time_minutes))
        part_choices.append((p.name, f"{p.name}{' (default)' if p.default else ''} - {', '.join(bits)} per node"))
    out.append(_select("partition", "Partition", [("", "(profile / site default)")] + part_choices, chosen.get("partition", "")))
    gpu_types = sorted({t for p in parts for t in p.gpus if t != "gpu"})
    max_gpus = max((p.max_gpus() for p in parts), default=0)
    if limits.gpus is not None:
        max_gpus = min(max_gpus, limits.gpus)
    if max_gpus:
        out.append(_input("gpus", "GPUs", chosen.get("gpus"), "number", "GPU partitions only; 0 for none.",
                          f'min="0" max="{max_gpus}"', shown_defaults.get("gpus", 0)))
        if gpu_types:
            out.append(_select("gpu_type", "GPU type", [("", "any")] + [(t, t) for t in gpu_types], chosen.get("gpu_type", "")))
    max_cpus = max((p.cpus for p in parts), default=1)
    if limits.cpus:
        max_cpus = min(max_cpus, limits.cpus)
    out.append(_input("cpus", "CPUs", chosen.get("cpus"), "number", "Empty: the profile's default.",
                      f'min="1" max="{max_cpus}"', shown_defaults.get("cpus")))
    out.append(_input("memory", "Memory", chosen.get("memory"), "text", "e.g. 512M, 4G; empty: the profile's default.",
                      'pattern="[0-9]+[KMGTkmgt]?"', shown_defaults.get("memory")))
    out.append(_input("time", "Time limit", chosen.get("time"), "text", "HH:MM:SS or D-HH:MM:SS; empty: the profile's default.",
                      "", shown_defaults.get("time")))
    out.append(_input("account", "Account (optional)", chosen.get("account"), "text",
                      "Slurm account to charge; empty for your default.", "", shown_defaults.get("account")))
    venv_help = ("Your venvs in ~/.jupyter-hpc/venvs (jupyter hpc venv create NAME --image IMAGE), first on the "
                 "server's path; none: the image's own packages only.")
    if venvs:
        out.append(_select("venv", "Python venv (optional)", [("", "(none)")] + [(v, v) for v in venvs],
                           chosen.get("venv", ""), venv_help))
    else:
        out.append(_input("venv", "Python venv (optional)", chosen.get("venv"), "text", venv_help))
    out.append("</div>")
    return "\n".join(out)
