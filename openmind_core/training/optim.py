"""Parameter groups, AdamW and the warmup + cosine schedule.

Groups: per-module learning rate by name prefix (``vision_encoder.`` -> ``lr_vision``,
``projector.`` -> ``lr_projector``, ``language_model.`` -> ``lr_lm``, everything else ``lr``), each
split into decayed weights and undecayed biases / norms / other 1-D parameters.  Only parameters
with ``requires_grad`` are optimised.  The schedule is transformers'
``get_cosine_schedule_with_warmup`` over optimizer steps (never micro-batches).
"""

from __future__ import annotations

import logging
import math

import torch
from transformers import get_cosine_schedule_with_warmup

from schemas.config import TrainConfig

log = logging.getLogger(__name__)

MODULE_PREFIXES: tuple[tuple[str, str], ...] = (
    ("vision_encoder.", "lr_vision"),
    ("projector.", "lr_projector"),
    ("language_model.", "lr_lm"),
)
_NORM_MARKERS = ("norm", "ln_", ".ln", "layernorm", "layer_norm", "rmsnorm")


def _strip_wrappers(name: str) -> str:
    for prefix in ("module.", "_orig_mod.", "_fsdp_wrapped_module."):
        while name.startswith(prefix):
            name = name[len(prefix):]
    return name


def no_decay(name: str, param: torch.Tensor) -> bool:
    """Biases, norm weights and any parameter of one dimension get no weight decay."""
    low = name.lower()
    return param.ndim <= 1 or low.endswith(".bias") or any(m in low for m in _NORM_MARKERS)


def param_groups(model: torch.nn.Module, cfg: TrainConfig) -> list[dict]:
    """AdamW param groups keyed by (module lr, decay); each group carries a ``name``."""
    buckets: dict[tuple[str, bool], list[torch.nn.Parameter]] = {}
    lrs: dict[str, float] = {"default": cfg.lr}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        clean = _strip_wrappers(name)
        module = "default"
        for prefix, field in MODULE_PREFIXES:
            if clean.startswith(prefix):
                module = prefix.rstrip(".")
                lrs[module] = getattr(cfg, field) or cfg.lr
                break
        buckets.setdefault((module, no_decay(clean, p)), []).append(p)
    if not buckets:
        raise ValueError("the model has no parameter with requires_grad=True: nothing to train")
    groups = []
    for (module, nd), params in buckets.items():
        groups.append({
            "params": params,
            "lr": lrs[module],
            "weight_decay": 0.0 if nd else cfg.weight_decay,
            "name": f"{module}{'.no_decay' if nd else ''}",
        })
    for g in groups:
        log.debug("param group %s: %d tensors, lr %.3g, wd %.3g", g["name"], len(g["params"]), g["lr"], g["weight_decay"])
    return groups


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


def total_optimizer_steps(cfg: TrainConfig, samples_per_epoch_per_rank: int) -> int:
    """``max_steps`` or ``epochs * ceil(samples / (micro_batch_size * grad_accum))``."""
    if cfg.max_steps is not None:
        return cfg.max_steps
    per_step = cfg.micro_batch_size * cfg.grad_accum
    return max(1, cfg.epochs * math.ceil(samples_per_epoch_per_rank / per_step))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = int(cfg.warmup_ratio * total_steps)
    return get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)


def scale_lr(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler, factor: float) -> None:
    """Multiply the schedule's base learning rates (and the current ones) by ``factor``."""
    if factor == 1.0:
        return
    scheduler.base_lrs = [b * factor for b in scheduler.base_lrs]
    for g in optimizer.param_groups:
        g["lr"] *= factor
        if "initial_lr" in g:
            g["initial_lr"] *= factor
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
