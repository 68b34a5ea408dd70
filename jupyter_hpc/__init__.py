"""jupyter-hpc: JupyterHub and JupyterLab on Slurm + Apptainer clusters."""

from ._version import __version__


def _jupyter_server_extension_points():
    from .extension import HPCExtension

    return [{"module": "jupyter_hpc", "app": HPCExtension}]


def _jupyter_labextension_paths():
    return [{"src": "labextension", "dest": "jupyter-hpc"}]


def load_ipython_extension(ipython):
    """``%load_ext jupyter_hpc`` registers the ``%%hpc`` and ``%hpc`` magics."""
    from .magic import load_ipython_extension as _load

    _load(ipython)


__all__ = ["__version__"]
