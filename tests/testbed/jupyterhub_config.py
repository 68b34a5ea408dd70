# JupyterHub configuration of the testbed demo (tests/testbed/demo.sh start).
#
# The hub runs as root on the single-node testbed and starts every user's
# server as a Slurm job inside an Apptainer image (ApptainerSlurmSpawner).
# Log in as alice, bob or carol (or admin) with the password printed by
# `demo.sh start` (file /etc/jupyter-hpc/demo-password).
import os
import re
import shlex

c = get_config()  # noqa: F821


def testbed_env(path="/etc/jupyter-hpc/testbed.env"):
    values = {}
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line and not line.startswith("#") and "=" in line:
                    key, _, value = line.partition("=")
                    parts = shlex.split(value)
                    values[key] = parts[0] if parts else ""
    except OSError:
        pass
    return values


env = testbed_env()
state_dir = os.environ.get("JUPYTER_HPC_DEMO_STATE", "/var/lib/jupyter-hpc/demo")

# --- hub ------------------------------------------------------------------
c.JupyterHub.bind_url = os.environ.get("JUPYTER_HPC_DEMO_URL", "http://127.0.0.1:8000")
c.JupyterHub.hub_bind_url = "http://127.0.0.1:8081"
c.JupyterHub.db_url = f"sqlite:///{state_dir}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = f"{state_dir}/jupyterhub_cookie_secret"
c.ConfigurableHTTPProxy.command = [env.get("CHP", "/opt/jupyter-hpc/node/node_modules/.bin/configurable-http-proxy")]
c.ConfigurableHTTPProxy.pid_file = f"{state_dir}/proxy.pid"

# --- users ------------------------------------------------------------------
# A password-only authenticator: every listed user logs in with the demo password.
c.JupyterHub.authenticator_class = "dummy"
with open(os.environ.get("JUPYTER_HPC_DEMO_PASSWORD_FILE", "/etc/jupyter-hpc/demo-password")) as f:
    c.DummyAuthenticator.password = f.read().strip()
# TEST_USERS is a comma-separated list in testbed.env
c.Authenticator.allowed_users = {u for u in re.split(r"[,\s]+", env.get("TEST_USERS", "alice,bob,carol")) if u}
c.Authenticator.admin_users = {"admin"}

# --- spawner ------------------------------------------------------------------
c.JupyterHub.spawner_class = "apptainer-slurm"
c.Spawner.start_timeout = 300
c.Spawner.http_timeout = 60
c.Spawner.default_url = "/lab"

image_dir = env.get("IMAGE_DIR", "/opt/jupyter-hpc/images")
c.ImageCatalog.site_dirs = [image_dir]
c.ImageCatalog.user_dirs = [env.get("USER_IMAGE_DIR_TEMPLATE", "{home}/images")]

cpu = env.get("CPU_PARTITION", "cpu")
gpu = env.get("GPU_PARTITION", "gpu")
# Servers reach Slurm and the image catalog from inside their container through the host's
# installation (ApptainerSlurmSpawner.host_tools, on by default). On Debian 12 the testbed's
# Apptainer also loads a small glibc shim from /usr/local/lib/jupyter-hpc: bind it as well.
c.ApptainerSlurmSpawner.binds = [p + ":" + p + ":ro" for p in ["/usr/local/lib/jupyter-hpc"] if os.path.isdir(p)]
c.ApptainerSlurmSpawner.default_memory = "2G"
c.ApptainerSlurmSpawner.default_time = "02:00:00"
c.ApptainerSlurmSpawner.profiles = [
    {
        "name": "standard",
        "display_name": "Standard: 1 CPU, 2 GB",
        "description": "CPU partition, any image",
        "defaults": {"partition": cpu, "cpus": 1, "memory": "2G", "time": "02:00:00"},
        "limits": {"cpus": 8, "memory": "8G", "time": "08:00:00", "gpus": 0},
        "partitions": [cpu],
    },
    {
        "name": "gpu",
        "display_name": "GPU: 1 GPU, 2 CPUs",
        "description": "GPU partition with the notebook image",
        "defaults": {"partition": gpu, "gpus": 1, "cpus": 2, "memory": "4G", "time": "02:00:00"},
        "limits": {"gpus": 2, "cpus": 8, "memory": "8G", "time": "08:00:00"},
        "partitions": [gpu],
        "images": ["site:*"],
    },
]
