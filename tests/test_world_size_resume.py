"""Resuming with another number of processes: checkpoints hold full state dicts, so 2 -> 1 and 1 -> 2 work.

The sampler maps the job's global position in the epoch onto the new ranks (``offset``): no
sample of the interrupted epoch is seen twice or skipped (beyond the usual end-of-epoch padding to a
multiple of the world size).  2 -> 1 (DDP, SIGKILL after step 6, resumed from step 4 in one process
with grad_accum 2: the same global batch of 8) follows the unbroken trajectory.  1 -> 2 (FSDP, the
position 9 is odd: not a whole number of samples per rank) finishes with finite losses.  Both log
a ``world_size_changed`` event.  Real changes (model, data) are still refused.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path

import pytest
import torch

from openmind_core.data.sampler import ResumableSampler
from openmind_core.training import ResumeError, run_torchrun
from openmind_core.training.fingerprint import WorldSizeChange, check_fingerprint
from openmind_core.training.metrics import read_metrics
from trainer_helpers import make_cfg, run_toy

pytestmark = pytest.mark.slow

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
IDS = [f"s{i:03d}" for i in range(48)]


def _torchrun(run_dir: Path, extra: list[str], env: dict[str, str] | None = None) -> tuple[int, list[str]]:
    lines: list[str] = []
    pp = os.pathsep.join([str(TESTS), str(ROOT), os.environ.get("PYTHONPATH", "")])
    rc = run_torchrun("trainer_helpers", ["--run-dir", str(run_dir), "--dropout", "0", *extra], nproc=2,
                      on_line=lines.append, timeout_s=240,
                      env={"PYTHONPATH": pp, "OMP_NUM_THREADS": "1", **(env or {})})
    return rc, lines


def _ids(run_dir: Path, step: int, steps: range) -> list[str]:
    """Sample ids of ``steps`` as every rank's file of checkpoint ``step`` recorded them."""
    ck = Path(run_dir) / "checkpoints" / f"step-{step:08d}"
    out: list[str] = []
    for f in sorted(ck.glob("rank-*.pt")):
        log = torch.load(f, weights_only=True)["step_ids"]
        out += [sid for s in steps for sid in log.get(str(s), [])]
    return out


def _events(run_dir: Path, name: str) -> list[dict]:
    return [r for r in read_metrics(Path(run_dir) / "metrics.jsonl") if r.get("event") == name]


def _losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(Path(run_dir) / "metrics.jsonl") if "event" not in r]


@pytest.mark.parametrize("old_world,per_rank,new_world", [(2, 12, 1), (1, 9, 2), (3, 5, 2), (2, 7, 3), (4, 6, 4)])
@pytest.mark.parametrize("n", [48, 47])
def test_global_position_reshards_the_rest_of_the_epoch(old_world, per_rank, new_world, n):
    ids = IDS[:n]
    old = [ResumableSampler(ids, seed=7, rank=r, world_size=old_world) for r in range(old_world)]
    for s in old:
        s.add_skip(["s005", "s017"], epoch=0, start=0)
        s.set_epoch(0)
    seen = [i for s in old for i in s.epoch_order()[:per_rank]]
    g = old[0].global_position(start=per_rank, world_size=old_world)
    assert g == old_world * per_rank
    new = [ResumableSampler(ids, seed=7, rank=r, world_size=new_world) for r in range(new_world)]
    rest = []
    for s in new:
        s.skip = dict(old[0].skip)
        s.set_epoch(0, start=0, offset=g)
        rest += list(s)
    order = old[0].global_order(0)
    assert Counter(seen) + Counter(set(rest)) == Counter(order)  # every sample once: nothing twice, nothing lost
    assert len(rest) - len(set(rest)) == (-(len(order) - g)) % new_world  # only the end-of-epoch padding repeats
    assert old[0].global_position(start=99, world_size=old_world) == len(order)  # capped: the epoch's padding
    again = ResumableSampler(ids, seed=7, rank=1 % new_world, world_size=new_world)
    again.load_state_dict(new[1 % new_world].state_dict())  # the offset survives a checkpoint
    assert list(again) == list(new[1 % new_world])


