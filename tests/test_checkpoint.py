"""CheckpointManager: atomic writes, validation, corrupted/partial skipping, pruning, fingerprints."""

from __future__ import annotations

import io
import json
import logging

import pytest
import torch

from openmind_core.training import CheckpointManager, ProductionTrainer, ResumeError, save_model_dir
from trainer_helpers import ToyDataset, build, collate, make_cfg, run_toy


def _save(mgr: CheckpointManager, step: int, value: float = 1.0):
    return mgr.save(step, {"w": torch.full((3,), value)}, {"optimizer.pt": {"state": {0: {"step": torch.tensor(step)}}}},
                    {"trainer_state.json": {"step": step}})


def test_roundtrip_weights_only_and_manifest(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=2)
    p = _save(mgr, 5, 2.0)
    assert p.name == "step-00000005" and mgr.validate(p) is None
    manifest = json.loads((p / "manifest.json").read_text())
    assert set(manifest["files"]) == {"model.safetensors", "optimizer.pt", "trainer_state.json"}
    ck = mgr.load(p)
    assert ck.step == 5 and torch.equal(ck.weights["w"], torch.full((3,), 2.0))
    assert int(ck.torch_files["optimizer.pt"]["state"][0]["step"]) == 5
    assert ck.json_files["trainer_state.json"] == {"step": 5}


def test_corrupted_and_partial_checkpoints_are_skipped(tmp_path, caplog):
    mgr = CheckpointManager(tmp_path)
    _save(mgr, 1)
    _save(mgr, 2)
    p3 = _save(mgr, 3)
    raw = bytearray((p3 / "model.safetensors").read_bytes())
    raw[-1] ^= 0xFF
    (p3 / "model.safetensors").write_bytes(bytes(raw))
    p4 = _save(mgr, 4)
    (p4 / "manifest.json").unlink()  # as if the crash came before the manifest
    (tmp_path / ".tmp-step-00000005-123").mkdir()  # a stale temporary
    with caplog.at_level(logging.WARNING):
        mgr.cleanup_stale()
        best = mgr.latest_valid()
    assert best == mgr.path(2)
    assert "sha256 mismatch in model.safetensors" in caplog.text and "no manifest.json" in caplog.text
    assert not (tmp_path / ".tmp-step-00000005-123").exists()
    assert mgr.latest_valid(max_step=1) == mgr.path(1)


def test_interrupted_replace_is_restored(tmp_path):
    mgr = CheckpointManager(tmp_path)
    p = _save(mgr, 7)
    p.rename(tmp_path / ".old-step-00000007")  # crash between moving the old one away and the rename
    mgr.cleanup_stale()
    assert mgr.validate(mgr.path(7)) is None


def test_prune_keeps_last_k_and_protected(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=2)
    for s in (0, 4, 8, 12, 16):
        _save(mgr, s)
    mgr.prune(protect={4})
    assert mgr.steps() == [4, 12, 16]
    mgr.delete_after(4)
    assert mgr.steps() == [4]


