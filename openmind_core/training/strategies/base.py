"""The strategy interface, and the strategy of one process: how the model is spread over the processes.

A strategy (after prismatic-vlms' ``training/strategies/``) is everything the trainer does
differently for one process, DDP and FSDP2, so the loop has no branch on it: where the model goes
(``place``), what runs the forward (``wrap``), whether gradients are synchronised after a
micro-batch (``micro_batch``), how the pre-clip gradient norm is measured (``clip_and_measure``),
how the trainable weights and the optimizer state move in and out of a checkpoint (``weights_state``
/ ``optimizer_state``: Stateful objects for the checkpoint manager) and how ``best/`` / ``final/``
are written (``save_model``).  Every strategy writes the same checkpoint files, so a checkpoint
resumes under any of them, with any number of processes.

This file is the one-process strategy, which ``ddp`` and ``fsdp`` extend, and ``place_model``:
a model onto its device, parameters built on the meta device allocated there for a
``materialise`` callback to fill.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ContextManager

import torch

from openmind_core.training.distributed import all_reduce_sum
from openmind_core.training.errors import ResumeError
from openmind_core.training.guard import clip_and_measure
from openmind_core.training.model_dir import save_model_dir

Materialise = Callable[[torch.nn.Module], None]
Trainable = list[tuple[str, torch.nn.Parameter]]


class Strategy:
    """One process: the model on one device, nothing to synchronise."""

    name = "single"
    sharded = False  # parameters are DTensor shards (their local state is not the checkpoint's)

    def __init__(self, device: torch.device, rank: int = 0, world_size: int = 1) -> None:
        self.device, self.rank, self.world_size = device, rank, world_size

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- the model ------------------------------------------------------------------------

    def place(self, model: torch.nn.Module, materialise: Materialise | None = None) -> torch.nn.Module:
        """The model on this rank's device; returns the module whose parameters the optimizer gets."""
        return place_model(model, self.device, materialise=materialise)

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """What runs the training forward (a DDP wrapper, or the module itself)."""
        return module

    # -- the step -------------------------------------------------------------------------

    def micro_batch(self, model: torch.nn.Module, last: bool) -> ContextManager:
        """The context of one micro-batch's forward and backward; gradients are synchronised after the last."""
        return contextlib.nullcontext()

    def global_sum(self, value: float) -> float:
        """``value`` summed over the ranks."""
        if self.world_size == 1:
            return value
        return float(all_reduce_sum(torch.tensor([value], dtype=torch.float64))[0])

    def global_sums(self, values: list[float]) -> list[float]:
        """Each of ``values`` summed over the ranks (one collective)."""
        if self.world_size == 1:
            return list(values)
        return all_reduce_sum(torch.tensor(values, dtype=torch.float64)).tolist()

    def sum_over_ranks_(self, tensor: torch.Tensor) -> None:
        """Sum ``tensor`` over the ranks, in place."""
        if self.world_size > 1:
            all_reduce_sum(tensor)

    def clip_and_measure(self, params: Iterable[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
        """Clip to ``max_norm``; the pre-clip total norm as a tensor (no device sync)."""
        return clip_and_measure(params, max_norm)

    def agree(self, value: Any) -> Any:
        """``value`` as rank 0 has it, where a collective follows that every rank must join alike."""
        return value

    # -- checkpoints and saved models -----------------------------------------------------

    def weights_state(self, module: torch.nn.Module, trainable: Trainable) -> "TrainableWeights":
        return TrainableWeights(trainable)

    def optimizer_state(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> "OptimizerState":
        return OptimizerState(optimizer, self.rank)

    def save_model(self, module: torch.nn.Module, dest: Path) -> None:
        """The whole model as a ``save_pretrained`` directory, written by rank 0 (every rank calls)."""
        if self.is_main:
            save_model_dir(module, dest)


def weights_mismatch(trainable: Trainable, weights: dict[str, torch.Tensor]) -> str | None:
    """Why ``weights`` cannot be this model's trainable parameters, or None."""
    names = {n for n, _ in trainable}
    if set(weights) != names:
        return (f"trainable parameters differ (missing {sorted(names - set(weights))[:5]}, "
                f"unexpected {sorted(set(weights) - names)[:5]})")
    for n, p in trainable:
        if weights[n].shape != p.shape:  # a DTensor's shape is the global one
            return f"{n} has shape {tuple(weights[n].shape)} there, {tuple(p.shape)} now"
    return None


class TrainableWeights:
    """Stateful: the trainable parameters by name (``model.safetensors``); frozen ones are the caller's
    to rebuild.  ``rank0_only``: whether only rank 0 needs the file to load."""

    rank0_only = False

    def __init__(self, trainable: Trainable) -> None:
        self.trainable = trainable

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p for n, p in self.trainable}

    def load_state_dict(self, weights: dict[str, torch.Tensor]) -> None:
        err = weights_mismatch(self.trainable, weights)
        if err:
            raise ResumeError(err)
        with torch.no_grad():
            for n, p in self.trainable:
                p.copy_(weights[n].to(p.device, p.dtype))


class OptimizerState:
    """Stateful: ``Optimizer.state_dict()`` (``optimizer.pt``); only rank 0 builds it for a save."""

    rank0_only = False

    def __init__(self, optimizer: torch.optim.Optimizer, rank: int) -> None:
        self.optimizer, self.rank = optimizer, rank

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict() if self.rank == 0 else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state)


# --------------------------------------------------------------------------- placing a model


def place_model(model: torch.nn.Module, device: torch.device | str,
                materialise: Materialise | None = None) -> torch.nn.Module:
    """One process or DDP: ``model.to(device)``; parameters and buffers on meta are allocated on ``device``
    first (unset, tied ones kept tied) and filled by ``materialise(model)``."""
    device = torch.device(device)
    fresh: dict[int, torch.nn.Parameter] = {}
    deferred = [n for n, p in model.named_parameters() if p.is_meta] + meta_buffers_to(model, device)
    for mod in model.modules():
        for key, p in list(mod._parameters.items()):
            if p is not None and p.is_meta:
                if id(p) not in fresh:
                    fresh[id(p)] = torch.nn.Parameter(torch.empty_like(p, device=device),
                                                      requires_grad=p.requires_grad)
                mod._parameters[key] = fresh[id(p)]
    model.to(device)
    run_materialise(model, deferred, materialise)
    return model


def meta_buffers_to(model: torch.nn.Module, device: torch.device) -> list[str]:
    """Allocate (unset) on ``device`` every buffer still on meta; their names, for ``materialise`` to fill."""
    names = []
    for mod_name, mod in model.named_modules():
        for key, b in list(mod._buffers.items()):
            if b is not None and b.is_meta:
                mod._buffers[key] = torch.empty_like(b, device=device)
                names.append(f"{mod_name}.{key}" if mod_name else key)
    return names


def run_materialise(model: torch.nn.Module, deferred: list[str], materialise: Materialise | None) -> None:
    """Call ``materialise(model)`` to fill the ``deferred`` (allocated, unset) tensors; refuse without one."""
    if not deferred:
        return
    if materialise is None:
        raise ValueError(f"{len(deferred)} parameters or buffers are on the meta device ({', '.join(deferred[:5])}"
                         f"{', ...' if len(deferred) > 5 else ''}) and no materialise callback fills them")
    with torch.no_grad():
        materialise(model)
