"""Parameter groups, AdamW and the warmup + cosine schedule.

Groups: per-module learning rate by name prefix (``vision_encoder.`` -> ``lr_vision``,
``projector.`` -> ``lr_projector``, ``language_model.`` -> ``lr_lm``, everything else ``lr``), each
split into decayed weights and undecayed biases / norms / other 1-D parameters.  Only parameters
with ``requires_grad`` are optimised.  The schedule is transformers'
``get_cosine_schedule_with_warmup`` formula over optimizer steps (never micro-batches), rebuilt
without a jump when a resume changes its length (``Schedule``).  ``LearningRates`` keeps each
group's configured hyperparameters and puts them over the schedule: what a resume with new settings
and a rollback's LR cut change.
"""

from __future__ import annotations

import logging
import math

import torch
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


def total_optimizer_steps(cfg: TrainConfig, samples_per_epoch_per_rank: int,
                          micro_batches: list[int] | None = None) -> int:
    """``max_steps`` or ``epochs * ceil(samples / (micro_batch_size * grad_accum))``; ``micro_batches``: each
    epoch's micro-batches when they hold variable numbers of samples (``train.max_tokens_per_batch``)."""
    if cfg.max_steps is not None:
        return cfg.max_steps
    if micro_batches is not None:
        return max(1, sum(math.ceil(n / cfg.grad_accum) for n in micro_batches))
    per_step = cfg.micro_batch_size * cfg.grad_accum
    return max(1, cfg.epochs * math.ceil(samples_per_epoch_per_rank / per_step))


def warmup_steps(cfg: TrainConfig, total_steps: int) -> int:
    """Optimizer steps of linear LR warm-up: ``int(warmup_ratio * total_steps)``."""
    return int(cfg.warmup_ratio * total_steps)


class Schedule:
    """The LR multiplier per optimizer step (a ``LambdaLR`` lambda).

    Plain: linear warm-up over ``warmup`` steps, then a cosine to 0 at ``total`` — the formula of
    transformers' ``get_cosine_schedule_with_warmup`` (a test checks the two agree step for step).
    ``rebuilt`` makes the schedule for new settings (``warmup_ratio``, and ``total`` from
    ``epochs`` / ``max_steps``) at a resume's step, without a jump:

    * the old schedule was still running: the new shape continues from the multiplier
      ``anchor_mult`` reached at ``anchor_step`` — still warming up: linearly to 1 at the new
      warm-up's end, then a cosine to 0 at the new total; past the warm-up: a cosine from
      ``anchor_mult`` to 0 at the new total;
    * the old schedule had ended (its LR reached 0, e.g. more epochs for a finished run): a new
      warm-up (``warmup_ratio`` of the steps left) from 0 and a cosine to 0 over the steps left
      (``start`` = the resume's step).
    """

    def __init__(self, warmup: int, total: int, anchor_step: int | None = None, anchor_mult: float = 1.0,
                 start: int = 0, ratio: float | None = None) -> None:
        self.warmup, self.total, self.start, self.ratio = int(warmup), int(total), int(start), ratio
        self.anchor_step, self.anchor_mult = anchor_step, float(anchor_mult)

    def __call__(self, step: int) -> float:
        if self.anchor_step is None:
            if step < self.warmup:
                return float(step - self.start) / float(max(1, self.warmup - self.start))
            progress = float(step - self.warmup) / float(max(1, self.total - self.warmup))
            return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
        s0, m0 = self.anchor_step, self.anchor_mult
        if step < self.warmup:
            return m0 + (1.0 - m0) * (step - s0) / max(1, self.warmup - s0)
        start, m = (s0, m0) if s0 >= self.warmup else (self.warmup, 1.0)
        progress = min(1.0, (step - start) / max(1, self.total - start))
        return max(0.0, m * 0.5 * (1.0 + math.cos(math.pi * progress)))

    def rebuilt(self, step: int, warmup_ratio: float, total: int) -> "Schedule":
        """This schedule for new settings at ``step``: itself when the warm-up ratio and total are unchanged."""
        if (warmup_ratio, total) == (self.ratio, self.total) or (
                self.ratio is None and (int(warmup_ratio * total), total) == (self.warmup, self.total)):
            return self
        if step >= self.total:  # the old schedule had ended: warm up again over the steps left
            return Schedule(step + int(warmup_ratio * max(0, total - step)), total, start=step, ratio=warmup_ratio)
        return Schedule(int(warmup_ratio * total), total, anchor_step=step, anchor_mult=self(step), ratio=warmup_ratio)

    def to_json(self) -> dict:
        return {"warmup": self.warmup, "total": self.total, "anchor_step": self.anchor_step,
                "anchor_mult": self.anchor_mult, "start": self.start, "ratio": self.ratio}

    @classmethod
    def from_json(cls, d: dict) -> "Schedule":
        return cls(d["warmup"], d["total"], d.get("anchor_step"), d.get("anchor_mult", 1.0), d.get("start", 0),
                   d.get("ratio"))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Warm-up + cosine over ``total_steps`` optimizer steps (``Schedule``)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, Schedule(warmup_steps(cfg, total_steps), total_steps, ratio=cfg.warmup_ratio))


