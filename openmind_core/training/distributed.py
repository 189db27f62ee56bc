"""DDP and FSDP2 for the trainer under torchrun (gloo on CPU, nccl on CUDA), and the FSDP2 checkpoint glue.

Under ``torchrun`` every process calls ``init_from_env()`` (reads RANK/WORLD_SIZE/LOCAL_RANK and
initialises the default process group) before building the ProductionTrainer with ``rank`` and
``world_size``.  ``TrainConfig.strategy`` picks how the trainer spreads the model
(``resolve_strategy``): ``auto`` / ``ddp`` -> ``wrap_ddp`` (gradients not synchronised on
accumulation micro-steps via ``no_sync``); ``fsdp`` -> ``shard_model``; one process -> neither.

FSDP2 (``torch.distributed.fsdp.fully_shard``), after torchtitan: ``shard_model`` shards each
decoder layer of ``model.language_model`` (found at ``model.layers`` / ``layers`` /
``transformer.h`` / ``model.decoder.layers``), then the root module, so whatever is left (vision
tower, projector, the LM's embedding, final norm and head, or the whole of a model without
``language_model``) lands in the root's group.  It shards first and only then materialises each
rank's shards on the device (from the host tensors of a CPU-built model, or through a
``materialise`` callback for parameters built on meta), so no rank ever holds the whole model (or a
whole unit) on its GPU; ``place_model`` is the one-process / DDP counterpart (``model.to``).
The trainer shards before building the optimizer, turns gradient
sync off on non-final accumulation micro-steps (``set_requires_gradient_sync(False)``) and clips
with ``guard.clip_and_measure(sharded=True)`` (the pre-clip total norm, reduced across ranks).

Checkpoints of a sharded model (``full_*`` / ``load_full_*`` below, all collectives: every rank
calls them) go through ``torch.distributed.checkpoint.state_dict`` with
``StateDictOptions(full_state_dict=True, cpu_offload=True)``: rank 0 receives full, unsharded CPU
tensors and writes the very files a single process writes (``model.safetensors`` by parameter
name, ``optimizer.pt`` in ``Optimizer.state_dict()``'s format with integer ids in param-group
order), so a checkpoint moves between one process, DDP and FSDP; loads use
``broadcast_from_rank0=True`` (only rank 0 reads the tensors).  One catch handled here: DCP
initialises an empty optimizer state with a zero-gradient ``step()`` (Adam's step count becomes
1), so an optimizer that has not stepped yet is saved and loaded without DCP.

On GPU: call ``init_from_env()`` first (it sets the CUDA device), keep ``train.amp`` at bf16
(autocast; fp16's GradScaler is refused under FSDP because its overflow check is per rank), and
``full_model_state_dict`` gathers parameter by parameter onto rank 0's CPU, so that host needs RAM
for one full copy of the weights when checkpoints, ``best/`` and ``final/`` are written.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
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


def resolve_strategy(strategy: str, world_size: int) -> str:
    """``single`` for one process, else ``fsdp`` when asked for and ``ddp`` otherwise (``auto``)."""
    if strategy not in ("auto", "ddp", "fsdp"):
        raise ValueError(f"train.strategy must be auto, ddp or fsdp, not {strategy!r}")
    if world_size <= 1:
        return "single"
    return "fsdp" if strategy == "fsdp" else "ddp"


def shard_model(model: torch.nn.Module, attr: str = "language_model", mesh: Any = None,
                mp_policy: Any = None, device: torch.device | str | None = None,
                materialise: Callable[[torch.nn.Module], None] | None = None) -> torch.nn.Module:
    """FSDP2 the whole model: each decoder layer of ``model.<attr>`` (if it exists), then the root;
    shard first, then materialise only this rank's shard of every parameter on ``device``.

    The language model itself is deliberately not a unit of its own: a VLM embeds its tokens by
    calling the LM's input embedding outside the LM's forward (to splice image features in), and
    ties that embedding to ``lm_head``; in the root's unit both are gathered whenever the model
    runs.  The decoder layers, nearly all of an LM's weights, are still sharded layer by layer.

    No rank ever holds the whole model (nor a whole unit) on ``device``: ``fully_shard`` of a
    module on the host would move each unit's full parameters to the mesh's device before
    chunking them, so the parameters are first taken off the module (their host tensors kept, not
    copied) and replaced by meta ones, the model is sharded on meta (sharding metadata only),
    ``to_empty`` allocates just the local shards on ``device``, and each rank copies its slice of
    every host tensor into its shard.  Buffers (replicated under FSDP) go to ``device`` whole.
    Parameters that were on meta to begin with (deferred init, e.g. a frozen pretrained tower
    built on meta) are left allocated but unset for ``materialise(model)``, called on every rank
    afterwards: fill them in place (``p.to_local().copy_(...)``) or collectively with
    ``load_full_model_state_dict(model, state)`` (only rank 0 needs ``state``).  ``device``
    defaults to the mesh's (the current CUDA device, or the CPU under gloo).
    """
    from torch.distributed.fsdp import fully_shard

    kw: dict[str, Any] = {}
    if mesh is not None:
        kw["mesh"] = mesh
    if mp_policy is not None:
        kw["mp_policy"] = mp_policy
    target = torch.device(device) if device is not None else _default_fsdp_device(mesh)
    host = _params_to_meta(model)
    deferred = [n for n, t in host.items() if t is None]
    lm = getattr(model, attr, None)
    if lm is not None:
        for layer in _decoder_layers(lm):
            fully_shard(layer, **kw)
    else:
        log.info("%s has no %r: FSDP2 shards it as one unit", type(model).__name__, attr)
    fully_shard(model, **kw)  # meta parameters stay meta; FSDP2 moves the buffers to the mesh's device
    _materialise_shards(model, host, target)
    deferred += _meta_buffers_to(model, target)
    _run_materialise(model, deferred, materialise)
    return model


def place_model(model: torch.nn.Module, device: torch.device | str,
                materialise: Callable[[torch.nn.Module], None] | None = None) -> torch.nn.Module:
    """One process or DDP: ``model.to(device)``; parameters and buffers on meta are allocated on ``device``
    first (unset, tied ones kept tied) and filled by ``materialise(model)``."""
    device = torch.device(device)
    fresh: dict[int, torch.nn.Parameter] = {}
    deferred = [n for n, p in model.named_parameters() if p.is_meta] + _meta_buffers_to(model, device)
    for mod in model.modules():
        for key, p in list(mod._parameters.items()):
            if p is not None and p.is_meta:
                if id(p) not in fresh:
                    fresh[id(p)] = torch.nn.Parameter(torch.empty_like(p, device=device),
                                                      requires_grad=p.requires_grad)
                mod._parameters[key] = fresh[id(p)]
    model.to(device)
    _run_materialise(model, deferred, materialise)
    return model


def _meta_buffers_to(model: torch.nn.Module, device: torch.device) -> list[str]:
    """Allocate (unset) on ``device`` every buffer still on meta; their names, for ``materialise`` to fill."""
    names = []
    for mod_name, mod in model.named_modules():
        for key, b in list(mod._buffers.items()):
            if b is not None and b.is_meta:
                mod._buffers[key] = torch.empty_like(b, device=device)
                names.append(f"{mod_name}.{key}" if mod_name else key)
    return names


def _default_fsdp_device(mesh: Any) -> torch.device:
    kind = mesh.device_type if mesh is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device("cuda", torch.cuda.current_device()) if kind == "cuda" else torch.device(kind)


def _params_to_meta(model: torch.nn.Module) -> dict[str, torch.Tensor | None]:
    """Swap every parameter's data for meta (identity and ties kept); ``{name: host tensor}``, ``None``
    for a parameter already on meta.  The host tensors are the parameters' own storage, not copies."""
    from torch.distributed.tensor import DTensor

    host: dict[str, torch.Tensor | None] = {}
    for name, p in model.named_parameters():  # a tied parameter once, under its first name
        if isinstance(p, DTensor):
            raise ValueError(f"{name} is already a DTensor: shard_model expects an unsharded model")
        if p.is_meta:
            host[name] = None
            continue
        stub = torch.nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
        torch.utils.swap_tensors(p, stub)  # p is now meta; stub holds the data
        host[name] = stub.detach()
    return host


