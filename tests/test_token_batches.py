"""Token-budget micro-batches (``train.max_tokens_per_batch``): grouping, a run, an exact resume, the refusals."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from openmind_core.data.sampler import ResumableSampler
from openmind_core.data.token_batches import TokenBudgetBatches, budget_batches
from openmind_core.training.metrics import read_metrics
from packing_helpers import run_packed
from schemas.config import TrainConfig
from trainer_helpers import assert_same_state, make_cfg

HELPER = Path(__file__).with_name("trainer_helpers.py")
BUDGET = 300


def test_budget_batches_are_consecutive_runs_within_the_budget():
    lengths = [10, 40, 20, 90, 5, 5, 5, 5, 200, 30]
    order = [3, 0, 1, 2, 4, 5, 6, 7, 8, 9]
    got = list(budget_batches(order, lengths, 100))
    assert [i for b in got for i in b] == order  # the order, cut into runs: consumed samples are always a prefix
    # 90 alone (2 x 90 > 100); 10, 40 (3 x 40 > 100 with 20); 20, 5, 5, 5, 5 (5 x 20); 200 alone (over the budget); 30
    assert got == [[3], [0, 1], [2, 4, 5, 6, 7], [8], [9]]
    assert all(len(b) * max(lengths[i] for i in b) <= 100 or len(b) == 1 for b in got)
    with pytest.raises(ValueError, match="must be a positive number of tokens"):
        list(budget_batches(order, lengths, 0))


def test_a_budget_batch_sampler_resumes_at_a_boundary_as_the_unbroken_epoch():
    lengths = [(7 * i) % 50 + 5 for i in range(40)]
    s = ResumableSampler([f"x{i}" for i in range(40)], seed=3)
    whole = list(TokenBudgetBatches(s, lengths, 120))
    assert len(whole) == TokenBudgetBatches(s, lengths, 120).epoch_batches(0) and len(set(map(len, whole))) > 1
    consumed = sum(len(b) for b in whole[:4])
    s.set_epoch(0, start=consumed)  # what a resume after 4 micro-batches does
    assert list(TokenBudgetBatches(s, lengths, 120)) == whole[4:]
    with pytest.raises(ValueError, match="works in one process"):
        TokenBudgetBatches(ResumableSampler(["a", "b"], rank=0, world_size=2), [1, 1], 10)


def test_the_config_refuses_a_budget_with_packing_or_several_processes():
    with pytest.raises(ValueError, match="set one of the two"):
        TrainConfig(max_tokens_per_batch=100, packing=True)
    with pytest.raises(ValueError, match="use train.packing instead"):
        TrainConfig(max_tokens_per_batch=100, nproc=2)


@pytest.fixture(scope="module")
def budget_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("budget")
    return d, run_packed(d, make_cfg(max_tokens_per_batch=BUDGET, grad_accum=1, epochs=1), packed=False)


def test_a_run_with_a_token_budget_takes_variable_micro_batches_within_it(budget_run):
    d, res = budget_run
    steps = [r for r in read_metrics(d / "metrics.jsonl") if "event" not in r]
    assert res.samples_seen == 32 and res.steps == len(steps) > 32 // 8  # every sample once, more steps than 8 a batch
    assert all(r["slots"] <= BUDGET for r in steps)  # no sample here is longer than the budget
    assert 1 - res.tokens / res.slots == pytest.approx(res.pad_fraction)


@pytest.mark.slow
def test_a_token_budget_run_resumes_bit_exact_after_kill_9(tmp_path, budget_run):
    ref_dir, ref = budget_run
    env = {**os.environ, "OPENMIND_TEST_KILL_AT": "step:5", "OPENMIND_TEST_KILL_MARKERS": str(tmp_path / "_k"),
           "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(HELPER.parent), str(HELPER.parent.parent)])}
    args = [sys.executable, str(HELPER), "--run-dir", str(tmp_path), "--model", "padded"]
    for kv in (f"max_tokens_per_batch={BUDGET}", "grad_accum=1", "epochs=1"):
        args += ["--set", kv]
    codes = [subprocess.run(args, env=env, capture_output=True, text=True, timeout=180).returncode for _ in range(2)]
    assert codes == [-9, 0], codes
    assert_same_state(ref_dir, tmp_path)
    steps = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "event" not in r]
    assert [r["loss"] for r in steps] == [r["loss"] for r in read_metrics(ref_dir / "metrics.jsonl") if "event" not in r]
