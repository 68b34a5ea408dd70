#!/bin/bash
# Per-user settings of the jupyter-hpc demo (idempotent; run by binder/start):
#
#   ~/images/binder-env   an entry of the user's image catalog (id user:binder-env) that
#                         stands for this environment's own software. It holds only
#                         labels: it is meant for the host runtime, where jobs run their
#                         commands directly on the node.
#   kernelspecs hpc-cpu and hpc-gpu (the gpu-kernel.ipynb example uses hpc-gpu): kernels
#                         as Slurm jobs through jupyter-hpc's kernel provisioner.
set -euo pipefail

IMAGE_DIR=$HOME/images/binder-env
IMAGE_ID=${JUPYTER_HPC_DEMO_IMAGE:-user:binder-env}

if [[ ! -f $IMAGE_DIR/.singularity.d/labels.json ]]; then
    install -d -m 0755 "$HOME/images" "$IMAGE_DIR" "$IMAGE_DIR/.singularity.d"
    cat >"$IMAGE_DIR/.singularity.d/labels.json" <<'EOT'
{
  "org.jupyter-hpc.title": "Binder environment (no container)",
  "org.jupyter-hpc.description": "This session's own Python with PyTorch (CPU), numpy, matplotlib and jupyter-hpc; jobs run directly on the node",
  "org.jupyter-hpc.gpu": "false"
}
EOT
fi

kernels=${JUPYTER_DATA_DIR:-$HOME/.local/share/jupyter}/kernels
install_kernel() {
    local name=$1; shift
    [[ -f $kernels/$name/kernel.json ]] && return 0
    jupyter-hpc kernelspec install --name "$name" --image "$IMAGE_ID" --time 02:00:00 --mem 2G "$@" >/dev/null
}
install_kernel hpc-cpu --partition cpu --display-name "Python (Slurm job, CPU)"
install_kernel hpc-gpu --partition gpu --gpus 1 --display-name "PyTorch (Slurm job, 1 GPU)"
