"""FSDP2: each rank holds only its shards of the model; checkpoints gather full state dicts onto rank 0.

``place`` shards the model before it reaches the device (``sharding.shard_model``: decoder layers,
then the root; each rank materialises only its shards).  During accumulation, gradient
reduce-scatter is turned off on all but the last micro-batch (``set_requires_gradient_sync``), and
the pre-clip gradient norm is reduced over all ranks' shards (``guard.clip_and_measure(sharded=True)``).
``agree`` broadcasts rank 0's decision where a collective save follows (keeping ``best/``).

Checkpoints of a sharded model (``full_*`` / ``load_full_*`` below, all collectives: every rank
calls them) go through ``torch.distributed.checkpoint.state_dict`` with
``StateDictOptions(full_state_dict=True, cpu_offload=True)``: rank 0 receives full, unsharded CPU
tensors and writes the very files a single process writes (``model.safetensors`` by parameter
name, ``optimizer.pt`` in ``Optimizer.state_dict()``'s format with integer ids in param-group
order), so a checkpoint moves between one process, DDP and FSDP; loads use
``broadcast_from_rank0=True`` (only rank 0 reads the tensors).  One catch handled here: DCP
initialises an empty optimizer state with a zero-gradient ``step()`` (Adam's step count becomes
1), so an optimizer that has not stepped yet is saved and loaded without DCP.

On GPU: call ``distributed.init_from_env()`` first (it sets the CUDA device), keep ``train.amp`` at
bf16 (fp16's GradScaler is refused under FSDP: its overflow check is per rank), and
``full_model_state_dict`` gathers parameter by parameter onto rank 0's CPU, so that host needs RAM
for one full copy of the weights when checkpoints, ``best/`` and ``final/`` are written.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from openmind_core.training.distributed import broadcast_object, is_distributed
from openmind_core.training.errors import ResumeError
from openmind_core.training.guard import clip_and_measure
from openmind_core.training.model_dir import save_model_dir
from openmind_core.training.strategies.base import (Materialise, OptimizerState, Strategy, Trainable,
                                                    TrainableWeights, weights_mismatch)
from openmind_core.training.strategies.sharding import shard_model


class FSDPStrategy(Strategy):
    """Fully sharded data parallel (FSDP2, ``fully_shard``) over ``world_size`` processes."""

    name = "fsdp"
    sharded = True

    def place(self, model: torch.nn.Module, materialise: Materialise | None = None) -> torch.nn.Module:
        return shard_model(model, device=self.device, materialise=materialise)

    def micro_batch(self, model: torch.nn.Module, last: bool):
        model.set_requires_gradient_sync(last)  # reduce-scatter only after the last micro-batch
        return super().micro_batch(model, last)

    def clip_and_measure(self, params: Iterable[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
        return clip_and_measure(params, max_norm, sharded=True)

    def agree(self, value: Any) -> Any:
        return broadcast_object(value)

    def weights_state(self, module: torch.nn.Module, trainable: Trainable) -> "GatheredWeights":
        return GatheredWeights(module, trainable, self.rank)

    def optimizer_state(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> "GatheredOptimizerState":
        return GatheredOptimizerState(module, optimizer, self.rank)

    def save_model(self, module: torch.nn.Module, dest: Path) -> None:
        full = full_model_state_dict(module)  # a collective: every rank helps gather
        if self.is_main:
            save_model_dir(module, dest, state_dict=full)


class GatheredWeights(TrainableWeights):
    """Stateful: the trainable weights gathered onto rank 0 (saves) or broadcast from it (loads)."""

    rank0_only = True

    def __init__(self, module: torch.nn.Module, trainable: Trainable, rank: int) -> None:
        super().__init__(trainable)
        self.module, self.rank = module, rank

    def state_dict(self) -> dict[str, torch.Tensor]:
        return full_model_state_dict(self.module, trainable_only=True)

    def load_state_dict(self, weights: dict[str, torch.Tensor]) -> None:
        err = broadcast_object(weights_mismatch(self.trainable, weights) if self.rank == 0 else None)
        if err:  # every rank raises, none waits in the load's collectives
            raise ResumeError(err)
        load_full_model_state_dict(self.module, weights if self.rank == 0 else None)


class GatheredOptimizerState(OptimizerState):
    """Stateful: the optimizer's full state in ``Optimizer.state_dict()``'s format, on rank 0."""

    rank0_only = True

    def __init__(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer, rank: int) -> None:
        super().__init__(optimizer, rank)
        self.module = module

    def state_dict(self) -> dict[str, Any]:
        return full_optimizer_state_dict(self.module, self.optimizer)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_full_optimizer_state_dict(self.module, self.optimizer, state if self.rank == 0 else None)


# --------------------------------------------------------------------------- full state dicts


def _is_rank0() -> bool:
    return not is_distributed() or dist.get_rank() == 0


def _full_options(**kw: Any) -> Any:
    # imported here: start-up cost (torch.distributed.checkpoint)
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def full_model_state_dict(model: torch.nn.Module, trainable_only: bool = False) -> dict[str, torch.Tensor]:
    """Collective: the unsharded state dict (CPU) on rank 0, ``{}`` elsewhere; keys as ``state_dict()``."""
    # imported here: start-up cost (torch.distributed.checkpoint)
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    sd = get_model_state_dict(model, options=_full_options(cpu_offload=True, ignore_frozen_params=trainable_only))
    if trainable_only:
        names = {n for n, p in model.named_parameters() if p.requires_grad}
        sd = {k: v for k, v in sd.items() if k in names}
    return sd


def load_full_model_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor] | None) -> None:
    """Collective: load rank 0's full (possibly partial: trainable-only) state dict into the sharded model."""
    # imported here: start-up cost (torch.distributed.checkpoint)
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    rank0 = _is_rank0()
    set_model_state_dict(model, (state or {}) if rank0 else {},
                         options=_full_options(broadcast_from_rank0=True, strict=False))