def _local_slice(full: torch.Tensor, dt: Any) -> torch.Tensor:
    """This rank's piece of ``full`` under ``dt``'s placements (Shard / Replicate over a mesh)."""
    from torch.distributed.tensor import Shard

    coord = dt.device_mesh.get_coordinate()
    piece = full
    for mesh_dim, placement in enumerate(dt.placements):
        if isinstance(placement, Shard):
            chunks = torch.chunk(piece, dt.device_mesh.size(mesh_dim), dim=placement.dim)
            i = coord[mesh_dim]
            piece = chunks[i] if i < len(chunks) else piece.narrow(placement.dim, 0, 0)
    return piece


@torch.no_grad()
def _materialise_shards(model: torch.nn.Module, host: dict[str, torch.Tensor | None],
                        device: torch.device) -> None:
    """Allocate the local shards on ``device`` (buffers kept) and copy this rank's slice of each host tensor."""
    buffers = [(mod, key, b) for mod in model.modules() for key, b in mod._buffers.items()
               if b is not None and not b.is_meta]  # meta buffers: _meta_buffers_to
    model.to_empty(device=device)  # DTensor params: only the local shard is allocated
    moved: dict[int, torch.Tensor] = {}
    for mod, key, b in buffers:  # to_empty replaced them with uninitialised ones: put the originals back
        mod._buffers[key] = moved.setdefault(id(b), b.to(device))
    for name, p in model.named_parameters():
        src = host.get(name)
        if src is None:
            continue
        local = p.to_local()
        piece = _local_slice(src, p)
        if piece.shape != local.shape:
            raise RuntimeError(f"{name}: local shard {tuple(local.shape)}, host slice {tuple(piece.shape)}")
        local.copy_(piece)
        host[name] = None  # the host tensor can go as soon as its slice is on device
    lost = [n for n, t in host.items() if t is not None]
    host.clear()
    if lost:
        raise RuntimeError(f"parameters not found after sharding: {lost[:5]}")


