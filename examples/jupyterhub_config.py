# Example JupyterHub configuration for jupyter-hpc's ApptainerSlurmSpawner.
#
# Every user's single-user server runs as a Slurm batch job, inside an Apptainer
# image the user picks from the image catalog. The image needs
# `jupyterhub-singleuser` (package jupyterhub) and nothing else; batchspawner is
# not needed inside it. See docs/spawner.md for every option.
c = get_config()  # noqa: F821

# --- hub --------------------------------------------------------------------
c.JupyterHub.bind_url = "https://jupyter.example.org"
# Compute nodes must reach the hub API: bind it on an address they can route to.
c.JupyterHub.hub_bind_url = "http://0.0.0.0:8081"
c.JupyterHub.hub_connect_ip = "login01.cluster.example.org"
# Servers are Slurm jobs: let them run on when the hub restarts (upgrades, crashes).
c.JupyterHub.cleanup_servers = False

# Use your site's authenticator (PAM, LDAP, OAuthenticator ...). User names must be
# the users' POSIX account names: jobs are submitted as these users.
c.JupyterHub.authenticator_class = "pam"

# --- spawner ------------------------------------------------------------------
c.JupyterHub.spawner_class = "apptainer-slurm"

# Time a spawn may take, queue time included; the user sees the queue position
# and estimated start time on the progress page meanwhile.
c.Spawner.start_timeout = 600
c.Spawner.http_timeout = 120
c.Spawner.default_url = "/lab"

# Images: site images plus each user's own ~/images (SIF files or sandbox dirs).
c.ImageCatalog.site_dirs = ["/apps/jupyter/images"]
c.ImageCatalog.user_dirs = ["{home}/images"]

# Defaults and hard limits for everyone (profiles may tighten them).
c.ApptainerSlurmSpawner.default_cpus = 1
c.ApptainerSlurmSpawner.default_memory = "4G"
c.ApptainerSlurmSpawner.default_time = "08:00:00"
c.ApptainerSlurmSpawner.max_cpus = 16
c.ApptainerSlurmSpawner.max_memory = "64G"
c.ApptainerSlurmSpawner.max_time = "1-00:00:00"
c.ApptainerSlurmSpawner.allowed_partitions = ["interactive", "gpu"]
# c.ApptainerSlurmSpawner.allowed_accounts = ["proj-a", "proj-b"]   # empty: any account, Slurm checks

# Presets in the spawn form. REST spawns are checked against the same lists and limits.
c.ApptainerSlurmSpawner.profiles = [
    {
        "name": "small",
        "display_name": "Small: 2 CPUs, 8 GB, 8 hours",
        "defaults": {"partition": "interactive", "cpus": 2, "memory": "8G", "time": "08:00:00"},
        "limits": {"cpus": 4, "memory": "16G", "time": "12:00:00", "gpus": 0},
        "partitions": ["interactive"],
    },
    {
        "name": "gpu",
        "display_name": "One GPU",
        "description": "GPU-ready images only",
        "defaults": {"partition": "gpu", "gpus": 1, "cpus": 8, "memory": "32G", "time": "04:00:00"},
        "limits": {"gpus": 2, "cpus": 16, "memory": "64G", "time": "12:00:00"},
        "partitions": ["gpu"],
        "images": ["site:cuda-*", "site:pytorch-*.sif"],
    },
]

# Apptainer: extra binds ('{username}' and '{home}' are replaced; home is mounted by default).
c.ApptainerSlurmSpawner.binds = ["/scratch/{username}", "/apps/data:/data:ro"]
# c.ApptainerSlurmSpawner.setup_commands = [["module", "load", "apptainer"]]
# c.ApptainerSlurmSpawner.apptainer_command = "/usr/bin/apptainer"
# How the job names its node to the hub (hostname, fqdn, nodename or ip).
c.ApptainerSlurmSpawner.host_from = "fqdn"

# The hub normally runs as root and submits as the user with runuser (the default).
# For a hub running as an unprivileged service account, use sudo with a narrow rule
# (see docs/spawner.md):
# c.ApptainerSlurmSpawner.user_prefix = ["sudo", "-n", "-E", "-u", "{username}", "--"]

# One squeue per interval for all servers of the hub (shared watcher).
c.ApptainerSlurmSpawner.watcher_interval = 5.0
# Slurm command paths and timeouts, shared with the rest of jupyter-hpc:
# c.SlurmClient.sbatch = "/usr/bin/sbatch"
# c.SlurmClient.sbatch_extra_args = ["--qos=interactive"]
