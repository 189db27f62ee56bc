"""A whole model saved atomically as a ``save_pretrained`` directory (``best/``, ``final/``, merged exports).

The directory is built under a hidden temporary name and swapped in whole (``io.staged_dir(replace=True)``),
so a crash leaves the old model or the new one, never a mix.  A sharded model is written from a
gathered full state dict (``state_dict=``), which the FSDP strategy provides.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from openmind_core.io import staged_dir

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"


def _accepts_state_dict(fn: Any) -> bool:
    """``fn`` names a ``state_dict`` parameter, or takes ``**kwargs`` (an override that passes them on
    to transformers' ``save_pretrained``)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "state_dict" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _save_pretrained_names(model: torch.nn.Module,
                           state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the aliases of tied parameters the way ``safetensors.torch.save_model`` does (keep the
    alphabetically first name of each shared group), judged on the model's own parameter objects."""
    groups: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    drop = {n for names in groups.values() if len(names) > 1 for n in sorted(names)[1:]}
    return {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items() if k not in drop}


def save_model_dir(model: torch.nn.Module, dest: str | Path,
                   state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Save a whole model atomically: ``save_pretrained`` if it has one, else ``model.safetensors``.

    ``state_dict`` (a full, unsharded one, e.g. gathered from an FSDP2 model whose own parameters
    are DTensor shards) is written instead of the model's parameters: through
    ``save_pretrained(dir, state_dict=...)`` when the model's ``save_pretrained`` takes one
    (transformers models), else as ``model.safetensors`` with the key names ``save_pretrained`` /
    ``safetensors.torch.save_model`` would use (tied aliases dropped).  In that second case a
    custom ``save_pretrained``'s other files (config, tokenizer) are NOT written: a warning says so.
    """
    dest = Path(dest)
    with staged_dir(dest, replace=True) as tmp:
        if state_dict is not None:
            if hasattr(model, "save_pretrained") and _accepts_state_dict(model.save_pretrained):
                model.save_pretrained(str(tmp), state_dict=state_dict)
            else:
                if hasattr(model, "save_pretrained"):
                    log.warning("%s.save_pretrained takes no state_dict: %s gets %s only (no config/tokenizer)",
                                type(model).__name__, dest, WEIGHTS)
                safetensors.torch.save_file(_save_pretrained_names(model, state_dict), str(tmp / WEIGHTS),
                                            metadata={"format": "pt"})
        elif hasattr(model, "save_pretrained"):
            model.save_pretrained(str(tmp))
        else:
            safetensors.torch.save_model(model, str(tmp / WEIGHTS))
    return dest
