"""SIGKILL the trainer at chosen points, resume, and compare with an unbroken run bit for bit.

The trainer runs in a subprocess (tests/trainer_helpers.py) with the test-only
OPENMIND_TEST_KILL_AT hook; OPENMIND_TEST_KILL_MARKERS makes each kill point fire once, so one
loop of "run until it exits 0" walks through every crash of a scenario.  The reference run is
in-process.  CPU, fp32, deterministic algorithms, dropout on (so RNG restore matters).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainer_helpers import assert_same_state, make_cfg, run_toy

HELPER = Path(__file__).with_name("trainer_helpers.py")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("reference")
    res = run_toy(d, make_cfg())
    return d, res


def _run_until_done(run_dir: Path, kills: str, max_runs: int = 10, extra: tuple[str, ...] = ()) -> list[int]:
    env = {**os.environ, "OPENMIND_TEST_KILL_AT": kills, "OPENMIND_TEST_KILL_MARKERS": str(run_dir / "_kills"),
           "OMP_NUM_THREADS": "1"}
    codes = []
    for i in range(max_runs):
        workers = 2 * (i % 2)  # alternate loader workers 0 and 2 between the crashed runs
        p = subprocess.run([sys.executable, str(HELPER), "--run-dir", str(run_dir), "--dump",
                            str(run_dir / "result.json"), "--set", f"num_workers={workers}", *extra], env=env,
                           capture_output=True, text=True,
                           timeout=120)
        codes.append(p.returncode)
        if p.returncode == 0:
            return codes
        assert p.returncode == -9, f"trainer failed (rc {p.returncode}):\n{p.stderr[-3000:]}"
    raise AssertionError(f"never finished: {codes}")


def _step_lines(run_dir: Path) -> list[int]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in lines if "event" not in r]


def test_killed_and_resumed_equals_unbroken(tmp_path, reference):
    """Twice in epoch 0 (mid-accumulation, during a checkpoint write), mid-step (after the optimizer
    update, before the bookkeeping), at the epoch boundary, once more in epoch 1; workers 0 and 2."""
    kills = "micro:3,ckpt-write:4,step:5,epoch-end:0,micro:11"
    ref_dir, ref = reference
    codes = _run_until_done(tmp_path, kills)
    assert codes.count(-9) == len(kills.split(",")), codes
    assert_same_state(ref_dir, tmp_path)
    res = json.loads((tmp_path / "result.json").read_text())
    # the last run resumed from the newest checkpoint before the kill in step 11: step 8 (save_steps 4)
    assert res["resumed_from_step"] == 8
    resumes = [r["step"] for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())
               if r.get("event") == "resume"]
    assert resumes[-1] == 8 and len(resumes) == len(kills.split(",")), resumes
    assert res["steps"] == ref.steps == 12
    assert res["best_val_loss"] == ref.best_val_loss
    assert res["final_val_loss"] == ref.final_val_loss
    # metrics.jsonl: every step exactly once, in order, same losses as the reference
    assert _step_lines(tmp_path) == list(range(1, 13))
    ref_losses = [json.loads(x)["loss"] for x in (ref_dir / "metrics.jsonl").read_text().splitlines() if '"event"' not in x]
    got_losses = [json.loads(x)["loss"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"event"' not in x]
    assert got_losses == ref_losses
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_killed_while_pruning_old_checkpoints_equals_unbroken(tmp_path, reference):
    """keep_last=1: every save prunes; SIGKILL in the middle of deleting step 0 (during step 4's
    save, after the new checkpoint is committed), resume: nothing half-deleted survives, same end state."""
    ref_dir, ref = reference
    codes = _run_until_done(tmp_path, "prune:0", extra=("--set", "keep_last=1", "--set", "num_workers=0"))
    assert codes == [-9, 0], codes
    assert (tmp_path / "_kills" / "prune-0").exists()
    assert_same_state(ref_dir, tmp_path)
    res = json.loads((tmp_path / "result.json").read_text())
    assert res["steps"] == 12 and res["resumed_from_step"] == 4
    assert _step_lines(tmp_path) == list(range(1, 13))
    ckpts = tmp_path / "checkpoints"
    assert not [p.name for p in ckpts.iterdir() if p.name.startswith(".")]  # no .del-/.tmp- leftovers
    best = res["best_val_loss"] == ref.best_val_loss
    assert best and len(list(ckpts.glob("step-*"))) <= 2  # the newest (+ the best)
