#!/usr/bin/env bash
# perf_analyzer from the tritonclient 2.50.0 wheel (the PyPI package `perf-analyzer` is an empty placeholder). The
# binary links against libb64.so.0d and libcudart.so.12, which the nvidia-pytriton wheel ships under hashed names;
# the first call unpacks the wheel into build/perf_analyzer and links those two libraries under the names the binary
# asks for. Model Analyzer is pointed at this script (perf_analyzer_path) and compare.py calls it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=${PERF_ANALYZER_HOME:-$here/../../build/perf_analyzer}
python=${TRITON_DEPLOY_PYTHON:-$here/../../.venv/bin/python}
if [ ! -x "$root/bin/perf_analyzer" ]; then
  mkdir -p "$root/wheel" "$root/bin" "$root/lib"
  "$python" -m pip download --quiet --no-deps --only-binary=:all: tritonclient==2.50.0 -d "$root/wheel" >&2
  "$python" -m zipfile -e "$root"/wheel/tritonclient-2.50.0-*.whl "$root/wheel/x"
  libs=$("$python" -c "import pytriton, pathlib; print(pathlib.Path(pytriton.__file__).parent.parent / 'nvidia_pytriton.libs')")
  ln -sf "$(ls "$libs"/libb64-*.so.0d | head -1)" "$root/lib/libb64.so.0d"
  ln -sf "$(ls "$libs"/libcudart-*.so.12* | head -1)" "$root/lib/libcudart.so.12"
  install -m 755 "$root"/wheel/x/tritonclient-2.50.0.data/data/bin/perf_analyzer "$root/bin/perf_analyzer"
  rm -rf "$root/wheel"
fi
exec env LD_LIBRARY_PATH="$root/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$root/bin/perf_analyzer" "$@"
