"""The image catalog: site images, each user's own images, remote references and the pull cache.

Image ids (opaque to clients, ``[A-Za-z0-9_.:+-]+``):

- ``site:<name>``  a SIF file or sandbox directory in one of :attr:`ImageCatalog.site_dirs`
- ``user:<name>``  the same in one of the requesting user's :attr:`ImageCatalog.user_dirs`
- ``remote:<hash>`` a registry reference (configured in :attr:`remote_images` or pulled)

:meth:`ImageCatalog.resolve` is the gate for every image a job runs: it accepts
only ids as above or paths that resolve (symlinks followed) inside the site
directories, the requesting user's own directories or the pull cache, and it
never looks into another user's directories.

Image formats: ``sif`` (single file, read-only), ``sandbox`` (an Apptainer
sandbox directory, with ``.singularity.d``), ``directory`` (a Charliecloud image
directory: a root filesystem with ``ch/``, from ``ch-convert`` or ``ch-image``;
it always runs with Charliecloud) and ``remote`` (a registry reference).

Labels (``org.jupyter-hpc.title``, ``org.jupyter-hpc.description``,
``org.jupyter-hpc.gpu``, ``org.jupyter-hpc.runtime``) are read from
``.singularity.d/labels.json`` for sandboxes, from ``ch/metadata.json`` for
Charliecloud directories and with ``apptainer inspect --json --labels`` for SIF
files; results are cached per ``(path, mtime, size)``. ``Image.runtime`` is the
runtime an image asks for (``org.jupyter-hpc.runtime``; ``charliecloud`` for
Charliecloud directories), ``None`` when the site's runtime applies.

Pulls go to :attr:`cache_dir` (a shared, sticky, world-writable directory is
fine). One ``fcntl.flock`` lock file per reference makes concurrent pulls -
from any process or user - wait for each other, so each reference is pulled
once. A cached file is only used for a user when it is owned by root, by one
of :attr:`trusted_cache_owners`, by the catalog's own user or by that user
(another user could otherwise replace the file's content); otherwise the user
gets a private copy under ``cache_dir/users/<username>/``.
"""

from __future__ import annotations

import asyncio
import copy
import errno
import fcntl
import hashlib
import json
import logging
import os
import pwd
import re
import stat
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Awaitable, Callable, Dict, List, Optional, Sequence, Tuple, Union

from traitlets import Bool, Dict as TDict, Float, List as TList, TraitError, Unicode, default
from traitlets.config import Configurable

from . import apptainer as _apptainer
from . import charliecloud as _charliecloud
from . import validate
from .process import RUNUSER_PREFIX, CommandError, run
from .validate import ValidationError

log = logging.getLogger(__name__)

LABEL_TITLE = "org.jupyter-hpc.title"
LABEL_DESCRIPTION = "org.jupyter-hpc.description"
LABEL_GPU = "org.jupyter-hpc.gpu"
#: ``apptainer`` or ``charliecloud``: the runtime this image runs with (default: the site's).
LABEL_RUNTIME = "org.jupyter-hpc.runtime"
IMAGE_RUNTIMES = ("apptainer", "charliecloud")

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}\Z")
_ID = re.compile(r"^(site|user|remote|cache):([A-Za-z0-9_][A-Za-z0-9_.+-]{0,127})\Z")

Progress = Callable[[Optional[float], str], Union[None, Awaitable[None]]]


class ImageError(ValidationError):
    """An image cannot be used: unknown, not allowed, or unreadable. ``field`` is ``image``."""

    def __init__(self, message: str, field: str = "image"):
        super().__init__(field, message)


class ImageNotFound(ImageError):
    """No such image for this user."""


class ImageAccessDenied(ImageError):
    """The image lies outside the directories this user may use."""


class PullError(Exception):
    """``apptainer pull`` failed; ``message`` is meant for the user."""

    def __init__(self, ref: str, message: str):
        self.ref = ref
        self.message = message
        super().__init__(f"pulling {ref} failed: {message}")


@dataclass
class Image:
    id: str
    name: str
    title: str = ""
    description: str = ""
    format: str = "sif"  # sif | sandbox | remote
    path: Optional[str] = None
    ref: Optional[str] = None
    size: Optional[int] = None
    gpu: bool = False
    labels: Dict[str, str] = field(default_factory=dict)
    apps: List[str] = field(default_factory=list)
    owner: str = "site"  # "site" or a user name
    pulled: Optional[bool] = None  # remote images: is a usable local copy there?
    runtime: Optional[str] = None  # apptainer | charliecloud | None (the site's runtime)

    def to_dict(self) -> dict:
        return asdict(self)


