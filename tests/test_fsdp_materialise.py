"""FSDP2 in the trainer shards first: each rank materialises only its shards, never the whole model.

On CPU (gloo) GPU memory cannot be watched, so the worker (this file under torchrun, 2 ranks)
checks the path itself: ``fully_shard`` only ever sees meta parameters (so FSDP2 has nothing to
move to the device whole), nothing calls ``Module.to`` / ``cuda`` on a module with unsharded
parameters, each rank's local shards hold about half of every parameter (the two add up to it)
and the sharded values are the CPU-built model's.  A model whose frozen tower is built on meta and
filled by a ``materialise`` callback (``load_full_model_state_dict`` from rank 0) trains exactly
like the CPU-built one.  One process: ``place_model`` does the same for meta parameters.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
for p in (str(TESTS), str(ROOT)):
    if p not in sys.path:
        sys.path.insert(0, p)

from trainer_helpers import ToyVLM, build, collate, make_cfg  # noqa: E402


def _trainer(model, run_dir, rank, world, materialise=None, max_steps=3):
    from openmind_core.training import ProductionTrainer

    _, train, val = build(model="vlm", dropout=0.0)
    cfg = make_cfg(strategy="fsdp" if world > 1 else "auto", micro_batch_size=2, grad_accum=2, max_steps=max_steps)
    return ProductionTrainer(model, train, val, collate, cfg, run_dir, seed=7, rank=rank, world_size=world,
                             fingerprint={"model": "vlm-v1", "data": "toy-48"}, materialise=materialise)


def _vlm(meta_tower: bool = False) -> ToyVLM:
    torch.manual_seed(1234)
    m = ToyVLM(0.0)
    if meta_tower:  # as if the frozen pretrained tower had been built on meta (deferred init)
        m.vision_encoder.to("meta")
    return m


def _tower_weights() -> dict[str, torch.Tensor]:
    return {f"vision_encoder.{k}": v for k, v in _vlm().vision_encoder.state_dict().items()}


def _losses(run_dir) -> list[float]:
    lines = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in lines if "event" not in r]


# --------------------------------------------------------------------------- one process


def test_place_model_materialises_meta_parameters(tmp_path):
    from openmind_core.training.strategies import place_model

    with pytest.raises(ValueError, match="meta device .*vision_encoder.weight.* no materialise callback"):
        place_model(_vlm(meta_tower=True), "cpu")
    weights = _tower_weights()
    m = place_model(_vlm(meta_tower=True), "cpu", materialise=lambda mod: mod.load_state_dict(weights, strict=False))
    assert all(not p.is_meta for p in m.parameters())
    assert torch.equal(m.vision_encoder.weight, weights["vision_encoder.weight"])
    assert not m.vision_encoder.weight.requires_grad  # still frozen
    a = _trainer(_vlm(), tmp_path / "a", 0, 1).train()
    b = _trainer(_vlm(meta_tower=True), tmp_path / "b", 0, 1,
                 materialise=lambda mod: mod.load_state_dict(weights, strict=False)).train()
    assert a.steps == b.steps == 3 and _losses(tmp_path / "a") == _losses(tmp_path / "b")


def test_place_model_allocates_meta_buffers_for_materialise():
    """A module built wholly under ``torch.device("meta")``: its buffers are meta too, and are filled
    by the callback like its parameters (not copied out of meta, which torch cannot do)."""
    from openmind_core.training.strategies import place_model

    with torch.device("meta"):
        mod = torch.nn.Linear(3, 2)
        mod.register_buffer("scale", torch.ones(2), persistent=False)
    with pytest.raises(ValueError, match="meta device .*scale"):
        place_model(mod, "cpu")
    with torch.device("meta"):
        mod = torch.nn.Linear(3, 2)
        mod.register_buffer("scale", torch.ones(2), persistent=False)

    def fill(m):
        m.weight.fill_(1.0)
        m.bias.zero_()
        m.scale.fill_(2.0)

    placed = place_model(mod, "cpu", materialise=fill)
    assert not placed.scale.is_meta and torch.equal(placed.scale, torch.full((2,), 2.0))
    assert torch.equal(placed(torch.ones(1, 3)), torch.full((1, 2), 3.0))


# --------------------------------------------------------------------------- two ranks (worker below)


def test_fsdp_shards_before_anything_reaches_the_device(tmp_path):
    from openmind_core.training import run_torchrun

    lines: list[str] = []
    pp = os.pathsep.join([str(TESTS), str(ROOT), os.environ.get("PYTHONPATH", "")])
    rc = run_torchrun("test_fsdp_materialise", [str(tmp_path)], nproc=2, on_line=lines.append, timeout_s=240,
                      env={"PYTHONPATH": pp, "OMP_NUM_THREADS": "1"})
    assert rc == 0, "\n".join(lines[-40:])
    assert sum(ln.count("MATERIALISE_OK") for ln in lines) == 2, "\n".join(lines[-20:])


def _worker(out: Path) -> None:
    from torch.distributed.tensor import DTensor

    import torch.distributed.fsdp as fsdp
    from openmind_core.training import distributed as D
    from openmind_core.training.strategies import load_full_model_state_dict

    rank, world, _ = D.init_from_env()
    torch.set_num_threads(1)
    seen_by_fully_shard: list[bool] = []
    unsharded_moves: list[str] = []
    real_fully_shard, real_to, real_cuda = fsdp.fully_shard, torch.nn.Module.to, torch.nn.Module.cuda

    def spy_fully_shard(module, **kw):
        seen_by_fully_shard.append(all(p.is_meta or isinstance(p, DTensor) for p in module.parameters()))
        return real_fully_shard(module, **kw)

    def guard(name, real):
        def wrapper(self, *a, **k):
            if any(not isinstance(p, DTensor) and not p.is_meta for p in self.parameters()):
                unsharded_moves.append(f"{type(self).__name__}.{name}{a}")
            return real(self, *a, **k)
        return wrapper

    ref = _vlm().state_dict()
    cpu_built, meta_tower = _vlm(), _vlm(meta_tower=True)
    weights = _tower_weights() if rank == 0 else None  # only rank 0 reads the pretrained tower
    fsdp.fully_shard = spy_fully_shard
    torch.nn.Module.to, torch.nn.Module.cuda = guard("to", real_to), guard("cuda", real_cuda)
    try:
        plain = _trainer(cpu_built, out / "cpu_built", rank, world)
        deferred = _trainer(meta_tower, out / "meta_tower", rank, world,
                            materialise=lambda mod: load_full_model_state_dict(mod, weights))
    finally:
        fsdp.fully_shard, torch.nn.Module.to, torch.nn.Module.cuda = real_fully_shard, real_to, real_cuda
    assert seen_by_fully_shard and all(seen_by_fully_shard), seen_by_fully_shard  # no host data handed to FSDP2
    assert unsharded_moves == [], unsharded_moves
    for t in (plain, deferred):
        for name, p in t.module.named_parameters():
            assert isinstance(p, DTensor) and p.device.type == t.device.type, name
            local = p.to_local().numel()
            total = D.all_reduce_sum(torch.tensor([local]))[0].item()
            assert total == p.numel(), (name, total, p.numel())
            assert local <= math.ceil(p.shape[0] / world) * (p.numel() // p.shape[0]), (name, local)
            assert torch.equal(p.full_tensor(), ref[name]), name  # the CPU-built values, sliced right
    for t in (plain, deferred):
        assert t.train().steps == 3
    if rank == 0:
        assert _losses(out / "cpu_built") == _losses(out / "meta_tower")
    D.barrier()
    print(f"MATERIALISE_OK rank {rank}", flush=True)
    D.destroy()


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
