"""DDP and FSDP2 under torchrun (gloo, 2 CPU ranks) against one process with the same global batch.

DDP: loss trajectory, resume after a SIGKILL.  FSDP2 ``fully_shard`` of a HF LM against an
unsharded replica (+ ``save_pretrained`` from a gathered state dict).  The trainer with
``strategy=fsdp`` (ToyVLM: LM layers, LM and root sharded; accumulation over 2 micro-batches; a
poisoned sample makes step 6 spike, so every FSDP run also rolls back to step 4 and skips): loss
trajectory against one process, checkpoint readable by one process, SIGKILL after the rollback +
resume bit-identical to the unbroken FSDP run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import safetensors.torch
import torch

from openmind_core.training import build_optimizer, run_torchrun
from openmind_core.training.metrics import read_metrics
from trainer_helpers import ToyVLM, assert_same_state, final_state, make_cfg, run_toy

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def _torchrun(run_dir: Path, extra: list[str], env: dict[str, str] | None = None) -> tuple[int, list[str]]:
    lines: list[str] = []
    pp = os.pathsep.join([str(TESTS), str(ROOT), os.environ.get("PYTHONPATH", "")])
    rc = run_torchrun("trainer_helpers", ["--run-dir", str(run_dir), "--dropout", "0", "--set",
                                          "micro_batch_size=4", "--set", "grad_accum=1", *extra],
                      nproc=2, on_line=lines.append, timeout_s=240,
                      env={"PYTHONPATH": pp, "OMP_NUM_THREADS": "1", **(env or {})})
    return rc, lines


# pyproject.toml: from torch 2.9 on, DDP and FSDP runs match one process within 1e-6 (2.8: off by 1e-5).
# Losses: relative 1e-6 each.  Weights and Adam moments: the largest difference within 1e-6 of the
# tensor's largest value (measured here, the same in every run: losses 2.3e-7, weights 3.2e-7, Adam
# moments 7.4e-7 at most; gloo on CPU sums in a fixed order, so these do not vary between runs).
TOL = 1e-6


def assert_within_tol(got: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    scale, err = ref.abs().max().item(), (got - ref).abs().max().item()
    assert err <= TOL * scale, f"{what}: max |diff| {err:.3g} > {TOL:g} x max |ref| {scale:.3g} ({err / scale:.3g})"


def _losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "event" not in r]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    d = tmp_path_factory.mktemp("single")
    run_toy(d, make_cfg(micro_batch_size=4, grad_accum=2), dropout=0.0)  # global batch 8 in one process
    return d


def test_ddp_two_ranks_matches_one_process_and_fsdp2(tmp_path, single):
    rc, lines = _torchrun(tmp_path, ["--fsdp-check"])
    assert rc == 0, "\n".join(lines[-40:])
    ref, got = _losses(single), _losses(tmp_path)
    assert len(got) == len(ref) == 12
    assert got == pytest.approx(ref, rel=TOL, abs=0)
    ck = sorted((tmp_path / "checkpoints").glob("step-*"))[-1]
    assert (ck / "rank-0.pt").exists() and (ck / "rank-1.pt").exists()  # per-rank RNG + sample log
    assert sum(ln.count("FSDP_OK") for ln in lines) == 2, "\n".join(lines[-20:])  # ranks may share a line
    assert (tmp_path / "fsdp_lm" / "config.json").exists()


def test_ddp_resume_after_sigkill(tmp_path, single):
    env = {"OPENMIND_TEST_KILL_AT": "step:6", "OPENMIND_TEST_KILL_MARKERS": str(tmp_path / "_kills")}
    rc, lines = _torchrun(tmp_path, [], env)
    assert rc != 0 and (tmp_path / "_kills" / "step-6").exists()
    rc, lines = _torchrun(tmp_path, [], env)
    assert rc == 0, "\n".join(lines[-40:])
    got = _losses(tmp_path)
    assert got == pytest.approx(_losses(single), rel=TOL, abs=0)  # same trajectory, no duplicate lines

    events = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r.get("event") == "resume"]
    assert events and events[0]["step"] == 4


# --------------------------------------------------------------------------- FSDP2 in the trainer

POISON = "s023"  # in step 6 of epoch 0 (seed 7): spike at step 6, roll back to step 4
FSDP_ARGS = ["--model", "vlm", "--set", 'strategy="fsdp"', "--set", "micro_batch_size=2", "--set", "grad_accum=2",
             "--poison", POISON]


def _rollbacks(run_dir: Path) -> list[tuple[int, int]]:
    return [(r["spike_step"], r["restored_step"]) for r in read_metrics(run_dir / "metrics.jsonl")
            if r.get("event") == "rollback"]


@pytest.fixture(scope="module")
def single_vlm(tmp_path_factory):
    d = tmp_path_factory.mktemp("single_vlm")
    res = run_toy(d, make_cfg(micro_batch_size=4, grad_accum=2), dropout=0.0, model="vlm",  # global batch 8
                  poison={POISON: 100.0})
    assert [(r.step, r.restored_step) for r in res.rollbacks] == [(6, 4)]
    return d


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("fsdp")
    rc, lines = _torchrun(d, FSDP_ARGS)
    assert rc == 0, "\n".join(lines[-40:])
    return d


def test_fsdp_matches_one_process_and_its_checkpoint_loads_in_one_process(fsdp_run, single_vlm):
    ref, got = _losses(single_vlm), _losses(fsdp_run)
    assert _rollbacks(fsdp_run) == [(6, 4)]  # the spike was seen on all ranks alike and rolled back
    assert len(got) == len(ref) == 8  # 16 samples skipped: 4 steps per epoch after the rollback
    assert got == pytest.approx(ref, rel=TOL, abs=0)
    # the newest FSDP checkpoint, read by a single process: same names, same optimizer format
    ws, os_ = final_state(single_vlm)
    wf, of = final_state(fsdp_run)
    model = ToyVLM(0.0)
    missing, unexpected = model.load_state_dict(wf, strict=False)
    assert unexpected == [] and missing == ["vision_encoder.weight", "vision_encoder.bias"]  # frozen: not stored
    opt = build_optimizer(model, make_cfg())
    opt.load_state_dict(of)
    assert [g["name"] for g in of["param_groups"]] == [g["name"] for g in os_["param_groups"]]
    for k in ws:
        assert_within_tol(wf[k], ws[k], k)
    for i, st in os_["state"].items():
        assert torch.equal(of["state"][i]["step"], st["step"])  # 8: DCP's zero-grad init step did not sneak in
        for k in ("exp_avg", "exp_avg_sq"):
            assert_within_tol(of["state"][i][k], st[k], f"state {i} {k}")
    # final/: the whole model (frozen tower included) from a gathered full state dict
    full = safetensors.torch.load_file(str(fsdp_run / "final" / "model.safetensors"))
    fresh = ToyVLM(0.0)
    fresh.load_state_dict(full, strict=True)
    assert torch.equal(full["language_model.head.weight"], wf["language_model.head.weight"])


def test_fsdp_resume_after_sigkill_is_bit_identical(tmp_path, fsdp_run):
    # step 7 comes after the rollback (6 -> 4): the resume must keep the ledger rewritten into step 4
    env = {"OPENMIND_TEST_KILL_AT": "step:7", "OPENMIND_TEST_KILL_MARKERS": str(tmp_path / "_kills")}
    rc, lines = _torchrun(tmp_path, FSDP_ARGS, env)
    assert rc != 0 and (tmp_path / "_kills" / "step-7").exists()
    rc, lines = _torchrun(tmp_path, FSDP_ARGS, env)
    assert rc == 0, "\n".join(lines[-40:])
    assert_same_state(fsdp_run, tmp_path)  # torch.equal on weights and Adam state
    assert _losses(tmp_path) == _losses(fsdp_run) and _rollbacks(tmp_path) == [(6, 4)]
    events = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r.get("event") == "resume"]
    assert events and events[0]["step"] == 4
