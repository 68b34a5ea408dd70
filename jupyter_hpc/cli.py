"""``jupyter hpc ...`` / ``jupyter-hpc ...`` command line.

Subcommands:

``kernelspec install``
    Install a kernelspec whose kernels run as Slurm jobs inside an Apptainer
    image (through the ``hpc-slurm-provisioner`` kernel provisioner)::

        jupyter hpc kernelspec install --name hpc-gpu --image /opt/jupyter-hpc/images/notebook.sif \\
            --partition gpu --gpus 1 --time 02:00:00 --mem 8G --display-name "Python (GPU job)"

``kernelspec show NAME``
    Print the kernel.json of an installed kernelspec.

``venv create NAME --image IMAGE`` / ``venv list`` / ``venv remove NAME``
    The user's Python venvs layered on an image (:mod:`jupyter_hpc.venvs`):
    ``~/.jupyter-hpc/venvs/NAME``, made with the image's own Python
    (``--system-site-packages``), then ``pip install`` into it from a cell job or
    kernel using it (``%%hpc --venv NAME``, ``--venv NAME`` of ``kernelspec install``)::

        jupyter hpc venv create analysis --image site:notebook.sif

Every value is checked with the same validators the provisioner uses, so a
kernelspec that installs also submits.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from typing import Any, Dict, List, Optional

from . import apptainer, validate
from .validate import ValidationError

PROVISIONER_NAME = "hpc-slurm-provisioner"
DEFAULT_ARGV = ["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"]
_KERNEL_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def kernel_name(value: str) -> str:
    """A kernelspec directory name (jupyter_client allows ``[a-z0-9._-]``, case-insensitive)."""
    lowered = value.lower() if isinstance(value, str) else value
    if not isinstance(lowered, str) or not _KERNEL_NAME.match(lowered):
        raise ValidationError("name", f"{str(value)[:64]!r} may contain only letters, digits, '.', '_' and '-'")
    return lowered


def image_value(value: str, check_exists: bool = True) -> str:
    """An image path (absolute, must exist unless ``check_exists`` is false) or a catalog id."""
    if isinstance(value, str) and (value.startswith("/") or "://" in value):
        checked = apptainer.check_image(value)
        if value.startswith("/"):
            if check_exists and not os.path.lexists(value):
                raise ValidationError("image", f"{value} does not exist (use --no-check-image for paths only the compute nodes see)")
            from .images import check_local_image

            checked = check_local_image(value)  # the provisioner's own check
        return checked
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.:+-]{0,199}", value):
        raise ValidationError("image", f"{str(value)[:80]!r} is neither an absolute path nor an image id such as site:notebook.sif")
    return value


def build_kernel_json(
    *,
    image: str,
    display_name: str,
    partition: Optional[str] = None,
    account: Optional[str] = None,
    time: Optional[str] = None,
    cpus: Optional[int] = None,
    memory: Optional[str] = None,
    gpus: int = 0,
    gpu_type: Optional[str] = None,
    binds: Optional[List[str]] = None,
    python: str = "python3",
    env: Optional[Dict[str, str]] = None,
    language: str = "python",
    venv: Optional[str] = None,
    runtime: Optional[str] = None,
) -> Dict[str, Any]:
    """The kernel.json of an HPC kernelspec (values validated)."""
    from .provisioner import parse_bind

    config: Dict[str, Any] = {"image": image}
    if partition:
        config["partition"] = validate.partition(partition)
    if account:
        config["account"] = validate.account(account)
    if time:
        config["time"] = validate.time_limit(time)
    if cpus is not None:
        config["cpus"] = validate.cpus(cpus)
    if memory:
        config["memory"] = validate.memory(memory)
    gpus = validate.gpus(gpus or 0)
    if gpus:
        config["gpus"] = gpus
    if gpu_type:
        if not gpus:
            raise ValidationError("gpu type", "needs --gpus N with N > 0")
        config["gpu_type"] = validate.gpu_type(gpu_type)
    if binds:
        for b in binds:
            parse_bind(b)
        config["binds"] = list(binds)
    if venv:
        from .venvs import venv_name

        config["venv"] = venv_name(venv)
    if runtime:
        from .runtime import CONTAINER_RUNTIMES

        if runtime not in CONTAINER_RUNTIMES:
            raise ValidationError("runtime", f"{runtime[:40]!r} is not one of {', '.join(CONTAINER_RUNTIMES)}")
        config["runtime"] = runtime
    python = apptainer.check_path(python, "python", allow_relative=True)
    argv = [python] + DEFAULT_ARGV[1:]
    spec: Dict[str, Any] = {
        "argv": argv,
        "display_name": display_name_value(display_name),
        "language": validate.name(language, "language"),
        "interrupt_mode": "message",
        "metadata": {
            "debugger": True,
            "kernel_provisioner": {"provisioner_name": PROVISIONER_NAME, "config": config},
        },
    }
    if env:
        spec["env"] = {validate.env_name(k): str(v) for k, v in env.items()}
    return spec


def display_name_value(value: Any) -> str:
    """A launcher title: printable text without control characters, at most 128 characters.

    It only ever appears in JSON and in the web UI, never in a command."""
    if not isinstance(value, str) or not value.strip() or len(value) > 128:
        raise ValidationError("display name", "must be 1 to 128 characters")
    if re.search(r"[\x00-\x1f\x7f<>]", value):
        raise ValidationError("display name", "must not contain control characters or '<', '>'")
    return value.strip()


def default_display_name(name: str, image: str, gpus: int, partition: Optional[str]) -> str:
    base = os.path.basename(image.rstrip("/")) if image.startswith("/") else image
    base = re.sub(r"\.sif$", "", base)
    where = f"{gpus} GPU" + ("s" if gpus > 1 else "") if gpus else "CPU"
    if partition:
        where += f", {partition}"
    text = f"Python ({base}, {where}, Slurm)"
    return re.sub(r"[^A-Za-z0-9 (),._+:/@-]", "", text)[:128] or name


def install_kernelspec(spec: Dict[str, Any], name: str, *, user: bool = True, prefix: Optional[str] = None) -> str:
    """Install ``spec`` as kernelspec ``name``; returns the installed directory."""
    from jupyter_client.kernelspec import KernelSpecManager

    tmp = tempfile.mkdtemp(prefix="jupyter-hpc-kernelspec-")
    try:
        with open(os.path.join(tmp, "kernel.json"), "w", encoding="utf-8") as f:
            json.dump(spec, f, indent=1)
            f.write("\n")
        os.chmod(tmp, 0o755)
        os.chmod(os.path.join(tmp, "kernel.json"), 0o644)
        return KernelSpecManager().install_kernel_spec(tmp, kernel_name=name, user=user and not prefix, prefix=prefix)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _env_pair(text: str) -> tuple:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r} must look like NAME=VALUE")
    try:
        return validate.env_name(key), value
    except ValidationError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jupyter hpc", description="jupyter-hpc tools for Slurm + Apptainer clusters."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    ks = sub.add_parser("kernelspec", help="install kernelspecs whose kernels run as Slurm jobs")
    ks_sub = ks.add_subparsers(dest="action", metavar="ACTION")
    ks_sub.required = True

    inst = ks_sub.add_parser("install", help="install an HPC kernelspec")
    inst.add_argument("--name", required=True, help="kernelspec name (directory name), e.g. hpc-gpu")
    inst.add_argument("--image", required=True, help="image path on the compute nodes or image id (site:notebook.sif)")
    inst.add_argument("--display-name", help="name shown in the launcher (default: derived from the image and resources)")
    inst.add_argument("--partition", help="Slurm partition (default: the cluster's default)")
    inst.add_argument("--account", help="Slurm account")
    inst.add_argument("--time", default="01:00:00", help="time limit of the kernel's job (default 01:00:00)")
    inst.add_argument("--cpus", default="1", help="CPUs (default 1)")
    inst.add_argument("--mem", dest="memory", help="memory, e.g. 4G (default: the partition's default)")
    inst.add_argument("--gpus", default="0", help="GPUs (default 0); adds --nv to apptainer")
    inst.add_argument("--gpu-type", help="GPU type (--gres=gpu:TYPE:N)")
    inst.add_argument("--bind", dest="binds", action="append", default=[], metavar="SRC[:DST[:ro]]",
                      help="extra bind mount (repeatable)")
    inst.add_argument("--env", dest="env", action="append", default=[], type=_env_pair, metavar="NAME=VALUE",
                      help="environment variable for the kernel (repeatable)")
    inst.add_argument("--venv", help="name of one of the user's venvs (~/.jupyter-hpc/venvs/NAME) put first on the kernel's PATH")
    inst.add_argument("--runtime", choices=["apptainer", "charliecloud"],
                      help="container runtime of the kernel (default: the image's own choice, else the site's)")
    inst.add_argument("--python", default="python3", help="Python interpreter inside the image (default python3)")
    inst.add_argument("--no-check-image", action="store_true", help="do not require the image path to exist here")
    where = inst.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="install for the current user (default)")
    where.add_argument("--sys-prefix", action="store_true", help="install into sys.prefix (the active environment)")
    where.add_argument("--prefix", help="install into PREFIX/share/jupyter/kernels")

    show = ks_sub.add_parser("show", help="print an installed kernelspec's kernel.json")
    show.add_argument("name")

    ve = sub.add_parser("venv", help="Python venvs layered on an image (~/.jupyter-hpc/venvs)")
    ve_sub = ve.add_subparsers(dest="action", metavar="ACTION")
    ve_sub.required = True
    create = ve_sub.add_parser("create", help="create a venv with the image's own Python")
    create.add_argument("name")
    create.add_argument("--image", required=True, help="image id (site:notebook.sif) or a path the image catalog allows")
    ve_sub.add_parser("list", help="list the venvs")
    remove = ve_sub.add_parser("remove", help="delete a venv")
    remove.add_argument("name")
    return parser


def cmd_install(args: argparse.Namespace) -> int:
    name = kernel_name(args.name)
    image = image_value(args.image, check_exists=not args.no_check_image)
    # Whole numbers as written (ASCII digits only; int() would also take ' 1', '+1' or '１２').
    cpus = validate.cpus(args.cpus)
    gpus = validate.gpus(args.gpus)
    display = args.display_name or default_display_name(name, image, gpus, args.partition)
    spec = build_kernel_json(
        image=image,
        display_name=display,
        partition=args.partition,
        account=args.account,
        time=args.time,
        cpus=cpus,
        memory=args.memory,
        gpus=gpus,
        gpu_type=args.gpu_type,
        binds=args.binds,
        python=args.python,
        env=dict(args.env),
        venv=args.venv,
        runtime=args.runtime,
    )
    prefix = sys.prefix if args.sys_prefix else args.prefix
    dest = install_kernelspec(spec, name, user=not prefix, prefix=prefix)
    print(f"Installed kernelspec {name} in {dest}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(kernel_name(args.name))
    except NoSuchKernel:
        print(f"No such kernelspec: {args.name}", file=sys.stderr)
        return 1
    print(json.dumps(spec.to_dict(), indent=1))
    return 0


def cmd_venv(args: argparse.Namespace) -> int:
    import asyncio
    import getpass
    import pwd

    from . import venvs

    home = pwd.getpwnam(getpass.getuser()).pw_dir
    if args.action == "list":
        for v in venvs.list_venvs(home):
            print(f"{v['name']}\t{v['path']}\timage={v['image'] or '?'}\tpython={v['python'] or '?'}")
        return 0
    if args.action == "remove":
        venvs.remove(home, args.name)
        print(f"Removed venv {args.name}")
        return 0
    from .images import ImageCatalog

    name = venvs.venv_name(args.name)
    catalog = ImageCatalog()

    async def go():
        try:
            img = await catalog.resolve(args.image, getpass.getuser())
        except (LookupError, OSError, ValueError) as e:
            raise ValidationError("image", f"unknown or unusable image {args.image[:100]!r}: {e}") from None
        if not getattr(img, "path", None):
            raise ValidationError("image", f"image {args.image[:100]!r} is not available locally; pull it first")
        from .runtime import ContainerRuntime, for_image

        mode = (await ContainerRuntime().resolve(catalog, getpass.getuser())).mode
        return await venvs.create(home, name, img.id, img.path, apptainer=catalog.apptainer,
                                  runtime=for_image(mode, img))

    info = asyncio.run(go())
    print(f"Created venv {info['name']} in {info['path']} (Python {info['python'] or '?'}, image {info['image']})")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "kernelspec" and args.action == "install":
            return cmd_install(args)
        if args.command == "kernelspec" and args.action == "show":
            return cmd_show(args)
        if args.command == "venv":
            return cmd_venv(args)
    except ValidationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    parser.print_help()
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
