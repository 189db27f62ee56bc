"""How the model is spread over the processes: one process, DDP or FSDP2 (after prismatic-vlms' strategies).

``make_strategy`` picks one from ``train.strategy`` and the number of processes: ``auto`` / ``ddp``
-> ``DDPStrategy`` when ``world_size > 1``; ``fsdp`` -> ``FSDPStrategy``; one process -> ``Strategy``
(nothing to shard or synchronise).  ``base`` says what a strategy decides.
"""

from __future__ import annotations

import logging

import torch

from openmind_core.training.distributed import is_distributed
from openmind_core.training.errors import TrainingError
from openmind_core.training.precision import AmpSettings
from openmind_core.training.strategies.base import Strategy, place_model
from openmind_core.training.strategies.ddp import DDPStrategy
from openmind_core.training.strategies.fsdp import FSDPStrategy, full_model_state_dict, load_full_model_state_dict
from openmind_core.training.strategies.sharding import shard_language_model, shard_model

log = logging.getLogger(__name__)

__all__ = ["DDPStrategy", "FSDPStrategy", "Strategy", "full_model_state_dict", "load_full_model_state_dict",
           "make_strategy", "place_model", "resolve_strategy", "shard_language_model", "shard_model"]


def resolve_strategy(strategy: str, world_size: int) -> str:
    """``single`` for one process, else ``fsdp`` when asked for and ``ddp`` otherwise (``auto``)."""
    if strategy not in ("auto", "ddp", "fsdp"):
        raise ValueError(f"train.strategy must be auto, ddp or fsdp, not {strategy!r}")
    if world_size <= 1:
        return "single"
    return "fsdp" if strategy == "fsdp" else "ddp"


def make_strategy(strategy: str, world_size: int, rank: int, device: torch.device, amp: AmpSettings) -> Strategy:
    """The strategy for ``train.strategy`` with ``world_size`` processes; refuses what cannot work."""
    kind = resolve_strategy(strategy, world_size)
    if strategy == "fsdp" and world_size == 1:
        log.info("train.strategy=fsdp with one process: nothing to shard, training unsharded")
    if world_size > 1 and not is_distributed():
        raise TrainingError(f"world_size={world_size} but torch.distributed is not initialised: "
                            "call openmind_core.training.distributed.init_from_env() under torchrun")
    if kind == "fsdp" and amp.name == "fp16":
        raise TrainingError("train.strategy=fsdp with fp16: GradScaler's overflow check is per rank "
                            "and not supported with FSDP2 shards here; set train.amp to bf16 (or off)")
    return {"single": Strategy, "ddp": DDPStrategy, "fsdp": FSDPStrategy}[kind](device, rank, world_size)
