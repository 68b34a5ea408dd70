"""Process-wide clients shared by all spawners of a hub.

One :class:`~jupyter_hpc.cluster.SlurmClient` (its ``sinfo`` cache included),
one :class:`~jupyter_hpc.images.ImageCatalog` and one
:class:`~jupyter_hpc.watcher.JobWatcher` per hub process, whatever the number
of users.
"""

from __future__ import annotations

from typing import Dict, Sequence, Tuple

from jupyter_hpc.cluster import SlurmClient, SlurmError, SlurmRequestError, SlurmUnavailable
from jupyter_hpc.images import ImageCatalog, PullError
from jupyter_hpc.watcher import JobWatcher

__all__ = ["CommandFailure", "PullError", "shared_catalog", "shared_client", "shared_watcher", "short_error"]

#: Errors of Slurm commands (refused request, controller down, other failures).
CommandFailure = SlurmError

_clients: Dict[Tuple[str, ...], SlurmClient] = {}
_catalogs: Dict[Tuple[str, ...], ImageCatalog] = {}


def short_error(err: BaseException) -> str:
    """A one-paragraph description of a Slurm error for users."""
    if isinstance(err, SlurmRequestError) and err.message:
        return err.message
    if isinstance(err, SlurmUnavailable):
        return "the Slurm controller is not answering"
    stderr = (getattr(err, "stderr", "") or "").strip()
    if stderr:
        return stderr.splitlines()[-1][:500]
    return str(err)[:500]


def shared_client(config, user_prefix: Sequence[str]) -> SlurmClient:
    key = tuple(user_prefix)
    client = _clients.get(key)
    if client is None:
        client = _clients[key] = SlurmClient(config=config, user_prefix=list(user_prefix))
    return client


def shared_watcher(config, interval: float, user_prefix: Sequence[str]) -> JobWatcher:
    return JobWatcher.instance(interval=interval, client=shared_client(config, user_prefix))


def shared_catalog(config, user_prefix: Sequence[str]) -> ImageCatalog:
    """The hub's image catalog (``c.ImageCatalog`` configures it; the user prefix is the spawner's)."""
    key = tuple(user_prefix)
    cat = _catalogs.get(key)
    if cat is None:
        cat = _catalogs[key] = ImageCatalog(config=config, user_prefix=list(user_prefix))
    return cat
