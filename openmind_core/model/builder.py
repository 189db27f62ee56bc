"""``build_model``: the public way to build a ``MultimodalReasoningModel`` from a ``schemas.config.ModelConfig``.

On top of the model package: the class (``modeling.py``) and its assembly (``assembly.py``: towers
built once in their target dtype, init_from, LoRA, the tokenizer, checkpointing) are below it, and
nothing in the package imports this module but its ``__init__``.
"""

from __future__ import annotations

import torch

from openmind_core.model.assembly import assemble
from openmind_core.model.modeling import MultimodalReasoningModel


def build_model(model_cfg, tokenizer, device: str | torch.device | None = None) -> MultimodalReasoningModel:
    """The model for a ``ModelConfig`` and its tokenizer, its towers created or loaded on ``device``
    (``openmind_core.model.assembly``): frozen for ``model.stage``, in ``model.dtype``, checkpointing
    as configured."""
    return assemble(MultimodalReasoningModel, model_cfg, tokenizer, device=device)
