"""Spike detection, rollback with a skip ledger, the rollback cap, and the NaN-gradient skip."""

from __future__ import annotations

import json
import math

import pytest
import torch

from openmind_core.data.sampler import ResumableSampler
from openmind_core.training import SpikeDetector, TrainingError
from openmind_core.training.metrics import read_metrics
from trainer_helpers import ToyDataset, assert_same_state, collate, make_cfg, run_toy

SEED = 7  # run_toy's trainer seed
PER_STEP = 8  # micro 4 x accum 2


def ids_of_step(step: int, epoch: int = 0) -> list[str]:
    ds = ToyDataset(48)
    order = ResumableSampler(ds.sample_ids, seed=SEED).epoch_order(epoch)
    lo = (step - 1 - 6 * epoch) * PER_STEP
    return [ds.sample_ids[i] for i in order[lo: lo + PER_STEP]]


def feed(d: SpikeDetector, losses, start: int = 1):
    verdicts = []
    for s, x in enumerate(losses, start=start):
        v = d.check(s, x)
        verdicts.append(v)
        if not v.spike:
            d.commit(s, x, v)
    return verdicts


def test_detector_z_score_patience_onset_and_state():
    d = SpikeDetector(z_threshold=6.0, window=8, patience=2, min_history=4, rel_floor=0.05, factor=10.0)
    noisy = [1.0, 1.2, 0.8, 1.1, 0.9]  # std ~0.16
    assert not any(v.bad for v in feed(d, noisy))
    v = d.check(6, 1.6)  # ~3.8 deviations: batch noise, not bad (the old 2x-mean rule would pass it too)
    assert not v.bad and v.z is not None and 3 < v.z < 6
    d.commit(6, 1.6, v)
    v = d.check(7, 3.0)
    assert v.bad and not v.spike  # patience 2: one bad step is not a spike yet
    d.commit(7, 3.0, v)
    saved = d.state_dict()
    d2 = SpikeDetector(6.0, 8, 2, min_history=4)
    d2.load_state_dict(json.loads(json.dumps(saved)))  # survives a JSON round trip (checkpoint)
    v = d2.check(8, 3.2)
    assert v.spike and v.onset == 7 and "2 steps in a row" in v.why
    assert d2.history == d.history and 3.0 not in d2.history  # bad losses never enter the window


def test_detector_floor_instant_spikes_and_warmup():
    flat = SpikeDetector(window=8, patience=1, min_history=4, rel_floor=0.05)
    feed(flat, [1.0] * 6)  # std 0: the floor (0.05 x mean) is the deviation
    assert not flat.check(7, 1.25).bad and flat.check(7, 1.35).bad
    d = SpikeDetector(window=8, patience=3, min_history=4, factor=10.0)
    feed(d, [1.0, 1.1, 0.9, 1.0])
    v = d.check(5, 12.0)  # above 10 x the window's largest: a spike at once, patience or not
    assert v.spike and v.onset == 5 and "largest" in v.why
    v = d.check(5, float("nan"))
    assert v.spike and "non-finite" in v.why
    warm = SpikeDetector(window=8, patience=1, min_history=2, start_step=3)
    vs = feed(warm, [9.0, 5.0, 3.0, 1.0, 1.0, 50.0])  # the LR warm-up (steps 1-3) is neither judged nor recorded
    assert [v.spike for v in vs] == [False] * 5 + [True] and list(warm.history) == [1.0, 1.0]


# steps 240-330 of a real clean training (digit scans, micro-batch 8, 5 epochs, LR 3e-3): at step 307
# the loss jumps from 0.73 to 2.0 for 4 steps at 9-13 sigma and recovers by itself within 10 steps
SELF_RECOVERING_BUMP = [
    0.6814, 0.7323, 0.887, 0.7878, 0.822, 0.7576, 0.8578, 0.9021, 0.7109, 0.6404, 0.7172, 0.9211, 0.8414, 0.8237,
    0.7367, 0.9088, 0.5837, 0.7489, 0.6404, 0.7186, 0.7097, 0.8208, 0.8945, 0.714, 0.7617, 0.6567, 0.7963, 0.7868,
    0.6989, 0.642, 0.6036, 0.706, 0.5881, 0.7622, 0.5201, 0.6362, 0.7404, 0.8207, 0.6247, 0.6556, 0.803, 0.8047,
    0.8916, 0.6878, 0.8648, 0.6335, 1.5253, 0.7193, 0.6681, 0.6158, 0.849, 0.7703, 0.6279, 0.7304, 0.7675, 0.6232,
    0.7836, 0.6753, 0.5913, 0.7663, 0.6257, 0.8331, 0.6243, 0.7456, 0.5993, 0.6334, 0.7313, 2.0206, 1.83, 1.6019,
    1.8163, 1.288, 1.1363, 1.3862, 0.9936, 1.3618, 0.8181, 0.7191, 0.8329, 0.7282, 0.6573, 0.7836, 0.6315, 0.9198,
    0.7588, 0.7313, 0.8384, 0.7613, 0.6868, 0.7717, 0.7375]