def schedule_of(scheduler: torch.optim.lr_scheduler.LambdaLR) -> Schedule:
    return scheduler.lr_lambdas[0]


def set_schedule(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR,
                 schedule: Schedule, base_lrs: list[float]) -> None:
    """Make ``schedule`` x ``base_lrs`` (one per param group) the LRs from the scheduler's current step on.

    The groups' LRs are set to ``base_lr * schedule(step)``, the expression ``LambdaLR`` itself uses,
    so with unchanged settings a resumed run's LRs are bit-identical to the unbroken run's.
    """
    step = scheduler.last_epoch
    scheduler.lr_lambdas = [schedule] * len(optimizer.param_groups)
    scheduler.base_lrs = list(base_lrs)
    for g, base in zip(optimizer.param_groups, base_lrs):
        g["initial_lr"] = base
        g["lr"] = base * schedule(step)
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]


class LearningRates:
    """The configured hyperparameters of each param group over the LR schedule of one optimizer.

    Captured from the optimizer as built from this run's settings, before the scheduler (which it
    builds: ``LambdaLR`` overwrites each group's LR with the schedule's first value): a resume applies
    them over the checkpoint's (``continue_from``), and a rollback scales them (``rescale``).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int) -> None:
        self.optimizer, self.warmup_ratio, self.total_steps = optimizer, cfg.warmup_ratio, total_steps
        self.configured = [{k: g[k] for k in ("lr", "weight_decay", "betas")} for g in optimizer.param_groups]
        self.scheduler = build_scheduler(optimizer, cfg, total_steps)

    def base_lrs(self, scale: float) -> list[float]:
        return [g["lr"] * scale for g in self.configured]

    def rescale(self, scale: float) -> None:
        """The configured LRs x ``scale`` (the rollbacks' product), on the current schedule."""
        set_schedule(self.optimizer, self.scheduler, schedule_of(self.scheduler), self.base_lrs(scale))

    def continue_from(self, saved: dict | None, step: int, scale: float) -> tuple[Schedule, Schedule]:
        """After a restore: this run's weight decay, betas and LRs (x ``scale``) from ``step`` on, on the
        checkpoint's schedule (``saved``, its JSON; the scheduler's own when absent) rebuilt for this
        run's warm-up and length.  Returns (the schedule now, the checkpoint's)."""
        for g, configured in zip(self.optimizer.param_groups, self.configured):
            g["weight_decay"], g["betas"] = configured["weight_decay"], configured["betas"]
        old = Schedule.from_json(saved) if saved else schedule_of(self.scheduler)
        schedule = old.rebuilt(step, self.warmup_ratio, self.total_steps)
        set_schedule(self.optimizer, self.scheduler, schedule, self.base_lrs(scale))
        return schedule, old
