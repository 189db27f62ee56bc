"""FSDP2 sharding of a model without any rank ever holding all of it on its device, after torchtitan.

``shard_model`` shards each decoder layer of ``model.language_model`` (found at ``model.layers`` /
``layers`` / ``transformer.h`` / ``model.decoder.layers``), then the root module, so whatever is left
(vision tower, projector, the LM's embedding, final norm and head, or the whole of a model without
``language_model``) lands in the root's group.  It shards first and only then materialises each
rank's shards on the device (from the host tensors of a CPU-built model, or through a
``materialise`` callback for parameters built on meta), so no rank ever holds the whole model (or
a whole unit) on its GPU.  ``shard_language_model`` shards only the LM (layers, then the LM).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import torch

from openmind_core.training.strategies.base import meta_buffers_to, run_materialise

log = logging.getLogger(__name__)


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
    from torch.distributed.fsdp import fully_shard  # imported here: start-up cost

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
    from torch.distributed.fsdp import fully_shard  # imported here: start-up cost

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
    deferred += meta_buffers_to(model, target)
    run_materialise(model, deferred, materialise)
    return model


def _default_fsdp_device(mesh: Any) -> torch.device:
    kind = mesh.device_type if mesh is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device("cuda", torch.cuda.current_device()) if kind == "cuda" else torch.device(kind)


def _params_to_meta(model: torch.nn.Module) -> dict[str, torch.Tensor | None]:
    """Swap every parameter's data for meta (identity and ties kept); ``{name: host tensor}``, ``None``
    for a parameter already on meta.  The host tensors are the parameters' own storage, not copies."""
    from torch.distributed.tensor import DTensor  # imported here: start-up cost

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
    from torch.distributed.tensor import Shard  # imported here: start-up cost

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
               if b is not None and not b.is_meta]  # meta buffers: meta_buffers_to
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