def directory_format(path: str) -> Optional[str]:
    """The format of an image directory: ``sandbox`` (Apptainer, ``.singularity.d``),
    ``directory`` (Charliecloud, ``ch/``), ``None`` when it is neither."""
    if os.path.isdir(os.path.join(path, ".singularity.d")):
        return "sandbox"
    if _charliecloud.is_image_dir(path):
        return "directory"
    return None


def image_runtime(fmt: str, labels: Dict[str, str]) -> Optional[str]:
    """The runtime an image asks for: Charliecloud directories always ``charliecloud``,
    else the ``org.jupyter-hpc.runtime`` label when valid, else ``None`` (the site's)."""
    if fmt == "directory":
        return "charliecloud"
    value = str(labels.get(LABEL_RUNTIME, "")).strip().lower()
    if value in IMAGE_RUNTIMES:
        if value == "charliecloud" and fmt != "sandbox":
            return None  # only directories can run with Charliecloud
        return value
    return None


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def ref_id(ref: str) -> str:
    return "remote:" + hashlib.sha256(ref.encode()).hexdigest()[:16]


def ref_filename(ref: str) -> str:
    """A stable, readable cache file name for ``ref``: ``tiny_latest-<hash>.sif``."""
    m = _apptainer.REF_RE.match(ref)
    base = (m.group("path").rsplit("/", 1)[-1] if m else "image") + "_" + ((m and m.group("tag")) or "latest")
    base = re.sub(r"[^A-Za-z0-9_.-]", "_", base)[:60]
    return f"{base}-{hashlib.sha256(ref.encode()).hexdigest()[:16]}.sif"


#: Environment variable with the hub's catalog settings (JSON object), set for spawned servers.
CATALOG_ENV = "JUPYTER_HPC_CATALOG"
CATALOG_ENV_KEYS = ("site_dirs", "user_dirs", "remote_images", "cache_dir", "insecure_registries",
                    "allowed_registries", "allow_any_pull", "trusted_cache_owners")


def catalog_from_env() -> Dict[str, Any]:
    """``$JUPYTER_HPC_CATALOG`` as a dict (``{}`` when unset or not a JSON object)."""
    raw = os.environ.get(CATALOG_ENV, "")
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError as e:
        log.warning("ignoring $%s: not JSON (%s)", CATALOG_ENV, e)
        return {}
    if not isinstance(data, dict):
        log.warning("ignoring $%s: not a JSON object", CATALOG_ENV)
        return {}
    return {k: v for k, v in data.items() if k in CATALOG_ENV_KEYS}