def test_fingerprint_allows_only_a_world_size_change():
    base = {"trainable_params": "abc", "train_samples": "48", "seed": "7", "model": "toy-v1", "data": "toy-48"}
    legacy = {**base, "batch": "4x1x2"}  # before the world size had a key of its own
    assert check_fingerprint(legacy, {**base, "batch": "4x1", "world_size": "2"}, Path("ck")) is None
    change = check_fingerprint(legacy, {**base, "batch": "4x2", "world_size": "1"}, Path("ck"))
    assert change == WorldSizeChange(2, 1, "4x1", "4x2")
    assert change.global_batch(saved=True) == change.global_batch() == 8
    with pytest.raises(ResumeError, match="batch: checkpoint '4x1', now '4x2'"):  # same world, other batch
        check_fingerprint(legacy, {**base, "batch": "4x2", "world_size": "2"}, Path("ck"))
    with pytest.raises(ResumeError, match="data: checkpoint 'toy-48', now 'toy-40'"):
        check_fingerprint(legacy, {**base, "data": "toy-40", "batch": "4x1", "world_size": "1"}, Path("ck"))
    with pytest.raises(ResumeError, match="trainable_params"):
        check_fingerprint(legacy, {**base, "trainable_params": "def", "batch": "4x1", "world_size": "1"}, Path("ck"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("ref_4x2")
    run_toy(d, make_cfg(micro_batch_size=4, grad_accum=2), dropout=0.0)  # global batch 8, one process
    return d


def test_two_ranks_to_one_resumes_the_same_epoch_and_trajectory(tmp_path, reference, caplog):
    cfg = ["--set", "micro_batch_size=4", "--set", "grad_accum=1", "--set", "keep_last=10"]
    env = {"OPENMIND_TEST_KILL_AT": "step:6", "OPENMIND_TEST_KILL_MARKERS": str(tmp_path / "_kills")}
    rc, lines = _torchrun(tmp_path, cfg, env)
    assert rc != 0 and (tmp_path / "_kills" / "step-6").exists(), "\n".join(lines[-30:])
    with caplog.at_level("WARNING"):  # same global batch: 4 x 2 accumulation x 1 process
        res = run_toy(tmp_path, make_cfg(micro_batch_size=4, grad_accum=2, keep_last=10), dropout=0.0)
    assert res.resumed_from_step == 4 and res.steps == 12 and math.isfinite(res.last_loss)
    msg = [r.getMessage() for r in caplog.records if "written by 2 processes, with 1" in r.getMessage()]
    assert len(msg) == 1 and "data order differs" in msg[0] and "global batch stays 8" in msg[0], msg
    (ev,) = _events(tmp_path, "world_size_changed")
    assert (ev["step"], ev["saved_world_size"], ev["world_size"], ev["epoch_position"]) == (4, 2, 1, 32)
    assert ev["global_batch_before"] == ev["global_batch"] == 8
    # epoch 0 = steps 1-6: 4 steps on 2 ranks, then 2 in one process; every sample exactly once
    before, after = _ids(tmp_path, 4, range(1, 5)), _ids(tmp_path, 8, range(5, 7))
    assert len(before) == 32 and len(after) == 16
    assert sorted(before + after) == IDS
    assert sorted(_ids(tmp_path, 8, range(1, 5))) == sorted(before)  # the old ranks' ids kept for rollbacks
    # same samples per optimizer step as the unbroken run: the trajectory goes on unchanged
    assert _losses(tmp_path) == pytest.approx(_losses(reference), rel=1e-5, abs=1e-6)


def test_one_rank_to_two_under_fsdp(tmp_path):
    res = run_toy(tmp_path, make_cfg(micro_batch_size=3, grad_accum=1, max_steps=3, keep_last=10), dropout=0.0,
                  model="vlm")
    assert res.steps == 3  # 9 samples of epoch 0: not a whole number per rank on 2 ranks
    rc, lines = _torchrun(tmp_path, ["--model", "vlm", "--set", 'strategy="fsdp"', "--set", "micro_batch_size=4",
                                     "--set", "grad_accum=1", "--set", "keep_last=10", "--set", "epochs=1"])
    assert rc == 0, "\n".join(lines[-40:])
    assert any("written by 1 processes, with 2" in ln and "global batch changes from 3 to 8" in ln for ln in lines)
    (ev,) = _events(tmp_path, "world_size_changed")
    assert (ev["step"], ev["saved_world_size"], ev["world_size"], ev["epoch_position"]) == (3, 1, 2, 9)
    losses = _losses(tmp_path)
    assert len(losses) == 3 + 5 and all(math.isfinite(x) for x in losses)  # 39 left: 20 per rank
    before, after = _ids(tmp_path, 3, range(1, 4)), _ids(tmp_path, 8, range(4, 9))
    assert len(before) == 9 and len(after) == 40
    assert not set(before) & set(after) and set(before) | set(after) == set(IDS)
    assert len(after) - len(set(after)) == 1  # 39 over 2 ranks: one sample pads the last batch
    assert _events(tmp_path, "resume")[0]["step"] == 3