def test_a_self_recovering_bump_on_clean_data_is_no_spike_but_a_divergence_is():
    from openmind_core.training.guard import replay
    from schemas.config import SpikeConfig

    assert replay(SELF_RECOVERING_BUMP, SpikeDetector.from_config(SpikeConfig())) == []
    assert replay(SELF_RECOVERING_BUMP, SpikeDetector.from_config(SpikeConfig(patience=3)))  # patience 3 rolled back
    old = [i for i in range(10, len(SELF_RECOVERING_BUMP))  # the guide's rule: 2x a 10-step mean
           if SELF_RECOVERING_BUMP[i] > 2 * sum(SELF_RECOVERING_BUMP[i - 10:i]) / 10]
    assert old
    diverged = SELF_RECOVERING_BUMP[:60] + [2.0 + 0.1 * i for i in range(12)]
    assert [(s, o) for s, o, _ in replay(diverged, SpikeDetector.from_config(SpikeConfig()))] == [(68, 61)]


def test_default_lowers_the_lr_after_a_rollback():
    from schemas.config import SpikeConfig

    assert SpikeConfig().lr_factor < 1 and SpikeConfig().patience > 1


def test_clean_run_has_no_false_spike(tmp_path):
    res = run_toy(tmp_path, make_cfg(spike={"window": 4, "min_history": 4, "patience": 1}))
    assert res.rollbacks == [] and res.skipped_steps == 0 and res.nan_or_inf_losses == 0
    assert not any(r.get("event") == "rollback" for r in read_metrics(res.metrics_path))


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory):
    d = tmp_path_factory.mktemp("poisoned")
    bad = ids_of_step(6)[:2]
    res = run_toy(d, make_cfg(), poison={sid: 100.0 for sid in bad})
    return d, res, bad


def test_poisoned_batch_is_rolled_back_and_skipped(poisoned):
    d, res, bad = poisoned
    assert len(res.rollbacks) == 1, res.rollbacks
    ev = res.rollbacks[0]
    assert (ev.step, ev.restored_step, ev.skipped_samples) == (6, 4, 16)  # steps 5 and 6 went to the ledger
    assert "spike" in ev.reason and ev.loss > 20
    state = json.loads((sorted((d / "checkpoints").glob("step-*"))[-1] / "trainer_state.json").read_text())
    ledger = {sid for sid, _ in state["sampler"]["skip"]}
    assert set(bad) <= ledger and ledger == set(ids_of_step(5)) | set(ids_of_step(6))
    # never trained on again: in epoch 1 the poisoned ids would spike again (a second rollback)
    assert res.steps == 8 and res.epochs_completed == 2  # 32 samples per epoch remain: 4 steps each
    recs = read_metrics(res.metrics_path)
    steps = [r["step"] for r in recs if "event" not in r]
    assert steps == sorted(set(steps)) and steps == list(range(1, res.steps + 1))
    rb = [r for r in recs if r.get("event") == "rollback"]
    assert rb and rb[0]["spike_step"] == 6 and rb[0]["restored_step"] == 4
    assert all(math.isfinite(r["loss"]) and r["loss"] < 20 for r in recs if "event" not in r)


def test_rollback_lowers_the_lr_and_shows_in_the_summary(tmp_path):
    from openmind_core.training.optim import Schedule
    from openmind_core.training.trainer import summary_line

    res = run_toy(tmp_path, make_cfg(spike={"lr_factor": 0.5}), poison={sid: 100.0 for sid in ids_of_step(6)[:2]})
    assert [(e.step, e.restored_step, e.lr_scale) for e in res.rollbacks] == [(6, 4, 0.5)]
    lrs = {r["step"]: r["lr"] for r in read_metrics(res.metrics_path) if "event" not in r}
    sched = Schedule(1, 12)
    assert lrs[4] == pytest.approx(3e-2 * sched(4)) and lrs[5] == pytest.approx(0.5 * 3e-2 * sched(5))
    assert "1 rollbacks: step 6 -> 4 (16 samples skipped, LR x 0.5)" in summary_line(res)
    assert res.state_restore_checked is True


def test_rolled_back_run_equals_run_that_never_had_the_samples(poisoned, tmp_path):
    d, res, bad = poisoned
    state = json.loads((sorted((d / "checkpoints").glob("step-*"))[-1] / "trainer_state.json").read_text())
    ledger = [sid for sid, _ in state["sampler"]["skip"]]
    ref = run_toy(tmp_path, make_cfg(), skip=ledger)
    assert ref.rollbacks == [] and ref.steps == res.steps
    assert_same_state(d, tmp_path)


def test_rollback_cap_stops_cleanly(tmp_path):
    bad = ids_of_step(6)[:1]
    with pytest.raises(TrainingError, match=r"max_rollbacks=0 is used up"):
        run_toy(tmp_path, make_cfg(spike={"max_rollbacks": 0}), poison={bad[0]: 100.0})
    recs = read_metrics(tmp_path / "metrics.jsonl")
    assert recs[-1]["event"] == "rollback_refused" and recs[-1]["spike_step"] == 6
    from openmind_core.training import CheckpointManager

    assert CheckpointManager(tmp_path / "checkpoints").latest_valid() is not None