class ImageCatalog(Configurable):
    """Lists, resolves and pulls the images a user may run."""

    site_dirs = TList(
        Unicode(),
        default_value=["/opt/jupyter-hpc/images"],
        help="Directories with site-provided images (SIF files and sandbox directories) visible to all users.",
    ).tag(config=True)
    user_dirs = TList(
        Unicode(),
        default_value=["{home}/images"],
        help="Per-user image directories; templates with {username} and {home}. "
        "A user only ever sees their own directories.",
    ).tag(config=True)
    remote_images = TList(
        TDict(),
        help="Registry images offered in the catalog: dicts with 'ref' (docker://host/path:tag), "
        "and optional 'title', 'description', 'gpu' (bool).",
    ).tag(config=True)
    cache_dir = Unicode(
        "/opt/jupyter-hpc/cache",
        help="Shared directory for pulled images (e.g. mode 1777). Empty disables pulls.",
    ).tag(config=True)
    insecure_registries = TList(
        Unicode(),
        help="Registries (host[:port]) reached over plain HTTP (apptainer pull --no-https). Only these.",
    ).tag(config=True)
    allowed_registries = TList(
        Unicode(),
        help="If not empty, only references to these registries (host[:port]) may be pulled. "
        "Insecure registries must be listed in insecure_registries as well.",
    ).tag(config=True)
    allow_any_pull = Bool(
        True,
        help="Allow pulling references that are not in remote_images (subject to allowed_registries).",
    ).tag(config=True)
    trusted_cache_owners = TList(
        Unicode(),
        default_value=["root"],
        help="Users whose files in cache_dir every user may run (besides the catalog's own user and the "
        "requesting user).",
    ).tag(config=True)
    apptainer = Unicode("apptainer", help="apptainer command (name on PATH or absolute path).").tag(config=True)
    inspect_timeout = Float(30.0, help="Seconds allowed for one 'apptainer inspect'.").tag(config=True)
    pull_timeout = Float(1800.0, help="Seconds allowed for one 'apptainer pull'.").tag(config=True)
    lock_timeout = Float(3600.0, help="Seconds to wait for another process's pull of the same reference.").tag(config=True)
    run_as_user = Bool(
        True,
        help="When the catalog runs as root: inspect a user's own images and pull for a user as that user "
        "(runuser/sudo through user_prefix) instead of as root.",
    ).tag(config=True)
    user_prefix = TList(
        Unicode(),
        default_value=list(RUNUSER_PREFIX),
        help="argv prefix to run a command as another user; '{username}' is replaced.",
    ).tag(config=True)
    sif_extensions = TList(
        Unicode(),
        default_value=[".sif", ".simg"],
        help="File name endings of single-file images.",
    ).tag(config=True)

    # Settings a hub hands to the servers it spawns (JUPYTER_HPC_CATALOG, JSON): they are the
    # defaults here, so a spawned server's catalog shows the same images as the hub's form.
    # Configuration set explicitly in the server still wins.

    def _hub_default(self, name: str) -> Any:
        trait = self.traits()[name]
        values = catalog_from_env()
        if name in values:
            try:
                return trait.validate(self, values[name])
            except TraitError as e:
                log.warning("ignoring %s from $%s: %s", name, CATALOG_ENV, e)
        return copy.deepcopy(trait.default())

    @default("site_dirs")
    def _default_site_dirs(self):
        return self._hub_default("site_dirs")

    @default("user_dirs")
    def _default_user_dirs(self):
        return self._hub_default("user_dirs")

    @default("remote_images")
    def _default_remote_images(self):
        return self._hub_default("remote_images")

    @default("cache_dir")
    def _default_cache_dir(self):
        return self._hub_default("cache_dir")

    @default("insecure_registries")
    def _default_insecure_registries(self):
        return self._hub_default("insecure_registries")

    @default("allowed_registries")
    def _default_allowed_registries(self):
        return self._hub_default("allowed_registries")

    @default("allow_any_pull")
    def _default_allow_any_pull(self):
        return self._hub_default("allow_any_pull")

    @default("trusted_cache_owners")
    def _default_trusted_cache_owners(self):
        return self._hub_default("trusted_cache_owners")

    def hub_settings(self) -> Dict[str, Any]:
        """The settings a hub passes to spawned servers in ``$JUPYTER_HPC_CATALOG``."""
        return {name: copy.deepcopy(getattr(self, name)) for name in CATALOG_ENV_KEYS}

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._meta: Dict[Tuple[str, int, int], Tuple[Dict[str, str], List[str]]] = {}
        self.counters: Dict[str, int] = {"inspect": 0, "pull": 0}

    # -- users and directories ----------------------------------------------

    @staticmethod
    def _pw(username: str) -> pwd.struct_passwd:
        validate.username(username)
        try:
            return pwd.getpwnam(username)
        except KeyError:
            raise ValidationError("user", f"unknown user {username!r}") from None

    def _user_dirs(self, username: Optional[str]) -> List[str]:
        """The user's existing image directories (resolved), owned by that user."""
        if not username:
            return []
        pw = self._pw(username)
        result = []
        for template in self.user_dirs:
            path = template.replace("{username}", pw.pw_name).replace("{home}", pw.pw_dir)
            real = os.path.realpath(path)
            try:
                st = os.stat(real)
            except OSError:
                continue
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != pw.pw_uid:
                # e.g. ~/images -> /home/other/images: never follow into somebody else's directory
                continue
            result.append(real)
        return result

    def _site_dirs(self) -> List[str]:
        return [os.path.realpath(d) for d in self.site_dirs if os.path.isdir(d)]

    def _is_sif(self, name: str) -> bool:
        return any(name.endswith(ext) for ext in self.sif_extensions)

    # -- metadata -------------------------------------------------------------

    async def _metadata(self, path: str, fmt: str, username: Optional[str], owner: str) -> Tuple[Dict[str, str], List[str]]:
        try:
            if fmt in ("sandbox", "directory"):
                label_file = (os.path.join(path, ".singularity.d", "labels.json") if fmt == "sandbox"
                              else _charliecloud.metadata_file(path))
                st = os.stat(label_file)
                key = (label_file, st.st_mtime_ns, st.st_size)
            else:
                st = os.stat(path)
                key = (path, st.st_mtime_ns, st.st_size)
        except OSError:
            return {}, []
        cached = self._meta.get(key)
        if cached is not None:
            return cached
        labels: Dict[str, str] = {}
        apps: List[str] = []
        if fmt == "directory":
            labels = _ch_labels(key[0])
        elif fmt == "sandbox":
            try:
                with open(key[0]) as f:
                    labels = _apptainer.parse_labels(f.read(1024 * 1024))
            except (OSError, ValueError) as e:
                log.warning("cannot read labels of %s: %s", path, e)
            apps_dir = os.path.join(path, "scif", "apps")
            if os.path.isdir(apps_dir):
                apps = sorted(a for a in os.listdir(apps_dir) if _NAME.match(a))
        else:
            user = self._inspect_user(owner, username)
            self.counters["inspect"] += 1
            try:
                res = await run(_apptainer.inspect_argv(path, apptainer=self.apptainer), timeout=self.inspect_timeout,
                                user=user, user_prefix=self.user_prefix)
                labels = _apptainer.parse_labels(res.stdout)
            except (CommandError, ValueError) as e:
                log.warning("apptainer inspect %s failed: %s", path, e)
                return {}, []  # not cached: try again next time
        if len(self._meta) >= 4096:  # entries of replaced files: drop the oldest half
            for old_key in list(self._meta)[:2048]:
                del self._meta[old_key]
        self._meta[key] = (labels, apps)
        return labels, apps

    def _inspect_user(self, owner: str, username: Optional[str]) -> Optional[str]:
        if owner == "site" or not username or not self.run_as_user or os.geteuid() != 0:
            return None
        return username

    async def _image_from_path(self, path: str, id_prefix: str, owner: str, username: Optional[str]) -> Optional[Image]:
        name = os.path.basename(path.rstrip("/"))
        if not _NAME.match(name):
            return None
        try:
            st = os.stat(path)
        except OSError:
            return None
        if stat.S_ISDIR(st.st_mode):
            fmt, size = directory_format(path), None
            if fmt is None:
                return None
        elif stat.S_ISREG(st.st_mode) and self._is_sif(name):
            fmt, size = "sif", st.st_size
        else:
            return None
        labels, apps = await self._metadata(path, fmt, username, owner)
        stem = name
        for ext in self.sif_extensions:
            if stem.endswith(ext):
                stem = stem[: -len(ext)]
        return Image(
            id=f"{id_prefix}:{name}",
            name=name,
            title=labels.get(LABEL_TITLE) or stem,
            description=labels.get(LABEL_DESCRIPTION, ""),
            format=fmt,
            path=path,
            size=size,
            gpu=_truthy(labels.get(LABEL_GPU, "false")),
            labels=labels,
            apps=apps,
            owner=owner,
            runtime=image_runtime(fmt, labels),
        )

    async def _scan(self, root: str, id_prefix: str, owner: str, username: Optional[str],
                    owner_uid: Optional[int]) -> List[Image]:
        images: List[Image] = []
        try:
            names = sorted(os.listdir(root))
        except OSError as e:
            log.warning("cannot list %s: %s", root, e)
            return images
        for name in names:
            if name.startswith(".") or not _NAME.match(name):
                continue
            path = os.path.join(root, name)
            real = os.path.realpath(path)
            if not (real == root or real.startswith(root.rstrip("/") + "/")):
                continue  # symlink escaping the directory
            if owner_uid is not None and not self._owned_by(real, owner_uid):
                continue
            img = await self._image_from_path(real, id_prefix, owner, username)
            if img is not None:
                img.id = f"{id_prefix}:{name}"
                img.name = name
                images.append(img)
        return images

    @staticmethod
    def _owned_by(path: str, uid: int) -> bool:
        try:
            st = os.stat(path)
        except OSError:
            return False
        return st.st_uid in (uid, 0)

    # -- listing -------------------------------------------------------------

    async def list_images(self, username: Optional[str] = None) -> List[Image]:
        """Site images, the user's own images and remote images (with ``pulled`` state)."""
        images: List[Image] = []
        seen = set()
        for root in self._site_dirs():
            for img in await self._scan(root, "site", "site", username, None):
                if img.id not in seen:
                    seen.add(img.id)
                    images.append(img)
        if username:
            uid = self._pw(username).pw_uid
            for root in self._user_dirs(username):
                for img in await self._scan(root, "user", username, username, uid):
                    if img.id not in seen:
                        seen.add(img.id)
                        images.append(img)
        for entry in self.remote_images:
            ref = entry.get("ref")
            try:
                _apptainer.check_ref(ref)
            except ValidationError:
                log.warning("ignoring invalid remote image reference %r", ref)
                continue
            img = await self._remote_image(ref, username, entry)
            if img.id not in seen:
                seen.add(img.id)
                images.append(img)
        for ref in self._pulled_refs(username):
            if ref_id(ref) not in seen:
                img = await self._remote_image(ref, username)
                if img.pulled:
                    seen.add(img.id)
                    images.append(img)
        return images

    def _pulled_refs(self, username: Optional[str]) -> List[str]:
        """References with a copy in the cache that ``username`` may use."""
        if not self.cache_dir or not os.path.isdir(self.cache_dir):
            return []
        dirs = [self.cache_dir]
        if username:
            dirs.append(os.path.dirname(self._private_dest("docker://x/y", username)))
        refs = []
        for d in dirs:
            try:
                names = sorted(os.listdir(d))
            except OSError:
                continue
            for n in names:
                if not n.endswith(".sif") or n.startswith("."):
                    continue
                path = os.path.join(d, n)
                if not self._trusted_for(path, username):
                    continue
                ref = self._ref_of_cached(path)
                if ref and ref not in refs:
                    refs.append(ref)
        return refs

    async def _remote_image(self, ref: str, username: Optional[str], entry: Optional[dict] = None) -> Image:
        entry = entry or self._remote_entry(ref) or {}
        path = self._cached_copy(ref, username)
        labels: Dict[str, str] = {}
        apps: List[str] = []
        size = None
        if path:
            labels, apps = await self._metadata(path, "sif", username, "site")
            try:
                size = os.stat(path).st_size
            except OSError:
                size = None
        m = _apptainer.REF_RE.match(ref)
        name = m.group("path").rsplit("/", 1)[-1] + ":" + (m.group("tag") or "latest") if m else ref
        gpu = entry.get("gpu")
        return Image(
            id=ref_id(ref),
            name=name,
            title=str(entry.get("title") or labels.get(LABEL_TITLE) or name),
            description=str(entry.get("description") or labels.get(LABEL_DESCRIPTION, "")),
            format="remote",
            path=path,
            ref=ref,
            size=size,
            gpu=bool(gpu) if gpu is not None else _truthy(labels.get(LABEL_GPU, "false")),
            labels=labels,
            apps=apps,
            owner="site",
            pulled=path is not None,
        )

    def _remote_entry(self, ref: str) -> Optional[dict]:
        for entry in self.remote_images:
            if entry.get("ref") == ref:
                return entry
        return None

    # -- resolving -------------------------------------------------------------

    async def resolve(self, image: str, username: Optional[str] = None) -> Image:
        """The image ``image`` (an id, a name, a path or a registry reference) as ``username`` may use it.

        Raises :class:`ImageNotFound` / :class:`ImageAccessDenied` (both
        :class:`~jupyter_hpc.validate.ValidationError` with field ``image``).
        Remote images are returned with ``pulled=False`` and ``path=None``
        when not in the cache yet; call :meth:`pull` to fetch them.
        """
        if not isinstance(image, str) or not image or len(image) > 4096:
            raise ImageNotFound("no image given")
        if re.search(r"[\x00-\x1f\x7f]", image):
            raise ImageNotFound("the image name contains control characters")
        if "://" in image:
            ref = _apptainer.check_ref(image)
            self._check_pull_allowed(ref)
            return await self._remote_image(ref, username)
        m = _ID.match(image)
        if m:
            kind, name = m.groups()
            if kind == "remote":
                for entry in self.remote_images:
                    ref = entry.get("ref")
                    if isinstance(ref, str) and ref_id(ref) == image:
                        return await self._remote_image(ref, username, entry)
                found = self._pulled_ref_for_id(image)
                if found:
                    return await self._remote_image(found, username)
                raise ImageNotFound(f"unknown image {image!r}")
            if kind == "cache":
                if not self.cache_dir or not os.path.isfile(os.path.join(self.cache_dir, name)):
                    raise ImageNotFound(f"unknown image {image!r}")
                return await self._resolve_path(os.path.join(self.cache_dir, name), username)
            if kind == "site":
                img = await self._find_in(self._site_dirs(), name, "site", "site", username, None)
            else:
                if not username:
                    raise ImageNotFound(f"unknown image {image!r}")
                img = await self._find_in(self._user_dirs(username), name, "user", username, username,
                                          self._pw(username).pw_uid)
            if img is None:
                raise ImageNotFound(f"unknown image {image!r}")
            return img
        if image.startswith("/"):
            return await self._resolve_path(image, username)
        if _NAME.match(image):
            img = await self._find_in(self._site_dirs(), image, "site", "site", username, None)
            if img is None and username:
                img = await self._find_in(self._user_dirs(username), image, "user", username, username,
                                          self._pw(username).pw_uid)
            if img is None:
                raise ImageNotFound(f"unknown image {image!r}")
            return img
        raise ImageNotFound(f"{image[:200]!r} is neither an image id, an image name nor an absolute path")

    async def ensure(self, image: str, username: Optional[str] = None,
                     progress: Optional[Progress] = None) -> Image:
        """:meth:`resolve`, then :meth:`pull` a remote image that is not in the cache yet.

        The returned image always has a local ``path`` to run.
        """
        img = await self.resolve(image, username)
        if img.format == "remote" and not img.path:
            img = await self.pull(img.ref, username, progress=progress)
        if not img.path:
            raise ImageNotFound(f"{image[:200]!r} has no local copy")
        return img

    async def _find_in(self, roots: List[str], name: str, id_prefix: str, owner: str,
                       username: Optional[str], owner_uid: Optional[int]) -> Optional[Image]:
        if not _NAME.match(name):
            return None
        for root in roots:
            path = os.path.join(root, name)
            if not os.path.lexists(path):
                continue
            real = os.path.realpath(path)
            if not (real.startswith(root.rstrip("/") + "/")):
                raise ImageAccessDenied(f"{id_prefix}:{name} points outside its image directory")
            if owner_uid is not None and not self._owned_by(real, owner_uid):
                raise ImageAccessDenied(f"{id_prefix}:{name} is not owned by {owner}")
            img = await self._image_from_path(real, id_prefix, owner, username)
            if img is not None:
                img.id = f"{id_prefix}:{name}"
                img.name = name
                return img
        return None

    async def _resolve_path(self, path: str, username: Optional[str]) -> Image:
        if "/../" in path + "/" or "/./" in path + "/":
            raise ImageAccessDenied(f"{path[:200]!r}: '..' is not allowed in image paths")
        site = self._site_dirs()
        users = self._user_dirs(username)
        cache = [os.path.realpath(self.cache_dir)] if self.cache_dir and os.path.isdir(self.cache_dir) else []
        try:
            real = validate.path_within(path, site + users + cache, "image")
        except ValidationError:
            raise ImageAccessDenied(f"{path[:200]!r} is outside the image directories you may use") from None
        for root in site:
            if real.startswith(root.rstrip("/") + "/"):
                img = await self._image_from_path(real, "site", "site", username)
                break
        else:
            img = None
            for root in users:
                if real.startswith(root.rstrip("/") + "/"):
                    if not self._owned_by(real, self._pw(username).pw_uid):
                        raise ImageAccessDenied(f"{path[:200]!r} is not owned by {username}")
                    img = await self._image_from_path(real, "user", username, username)
                    break
            else:
                if not self._trusted_for(real, username):
                    raise ImageAccessDenied(f"{path[:200]!r} was pulled by another user")
                img = await self._image_from_path(real, "cache", "site", username)
                if img is not None:
                    ref = self._ref_of_cached(real)
                    if ref:
                        img.id, img.ref, img.format, img.pulled = ref_id(ref), ref, "remote", True
        if img is None:
            raise ImageNotFound(f"{path[:200]!r} is not an image (SIF file, sandbox or Charliecloud directory)")
        return img

    # -- pull cache -------------------------------------------------------------

    def _ref_of_cached(self, path: str) -> Optional[str]:
        """The reference a cache file was pulled from (sidecar ``<file>.ref``)."""
        try:
            with open(path + ".ref") as f:
                ref = f.read(600).strip()
            return _apptainer.check_ref(ref)
        except (OSError, ValidationError):
            return None

    def _pulled_ref_for_id(self, image_id: str) -> Optional[str]:
        if not self.cache_dir or not os.path.isdir(self.cache_dir):
            return None
        suffix = image_id.split(":", 1)[1]
        try:
            names = os.listdir(self.cache_dir)
        except OSError:
            return None
        for n in names:
            if n.endswith(f"-{suffix}.sif.ref"):
                ref = self._ref_of_cached(os.path.join(self.cache_dir, n[: -len(".ref")]))
                if ref and ref_id(ref) == image_id:
                    return ref
        return None

    def _trusted_uids(self, username: Optional[str]) -> set:
        uids = {0, os.geteuid()}
        for name in self.trusted_cache_owners:
            try:
                uids.add(pwd.getpwnam(name).pw_uid)
            except KeyError:
                pass
        if username:
            uids.add(self._pw(username).pw_uid)
        return uids

    def _trusted_for(self, path: str, username: Optional[str]) -> bool:
        try:
            st = os.stat(path)
        except OSError:
            return False
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return False
        return st.st_uid in self._trusted_uids(username)

    def _shared_dest(self, ref: str) -> str:
        return os.path.join(self.cache_dir, ref_filename(ref))

    def _private_dest(self, ref: str, username: str) -> str:
        return os.path.join(self.cache_dir, "users", validate.username(username), ref_filename(ref))

    def _cached_copy(self, ref: str, username: Optional[str]) -> Optional[str]:
        if not self.cache_dir:
            return None
        shared = self._shared_dest(ref)
        if os.path.isfile(shared) and self._trusted_for(shared, username):
            return shared
        if username:
            private = self._private_dest(ref, username)
            if os.path.isfile(private) and self._trusted_for(private, username):
                return private
        return None

    def _check_pull_allowed(self, ref: str) -> None:
        if not self.allow_any_pull and self._remote_entry(ref) is None:
            raise ImageAccessDenied(f"{ref} is not one of the site's registry images")
        if self.allowed_registries:
            host = _apptainer.ref_host(ref)
            if host not in self.allowed_registries:
                raise ImageAccessDenied(
                    f"pulls from {host or 'Docker Hub'} are not allowed; allowed: {', '.join(self.allowed_registries)}")

    async def pull(self, ref: str, username: Optional[str] = None, progress: Optional[Progress] = None,
                   force: bool = False) -> Image:
        """Pull ``ref`` into the cache (once, whoever asks concurrently) and return the image."""
        ref = _apptainer.check_ref(ref)
        self._check_pull_allowed(ref)
        if not self.cache_dir:
            raise PullError(ref, "pulling is disabled (no cache_dir configured)")
        if not force:
            cached = self._cached_copy(ref, username)
            if cached:
                await _report(progress, 1.0, "already in the cache")
                return await self._remote_image(ref, username)
        lock_dir = os.path.join(self.cache_dir, ".locks")
        _makedirs(lock_dir, 0o1777)
        lock_path = os.path.join(lock_dir, hashlib.sha256(ref.encode()).hexdigest()[:32] + ".lock")
        await _report(progress, None, "waiting for another pull of this image" if _locked(lock_path) else "starting")
        fd = await _acquire(lock_path, self.lock_timeout)
        try:
            if not force:
                cached = self._cached_copy(ref, username)
                if cached:
                    await _report(progress, 1.0, "pulled by another request")
                    return await self._remote_image(ref, username)
            dest = self._shared_dest(ref)
            if os.path.lexists(dest) and not self._trusted_for(dest, username):
                if not username:
                    raise PullError(ref, f"{dest} exists and is owned by another user")
                dest = self._private_dest(ref, username)
                self._make_private_dir(os.path.dirname(dest), username)
            await self._do_pull(ref, dest, username, progress)
        finally:
            os.close(fd)
        await _report(progress, 1.0, "done")
        return await self._remote_image(ref, username)

    def _make_private_dir(self, path: str, username: str) -> None:
        users_dir = os.path.dirname(path)
        _makedirs(users_dir, 0o1777)
        if not os.path.isdir(path):
            os.makedirs(path, mode=0o755, exist_ok=True)
            if os.geteuid() == 0:
                pw = self._pw(username)
                os.chown(path, pw.pw_uid, pw.pw_gid)
        st = os.stat(path)
        if st.st_uid not in (self._pw(username).pw_uid, 0) and st.st_uid != os.geteuid():
            raise PullError("", f"{path} is not owned by {username}")

    def _pull_user(self, username: Optional[str]) -> Optional[str]:
        if username and self.run_as_user and os.geteuid() == 0:
            return username
        return None

    async def _do_pull(self, ref: str, dest: str, username: Optional[str], progress: Optional[Progress]) -> None:
        host = _apptainer.ref_host(ref)
        insecure = host is not None and host in self.insecure_registries
        tmp = os.path.join(os.path.dirname(dest), f".pull-{os.getpid()}-{int(time.time() * 1000)}-{os.path.basename(dest)}")
        user = self._pull_user(username)
        argv = _apptainer.pull_argv(ref, tmp, insecure=insecure, force=True, apptainer=self.apptainer)
        await _report(progress, None, f"pulling {ref}")
        self.counters["pull"] += 1
        try:
            await run(argv, timeout=self.pull_timeout, user=user, user_prefix=self.user_prefix, cwd="/")
        except CommandError as e:
            _unlink(tmp)
            detail = (e.stderr or e.stdout or e.reason).strip().splitlines()
            msg = next((l for l in reversed(detail) if "FATAL" in l or "ERROR" in l), detail[-1] if detail else str(e))
            msg = msg.strip()
            if not insecure and "HTTP response to HTTPS client" in msg:
                msg += (f" - the registry {host} speaks plain HTTP; images are pulled over HTTP only from "
                        "registries the administrators list in ImageCatalog.insecure_registries")
            raise PullError(ref, msg) from None
        try:
            os.chmod(tmp, 0o644)
            os.rename(tmp, dest)
            # sidecar with the reference, so a cache path can be mapped back to its ref
            ref_file = dest + ".ref"
            tmp_ref = f"{ref_file}.{os.getpid()}"
            with open(tmp_ref, "w") as f:
                f.write(ref + "\n")
            os.chmod(tmp_ref, 0o644)
            if os.geteuid() == 0 and user:
                pw = self._pw(user)
                os.chown(tmp_ref, pw.pw_uid, pw.pw_gid)
            os.rename(tmp_ref, ref_file)
        except OSError as e:
            _unlink(tmp)
            raise PullError(ref, f"cannot store the image in the cache: {e}") from None


