"""Jupyter kernels as Slurm jobs running inside Apptainer images.

:class:`SlurmApptainerProvisioner` is a ``jupyter_client`` kernel provisioner
(entry point ``hpc-slurm-provisioner``). A kernelspec selects it with::

    "metadata": {"kernel_provisioner": {
        "provisioner_name": "hpc-slurm-provisioner",
        "config": {"image": "/opt/jupyter-hpc/images/notebook.sif", "partition": "cpu",
                   "time": "01:00:00", "cpus": 1, "memory": "2G", "gpus": 0}}}

How a kernel starts:

1. ``pre_launch`` writes the kernel's connection file (mode 0600, in a 0700
   directory under the user's home, which the compute nodes share) with the
   HMAC key, the transport, ``ip=0.0.0.0`` and all five ports set to ``0``.
2. ``launch_kernel`` submits one batch job (script on sbatch's standard input)
   that runs the kernelspec's argv, e.g. ``python3 -m ipykernel_launcher -f
   <connection file>``, inside the image (``--nv`` when GPUs are requested).
   Only the *path* of the connection file is in the script; the key never is.
3. ipykernel binds five free ports on the node and writes them back into the
   connection file. The provisioner waits for that (logging the job's pending
   reason meanwhile), asks Slurm for the job's node once, and hands
   ``jupyter_client`` the connection information with ``ip`` set to the node.
   A job that ends before the kernel is up makes the launch fail with the
   job's state and the tail of its output file (e.g. Apptainer's ``FATAL``).

Afterwards the job is observed through the shared
:class:`jupyter_hpc.watcher.JobWatcher` (one batched ``squeue`` per interval for
the whole process); ``poll`` returns an exit code as soon as the job has ended
for any reason (shutdown, time limit, out of memory, node failure).
Interrupts use ``interrupt_mode: "message"`` (kernelspec); ``send_signal``
signals the job's processes through ``scancel --signal=... --full``.
"""

from __future__ import annotations

import asyncio
import errno
import getpass
import json
import os
import re
import signal as signal_mod
import stat
import time
from typing import Any, Dict, List, Optional

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning.provisioner_base import KernelProvisionerBase
from tornado import web
from traitlets import Bool, Float, Integer, List as TList, TraitError, Unicode, Union as TUnion

from . import apptainer, jobscript, process, slurm, validate
from .cluster import SlurmClient, SlurmError, SlurmRequestError
from .validate import ValidationError

#: Names of the five ports of a kernel connection file.
PORT_NAMES = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")

#: Exit code reported by :meth:`SlurmApptainerProvisioner.poll` for a job whose
#: end Slurm no longer describes (it left squeue and sacct has no record).
UNKNOWN_EXIT = 1

#: Slurm variables passed from the job into the container (``--cleanenv``).
JOB_VARIABLES = (
    "SLURM_JOB_ID",
    "SLURM_JOB_NAME",
    "SLURM_JOB_PARTITION",
    "SLURM_JOB_ACCOUNT",
    "SLURM_JOB_NODELIST",
    "SLURM_JOB_NUM_NODES",
    "SLURM_CPUS_ON_NODE",
    "SLURM_CPUS_PER_TASK",
    "SLURM_MEM_PER_NODE",
    "SLURM_MEM_PER_CPU",
    "SLURM_NTASKS",
    "SLURM_SUBMIT_DIR",
    "SLURMD_NODENAME",
    "SLURM_JOB_GPUS",
    "SLURM_GPUS_ON_NODE",
    "CUDA_VISIBLE_DEVICES",
    "GPU_DEVICE_ORDINAL",
    "ROCR_VISIBLE_DEVICES",
    "OMP_NUM_THREADS",
)

#: Variables of the server's environment that sbatch itself may need.
SBATCH_VARIABLES = ("PATH", "LANG", "LC_ALL", "TZ", "HOME", "USER", "LOGNAME", "SLURM_CONF", "TMPDIR")

_KERNEL_ID = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
_SIGNALS = {
    signal_mod.SIGINT: "INT",
    signal_mod.SIGTERM: "TERM",
    signal_mod.SIGKILL: "KILL",
    signal_mod.SIGHUP: "HUP",
    signal_mod.SIGQUIT: "QUIT",
    signal_mod.SIGUSR1: "USR1",
    signal_mod.SIGUSR2: "USR2",
    signal_mod.SIGCONT: "CONT",
    signal_mod.SIGSTOP: "STOP",
}
#: Job states whose meaning is worth spelling out in the log and error messages.
_STATE_TEXT = {
    "TIMEOUT": "reached its time limit",
    "OUT_OF_MEMORY": "ran out of memory",
    "NODE_FAIL": "lost its node",
    "PREEMPTED": "was preempted",
    "CANCELLED": "was cancelled",
    "FAILED": "failed",
    "COMPLETED": "ended",
    "BOOT_FAIL": "could not boot its node",
    "DEADLINE": "missed its deadline",
}


