"""DDP: every rank holds the whole model; gradients are all-reduced after the last micro-batch of a step.

The forward runs through ``DistributedDataParallel`` (``find_unused_parameters=False``); on the
accumulation micro-batches before the last, ``no_sync`` keeps DDP from all-reducing gradients that
the next backward adds to.  Checkpoints are the one-process strategy's: every rank holds the same
weights and optimizer state, rank 0 writes them.
"""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

from openmind_core.training.strategies.base import Strategy


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    # imported here: start-up cost (torch.nn.parallel pulls in the distributed machinery)
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    return DDP(model, device_ids=ids, find_unused_parameters=False)


class DDPStrategy(Strategy):
    """Data parallel over ``world_size`` processes, the model replicated."""

    name = "ddp"

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        return wrap_ddp(module, self.device)

    def micro_batch(self, model: torch.nn.Module, last: bool) -> ContextManager:
        return contextlib.nullcontext() if last else model.no_sync()