def _run_materialise(model: torch.nn.Module, deferred: list[str],
                     materialise: Callable[[torch.nn.Module], None] | None) -> None:
    if not deferred:
        return
    if materialise is None:
        raise ValueError(f"{len(deferred)} parameters or buffers are on the meta device ({', '.join(deferred[:5])}"
                         f"{', ...' if len(deferred) > 5 else ''}) and no materialise callback fills them")
    with torch.no_grad():
        materialise(model)


def _full_options(**kw: Any) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def full_model_state_dict(model: torch.nn.Module, trainable_only: bool = False) -> dict[str, torch.Tensor]:
    """Collective: the unsharded state dict (CPU) on rank 0, ``{}`` elsewhere; keys as ``state_dict()``."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    sd = get_model_state_dict(model, options=_full_options(cpu_offload=True, ignore_frozen_params=trainable_only))
    if trainable_only:
        names = {n for n, p in model.named_parameters() if p.requires_grad}
        sd = {k: v for k, v in sd.items() if k in names}
    return sd


def load_full_model_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor] | None) -> None:
    """Collective: load rank 0's full (possibly partial: trainable-only) state dict into the sharded model."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    rank0 = not is_distributed() or dist.get_rank() == 0
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
    rank0 = not is_distributed() or dist.get_rank() == 0
    if not optimizer.state:  # DCP would run a zero-gradient step to create it (Adam step count 1)
        return optimizer.state_dict() if rank0 else {}
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
    rank0 = not is_distributed() or dist.get_rank() == 0
    empty = broadcast_object(not (state or {}).get("state") if rank0 else None)
    if empty:  # nothing to shard: every rank loads the param groups as they are (clears any state)
        optimizer.load_state_dict(broadcast_object(state if rank0 else None))
        return
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