class KernelJobError(web.HTTPError, RuntimeError):
    """The kernel's job could not be submitted or ended before the kernel was up.

    An :class:`tornado.web.HTTPError`, so that jupyter_server answers ``POST
    /api/kernels`` with this message (any other exception becomes "Unhandled
    error"). ``status``: 400 for a kernelspec value Slurm or the validators
    refused, 500 for a job that failed.
    """

    def __init__(self, message: str, status: int = 500):
        # HTTPError %-formats log_message when it is logged; jupyter_server shows it verbatim.
        super().__init__(status, message.replace("%", "\uff05"), reason="Kernel job failed" if status >= 500 else "Invalid kernel settings")
        self.message = message

    def __str__(self) -> str:
        return self.message


def parse_bind(value: Any) -> apptainer.Bind:
    """A bind option from a kernelspec: ``SRC``, ``SRC:DST`` or ``SRC:DST:ro|rw``."""
    if not isinstance(value, str) or not value:
        raise ValidationError("bind", "must be a non-empty 'SRC[:DST[:ro|rw]]' string")
    parts = value.split(":")
    if len(parts) > 3:
        raise ValidationError("bind", f"{value[:80]!r} must look like SRC[:DST[:ro|rw]]")
    if len(parts) == 1:
        spec: apptainer.Bind = parts[0]
    elif len(parts) == 2:
        spec = (parts[0], parts[1])
    else:
        spec = (parts[0], parts[1], parts[2])
    apptainer.bind_spec(spec)  # validates every part
    return spec


def read_connection_file(path: str) -> Optional[Dict[str, Any]]:
    """The JSON content of a connection file, or ``None`` while it is absent or half written."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None  # being rewritten by the kernel right now
    return data if isinstance(data, dict) else None


def ports_ready(info: Optional[Dict[str, Any]]) -> bool:
    """Whether the kernel has written all five of its ports into the connection file."""
    if not info:
        return False
    for name in PORT_NAMES:
        port = info.get(name)
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            return False
    return True


def write_private_json(path: str, data: Dict[str, Any]) -> None:
    """Write ``data`` to ``path`` readable by its owner only (0600), replacing any old file.

    The file is created with ``O_EXCL`` after removing a previous one, so a
    pre-existing file or symlink planted by someone else is never written through.
    """
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        os.fchmod(f.fileno(), 0o600)
        json.dump(data, f, indent=1)


def ensure_private_dir(path: str) -> str:
    """Create ``path`` (and parents) and make sure it is a 0700 directory owned by us."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise KernelJobError(f"{path} is not a directory")
    if st.st_uid != os.getuid():
        raise KernelJobError(f"{path} belongs to another user")
    # jupyter_client adds the sticky bit when the kernel writes its ports: keep it.
    if stat.S_IMODE(st.st_mode) & 0o777 != 0o700:
        os.chmod(path, 0o700 | (stat.S_IMODE(st.st_mode) & stat.S_ISVTX))
    return path


def tail_text(path: Optional[str], limit: int = 2000) -> str:
    """The last ``limit`` characters of a (job output) file; ``""`` when unreadable."""
    if not path:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            data = f.read()
    except OSError:
        return ""
    return data.decode("utf-8", errors="replace").strip()


def job_error_summary(output: str, lines: int = 8) -> str:
    """The most telling lines of a failed job's output (Apptainer ``FATAL``/``ERROR`` first)."""
    all_lines = [ln.rstrip() for ln in output.splitlines() if ln.strip()]
    important = [ln for ln in all_lines if re.search(r"FATAL|ERROR|Error|error:|No such|not found|Traceback", ln)]
    chosen = important[-lines:] if important else all_lines[-lines:]
    return "\n".join(chosen)


def job_exit_status(info: slurm.JobInfo) -> Optional[int]:
    """The job's exit status, shell style (``128 + N`` when killed by signal N).

    squeue's ``exit_code`` field is a raw wait status (``65280`` = exit 255,
    ``15`` = killed by SIGTERM); sacct's ``ExitCode`` is already decoded.
    """
    code = info.exit_code
    if code is None or info.source != "squeue" or code < 0:
        return code
    if code & 0x7F:
        return 128 + (code & 0x7F)
    return (code >> 8) & 0xFF


def exit_code_for(info: slurm.JobInfo) -> int:
    """The exit code ``poll`` reports for a finished job (never ``None``)."""
    code = job_exit_status(info)
    if info.state == "COMPLETED":
        return code or 0
    if code:
        return code
    return {"CANCELLED": 128 + signal_mod.SIGTERM, "TIMEOUT": 128 + signal_mod.SIGTERM,
            "OUT_OF_MEMORY": 128 + signal_mod.SIGKILL}.get(info.state, UNKNOWN_EXIT)