def check_local_image(path: Any, sif_extensions: Sequence[str] = (".sif", ".simg")) -> str:
    """An image named by an absolute path outside the catalog (kernelspecs, ``jupyter hpc``).

    The path must be absolute and must not contain ``.`` or ``..`` components. When it
    exists on this machine it must be an image this process may read: a SIF file (by its
    name ending, see ``sif_extensions``) or a sandbox directory with ``.singularity.d``,
    symlinks followed. A path that does not exist here is returned unchanged: it may name
    an image only the compute nodes see (Apptainer then reports it in the job's output).
    Raises :class:`ImageNotFound` / :class:`ImageAccessDenied` (field ``image``).
    """
    path = _apptainer.check_path(path, "image")
    if any(part in (".", "..") for part in path.split("/")):
        raise ImageAccessDenied(f"{path[:200]!r}: '.' and '..' are not allowed in image paths")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return path
    except PermissionError:
        raise ImageAccessDenied(f"{path[:200]!r} cannot be read by you") from None
    except OSError as e:
        raise ImageNotFound(f"{path[:200]!r}: {e.strerror}") from None
    real = os.path.realpath(path)
    if stat.S_ISDIR(st.st_mode):
        if directory_format(real) is None:
            raise ImageNotFound(f"{path[:200]!r} is a directory but neither an Apptainer sandbox (no .singularity.d) "
                                "nor a Charliecloud image (no ch/)")
        mode = os.R_OK | os.X_OK
    elif stat.S_ISREG(st.st_mode) and any(os.path.basename(real).endswith(ext) for ext in sif_extensions):
        mode = os.R_OK
    else:
        raise ImageNotFound(f"{path[:200]!r} is not an image (a {'/'.join(sif_extensions)} file or a sandbox "
                            "directory)")
    if not os.access(real, mode):
        raise ImageAccessDenied(f"{path[:200]!r} cannot be read by you")
    return path