def test_nan_gradient_leaves_state_bitwise_unchanged(tmp_path):
    nan_ids = set(ids_of_step(6)[:1])
    res = run_toy(tmp_path, make_cfg(save_steps=1, max_steps=6), nan_ids=nan_ids)
    assert res.skipped_steps == 1 and res.rollbacks == [] and res.nan_or_inf_losses == 0
    ck = tmp_path / "checkpoints"
    import safetensors.torch

    w5 = safetensors.torch.load_file(str(ck / "step-00000005" / "model.safetensors"))
    w6 = safetensors.torch.load_file(str(ck / "step-00000006" / "model.safetensors"))
    o5 = torch.load(ck / "step-00000005" / "optimizer.pt", weights_only=True)
    o6 = torch.load(ck / "step-00000006" / "optimizer.pt", weights_only=True)
    assert all(torch.equal(w5[k], w6[k]) for k in w5)
    for i in o5["state"]:
        for k in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(o5["state"][i][k], o6["state"][i][k]), (i, k)
    assert float(o6["state"][0]["step"]) == 5.0  # Adam's step count did not advance
    step6 = [r for r in read_metrics(res.metrics_path) if r.get("step") == 6 and "event" not in r][0]
    assert step6["skipped"] is True and not math.isfinite(step6["grad_norm"])


def test_skipped_steps_in_a_row_roll_back(tmp_path):
    nan_ids = {ids_of_step(5)[0], ids_of_step(6)[0]}
    res = run_toy(tmp_path, make_cfg(spike={"max_skipped_in_row": 2}), nan_ids=nan_ids)
    assert len(res.rollbacks) == 1
    ev = res.rollbacks[0]
    assert ev.step == 6 and ev.restored_step == 4 and "skipped steps in a row" in ev.reason
    assert res.skipped_steps == 2  # the two skips happened; their samples are now in the ledger


def test_spike_across_an_epoch_boundary_rolls_back_and_never_sees_the_ids_again(tmp_path):
    """s035 lies in step 2 of epoch 0 (window not full yet: undetectable) and in step 7, the first
    step of epoch 1: the spike's window (steps 3-6) and its ledger (steps 5, 6 of epoch 0 and 7 of
    epoch 1) cross the boundary.  Roll back to step 4 (epoch 0); the rest of epoch 0 and all of
    epoch 1 must skip every ledger id; the result equals a run that had that ledger from the start."""
    poisoned = "s035"
    assert poisoned in ids_of_step(2) and poisoned in ids_of_step(7, epoch=1)
    batches: list[list[str]] = []

    def recording_collate(items):
        batches.append([it["sample_id"] for it in items])
        return collate(items)

    res = run_toy(tmp_path / "run", make_cfg(), poison={poisoned: 100.0}, collate_fn=recording_collate)
    assert len(res.rollbacks) == 1, res.rollbacks
    ev = res.rollbacks[0]
    assert (ev.step, ev.restored_step) == (7, 4) and "spike" in ev.reason
    newest = sorted((tmp_path / "run" / "checkpoints").glob("step-*"))[-1]
    state = json.loads((newest / "trainer_state.json").read_text())
    ledger = {sid: ep for sid, ep in state["sampler"]["skip"]}
    step7 = set(ids_of_step(7, epoch=1))
    assert set(ledger) == set(ids_of_step(5)) | set(ids_of_step(6)) | step7 and ev.skipped_samples == len(ledger)
    # ids still ahead in epoch 0's order are skipped from epoch 0, ids epoch 0 had already trained on from epoch 1
    assert all(ledger[sid] == 0 for sid in ids_of_step(5) + ids_of_step(6))
    assert {sid for sid in step7 if ledger[sid] == 1} == step7 - set(ids_of_step(5)) - set(ids_of_step(6))

    train = [b for b in batches if b[0].startswith("s")]  # the eval loader shares the collate function
    before, after = train[:14], train[14:]  # 7 steps x 2 micro-batches before the rollback
    assert {sid for b in before[12:] for sid in b} == step7
    after_ids = [sid for b in after for sid in b]
    assert not set(after_ids) & set(ledger), "a skipped id was trained on again"
    assert sorted(after_ids) == sorted(set(ToyDataset(48).sample_ids) - set(ledger))  # epoch 1: each once
    assert res.steps == 4 + math.ceil(len(after_ids) / PER_STEP) and res.epochs_completed == 2
    steps = [r["step"] for r in read_metrics(res.metrics_path) if "event" not in r]
    assert steps == list(range(1, res.steps + 1))

    ref = run_toy(tmp_path / "ref", make_cfg(), poison={poisoned: 100.0}, skip_from=ledger)
    assert ref.rollbacks == [] and ref.steps == res.steps
    assert_same_state(tmp_path / "run", tmp_path / "ref")
