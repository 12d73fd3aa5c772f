#!/usr/bin/env bash
# Model Analyzer's search on a repository `triton-deploy repo` wrote, with config.yaml beside this script.
# Usage: scripts/model_analyzer/run.sh REPOSITORY OUTPUT_DIR [model-analyzer profile flags...]
# Needs `model-analyzer` on PATH (pip install triton-model-analyzer==1.58.0 into a separate venv; it is not a
# dependency of this project). Writes OUTPUT_DIR/variants (every configuration it loaded), OUTPUT_DIR/results and
# OUTPUT_DIR/checkpoints; prints its ranking at the end.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repository=$(cd "$1" && pwd); output=$(mkdir -p "$2" && cd "$2" && pwd); shift 2
input_data=$output/input-data.json
[ -f "$input_data" ] || "${TRITON_DEPLOY_PYTHON:-$here/../../.venv/bin/python}" "$here/input_data.py" "$input_data"
# perf_analyzer's input data has an absolute path: config.yaml with it added goes to OUTPUT_DIR.
sed "s|^perf_analyzer_flags:|perf_analyzer_flags:\n  input-data: $input_data|" "$here/config.yaml" > "$output/config.yaml"
exec model-analyzer profile -f "$output/config.yaml" \
  --model-repository "$repository" \
  --output-model-repository-path "$output/variants" \
  --export-path "$output/results" \
  --checkpoint-directory "$output/checkpoints" \
  --triton-server-path "$here/tritonserver.sh" \
  --perf-analyzer-path "$here/perf_analyzer.sh" \
  --triton-output-path "$output/tritonserver.log" \
  "$@"