def _ch_labels(metadata_file: str) -> Dict[str, str]:
    """Labels of a Charliecloud image: ``{"labels": {...}}`` in ``ch/metadata.json``."""
    try:
        with open(metadata_file, encoding="utf-8") as f:
            data = json.loads(f.read(1024 * 1024))
    except (OSError, ValueError) as e:
        log.warning("cannot read labels from %s: %s", metadata_file, e)
        return {}
    labels = data.get("labels") if isinstance(data, dict) else None
    if not isinstance(labels, dict):
        return {}
    return {str(k)[:200]: str(v)[:2000] for k, v in labels.items() if isinstance(k, str)}


async def _report(progress: Optional[Progress], fraction: Optional[float], message: str) -> None:
    if progress is None:
        return
    try:
        result = progress(fraction, message)
        if asyncio.iscoroutine(result):
            await result
    except Exception:  # a broken progress callback must not break the pull
        log.exception("progress callback failed")


def _makedirs(path: str, mode: int) -> None:
    if os.path.isdir(path):
        return
    try:
        os.makedirs(path, exist_ok=True)
        os.chmod(path, mode)
    except PermissionError:
        if not os.path.isdir(path):
            raise


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _open_lock(path: str) -> int:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EPERM):
            raise
        # lock file created by another user: a read-only descriptor is enough for flock()
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    return fd


def _locked(path: str) -> bool:
    try:
        fd = _open_lock(path)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


async def _acquire(path: str, timeout: float) -> int:
    """Open and exclusively flock ``path``, polling so the event loop keeps running."""
    fd = _open_lock(path)
    deadline = time.monotonic() + timeout
    delay = 0.05
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise PullError("", f"timed out waiting for the lock {path}") from None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
    except BaseException:
        os.close(fd)
        raise


__all__ = [
    "ImageCatalog",
    "check_local_image",
    "Image",
    "ImageError",
    "ImageNotFound",
    "ImageAccessDenied",
    "PullError",
    "ref_id",
    "ref_filename",
    "LABEL_TITLE",
    "LABEL_DESCRIPTION",
    "LABEL_GPU",
]
