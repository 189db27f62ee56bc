"""Training stages: which towers train, in which dtype every tower is held, and the freezing that sets both.

Stage "align" trains the projector only, "finetune" the projector and the language model, "full"
everything.  Frozen parameters are excluded from autograd, but activations still flow, so the
projector gets gradients through a frozen LM.  With LoRA (``model.lm.lora``, stage finetune) the LM
is not trained in full: its base stays frozen and its adapters train (``openmind_core.model.lora``).

Precision: with ``model.dtype`` bfloat16/float16, frozen towers are held in that dtype and trainable
ones in float32 (master weights: AdamW's moments and small late-schedule updates would be lost in 16
bits); autocast runs their matmuls in 16 bits on the GPU.  ``_keep_in_fp32_modules_strict`` names
the trainable towers so that ``from_pretrained`` keeps the same split.  The builder creates each
tower directly in its ``tower_dtype``; ``freeze`` sets (or resets) the split on a built model.
"""

from __future__ import annotations

import logging

import torch

from openmind_core.model.lora import train_adapters

logger = logging.getLogger(__name__)
_TABLES_LOGGED: set[tuple[str, str]] = set()

MODULES = ("vision_encoder", "projector", "language_model")
STAGES = {
    "align": ("projector",),
    "finetune": ("projector", "language_model"),
    "full": MODULES,
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def trainable_modules(stage: str, lora: bool = False) -> tuple[str, ...]:
    """The towers a stage trains in full; with LoRA the LM is not one of them (its adapters train)."""
    if stage not in STAGES:
        raise ValueError(f"stage {stage!r} is not one of {tuple(STAGES)}")
    return tuple(t for t in STAGES[stage] if not (lora and t == "language_model"))


def tower_dtype(model_cfg, tower: str) -> torch.dtype:
    """The dtype a tower is created in for a ``ModelConfig``: fp32 when its stage trains it, else ``model.dtype``."""
    trained = trainable_modules(model_cfg.stage, lora=model_cfg.lm.lora is not None)
    return torch.float32 if tower in trained else DTYPES[model_cfg.dtype]


def model_dtype(config) -> torch.dtype:
    """The dtype of a ``MultimodalReasoningConfig``'s frozen towers (fp32 when unset)."""
    dt = config.dtype
    if isinstance(dt, str):
        dt = getattr(torch, dt)
    return dt or torch.float32


def declares_lora(config) -> bool:
    """The config declares LoRA adapters on the LM (``model.lm.lora``); true from construction on, before
    the builder injects them, so the LM base is never cast to fp32 on the way."""
    return bool(((config.openmind or {}).get("lm") or {}).get("lora"))


def freeze(model, stage: str) -> str:
    """Set ``requires_grad`` and the dtypes of ``model``'s towers for ``stage``; returns (and logs) the
    trainable/frozen table."""
    lora_on = declares_lora(model.config)
    trainable = trainable_modules(stage, lora_on)
    low = model_dtype(model.config)
    for name in MODULES:
        module, train = getattr(model, name), name in trainable
        if lora_on and name == "language_model":
            train_adapters(module, low)
            continue
        module.requires_grad_(train)
        if low != torch.float32:
            module.to(torch.float32 if train else low)
    model.config.stage = stage
    model._keep_in_fp32_modules_strict = list(trainable) if low != torch.float32 else []
    table = model.parameter_table()
    # the same table for every rebuild of one model (smoke, train, reload, inference): say it once
    level = logging.DEBUG if (stage, table) in _TABLES_LOGGED else logging.INFO
    _TABLES_LOGGED.add((stage, table))
    logger.log(level, "stage %r: trainable parameters per module\n%s", stage, table)
    return table