def test_save_model_dir_uses_save_pretrained_and_replaces(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1)
    m = LlamaForCausalLM(cfg)
    save_model_dir(m, tmp_path / "final")
    save_model_dir(m, tmp_path / "final")  # replacing an existing one
    assert (tmp_path / "final" / "config.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["final"]
    again = LlamaForCausalLM.from_pretrained(tmp_path / "final")
    assert torch.equal(again.lm_head.weight, m.lm_head.weight)


def test_fingerprint_change_is_refused(tmp_path):
    run_toy(tmp_path, make_cfg(max_steps=2))
    model, train, val = build()
    t = ProductionTrainer(model, train, val, collate, make_cfg(max_steps=2), tmp_path, seed=7,
                          fingerprint={"model": "toy-v2", "data": "toy-48"})
    with pytest.raises(ResumeError, match=r"model: checkpoint 'toy-v1', now 'toy-v2'"):
        t.train()
    t2 = ProductionTrainer(model, ToyDataset(40), val, collate, make_cfg(max_steps=2), tmp_path, seed=7,
                           fingerprint={"model": "toy-v1", "data": "toy-48"})
    with pytest.raises(ResumeError, match=r"train_samples: checkpoint '48', now '40'"):
        t2.train()


def test_finished_run_resumes_to_the_same_result(tmp_path):
    first = run_toy(tmp_path, make_cfg(max_steps=3, save_steps=2))
    again = run_toy(tmp_path, make_cfg(max_steps=3, save_steps=2))
    assert again.resumed_from_step == 3 and again.steps == 3
    assert again.first_loss == first.first_loss and again.best_val_loss == first.best_val_loss


def test_remove_renames_first_and_cleanup_finishes_an_interrupted_delete(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=1)
    for s in (0, 4):
        _save(mgr, s)
    half = tmp_path / ".del-step-00000000"  # as a crash mid-prune leaves it: renamed, partly deleted
    mgr.path(0).rename(half)
    (half / "model.safetensors").unlink()
    assert mgr.steps() == [4] and mgr.latest_valid() == mgr.path(4)  # never mistaken for a checkpoint
    mgr.cleanup_stale()
    assert not half.exists()
    _save(mgr, 8)
    mgr.prune()
    assert mgr.steps() == [8] and sorted(p.name for p in tmp_path.iterdir()) == ["step-00000008"]


def test_checkpoint_files_are_streamed_and_unchanged_in_content(tmp_path, monkeypatch):
    """Same bytes as the in-RAM serialisers produced, but written without them; manifest hashes the files."""
    import hashlib

    import safetensors.torch

    weights = {"b": torch.arange(6, dtype=torch.float32).view(2, 3), "a": torch.ones(4, dtype=torch.bfloat16)}
    optim = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(5)}},
             "param_groups": [{"lr": 0.1, "params": [0]}]}
    buf = io.BytesIO()
    torch.save(optim, buf)
    expected = {"model.safetensors": safetensors.torch.save(weights), "optimizer.pt": buf.getvalue()}

    def refuse(*a, **k):
        raise AssertionError("a checkpoint was serialised in memory")

    monkeypatch.setattr(safetensors.torch, "save", refuse)
    p = CheckpointManager(tmp_path).save(2, weights, {"optimizer.pt": optim}, {"trainer_state.json": {"step": 2}})
    manifest = json.loads((p / "manifest.json").read_text())
    assert list(manifest["files"]) == ["model.safetensors", "optimizer.pt", "trainer_state.json"]
    for name, data in expected.items():
        assert (p / name).read_bytes() == data, name
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((p / name).read_bytes()).hexdigest() == digest
    ck = CheckpointManager(tmp_path).load(p)
    assert all(torch.equal(ck.weights[k], v) for k, v in weights.items())
    assert torch.equal(ck.torch_files["optimizer.pt"]["state"][0]["exp_avg"], optim["state"][0]["exp_avg"])


def test_writing_200_mb_of_tensors_serialises_nothing_in_memory(tmp_path):
    """While a checkpoint with 200 MB of weights and 40 MB of optimizer state is written, Python holds
    less than one of its tensors (20 MB): the file is streamed, never built in memory first (the
    in-RAM serialisers held the whole file: 212 MB traced).  tracemalloc counts Python's own
    allocations, the same on any machine and under any load, so this relation cannot flake.  The peak
    RSS a write adds (2.4 MB streamed, 400 MB in RAM) is bench/bench_checkpoint.py's row."""
    import tracemalloc

    weights = {f"w{i}": torch.full((5_000_000,), float(i)) for i in range(10)}
    optim = {"state": {0: {"exp_avg": torch.full((10_000_000,), 2.0), "step": torch.tensor(1.0)}},
             "param_groups": [{"params": [0]}]}
    smallest = min(t.numel() * t.element_size() for t in weights.values())
    tracemalloc.start()
    try:
        p = CheckpointManager(tmp_path).save(1, weights, {"optimizer.pt": optim}, {"trainer_state.json": {}})
        traced = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    written = sum(f.stat().st_size for f in p.iterdir())
    assert written > 240_000_000
    assert traced < smallest, (traced, smallest)
