"""DDP and FSDP2 helpers for the trainer (gloo on CPU, nccl on CUDA).

Under ``torchrun`` every process calls ``init_from_env()`` (reads RANK/WORLD_SIZE/LOCAL_RANK and
initialises the default process group) before building the trainer with ``rank`` and
``world_size``.  The trainer wraps the model with ``wrap_ddp`` itself; gradients are not
synchronised on accumulation micro-steps (``no_sync``).

FSDP2: ``shard_language_model`` applies ``torch.distributed.fsdp.fully_shard`` to each decoder
layer of the language model and then to the language model itself (torchtitan's recipe), for an LM
that does not fit one GPU.  On GPU: call it after ``init_from_env()`` with the model on
``cuda:LOCAL_RANK`` and before building the optimizer; keep ``train.amp`` as bf16 (or pass a
``MixedPrecisionPolicy``).  Checkpoints of a sharded model need full state dicts
(``torch.distributed.checkpoint.state_dict.get_model_state_dict`` with ``full_state_dict=True``);
the ProductionTrainer's checkpointing supports the DDP / single-process case.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def init_from_env(backend: str | None = None, timeout_s: float = 600.0) -> tuple[int, int, int]:
    """Initialise the default process group from torchrun's env vars; returns (rank, world, local_rank)."""
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1 and not is_distributed():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
        log.info("process group %s: rank %d of %d", backend, rank, world)
    return rank, world, local_rank


def device_for(local_rank: int = 0) -> torch.device:
    return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    return DDP(model, device_ids=ids, find_unused_parameters=False)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_objects(obj: Any) -> list[Any]:
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def destroy() -> None:
    if is_distributed():
        dist.destroy_process_group()


def _decoder_layers(lm: torch.nn.Module) -> Iterable[torch.nn.Module]:
    for path in ("model.layers", "layers", "transformer.h", "model.decoder.layers"):
        obj: Any = lm
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, torch.nn.ModuleList):
            return list(obj)
    raise ValueError(f"cannot find the decoder layers of {type(lm).__name__} (looked for model.layers, layers, "
                     "transformer.h, model.decoder.layers)")


def shard_language_model(model: torch.nn.Module, attr: str = "language_model", mesh: Any = None,
                         mp_policy: Any = None) -> torch.nn.Module:
    """FSDP2: ``fully_shard`` every decoder layer of ``model.<attr>`` and then the LM itself."""
    from torch.distributed.fsdp import fully_shard

    lm = getattr(model, attr, None)
    if lm is None:
        raise ValueError(f"{type(model).__name__} has no attribute {attr!r} to shard")
    kw: dict[str, Any] = {}
    if mesh is not None:
        kw["mesh"] = mesh
    if mp_policy is not None:
        kw["mp_policy"] = mp_policy
    for layer in _decoder_layers(lm):
        fully_shard(layer, **kw)
    fully_shard(lm, **kw)
    return model