def _param_names_in_order(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    name_of = {id(p): n for n, p in model.named_parameters()}
    try:
        return [name_of[id(p)] for g in optimizer.param_groups for p in g["params"]]
    except KeyError as e:
        raise ValueError("the optimizer holds a parameter that is not in the model") from e


def full_optimizer_state_dict(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Collective: the optimizer's full state on rank 0 in ``Optimizer.state_dict()``'s own format
    (integer ids in param-group order, unsharded CPU tensors), ``{}`` on the other ranks."""
    rank0 = _is_rank0()
    if not optimizer.state:  # DCP would run a zero-gradient step to create it (Adam step count 1)
        return optimizer.state_dict() if rank0 else {}
    # imported here: start-up cost (torch.distributed.checkpoint)
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    sd = get_optimizer_state_dict(model, optimizer, options=_full_options(cpu_offload=True))
    if not rank0:
        return {}
    index = {n: i for i, n in enumerate(_param_names_in_order(model, optimizer))}
    state = {index[k]: v for k, v in sorted(sd["state"].items(), key=lambda kv: index[kv[0]])}
    groups = [{**g, "params": [index[k] for k in g["params"]]} for g in sd["param_groups"]]
    return {"state": state, "param_groups": groups}


def load_full_optimizer_state_dict(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                                   state: dict[str, Any] | None) -> None:
    """Collective: load rank 0's ``Optimizer.state_dict()``-format dict into the optimizer of the sharded model."""
    rank0 = _is_rank0()
    empty = broadcast_object(not (state or {}).get("state") if rank0 else None)
    if empty:  # nothing to shard: every rank loads the param groups as they are (clears any state)
        optimizer.load_state_dict(broadcast_object(state if rank0 else None))
        return
    # imported here: start-up cost (torch.distributed.checkpoint)
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    fqn_sd: dict[str, Any] = {}
    err = None
    if rank0:
        assert state is not None
        names = _param_names_in_order(model, optimizer)
        n_saved = sum(len(g["params"]) for g in state["param_groups"])
        if n_saved != len(names) or len(state["param_groups"]) != len(optimizer.param_groups):
            err = (f"the checkpoint's optimizer has {n_saved} parameters in {len(state['param_groups'])} groups, "
                   f"this one {len(names)} in {len(optimizer.param_groups)}")
        else:
            fqn_sd = {"state": {names[int(i)]: v for i, v in state["state"].items()},
                      "param_groups": [{**g, "params": [names[int(i)] for i in g["params"]]}
                                       for g in state["param_groups"]]}
    err = broadcast_object(err)  # every rank raises, none waits in a collective
    if err:
        raise ValueError(err)
    set_optimizer_state_dict(model, optimizer, fqn_sd, options=_full_options(broadcast_from_rank0=True))
