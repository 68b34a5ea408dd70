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

# --- sharing services (docs/sharing.md) ---------------------------------------------
# Users share the web UI of a running service job with other hub users and groups;
# they open it at /services/jupyter-hpc-share/<owner>/<job_id>/ with their own login.
import sys  # noqa: E402

c.JupyterHub.services = [
    {
        "name": "jupyter-hpc-share",
        "url": "http://login01.cluster.example.org:10101",
        "command": [sys.executable, "-m", "jupyter_hpc.share",
                    "--ShareService.state_file=/var/lib/jupyterhub-share/shares.json"],
        "user": "jupyterhub-share",  # unprivileged; needs squeue (SlurmUser/operator with PrivateData=jobs)
        "cwd": "/",
        "oauth_no_confirm": True,
    },
]
c.JupyterHub.load_roles = [
    # the users' servers register shares with their own hub token
    {"name": "server", "scopes": ["users:activity!user", "access:servers!server",
                                  "access:services!service=jupyter-hpc-share"]},
    # the share service checks user/group names and reads group members
    {"name": "jupyter-hpc-share", "scopes": ["read:users:name", "read:groups"],
     "services": ["jupyter-hpc-share"]},
]
# who may share and open shares (everyone here; a role for a group restricts it)
c.JupyterHub.extra_user_scopes = {"access:services!service=jupyter-hpc-share"}
c.ApptainerSlurmSpawner.share_url = "http://login01.cluster.example.org:10101/services/jupyter-hpc-share/"
# Shared web UIs are served from the hub's origin; give them their own (recommended):
# c.JupyterHub.subdomain_host = "https://jupyter.example.org"
