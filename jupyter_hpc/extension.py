"""The jupyter-hpc Jupyter server extension: configuration and handler registration.

The single-user server runs as the user, so everything here (Slurm commands,
image lookups, job directories) acts as that user without any prefix.
"""

from __future__ import annotations

import os
import pwd

from jupyter_server.extension.application import ExtensionApp
from traitlets import Bool, Dict, Float, Integer, List, Unicode, default

from ._version import __version__


def current_username() -> str:
    """The user this server runs as (jobs are listed and checked against it)."""
    return pwd.getpwuid(os.getuid()).pw_name


class HPCExtension(ExtensionApp):
    """REST API, cell jobs, services and the owner-checked proxy for Slurm + Apptainer."""

    name = "jupyter_hpc"
    version = __version__
    description = __doc__
    load_other_extensions = True

    allowed_partitions = List(
        Unicode(),
        default_value=[],
        help="Partitions users may submit cell jobs and services to. Empty: every partition sinfo reports.",
    ).tag(config=True)

    default_resources = Dict(
        default_value={"time": "00:30:00", "cpus": 1, "memory": "1G", "gpus": 0},
        help=(
            "Resources used when a request leaves a field out: keys partition, time, cpus, "
            "memory, gpus, exclusive. No partition: Slurm's default partition."
        ),
    ).tag(config=True)

    jobs_dir = Unicode(
        "~/.jupyter-hpc/jobs",
        help=(
            "Directory (``~`` = the user's home) holding one sub-directory per cell job "
            "(code, outputs, job stdout/stderr). Created with mode 0700."
        ),
    ).tag(config=True)

    services_dir = Unicode(
        "~/.jupyter-hpc/services",
        help="Directory (``~`` = the user's home) recording the services this user started (mode 0700).",
    ).tag(config=True)

    image_python = List(
        Unicode(),
        default_value=["python3"],
        help=(
            "argv prefix that starts the image's Python (which has jupyter-hpc installed), "
            "used to run cell jobs and the service launcher inside the image."
        ),
    ).tag(config=True)

    venv_create_timeout = Float(
        600.0,
        help="Seconds allowed for creating one user venv (POST venvs: the image's Python runs "
             "'python -m venv --system-site-packages' and installs pip).",
    ).tag(config=True)

    jobs_retention_days = Float(
        14.0,
        help="Cell job directories older than this many days are removed when the server starts (0: never).",
    ).tag(config=True)

    max_code_bytes = Integer(
        1024 * 1024,
        help="Largest cell source accepted by POST cells, in bytes.",
    ).tag(config=True)

    max_output_bytes = Integer(
        1024 * 1024,
        help="Largest chunk returned by one GET jobs/{id}/output call, in bytes.",
    ).tag(config=True)

    proxy_cache_seconds = Float(
        3.0,
        help=(
            "How long the proxy reuses a successful owner/state check of a service job before "
            "asking Slurm again. Stopping a service through the API clears it at once."
        ),
    ).tag(config=True)

    proxy_max_body_mb = Float(
        1024.0,
        help=(
            "Largest response (MB) the proxy forwards. GET responses stream through; responses "
            "to other methods are held in the server's memory while they are forwarded."
        ),
    ).tag(config=True)

    proxy_keepalive_seconds = Float(
        4.0,
        help=(
            "How long the proxy keeps an idle connection to a service open for the next request "
            "(one pool per service job; 0 opens a new connection for every request). Keep it "
            "below the services' own keep-alive timeout (Node.js: 5 s)."
        ),
    ).tag(config=True)

    watch_interval = Float(
        2.0,
        help="Seconds between the batched squeue calls of the shared job watcher.",
    ).tag(config=True)

    service_time_default = Unicode(
        "01:00:00",
        help="Time limit of a service job when the request gives none.",
    ).tag(config=True)

    allow_pull = Bool(
        True,
        help="Whether users may pull remote images through POST images/pull.",
    ).tag(config=True)

    vitals_gpu_probe = Bool(
        True,
        help=(
            "Measure GPU utilisation and memory of running jobs with GPUs by running nvidia-smi as a short "
            "extra step inside the job (srun --jobid=N --overlap), when Slurm itself reports no GPU usage. "
            "Nodes without nvidia-smi report the GPUs as unavailable."
        ),
    ).tag(config=True)

    vitals_gpu_interval = Float(
        15.0,
        help="Seconds a GPU measurement of a job is reused (a failed one: 300 s) before nvidia-smi runs again.",
    ).tag(config=True)

    vitals_min_window = Float(
        3.0,
        help="Shortest time between two CPU samples of a job used to compute its current CPU load (seconds).",
    ).tag(config=True)

    share_url = Unicode(
        help=(
            "URL of JupyterHub's jupyter-hpc-share service as this server reaches it, ending in its prefix, e.g. "
            "'http://hub.example.org:10101/services/jupyter-hpc-share/'. Default: $JUPYTER_HPC_SHARE_URL (set by "
            "ApptainerSlurmSpawner.share_url). Empty: sharing services is reported as unavailable."
        ),
    ).tag(config=True)

    @default("share_url")
    def _default_share_url(self):
        return os.environ.get("JUPYTER_HPC_SHARE_URL", "")

    share_timeout = Float(20.0, help="Seconds to wait for the jupyter-hpc-share service.").tag(config=True)

    username = Unicode(help="The user this server runs as (read-only; determined at start).")

    @default("username")
    def _default_username(self):
        return current_username()

    def initialize_settings(self):
        from .celljob import CellJobManager
        from .cluster import SlurmClient
        from .images import ImageCatalog
        from .runtime import ContainerRuntime
        from .services import ServiceManager
        from .watcher import JobWatcher

        # The server runs as the user: Slurm commands need no runuser/sudo prefix.
        self.slurm = SlurmClient(parent=self, run_as_user=False)
        self.watcher = JobWatcher.instance(interval=self.watch_interval, client=self.slurm)
        self.catalog = ImageCatalog(parent=self)
        # Apptainer, or commands directly on the node where containers cannot run.
        self.runtime = ContainerRuntime(parent=self)
        self.cells = CellJobManager(
            slurm=self.slurm,
            catalog=self.catalog,
            username=self.username,
            jobs_dir=self.jobs_dir,
            image_python=list(self.image_python),
            allowed_partitions=list(self.allowed_partitions),
            default_resources=dict(self.default_resources),
            log=self.log,
            watcher=self.watcher,
            runtime=self.runtime,
        )
        try:
            removed = self.cells.cleanup(self.jobs_retention_days)
            if removed:
                self.log.info("removed %d old cell job directories from %s", removed, self.cells.jobs_dir)
        except OSError as e:
            self.log.warning("could not clean up %s: %s", self.cells.jobs_dir, e)
        self.services = ServiceManager(
            cells=self.cells,
            services_dir=self.services_dir,
            proxy_prefix=self.serverapp.base_url.rstrip("/") + "/jupyter-hpc/proxy/",
            default_time=self.service_time_default,
            log=self.log,
        )
        self.pulls = {}
        from .sharing import ShareClient, hub_token
        from .vitals import VitalsCollector

        self.vitals = VitalsCollector(
            self.slurm,
            gpu_probe=self.vitals_gpu_probe,
            gpu_interval=self.vitals_gpu_interval,
            min_window=self.vitals_min_window,
            logger=self.log,
        )
        self.sharing = ShareClient(self.share_url, hub_token(self.serverapp), timeout=self.share_timeout,
                                   logger=self.log)
        self.settings["jupyter_hpc"] = self

    def initialize_handlers(self):
        from .handlers import handlers as api_handlers
        from .proxy import proxy_handlers

        self.handlers.extend(api_handlers())
        self.handlers.extend(proxy_handlers())
