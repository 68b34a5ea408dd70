"""JupyterHub spawner that runs single-user servers as Slurm jobs inside Apptainer images.

Installed as ``jupyter_hpc.spawners``; select it with
``c.JupyterHub.spawner_class = "apptainer-slurm"``.
"""

from .spawner import ApptainerSlurmSpawner, invalid_options, job_failed

__all__ = ["ApptainerSlurmSpawner", "invalid_options", "job_failed"]
