#!/usr/bin/env bash
# The full-size GPU check on a lent device machine (no network there), in two steps.
#
#   here:   bash bench/gpu_device.sh prepare     # downloads the wheels the device image lacks into .whl/
#   there:  bash bench/gpu_device.sh run         # installs them, runs bench/gpu.py, results to $OUT
#
# With the device tool: run(command="bash bench/gpu_device.sh run", carry=[".whl"], timeout_s=540).
# The device image has torch, transformers, safetensors, tokenizers, pyarrow, pyyaml, pillow and
# tqdm, but not pydantic (schemas/ needs it): those four wheels, for its Python 3.12, travel in .whl/.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS="pydantic==2.14.4 pydantic-core==2.50.5 typing-inspection==0.4.5 annotated-types==0.8.0"

case "${1:-}" in
  prepare)
    grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d .whl $WHEELS
    ls -la .whl
    ;;
  run)
    if [ -d .whl ]; then
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
      export PYTHONPATH="/tmp/site:$PWD"
    fi
    export PYTHONUNBUFFERED=1 PREFECT_SERVER_ANALYTICS_ENABLED=false WANDB_MODE=disabled
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
    out="${OUT:-bench/results}"
    mkdir -p "$out"
    python3 bench/gpu.py --max-seconds "${MAX_SECONDS:-420}" --out "$out/gpu.json" "${@:2}" 2>&1 | tee "$out/gpu.log"
    ;;
  *)
    echo "usage: bash bench/gpu_device.sh prepare|run [gpu.py options]" >&2
    exit 2
    ;;
esac
