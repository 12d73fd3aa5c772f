#!/usr/bin/env bash
# The nvidia-pytriton wheel's tritonserver as Model Analyzer's local launch mode starts it (triton_server_path): its
# shared libraries on LD_LIBRARY_PATH, this project's venv first on PATH (the python-backend stubs import numpy,
# Pillow and onnxruntime from it) and the backend directory `triton-deploy serve` stages. Model Analyzer adds the
# repository, ports and --model-control-mode=explicit itself.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
python=${TRITON_DEPLOY_PYTHON:-$here/../../.venv/bin/python}
read -r binary libs backends < <("$python" -c "
from triton_deploy.server.install import ServerInstallation as S
i = S.discover(); print(i.binary, i.library_dir, i.backend_dir)")
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PATH="$(dirname "$python"):$PATH"
exec "$binary" "$@" --backend-directory="$backends" --allow-gpu-metrics=false \
  --backend-config=python,shm-default-byte-size=4194304 --backend-config=python,shm-growth-byte-size=4194304
