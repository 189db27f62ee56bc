"""What must not change across a resume: the run's fingerprint (``fingerprint.json`` in every checkpoint).

The fingerprint pins the trainable parameters' names, shapes and dtypes, the number of training
rows, the per-process batch (``micro_batch_size x grad_accum``), the seed, and what the caller adds
(the model's config and the curated data version).  ``check_fingerprint`` refuses a resume that
changed any of them (``ResumeError`` naming every key and the config keys behind them), except the
number of processes: checkpoints hold full state dicts, so a changed ``world_size`` (and with it,
if wanted, the per-process batch) comes back as a ``WorldSizeChange`` for the resume to reshard the
data position.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from openmind_core.training.errors import ResumeError
from schemas.config import TrainConfig

#: fingerprint keys -> the config keys a user would change
FINGERPRINT_KEYS = {"batch": "train.micro_batch_size x train.grad_accum", "seed": "run.seed", "model": "model",
                    "data": "data (the curated lake version)", "train_samples": "the training rows",
                    "trainable_params": "the trainable parameters (model.stage, model.lm.lora, ...)",
                    "token_budget": "train.max_tokens_per_batch"}


def run_fingerprint(trainable: list[tuple[str, torch.nn.Parameter]], train_samples: int, cfg: TrainConfig,
                    world_size: int, seed: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    """This run's fingerprint; ``extra``: what the caller pins besides (the model, the data version)."""
    shapes = ";".join(f"{n}:{tuple(p.shape)}:{p.dtype}" for n, p in trainable)
    return {
        "trainable_params": hashlib.sha256(shapes.encode()).hexdigest()[:16],
        "train_samples": str(train_samples),
        "batch": f"{cfg.micro_batch_size}x{cfg.grad_accum}",
        "world_size": str(world_size),  # may change on resume (full state dicts): a WorldSizeChange
        "seed": str(seed),
        # only when set: fingerprints of runs without a budget stay as they were
        **({"token_budget": str(cfg.max_tokens_per_batch)} if cfg.max_tokens_per_batch else {}),
        **{k: str(v) for k, v in (extra or {}).items()},
    }


@dataclass(frozen=True)
class WorldSizeChange:
    """A resume whose only change is the number of processes (and maybe the per-rank batch with it)."""

    saved_world: int
    world: int
    saved_batch: str  # micro_batch_size x grad_accum
    batch: str

    def global_batch(self, saved: bool = False) -> int | None:
        try:
            micro, accum = (int(x) for x in (self.saved_batch if saved else self.batch).split("x"))
        except ValueError:
            return None
        return micro * accum * (self.saved_world if saved else self.world)


def _split_world_size(fp: dict[str, str]) -> dict[str, str]:
    """Fingerprints before the world size got a key of its own pinned ``batch`` = micro x accum x world."""
    fp = dict(fp)
    m = re.fullmatch(r"(\d+)x(\d+)x(\d+)", str(fp.get("batch", "")))
    if "world_size" not in fp and m:
        fp["batch"], fp["world_size"] = f"{m[1]}x{m[2]}", m[3]
    return fp


def explain(msg: str) -> str:
    """A refusal's message with the config keys behind the fingerprint's names."""
    names = [f"{k} = {v}" for k, v in FINGERPRINT_KEYS.items() if f"{k}: checkpoint" in msg]
    return msg + (f" ({'; '.join(names)})" if names else "")


def check_fingerprint(saved: dict[str, str], current: dict[str, str], where: Path) -> WorldSizeChange | None:
    """Raise ResumeError naming every key that changed between a checkpoint and this run.

    A different ``world_size`` alone (with or without a different ``batch``, the per-rank
    micro_batch_size x grad_accum) is not refused: checkpoints hold full state dicts, so it is
    returned as a WorldSizeChange for the trainer to remap the data position and warn.
    """
    saved, current = _split_world_size(saved), _split_world_size(current)
    a_world, b_world = saved.get("world_size"), current.get("world_size")
    world_changed = a_world is not None and b_world is not None and a_world != b_world
    changed = []
    for key in sorted(set(saved) | set(current)):
        if world_changed and key in ("world_size", "batch"):
            continue
        a, b = saved.get(key), current.get(key)
        if a != b:
            changed.append(f"{key}: checkpoint {a!r}, now {b!r}")
    if changed:
        raise ResumeError(explain(
            f"cannot resume from {where}: the run changed since it was written ({'; '.join(changed)}). "
            "Use a new run directory, or restore the original model/data/batch settings."
        ))
    if not world_changed:
        return None
    return WorldSizeChange(int(str(a_world)), int(str(b_world)), str(saved.get("batch")), str(current.get("batch")))
