"""ApptainerSlurmSpawner: one Slurm job per single-user server, the server inside an Apptainer image.

Differences from :class:`batchspawner.SlurmSpawner` (which it subclasses so that
sites keep their familiar ``req_*``-free configuration surface and tools that
check ``isinstance(spawner, BatchSpawnerBase)`` keep working):

- Every command is an argv list run through :func:`jupyter_hpc.process.run`
  (``runuser``/``sudo`` prefix as a list, never a shell string); the batch
  script is built by :mod:`jupyter_hpc.jobscript` from argv lists.
- ``user_options`` never reach a template: they are validated against the
  admin's profiles, the live partitions and the user's image catalog
  (:func:`~jupyter_hpc.spawners.options.resolve_options`) and refused with
  HTTP 400 before anything is submitted.
- The image needs ``jupyterhub-singleuser`` only. The job picks its port and
  records ``host,port`` in its Slurm comment; the shared
  :class:`~jupyter_hpc.watcher.JobWatcher` (one batched ``squeue`` per interval
  for all servers of the hub) returns it. ``batchspawner-singleuser`` and the
  ``/hub/api/batchspawner`` handler are not used.
- ``poll()`` reads the watcher's cache; when Slurm does not answer it reports
  "still running", never "gone".
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import time
from typing import Any, Dict, List, Optional, Tuple

from batchspawner import JobStatus as BatchJobStatus
from batchspawner import SlurmSpawner
from tornado import web
from traitlets import Bool, CaselessStrEnum, Dict as DictTrait, Float, Integer, List as ListTrait, Unicode, default, validate as validate_trait

from jupyter_hpc import hosttools, jobscript, process, slurm, validate
from jupyter_hpc.cluster import SlurmUnavailable
from jupyter_hpc.images import CATALOG_ENV
from jupyter_hpc.runtime import for_image
from jupyter_hpc.validate import ValidationError

from . import options as opts_mod
from ._shared import CommandFailure, PullError, shared_catalog, shared_client, shared_watcher, short_error

try:  # JupyterHub >= 6
    from jupyterhub.spawner import SpawnException
except ImportError:  # pragma: no cover - older hubs
    SpawnException = None


def _spawn_error(message: str, *, reason: str, status_code: int) -> web.HTTPError:
    if SpawnException is not None:
        return SpawnException(message, reason=reason, status_code=status_code)
    err = web.HTTPError(status_code, "%s", message, reason=reason)
    err.jupyterhub_message = message
    return err


def invalid_options(err: ValidationError) -> web.HTTPError:
    """HTTP 400 for a refused user option (REST API and form alike)."""
    return _spawn_error(f"Invalid server option {err.field}: {err.message}", reason="invalid_options", status_code=400)


def job_failed(message: str) -> web.HTTPError:
    return _spawn_error(message, reason="job_failed", status_code=500)


class ApptainerSlurmSpawner(SlurmSpawner):
    """Spawn ``jupyterhub-singleuser`` inside an Apptainer image as a Slurm batch job."""

    # ------------------------------------------------------------------
    # configuration
    # ------------------------------------------------------------------
    profiles = ListTrait(
        DictTrait(),
        default_value=[],
        help="""Admin-defined presets shown in the spawn form.

        Each entry: ``{"name": "gpu", "display_name": "...", "description": "...",
        "defaults": {"partition": "gpu", "gpus": 1, "cpus": 2, "memory": "8G", "time": "04:00:00",
        "image": "site:notebook.sif"}, "limits": {"cpus": 4, "memory": "16G", "time": "08:00:00",
        "gpus": 2}, "images": ["site:*"], "partitions": ["gpu"], "accounts": []}``.
        ``images`` accepts image ids and glob patterns; empty lists mean "everything
        the spawner allows". With profiles configured every spawn uses one (the first
        when the user names none) and its limits are enforced for REST spawns too.
        """,
    ).tag(config=True)

    default_image = Unicode(
        "",
        help="Image id (e.g. 'site:notebook.sif') used when neither the user nor the profile names one. "
        "Empty: the first image of the user's catalog.",
    ).tag(config=True)

    default_partition = Unicode(
        "", help="Partition used when neither the user nor the profile names one. Empty: Slurm's default partition."
    ).tag(config=True)

    default_cpus = Integer(1, help="CPUs (--cpus-per-task) when the user gives none.").tag(config=True)
    default_memory = Unicode("2G", help="Memory (--mem) when the user gives none, e.g. '2G'.").tag(config=True)
    default_time = Unicode("08:00:00", help="Time limit when the user gives none (HH:MM:SS or D-HH:MM:SS).").tag(config=True)

    max_cpus = Integer(0, help="Most CPUs a user may request (0: what one node of the partition has).").tag(config=True)
    max_memory = Unicode("", help="Most memory a user may request, e.g. '64G' (empty: one node's memory).").tag(config=True)
    max_time = Unicode("", help="Longest time limit a user may request (empty: the partition's MaxTime).").tag(config=True)
    max_gpus = Integer(-1, help="Most GPUs a user may request (-1: what one node of the partition has; 0: none).").tag(config=True)

    allowed_partitions = ListTrait(
        Unicode(), default_value=[], help="Partitions offered to users (empty: every partition sinfo lists)."
    ).tag(config=True)

    allowed_accounts = ListTrait(
        Unicode(), default_value=[], help="Accounts a user may name (empty: any well-formed name; Slurm checks membership)."
    ).tag(config=True)

    binds = ListTrait(
        Unicode(),
        default_value=[],
        help="Extra Apptainer binds 'SRC[:DST[:ro|rw]]'; '{username}' and '{home}' are replaced. "
        "The user's home directory is available inside the container by Apptainer's default home mount.",
    ).tag(config=True)

    host_tools = Bool(
        True,
        help="Bind the host's Slurm client (commands, libraries, configuration, munge socket, /etc/passwd "
        "and /etc/group) and Apptainer read-only into the server's container, and the image catalog's "
        "directories at their own paths, so that jupyter-hpc inside the server (sidebar, cell jobs, services, "
        "kernels) reaches Slurm and the same images as on the host. The image must be built for the same "
        "C library generation as the nodes. Off: the image brings its own Slurm client, or none.",
    ).tag(config=True)

    host_tool_paths = ListTrait(
        Unicode(),
        default_value=[],
        help="Host paths bound read-only (same path inside) when host_tools is on. Empty: detected on the "
        "hub host (see jupyter_hpc.hosttools.detect_paths), which must share the nodes' installation.",
    ).tag(config=True)

    job_env_names = ListTrait(
        Unicode(),
        default_value=[
            "CUDA_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL", "ROCR_VISIBLE_DEVICES",
            "SLURM_JOB_ID", "SLURM_JOB_NODELIST", "SLURM_JOB_PARTITION", "SLURM_CPUS_PER_TASK",
            "SLURM_MEM_PER_NODE", "SLURM_JOB_GPUS", "TZ", "LANG",
        ],
        help="Variables set by Slurm in the job that are passed into the container when present "
        "(in addition to the hub's get_env() variables).",
    ).tag(config=True)

    apptainer_command = Unicode("apptainer", help="Apptainer executable on the compute nodes.").tag(config=True)

    container_runtime = CaselessStrEnum(
        ["apptainer", "charliecloud"],
        default_value="apptainer",
        help="Site-wide container runtime of servers: 'apptainer' (apptainer exec) or 'charliecloud' "
        "(ch-run; directory images only, SIF files are refused with a message). An image that names "
        "its runtime (label org.jupyter-hpc.runtime; Charliecloud image directories) uses that one.",
    ).tag(config=True)

    ch_run_command = Unicode("ch-run", help="Charliecloud's ch-run executable on the compute nodes.").tag(config=True)

    apptainer_args = ListTrait(
        Unicode(), default_value=[], help="Extra options for 'apptainer exec' (admin only, passed verbatim)."
    ).tag(config=True)

    cleanenv = Bool(
        True,
        help="Start the container with --cleanenv; the hub's variables (get_env()) are passed in explicitly "
        "as APPTAINERENV_* taken from the job environment.",
    ).tag(config=True)

    setup_commands = ListTrait(
        ListTrait(Unicode()),
        default_value=[],
        help="Commands (argv lists) run in the job before the container starts, e.g. [['module', 'load', 'apptainer']].",
    ).tag(config=True)

    singleuser_ip = Unicode(
        "0.0.0.0", help="Address the server listens on inside the job (--ip). The hub connects to the node name."
    ).tag(config=True)

    port_range = ListTrait(
        Integer(), default_value=[20000, 39999], minlen=2, maxlen=2, help="Range the job picks its server port from. The part inside the node's ephemeral "
        "range (net.ipv4.ip_local_port_range, usually 32768-60999) is left out unless nothing else remains."
    ).tag(config=True)

    host_from = Unicode(
        "hostname",
        help="How the job names its node to the hub: 'hostname' (hostname -s), 'fqdn', 'nodename' "
        "($SLURMD_NODENAME) or 'ip' (first address of hostname -I).",
    ).tag(config=True)

    job_name = Unicode("jupyterhub", help="Slurm job name of the servers.").tag(config=True)

    share_url = Unicode(
        "",
        help="URL at which the users' servers reach JupyterHub's jupyter-hpc-share service, ending in its "
        "prefix (e.g. 'http://login01:10101/services/jupyter-hpc-share/'); passed to the server as "
        "JUPYTER_HPC_SHARE_URL so that users can share their service jobs (docs/sharing.md). Empty: not set.",
    ).tag(config=True)

    output_dir = Unicode(
        "{home}/.jupyter-hpc/servers",
        help="Directory (created as the user) for the job's output file jupyterhub-server-<jobid>.log; "
        "'{home}' and '{username}' are replaced.",
    ).tag(config=True)

    job_path = Unicode(
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        help="PATH of the submission command and of the job's script (outside the container).",
    ).tag(config=True)

    user_prefix = ListTrait(
        Unicode(),
        default_value=list(process.RUNUSER_PREFIX),
        help="Prefix that runs Slurm commands as the user; '{username}' is replaced. Default runuser (hub as root). "
        "For a non-root hub: ['sudo', '-n', '-E', '-u', '{username}', '--'] with a matching sudoers rule.",
    ).tag(config=True)

    watcher_interval = Float(
        10.0,
        help="Seconds between the shared watcher's squeue calls (one call for all servers of this hub). "
        "poll() reads the watcher's cache, so a server whose job ended is noticed within "
        "watcher_interval + Spawner.poll_interval; starting and stopping servers refresh it on demand "
        "(startup_poll_interval), so spawns do not wait for it.",
    ).tag(config=True)

    partitions_max_age = Float(30.0, help="Seconds the sinfo partition list is cached.").tag(config=True)

    startup_poll_interval = Float(
        1.0,
        help="While a server starts, seconds between forced refreshes of the shared watcher "
        "(one squeue for all starting servers together).",
    ).tag(config=True)

    stop_timeout = Float(30.0, help="Seconds stop() waits for Slurm to confirm the job is gone.").tag(config=True)

    failure_log_lines = Integer(25, help="Lines of the job's output shown when a spawn fails.").tag(config=True)

    # batchspawner defaults that make no sense here
    start_timeout = Integer(
        300, help="Seconds a spawn may take, pending time in the queue included."
    ).tag(config=True)

    # batchspawner's shell templates and regexes are not used: argv lists and the shared watcher replace them.
    _UNUSED = "Not used by ApptainerSlurmSpawner (argv-based submission and the shared JobWatcher replace it)."
    batch_script = Unicode("", help=_UNUSED)
    batch_submit_cmd = Unicode("", help=_UNUSED)
    batch_query_cmd = Unicode("", help=_UNUSED)
    batch_cancel_cmd = Unicode("", help=_UNUSED)
    exec_prefix = Unicode("", help=_UNUSED + " See user_prefix.")
    state_pending_re = Unicode("", help=_UNUSED)
    state_running_re = Unicode("", help=_UNUSED)
    state_unknown_re = Unicode("", help=_UNUSED)
    state_exechost_re = Unicode("", help=_UNUSED)

    @default("cmd")
    def _cmd_default(self):
        return ["jupyterhub-singleuser"]

    @default("apply_user_options")
    def _apply_user_options_default(self):
        # user_options are checked and applied by start() (validate_user_options), for the
        # form and the REST API alike; this no-op only keeps the hub from warning about them.
        def _handled_in_start(spawner, user_options):
            return None

        return _handled_in_start

    @validate_trait("host_from")
    def _check_host_from(self, proposal):
        if proposal.value not in jobscript.HOST_EXPRESSIONS:
            raise ValueError(f"host_from must be one of {', '.join(jobscript.HOST_EXPRESSIONS)}")
        return proposal.value

    # ------------------------------------------------------------------
    # state
    # ------------------------------------------------------------------
    job_host = Unicode("")
    job_port = Integer(0)
    image_id = Unicode("")
    image_path = Unicode("")
    output_path = Unicode("")
    partition = Unicode("")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._submit_task: Optional[asyncio.Future] = None
        self._phase = "idle"
        self._phase_detail: Dict[str, Any] = {}
        self._last_info: Optional[slurm.JobInfo] = None
        self._tracked_job: Optional[str] = None

    def get_state(self):
        state = super().get_state()
        state.pop("job_status", None)
        if self.job_id:
            state.update(
                job_host=self.job_host,
                job_port=self.job_port,
                image_id=self.image_id,
                image_path=self.image_path,
                output_path=self.output_path,
                partition=self.partition,
            )
        return state

    def load_state(self, state):
        super().load_state(state)
        self.job_host = state.get("job_host", "") or ""
        self.job_port = int(state.get("job_port", 0) or 0)
        self.image_id = state.get("image_id", "") or ""
        self.image_path = state.get("image_path", "") or ""
        self.output_path = state.get("output_path", "") or ""
        self.partition = state.get("partition", "") or ""

    def clear_state(self):
        self._untrack()
        super().clear_state()
        self.job_host = ""
        self.job_port = 0
        self.image_id = ""
        self.image_path = ""
        self.output_path = ""
        self.partition = ""

    # ------------------------------------------------------------------
    # shared clients
    # ------------------------------------------------------------------
    @property
    def slurm_client(self):
        """The hub-wide SlurmClient (``c.SlurmClient`` configures it)."""
        return shared_client(self.config, list(self.user_prefix))

    @property
    def catalog(self):
        """The hub-wide image catalog (``c.ImageCatalog`` configures it)."""
        return shared_catalog(self.config, list(self.user_prefix))

    @property
    def watcher(self):
        """The hub-wide JobWatcher: one squeue per interval for every server."""
        return shared_watcher(self.config, self.watcher_interval, list(self.user_prefix))

    def _track(self, job_id: str):
        """Track ``job_id`` once per spawner (the watcher counts references)."""
        if self._tracked_job != job_id:
            self._untrack()
            self.watcher.track(job_id)
            self._tracked_job = job_id
            return True
        return False

    def _untrack(self):
        if self._tracked_job:
            self.watcher.untrack(self._tracked_job)
            self._tracked_job = None

    @property
    def username(self) -> str:
        return validate.username(self.user.name)

    def _home(self) -> str:
        return pwd.getpwnam(self.username).pw_dir

    # ------------------------------------------------------------------
    # options
    # ------------------------------------------------------------------
    def _profiles(self) -> List[opts_mod.Profile]:
        return [opts_mod.Profile.from_config(p) for p in self.profiles]

    def _defaults(self) -> Dict[str, Any]:
        d: Dict[str, Any] = {"cpus": self.default_cpus, "memory": self.default_memory, "time": self.default_time}
        if self.default_image:
            d["image"] = self.default_image
        if self.default_partition:
            d["partition"] = self.default_partition
        return d

    def _limits(self) -> opts_mod.Limits:
        return opts_mod.Limits.from_values(
            {
                "cpus": self.max_cpus or None,
                "memory": self.max_memory or None,
                "time": self.max_time or None,
                "gpus": None if self.max_gpus < 0 else self.max_gpus,
            }
        )

    async def _cluster_choices(self):
        try:
            partitions = await self.slurm_client.partitions(max_age=self.partitions_max_age)
        except CommandFailure as e:
            raise _spawn_error(
                f"Cannot read the partition list ({short_error(e)}); try again shortly",
                reason="slurm_unavailable",
                status_code=503,
            ) from None
        images = await self.catalog.list_images(self.username)
        return partitions, images

    async def validate_user_options(self, user_options: Any) -> Tuple[opts_mod.SpawnOptions, Any]:
        """Check ``user_options`` (form or REST) and return the normalised options and the image.

        Raises an HTTP 400 error naming the field for anything not allowed.
        """
        partitions, images = await self._cluster_choices()
        try:
            chosen = opts_mod.resolve_options(
                user_options,
                partitions=partitions,
                images=images,
                profiles=self._profiles(),
                defaults=self._defaults(),
                limits=self._limits(),
                allowed_partitions=self.allowed_partitions,
                allowed_accounts=self.allowed_accounts,
            )
        except ValidationError as e:
            raise invalid_options(e) from None
        image = next(i for i in images if opts_mod.image_id_of(i) == chosen.image_id)
        return chosen, image

    async def get_options_form(self):
        if self.options_form:
            return await super().get_options_form()
        partitions, images = await self._cluster_choices()
        previous = {}
        if getattr(self, "orm_spawner", None) is not None and self.orm_spawner.user_options:
            previous = self.orm_spawner.user_options
        from jupyter_hpc import venvs

        try:
            names = await asyncio.wait_for(asyncio.to_thread(venvs.venv_names, self._home()), timeout=10)
        except (KeyError, asyncio.TimeoutError):
            names = []
        return opts_mod.render_form(
            partitions=partitions,
            images=images,
            profiles=self._profiles(),
            defaults=self._defaults(),
            limits=self._limits(),
            allowed_partitions=self.allowed_partitions,
            previous=previous,
            venvs=names,
        )

    @default("options_from_form")
    def _default_options_from_form(self):
        return opts_mod.options_from_form

    # ------------------------------------------------------------------
    # submission
    # ------------------------------------------------------------------
    def get_env(self):
        env = super().get_env()
        if self.host_tools:
            # the server's jupyter-hpc shows the same catalog as this hub's spawn form
            env[CATALOG_ENV] = json.dumps(self.catalog.hub_settings(), sort_keys=True)
        if self.share_url:
            env["JUPYTER_HPC_SHARE_URL"] = self.share_url
        return env

    def _container_env(self) -> Dict[str, str]:
        """Hub-provided variables for the server (token included): job environment only, never argv."""
        env = {}
        for key, value in self.get_env().items():
            if key in ("HOME", "PATH", "SHELL"):
                continue
            try:
                validate.env_name(key)
            except ValidationError:
                self.log.warning("Not passing environment variable %r into the container (not an upper-case name)", key)
                continue
            env[key] = str(value)
        return env

    def _host_tool_binds(self) -> List[Tuple[str, ...]]:
        """Slurm client, Apptainer and the catalog's directories, for jupyter-hpc inside the container."""
        if not self.host_tools:
            return []
        paths = list(self.host_tool_paths) or hosttools.detect_paths()
        out: List[Tuple[str, ...]] = [(p, p, "ro") for p in paths]
        cat = self.catalog
        for d in cat.site_dirs:
            if os.path.isdir(d):
                out.append((d, d, "ro"))
        if cat.cache_dir and os.path.isdir(cat.cache_dir):
            out.append((cat.cache_dir, cat.cache_dir, "rw"))
        return out

    def _binds(self, home: str) -> List[Tuple[str, ...]]:
        out = self._host_tool_binds()
        for spec in self.binds:
            spec = spec.replace("{username}", self.username).replace("{home}", home)
            parts = spec.split(":")
            if len(parts) == 1:
                out.append((parts[0], parts[0]))
            else:
                out.append(tuple(parts))
        return out

    def _server_cmd(self, venv: Optional[str]) -> List[str]:
        """The server command; with a venv, ``jupyterhub-singleuser`` runs on the venv's Python.

        Kernels of the server use the server's own Python (ipykernel's default
        kernelspec), so the venv's packages are importable in notebooks only when
        the server itself runs there (venvs see the image's packages as well).
        """
        cmd = list(self.cmd)
        if venv and cmd and os.path.basename(cmd[0]) == "jupyterhub-singleuser":
            return [f"{venv}/bin/python", "-m", "jupyterhub.singleuser"] + cmd[1:]
        if venv:
            self.log.warning("Spawner.cmd %s is not jupyterhub-singleuser: the venv %s is only put first on PATH",
                             cmd[:1], venv)
        return cmd

    def build_job(self, chosen: opts_mod.SpawnOptions, image: Any, home: str) -> Tuple[slurm.JobRequest, str, Dict[str, str]]:
        """The Slurm request, the batch script and the job environment of one spawn."""
        out_dir = self.output_dir.replace("{home}", home).replace("{username}", self.username)
        output = os.path.join(out_dir, "jupyterhub-server-%j.log")
        try:
            comment = slurm.make_comment(kind="server", image=chosen.image_id)
        except ValidationError:
            comment = slurm.make_comment(kind="server")
        req = slurm.JobRequest(
            partition=chosen.partition,
            account=chosen.account,
            time=chosen.time,
            cpus=chosen.cpus,
            memory=chosen.memory,
            gpus=chosen.gpus,
            gpu_type=chosen.gpu_type,
            job_name=validate.job_name(self.job_name),
            output=output,
            workdir=home,
            comment=comment,
        )
        env = self._container_env()
        venv = None
        if chosen.venv:
            from jupyter_hpc import venvs

            try:
                venv = venvs.resolve(home, chosen.venv)
            except ValidationError as e:
                raise invalid_options(e) from None
        argv = self._server_cmd(venv) + [f"--ip={self.singleuser_ip}", "--port={port}"] + list(self.get_args())
        try:
            script = jobscript.build_container_script(
                image.path,
                argv,
                binds=self._binds(home),
                nv=chosen.gpus > 0,
                cleanenv=self.cleanenv,
                pwd=home,
                apptainer=self.apptainer_command,
                apptainer_extra=self.apptainer_args,
                runtime=for_image(self.container_runtime, image),
                ch_run=self.ch_run_command,
                env_names=sorted(set(env) | {validate.env_name(n) for n in self.job_env_names}),
                setup=[list(c) for c in self.setup_commands],
                port=True,
                port_range=tuple(self.port_range),
                comment=comment,
                host=self.host_from,
                directives=["--signal=B:TERM@30"],
                venv=venv,
            )
        except ValidationError as e:
            raise invalid_options(e) from None
        job_env = {"PATH": self.job_path, "LANG": os.environ.get("LANG", "C.UTF-8"), "USER": self.username, "HOME": home}
        job_env.update(env)
        return req, script, job_env

    async def submit_batch_script(self, chosen: Optional[opts_mod.SpawnOptions] = None, image: Any = None):
        """Submit the server job (argv ``sbatch``, script on stdin, secrets in the environment)."""
        if chosen is None:
            chosen, image = await self.validate_user_options(self.user_options)
        home = self._home()
        req, script, job_env = self.build_job(chosen, image, home)
        out_dir = os.path.dirname(req.output)
        await process.run(
            ["mkdir", "-p", "-m", "0700", out_dir], user=self.username, user_prefix=self.user_prefix, timeout=30
        )
        self.log.info(
            "Submitting server job for %s: image %s, partition %s, %s CPUs, %s, %s GPUs, time %s",
            self.username, chosen.image_id, chosen.partition, chosen.cpus, chosen.memory, chosen.gpus, chosen.time,
        )
        self.log.debug("Server job script for %s:\n%s", self.username, script)
        job_id = await self.slurm_client.submit(req, script, user=self.username, env=job_env)
        self.output_path = req.output.replace("%j", job_id)
        return job_id

    # ------------------------------------------------------------------
    # job status
    # ------------------------------------------------------------------
    async def _status(self, fresh: bool = False):
        """The watcher's view of our job; with ``fresh``, wait for one update after tracking it."""
        w = self.watcher
        if self._track(self.job_id):
            fresh = True
        if fresh and w.get(self.job_id).updated is None:
            await w.refresh(timeout=max(10.0, 5 * self.watcher_interval))
        st = w.get(self.job_id)
        if st.info is not None:
            self._last_info = st.info
        return st

    async def query_job_status(self):
        """batchspawner interface, answered from the shared watcher (no per-spawner squeue)."""
        if not self.job_id:
            return BatchJobStatus.NOTFOUND
        st = await self._status()
        if st.kind == "unknown":
            return BatchJobStatus.UNKNOWN
        if st.kind == "gone" or st.info is None or st.info.is_finished:
            return BatchJobStatus.NOTFOUND
        return BatchJobStatus.RUNNING if st.info.is_running else BatchJobStatus.PENDING

    def state_ispending(self):
        return bool(self._last_info and self._last_info.is_pending)

    def state_isrunning(self):
        return bool(self._last_info and self._last_info.is_running)

    def state_isunknown(self):
        return self._last_info is None

    def state_gethost(self):
        ep = self._last_info.endpoint if self._last_info else None
        return ep[0] if ep else (self._last_info.node if self._last_info else None)

    def start_polling(self):
        """The hub's periodic poll, plus a poll as soon as the shared watcher sees the job end.

        The watcher's squeue runs every ``watcher_interval``; without this hook the hub would
        learn of a dead job only at its next ``poll_interval`` tick after that.
        """
        super().start_polling()
        if self.job_id:
            self._track(self.job_id)
            self.watcher.on_end(self.job_id, self._on_job_end)

    def _on_job_end(self, status) -> None:
        if self._poll_callback is not None and status.job_id == self.job_id:
            asyncio.ensure_future(self.poll_and_notify())

    async def cancel_batch_job(self):
        await self.slurm_client.cancel(self.job_id, user=self.username)

    async def poll(self):
        """``None`` while the job is pending/running or Slurm is unreachable; an exit status once it is gone."""
        if self._submit_task is not None and not self._submit_task.done():
            return None
        if not self.job_id:
            return 0
        st = await self._status()
        if st.kind == "unknown":
            return None
        if st.kind == "known" and st.info is not None and not st.info.is_finished:
            return None
        code = st.info.exit_code if st.info is not None and st.info.exit_code is not None else 1
        self.log.info(
            "Server job %s of %s is %s", self.job_id, self.username, st.info.state if st.info else "gone"
        )
        self.clear_state()
        return code or 1

    # ------------------------------------------------------------------
    # start / stop
    # ------------------------------------------------------------------
    async def start(self):
        self._phase, self._phase_detail = "validating", {}
        chosen, image = await self.validate_user_options(self.user_options)
        self.image_id = chosen.image_id
        if not getattr(image, "path", None):
            image = await self._pull(chosen.image_id)
        self.image_path = image.path
        self.partition = chosen.partition
        self._phase_detail = {"image": getattr(image, "title", None) or chosen.image_id, "partition": chosen.partition}
        self._phase = "submitting"
        self._submit_task = asyncio.ensure_future(self.submit_batch_script(chosen, image))
        try:
            job_id = await asyncio.shield(self._submit_task)
        except SlurmUnavailable as e:
            self._phase = "failed"
            raise job_failed(f"Could not submit the server job: {short_error(e)}; try again shortly") from None
        except CommandFailure as e:
            self._phase = "failed"
            raise job_failed(f"Slurm refused the server job: {short_error(e)}") from None
        self.job_id = job_id
        self._track(job_id)
        self._phase = "submitted"
        self.db.commit()
        try:
            host, port = await self._wait_for_endpoint()
            self.job_host, self.job_port = host, port
            self._phase = "connecting"
            await self._wait_for_listen(host, port)
        except asyncio.CancelledError:
            # start_timeout, a user's "cancel" or hub shutdown: never leave the job behind
            await self._cancel_quietly(job_id)
            raise
        self._phase = "listening"
        self.log.info("Server job %s of %s listens on %s:%s", job_id, self.username, host, port)
        return host, port

    async def _cancel_quietly(self, job_id: str) -> None:
        try:
            await asyncio.shield(self.slurm_client.cancel(job_id, user=self.username))
            self.log.info("Cancelled server job %s of %s (spawn interrupted)", job_id, self.username)
        except (CommandFailure, asyncio.CancelledError) as e:
            self.log.warning("Could not cancel server job %s of %s: %s", job_id, self.username, e)

    async def _pull(self, image_id: str):
        """Fetch a registry image into the shared cache before submitting (once per reference)."""
        self._phase = "pulling"
        self._phase_detail = {"image": image_id, "pull": "starting"}

        def report(fraction, message):
            self._phase_detail = {**self._phase_detail, "pull": message,
                                  "fraction": fraction if isinstance(fraction, (int, float)) else None}

        try:
            image = await self.catalog.ensure(image_id, self.username, progress=report)
        except (PullError, ValidationError, process.CommandError, OSError) as e:
            self._phase = "failed"
            raise job_failed(f"Could not pull image {image_id}: {e}") from None
        return image

    async def _job_ended(self, info: Optional[slurm.JobInfo]) -> web.HTTPError:
        """The error raised when the job ends before the server answers: state plus output tail."""
        self._phase = "failed"
        state = info.state if info is not None else "gone"
        detail = f"{state}"
        if info is not None and info.exit_code is not None:
            code = info.exit_code
            detail += f", exit status {code >> 8 if code > 255 else code}"
        tail = await self._output_tail()
        job_id = self.job_id
        self.clear_state()
        msg = f"The server job {job_id} ended ({detail}) before the server started."
        if tail:
            msg += f" Last lines of its output:\n{tail}"
        return job_failed(msg)

    async def _output_tail(self) -> str:
        if not self.output_path:
            return ""
        try:
            res = await process.run(
                ["tail", "-n", str(self.failure_log_lines), "--", self.output_path],
                user=self.username,
                user_prefix=self.user_prefix,
                timeout=10,
                check=False,
            )
        except process.CommandError as e:
            self.log.warning("Could not read %s: %s", self.output_path, e)
            return ""
        lines = [ln for ln in res.stdout.splitlines() if "jhpc" not in ln]
        return "\n".join(lines).strip()

    async def _wait_for_endpoint(self) -> Tuple[str, int]:
        """Wait until the job recorded host:port in its comment; fail fast when it ends."""
        w = self.watcher
        await self._status(fresh=True)
        while True:
            st = w.get(self.job_id)
            info = st.info
            if info is not None:
                self._last_info = info
            if st.kind == "gone" or (info is not None and info.is_finished):
                raise await self._job_ended(info)
            if info is not None:
                if info.is_running:
                    ep = info.endpoint
                    if ep:
                        return ep
                    self._phase = "running"
                elif info.is_pending:
                    self._phase = "pending"
            await asyncio.sleep(self.startup_poll_interval)
            await w.refresh(timeout=max(10.0, 3 * self.watcher_interval))

    async def _wait_for_listen(self, host: str, port: int) -> None:
        """Wait until something accepts connections on host:port, or the job ends."""
        w = self.watcher
        while True:
            st = w.get(self.job_id)
            if st.kind == "gone" or (st.info is not None and st.info.is_finished):
                raise await self._job_ended(st.info)
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 2)
            except (OSError, asyncio.TimeoutError):
                await asyncio.sleep(0.25)
                continue
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass
            return

    async def stop(self, now=False):
        """Cancel the job (a pending one too) and wait until Slurm confirms it is gone."""
        task = self._submit_task
        if task is not None and not task.done():
            # A spawn cancelled while sbatch runs: wait for the job id so that no job is left behind.
            try:
                self.job_id = await task
            except (CommandFailure, ValidationError, web.HTTPError) as e:
                self.log.info("Submission for %s did not produce a job: %s", self.username, e)
        if not self.job_id:
            return
        job_id = self.job_id
        self.log.info("Stopping server job %s of %s", job_id, self.username)
        deadline = time.monotonic() + self.stop_timeout
        while True:
            try:
                await self.slurm_client.cancel(job_id, user=self.username)
                break
            except CommandFailure as e:
                if time.monotonic() > deadline:
                    self.log.error("Could not cancel server job %s: %s", job_id, e)
                    raise
                self.log.warning("scancel %s failed (%s); retrying", job_id, short_error(e))
                await asyncio.sleep(2)
        if now:
            return
        w = self.watcher
        self._track(job_id)
        while time.monotonic() < deadline:
            await w.refresh(timeout=max(5.0, 3 * self.watcher_interval))
            st = w.get(job_id)
            if st.is_finished:
                self._untrack()
                return
            await asyncio.sleep(0.5)
        self.log.warning("Server job %s of %s was cancelled but is still listed after %ss", job_id, self.username, self.stop_timeout)

    # ------------------------------------------------------------------
    # progress
    # ------------------------------------------------------------------
    def _queue_position(self) -> Optional[Tuple[int, int]]:
        """(position, pending jobs) of our job in its partition, from the watcher's last squeue (no extra RPC)."""
        w = self.watcher
        pos = w.queue_position(self.job_id)
        if pos is None:
            return None
        info = self._last_info
        part = (info.partition if info and info.partition else self.partition).split(",")[0]
        return pos, len(w.pending_by_partition().get(part, []))

    async def _progress_event(self) -> Optional[dict]:
        phase = self._phase
        d = self._phase_detail
        if phase == "validating":
            return {"progress": 5, "message": "Checking the server options"}
        if phase == "pulling":
            frac = d.get("fraction")
            pct = f" ({frac * 100:.0f}%)" if isinstance(frac, (int, float)) else ""
            return {"progress": 8, "message": f"Pulling image {d.get('image')}: {d.get('pull')}{pct}"}
        if phase == "submitting":
            return {"progress": 10, "message": f"Submitting the server job to Slurm (partition {d.get('partition')}, image {d.get('image')})"}
        info = self._last_info
        job = self.job_id
        if phase == "submitted":
            return {"progress": 20, "message": f"Job {job} submitted to partition {self.partition}"}
        if phase == "pending" and info is not None:
            msg = f"Job {job} pending in partition {info.partition or self.partition}"
            if info.reason and info.reason != "None":
                msg += f" (reason: {info.reason})"
            q = self._queue_position()
            if q and q[0]:
                msg += f"; position {q[0]} of {q[1]} pending"
            if info.start_time:
                msg += f"; estimated start {info.start_time}"
            return {"progress": 30, "message": msg}
        if phase == "running":
            node = info.node if info is not None else "?"
            return {"progress": 50, "message": f"Job {job} running on {node}; starting the container ({d.get('image')})"}
        if phase == "connecting":
            return {
                "progress": 80,
                "message": f"Container started on {self.job_host}; waiting for the server on port {self.job_port}",
            }
        if phase == "listening":
            return {"progress": 95, "message": f"Server in job {job} is up on {self.job_host}:{self.job_port}"}
        return None

    async def progress(self):
        last = None
        while True:
            event = await self._progress_event()
            if event is not None and event != last:
                yield event
                last = event
            if self._phase in ("listening", "failed"):
                return
            await asyncio.sleep(0.5)