def describe_end(info: slurm.JobInfo) -> str:
    """``'job 12 reached its time limit (TIMEOUT)'``."""
    text = _STATE_TEXT.get(info.state, "ended")
    code = job_exit_status(info)
    extra = f", exit code {code}" if code else ""
    return f"job {info.job_id} {text} ({info.state}{extra})"


class SlurmApptainerProvisioner(KernelProvisionerBase):  # type:ignore[misc]
    """Run each kernel as a Slurm batch job inside an Apptainer image.

    Every trait can be set in the kernelspec's
    ``metadata.kernel_provisioner.config`` or in Jupyter configuration
    (``c.SlurmApptainerProvisioner.partition = "cpu"``).
    """

    image = Unicode(
        "",
        config=True,
        help="Apptainer image the kernel runs in: an absolute path to a SIF file or sandbox directory "
        "(as seen on the compute nodes; when it exists on the server's machine too it must be a SIF "
        "file or sandbox the user can read), or an image id of the jupyter-hpc image catalog "
        "such as 'site:notebook.sif'. The image must provide the kernel (e.g. ipykernel).",
    )
    partition = Unicode(None, allow_none=True, config=True, help="Slurm partition (default: the cluster's default partition).")
    account = Unicode(None, allow_none=True, config=True, help="Slurm account to charge (default: the user's default account).")
    qos = Unicode(None, allow_none=True, config=True, help="Slurm quality of service (default: none requested).")
    time = Unicode(
        "01:00:00",
        config=True,
        help="Time limit of the kernel's job (MM, HH:MM:SS or D-HH:MM:SS). When it is reached "
        "Slurm ends the job and the kernel is reported dead.",
    )
    cpus = Integer(1, min=1, config=True, help="CPUs for the kernel (--cpus-per-task).")
    memory = Unicode(None, allow_none=True, config=True, help="Memory for the kernel's job, e.g. '4G' (default: the partition's default).")
    gpus = Integer(0, min=0, config=True, help="GPUs for the kernel (--gres=gpu:N). Containers get --nv when N > 0.")
    gpu_type = Unicode(None, allow_none=True, config=True, help="GPU type for --gres=gpu:TYPE:N (default: any type).")
    binds = TList(
        Unicode(),
        config=True,
        help="Extra Apptainer bind mounts, each 'SRC', 'SRC:DST' or 'SRC:DST:ro'. The home directory is bound by Apptainer itself.",
    )
    nv = TUnion(
        [Bool(), Unicode()],
        default_value="auto",
        config=True,
        help="Pass --nv to Apptainer (NVIDIA GPU support): true, false, or 'auto' (only when gpus > 0).",
    )
    restart_after_job_end = Bool(
        False,
        config=True,
        help="When the kernel's job ends on its own (time limit, out of memory, node failure), let "
        "Jupyter restart the kernel automatically in a new job. When False (default) the kernel is "
        "reported dead instead, so a time limit is not silently turned into a fresh kernel.",
    )
    venv = Unicode(
        None,
        allow_none=True,
        config=True,
        help="Name of one of the user's Python venvs (~/.jupyter-hpc/venvs/NAME, created with "
        "'jupyter hpc venv create NAME --image IMAGE'): bound into the container and first on the "
        "kernel's PATH, so packages installed there are importable. Only venvs inside the user's own "
        "venv directory are used (symlinks resolved).",
    )
    runtime = Unicode(
        None,
        allow_none=True,
        config=True,
        help="Container runtime for this kernel's image: 'apptainer' or 'charliecloud' (ch-run; the "
        "image must be a directory). Default: the image's own choice (org.jupyter-hpc.runtime label, "
        "Charliecloud image directories), else the site's (ContainerRuntime.mode).",
    )
    ch_run = Unicode("ch-run", config=True, help="Charliecloud's ch-run command on the compute nodes.")
    job_name = Unicode("jupyter-kernel", config=True, help="Slurm job name of kernel jobs.")
    extra_apptainer = TList(
        Unicode(),
        config=True,
        help="Site-wide extra 'apptainer exec' options placed before the image, passed verbatim. "
        "Only for administrators' configuration: values are not validated.",
    )
    env_keep = TList(
        Unicode(),
        default_value=list(JOB_VARIABLES),
        config=True,
        help="Variables of the job's environment passed into the container (Apptainer runs with "
        "--cleanenv). The kernelspec's own 'env' entries are always passed.",
    )
    connection_dir = Unicode(
        "~/.jupyter-hpc/kernels",
        config=True,
        help="Directory for kernel connection files and job output. Must be on a file system the "
        "compute nodes share with the server (the home directory); created with mode 0700.",
    )
    node_address = Unicode(
        "{node}",
        config=True,
        help="How the server reaches a compute node: a template with {node} (the Slurm node name), "
        "e.g. '{node}.ib.cluster' to use another network.",
    )
    pending_timeout = Float(
        0.0,
        min=0.0,
        config=True,
        help="Seconds a kernel's job may stay pending before the start is given up and the job "
        "cancelled; 0 waits as long as Slurm needs.",
    )
    startup_timeout = Float(
        120.0,
        min=1.0,
        config=True,
        help="Seconds allowed between the job starting to run and the kernel writing its ports.",
    )
    check_interval = Float(
        0.2,
        min=0.01,
        config=True,
        help="Seconds between checks of the connection file while the kernel starts.",
    )
    pending_log_interval = Float(
        15.0,
        min=1.0,
        config=True,
        help="Seconds between log lines while the kernel's job is pending.",
    )
    watcher_interval = Float(
        2.0,
        min=0.2,
        config=True,
        help="Longest interval in seconds between the squeue calls of the process-wide job watcher while "
        "kernels are tracked (it detects kernel jobs that ended); a shorter interval set elsewhere is kept.",
    )
    signal_timeout = Float(30.0, min=1.0, config=True, help="Timeout in seconds of the scancel call that signals a kernel.")
    apptainer_command = Unicode("apptainer", config=True, help="apptainer command on the compute nodes.")

    # --- state -----------------------------------------------------------
    job_id: Optional[str] = None
    node: Optional[str] = None
    connection_file: Optional[str] = None
    output_file: Optional[str] = None
    _exit_code: Optional[int] = None
    _cancel_requested = False
    _shutdown_requested = False
    _last_state: Optional[str] = None
    _cmd: Optional[List[str]] = None
    _image_path: Optional[str] = None
    _request: Optional[slurm.JobRequest] = None
    _runtime_mode: str = "apptainer"
    _image_runtime: Optional[str] = None

    _unknown_settings: List[str] = []

    def __init__(self, **kwargs: Any):
        # jupyter_client passes the kernelspec's provisioner "config" as keyword
        # arguments: remember misspelt ones so that the start fails with a clear message.
        known = set(self.class_trait_names()) | {"parent", "config", "log"}
        self._unknown_settings = sorted(k for k in kwargs if k not in known)
        for key in self._unknown_settings:
            kwargs.pop(key)
        try:
            super().__init__(**kwargs)
        except TraitError as e:
            # a kernelspec value of the wrong type: a 400 naming the setting, not a 500 with the value
            text = str(e)
            text = text if len(text) <= 300 else text[:300] + "..."
            raise KernelJobError(f"Kernelspec setting refused: {text}", status=400) from None

    # --- helpers that reach the cluster ---------------------------------
    def _watcher(self):
        from .watcher import JobWatcher

        return JobWatcher.instance(interval=self.watcher_interval)

    _client: Optional[SlurmClient] = None

    @property
    def slurm_client(self) -> SlurmClient:
        """The Slurm client (configurable as ``c.SlurmClient``); commands run as the server's user."""
        if self._client is None:
            self._client = SlurmClient(parent=self, run_as_user=False)
        return self._client

    # --- configuration ---------------------------------------------------
    @property
    def has_process(self) -> bool:
        return self.job_id is not None

    def _use_nv(self, gpus: int) -> bool:
        if isinstance(self.nv, bool):
            return self.nv
        value = str(self.nv).strip().lower()
        if value == "auto":
            return gpus > 0
        return validate.boolean(value, "nv")

    def job_request(self, workdir: Optional[str], output: str) -> slurm.JobRequest:
        """The validated :class:`~jupyter_hpc.slurm.JobRequest` of a kernel job."""
        return slurm.JobRequest.validated(
            partition=self.partition,
            account=self.account,
            qos=self.qos,
            time=self.time,
            cpus=self.cpus,
            memory=self.memory,
            gpus=self.gpus,
            gpu_type=self.gpu_type,
            job_name=self.job_name,
            output=output,
            workdir=workdir,
            comment=slurm.make_comment(kind="kernel", kernel=self.kernel_id, image=self._comment_image()),
        )

    def _comment_image(self) -> Optional[str]:
        name = os.path.basename(self._image_path or self.image or "")
        return name if re.fullmatch(r"[A-Za-z0-9_.:+/@-]{1,200}", name or "") else None

    async def resolve_image(self) -> str:
        """The image path to run: an absolute path as given, or a catalog id resolved for this user."""
        image = self.image
        if not image:
            raise ValidationError("image", "the kernelspec names no image (metadata.kernel_provisioner.config.image)")
        if not isinstance(image, str):
            raise ValidationError("image", "must be a string")
        if image.startswith("/"):
            # As seen on the compute nodes; the job runs as the user, so no directory restriction,
            # but a path visible here must be an image the user can read (no '..', no symlink to
            # a file that is not an image).
            from .images import check_local_image, directory_format, image_runtime

            path = check_local_image(image)
            self._image_runtime = image_runtime(directory_format(path), {}) if os.path.isdir(path) else None
            return path
        if "://" not in image and not re.fullmatch(r"[A-Za-z0-9_.:+-]{1,200}", image):
            raise ValidationError("image", f"{image[:80]!r} is neither an absolute path, an image id nor a reference")
        from .images import ImageCatalog

        # An image id (site:notebook.sif, user:mine.sif) or a registry reference,
        # pulled into the shared cache once rather than by every job.
        catalog = ImageCatalog(parent=self)
        resolved = await catalog.ensure(image, getpass.getuser())
        self._image_runtime = resolved.runtime
        return apptainer.check_path(resolved.path, "image")

    def kernel_argv(self, cmd: List[str], connection_file: str) -> List[str]:
        """The kernelspec's argv with ``{connection_file}`` pointing at the job's connection file."""
        if not cmd:
            raise ValidationError("argv", "the kernelspec has an empty argv")
        resource_dir = getattr(self.kernel_spec, "resource_dir", "") or ""
        out = []
        for arg in cmd:
            arg = str(arg).replace("{connection_file}", connection_file).replace("{resource_dir}", resource_dir)
            if re.search(r"[\x00-\x1f\x7f]", arg):
                raise ValidationError("argv", "contains control characters")
            out.append(arg)
        return out

    def batch_script(self, image: str, argv: List[str], exports: List[str], runtime: str = "apptainer") -> str:
        """The kernel job's batch script (:func:`jupyter_hpc.jobscript.build_container_script`):
        ``exec apptainer exec --cleanenv [--nv] ... IMAGE ARGV``.

        Values of variables never appear in the script: for each name in
        ``exports`` set in the job's environment it has
        ``export APPTAINERENV_NAME="$NAME"``. With ``runtime="host"``
        (containers unavailable) the script runs ``ARGV`` directly on the node.
        """
        binds = [parse_bind(b) for b in self.binds]
        venv = None
        if self.venv:
            from . import venvs

            venv = venvs.resolve(os.path.expanduser("~"), self.venv)
        return jobscript.build_container_script(
            image,
            argv,
            binds=binds,
            nv=self._use_nv(self.gpus or 0),
            cleanenv=True,
            apptainer=self.apptainer_command,
            apptainer_extra=list(self.extra_apptainer),
            env_names=exports,
            exec_=True,
            runtime=runtime,
            venv=venv,
            ch_run=self.ch_run,
        )

    async def runtime_mode(self) -> str:
        """``apptainer``, ``charliecloud`` (:attr:`runtime` or the image's choice), or ``host`` where
        containers cannot run (:class:`jupyter_hpc.runtime.ContainerRuntime`)."""
        from .images import ImageCatalog
        from .runtime import CONTAINER_RUNTIMES, ContainerRuntime, choose

        wanted = self.runtime or self._image_runtime
        if wanted is not None and wanted not in CONTAINER_RUNTIMES:
            raise ValidationError("runtime", f"{str(wanted)[:40]!r} is not one of {', '.join(CONTAINER_RUNTIMES)}")

        runtime = ContainerRuntime(parent=self)
        if runtime.mode != "auto":
            info = await runtime.resolve()
        else:
            info = await runtime.resolve(ImageCatalog(parent=self), getpass.getuser())
        if not info.containers:
            self.log.warning("Kernel %s: %s (%s)", self.kernel_id, info.message, info.reason)
        return choose(info.mode, wanted)

    def job_environment(self, env: Dict[str, str]) -> Dict[str, str]:
        """The environment sbatch runs with (the job inherits it): a few system
        variables, ``JPY_*`` and the kernelspec's ``env`` entries. The server's own
        secrets (tokens) stay out."""
        keep = set(SBATCH_VARIABLES) | set(self._kernel_env_names(env))
        return {k: v for k, v in env.items() if k in keep and isinstance(v, str)}

    def _kernel_env_names(self, env: Dict[str, str]) -> List[str]:
        names = [n for n in env if n.startswith("JPY_")]
        if self.kernel_spec is not None:
            names += list((self.kernel_spec.env or {}).keys())
        out = []
        for n in names:
            try:
                out.append(validate.env_name(n))
            except ValidationError:
                self.log.warning("Kernel environment variable %r is not passed into the container (invalid name)", n)
        return out

    # --- lifecycle -------------------------------------------------------
    async def pre_launch(self, **kwargs: Any) -> Dict[str, Any]:
        """Validate the job's resources, resolve the image and write the connection file."""
        try:
            return await self._pre_launch(**kwargs)
        except ValidationError as e:
            raise KernelJobError(f"Kernelspec setting refused: {e}", status=400) from None

    async def _pre_launch(self, **kwargs: Any) -> Dict[str, Any]:
        if self._unknown_settings:
            raise ValidationError(
                "kernelspec", "unknown setting(s) in metadata.kernel_provisioner.config: "
                + ", ".join(repr(k)[:40] for k in self._unknown_settings)
            )
        if not self.kernel_id or not _KERNEL_ID.match(str(self.kernel_id)):
            raise ValidationError("kernel id", f"{str(self.kernel_id)[:60]!r} is not a kernel id")
        self._exit_code = None
        self._cancel_requested = False
        self._shutdown_requested = False
        self._last_state = None
        self.node = None

        directory = ensure_private_dir(os.path.expanduser(self.connection_dir))
        self.connection_file = os.path.join(directory, f"hpc-kernel-{self.kernel_id}.json")
        self.output_file = os.path.join(directory, f"hpc-kernel-{self.kernel_id}.log")
        apptainer.check_path(self.connection_file, "connection file")
        slurm.slurm_path(self.output_file, "output")

        self._image_path = await self.resolve_image()
        self._runtime_mode = await self.runtime_mode()
        for bind in self.binds:
            parse_bind(bind)
        if self.venv:
            from . import venvs

            venvs.resolve(os.path.expanduser("~"), self.venv)
        cwd = kwargs.get("cwd")
        workdir = None
        if isinstance(cwd, str) and cwd.startswith("/") and os.path.isdir(cwd):
            try:
                workdir = slurm.slurm_path(os.path.realpath(cwd), "workdir")
            except ValidationError:
                workdir = None
        self._request = self.job_request(workdir or os.path.expanduser("~"), self.output_file)

        km = self.parent
        extra_arguments = kwargs.pop("extra_arguments", [])
        kernel_name = getattr(km, "kernel_name", "") or ""
        if km is not None:
            key = km.session.key
            scheme = km.session.signature_scheme
        else:
            import uuid

            key = uuid.uuid4().hex.encode()
            scheme = "hmac-sha256"
        info: Dict[str, Any] = {
            "key": key.decode() if isinstance(key, bytes) else key,
            "signature_scheme": scheme,
            "transport": "tcp",
            "ip": "0.0.0.0",
            "kernel_name": kernel_name,
        }
        info.update({name: 0 for name in PORT_NAMES})
        write_private_json(self.connection_file, info)
        try:
            os.unlink(self.output_file)
        except FileNotFoundError:
            pass

        argv = list(self.kernel_spec.argv if self.kernel_spec is not None else []) + list(extra_arguments)
        self._cmd = self.kernel_argv(argv, self.connection_file)
        return await super().pre_launch(cmd=self._cmd, **kwargs)

    async def launch_kernel(self, cmd: List[str], **kwargs: Any) -> KernelConnectionInfo:
        """Submit the job and wait until the kernel in it has written its ports."""
        assert self.connection_file and self.output_file and self._request is not None and self._image_path
        env = dict(kwargs.get("env") or os.environ)
        job_env = self.job_environment(env)
        exports = list(dict.fromkeys(list(self.env_keep) + self._kernel_env_names(job_env)))
        try:
            script = self.batch_script(self._image_path, list(cmd), exports, runtime=self._runtime_mode)
        except ValidationError as e:
            self._remove_files()
            raise KernelJobError(f"Kernelspec setting refused: {e}", status=400) from None
        try:
            # Against the live partition (sinfo, cached) first: Slurm accepts some impossible
            # requests, e.g. an unknown GPU type, and only fails the job afterwards.
            await self.slurm_client.check_request(self._request)
            self.job_id = await self.slurm_client.submit(self._request, script, env=job_env)
        except ValidationError as e:
            self._remove_files()
            raise KernelJobError(f"Kernelspec setting refused: {e}", status=400) from None
        except SlurmRequestError as e:
            self._remove_files()
            raise KernelJobError(f"Slurm refused the kernel job: {e}", status=400) from None
        except SlurmError as e:
            self._remove_files()
            raise KernelJobError(f"Could not submit the kernel job: {(e.stderr or e.stdout or str(e)).strip()}") from None
        self.log.info("Kernel %s: submitted Slurm job %s (image %s)", self.kernel_id, self.job_id, self._image_path)
        watcher = self._watcher()
        watcher.track(self.job_id)
        try:
            info = await self._wait_for_kernel(watcher)
        except BaseException:
            await self._cancel_quietly()
            watcher.untrack(self.job_id)
            self.job_id = None
            # The job output stays for reading; the connection file holds the key: remove it.
            self._remove_files(output=False)
            raise
        self.connection_info = info
        return info

    async def _wait_for_kernel(self, watcher) -> KernelConnectionInfo:
        started = time.monotonic()
        running_since: Optional[float] = None
        last_log = 0.0
        assert self.connection_file and self.job_id
        while True:
            data = read_connection_file(self.connection_file)
            if ports_ready(data):
                break
            status = watcher.get(self.job_id)
            info = getattr(status, "info", None) if getattr(status, "kind", None) == "known" else None
            now = time.monotonic()
            if getattr(status, "kind", None) == "gone" or (info is not None and info.is_finished):
                # The kernel may have written its ports just before the job ended.
                raise KernelJobError(self._failure_message(info))
            if info is not None and info.state != self._last_state:
                self._last_state = info.state
                if info.is_pending:
                    self.log.info("Kernel %s: job %s is pending (%s)", self.kernel_id, self.job_id, info.reason or "queued")
                elif info.is_running:
                    self.log.info("Kernel %s: job %s is running on %s", self.kernel_id, self.job_id, info.nodes)
            if info is not None and info.is_running and running_since is None:
                running_since = now
            if info is not None and info.is_pending:
                if now - last_log >= self.pending_log_interval:
                    last_log = now
                    self.log.info(
                        "Kernel %s: waiting for job %s (pending %.0f s, reason: %s)",
                        self.kernel_id, self.job_id, now - started, info.reason or "queued",
                    )
                if self.pending_timeout and now - started > self.pending_timeout:
                    raise KernelJobError(
                        f"Kernel job {self.job_id} was still pending after {self.pending_timeout:g} s "
                        f"({info.reason or 'queued'}); it has been cancelled"
                    )
            if running_since is not None and now - running_since > self.startup_timeout:
                raise KernelJobError(
                    f"Kernel job {self.job_id} runs but the kernel did not start within {self.startup_timeout:g} s. "
                    f"Job output:\n{job_error_summary(tail_text(self.output_file))}"
                )
            await asyncio.sleep(self.check_interval)

        assert data is not None
        self.node = await self._job_node(watcher)
        host = self.node_address.replace("{node}", self.node)
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}", host):
            raise KernelJobError(f"Kernel job {self.job_id}: node address {host[:80]!r} is not a host name")
        key = data.get("key", "")
        conn: Dict[str, Any] = {
            "transport": data.get("transport", "tcp"),
            "ip": host,
            "key": key.encode() if isinstance(key, str) else key,
            "signature_scheme": data.get("signature_scheme", "hmac-sha256"),
            "kernel_name": data.get("kernel_name", ""),
        }
        conn.update({name: int(data[name]) for name in PORT_NAMES})
        self.log.info(
            "Kernel %s: up in job %s on %s after %.1f s", self.kernel_id, self.job_id, host, time.monotonic() - started
        )
        return conn

    async def _job_node(self, watcher) -> str:
        """The node the job runs on: from the watcher when it has seen the job run,
        else from one squeue call (the watcher may be an interval behind)."""
        assert self.job_id
        status = watcher.get(self.job_id)
        info = getattr(status, "info", None)
        if getattr(status, "kind", None) == "known" and info is not None and info.is_running and info.node:
            return info.node
        deadline = time.monotonic() + max(10.0, 3 * self.watcher_interval)
        while True:
            try:
                info = (await self.slurm_client.squeue([self.job_id])).get(self.job_id)
            except SlurmError as e:
                self.log.warning("Kernel %s: squeue for job %s failed: %s", self.kernel_id, self.job_id, e)
                info = None
            if info is not None and info.node:
                return info.node
            if time.monotonic() > deadline:
                raise KernelJobError(f"Kernel job {self.job_id}: Slurm did not report the job's node")
            await asyncio.sleep(0.5)

    def _failure_message(self, info: Optional[slurm.JobInfo]) -> str:
        what = describe_end(info) if info is not None else f"job {self.job_id} ended"
        output = job_error_summary(tail_text(self.output_file))
        msg = f"The kernel's Slurm {what} before the kernel started."
        if output:
            msg += f" Job output ({self.output_file}):\n{output}"
        return msg

    async def post_launch(self, **kwargs: Any) -> None:
        await super().post_launch(**kwargs)

    async def poll(self) -> Optional[int]:
        """``None`` while the job runs (or Slurm cannot be reached); its exit code once it ended."""
        if self._exit_code is not None:
            return self._exit_code
        if self.job_id is None:
            return 0
        status = self._watcher().get(self.job_id)
        kind = getattr(status, "kind", None)
        info = getattr(status, "info", None)
        if kind == "known" and info is not None and info.is_finished:
            self._exit_code = exit_code_for(info)
            if not self._cancel_requested and not self._shutdown_requested:
                self.log.warning("Kernel %s died: its Slurm %s", self.kernel_id, describe_end(info))
                self._job_ended_on_its_own()
        elif kind == "gone":
            self._exit_code = 0 if (self._cancel_requested or self._shutdown_requested) else UNKNOWN_EXIT
            if not self._cancel_requested and not self._shutdown_requested:
                self.log.warning("Kernel %s died: Slurm no longer knows job %s", self.kernel_id, self.job_id)
                self._job_ended_on_its_own()
        return self._exit_code

    def _job_ended_on_its_own(self) -> None:
        """Report the kernel dead instead of auto-restarting it (see :attr:`restart_after_job_end`).

        jupyter_client's restarter gives up - fires its "dead" callbacks, which
        jupyter_server turns into the kernel status "dead" - once its restart
        count exceeds ``restart_limit``; a limit of 0 makes it give up at once.
        """
        if self.restart_after_job_end:
            return
        restarter = getattr(self.parent, "_restarter", None)
        if restarter is not None and hasattr(restarter, "restart_limit"):
            restarter.restart_limit = 0
        # The kernel manager drops a dead kernel without a cleanup call: remove our files now.
        self._remove_files()

    async def shutdown_requested(self, restart: bool = False) -> None:
        """The kernel was asked to exit: its job ending next is expected, not a death."""
        self._shutdown_requested = True
        await super().shutdown_requested(restart=restart)

    async def wait(self) -> Optional[int]:
        """Wait until the job has ended; then this provisioner manages no process any more."""
        if self.job_id is None:
            return self._exit_code if self._exit_code is not None else 0
        watcher = self._watcher()
        while True:
            code = await self.poll()
            if code is not None:
                break
            await watcher.wait_for_update()
        watcher.untrack(self.job_id)
        self.job_id = None
        return code

    async def send_signal(self, signum: int) -> None:
        """Signal the kernel's processes on the node through Slurm."""
        if self.job_id is None or signum == 0:
            return
        name = _SIGNALS.get(signum)
        if name is None:
            raise ValueError(f"signal {signum} cannot be sent to a kernel job")
        # SlurmClient.cancel(signal=...) signals job steps only; a kernel job has just
        # its batch step, which scancel reaches with --full (shell and children).
        argv = [self.slurm_client.scancel_cmd, f"--signal={name}", "--full", validate.job_id(self.job_id)]
        await process.run(argv, timeout=self.signal_timeout, env={**os.environ, **self.slurm_client.env})

    async def kill(self, restart: bool = False) -> None:
        """Cancel the kernel's job (Slurm sends SIGTERM, then SIGKILL)."""
        await self._cancel()

    async def terminate(self, restart: bool = False) -> None:
        """Cancel the kernel's job."""
        await self._cancel()

    async def _cancel(self) -> None:
        if self.job_id is None:
            return
        self._cancel_requested = True
        if self._exit_code is not None:
            return
        if await self.slurm_client.cancel(self.job_id):
            self.log.info("Kernel %s: cancelled job %s", self.kernel_id, self.job_id)

    async def _cancel_quietly(self) -> None:
        try:
            await self._cancel()
        except SlurmError as e:
            self.log.warning("Kernel %s: could not cancel job %s: %s", self.kernel_id, self.job_id, e)

    def _remove_files(self, output: bool = True) -> None:
        for path in (self.connection_file, self.output_file if output else None):
            if not path:
                continue
            try:
                os.unlink(path)
            except OSError as e:
                if e.errno != errno.ENOENT:
                    self.log.warning("Could not remove %s: %s", path, e)

    async def cleanup(self, restart: bool = False) -> None:
        """Make sure no job is left behind and remove the connection file and job output."""
        if self.job_id is not None:
            if self._exit_code is None:
                await self._cancel_quietly()
            self._watcher().untrack(self.job_id)
            self.job_id = None
        self._remove_files()
        await super().cleanup(restart=restart)

    def get_shutdown_wait_time(self, recommended: float = 5.0) -> float:
        # The end of the job is seen one watcher interval after the kernel exits.
        return max(recommended, 4 * self.watcher_interval + 2)

    def get_stable_start_time(self, recommended: float = 10.0) -> float:
        return max(recommended, 2 * self.watcher_interval)

    async def get_provisioner_info(self) -> Dict[str, Any]:
        info = await super().get_provisioner_info()
        info.update(
            job_id=self.job_id,
            node=self.node,
            connection_file=self.connection_file,
            output_file=self.output_file,
        )
        return info

    async def load_provisioner_info(self, provisioner_info: Dict[str, Any]) -> None:
        await super().load_provisioner_info(provisioner_info)
        job_id = provisioner_info.get("job_id")
        self.job_id = validate.job_id(job_id) if job_id else None
        self.node = provisioner_info.get("node")
        self.connection_file = provisioner_info.get("connection_file")
        self.output_file = provisioner_info.get("output_file")
        if self.job_id:
            self._watcher().track(self.job_id)


__all__ = ["SlurmApptainerProvisioner", "KernelJobError"]
