"""Resume with new settings: new LRs, epochs, warm-up and save cadence take effect,
the LR schedule is rebuilt without a jump, each change is an event; refused keys fail early."""

from __future__ import annotations

import json

import pytest
import torch

from openmind_core.training import ResumeError, TrainingError
from openmind_core.training.metrics import read_metrics
from openmind_core.training.optim import Schedule
from trainer_helpers import make_cfg, run_toy


class Stop(Exception):
    pass


def stop_at(step: int):
    def progress(info):
        if info.get("step") == step and not info.get("done"):
            raise Stop  # an interruption after step `step` (its checkpoint, if any, is not written yet)
    return progress


def test_schedule_is_transformers_cosine_and_a_rebuild_never_jumps_up():
    from transformers import get_cosine_schedule_with_warmup

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    hf = get_cosine_schedule_with_warmup(opt, num_warmup_steps=3, num_training_steps=20).lr_lambdas[0]
    plain = Schedule(3, 20, ratio=0.15)
    assert all(plain(s) == hf(s) for s in range(21))  # bit for bit
    assert plain.rebuilt(8, 0.15, 20) is plain  # unchanged settings: the same schedule
    longer = plain.rebuilt(8, 0.15, 40)  # more epochs at step 8
    vals = [longer(s) for s in range(8, 41)]
    assert vals[0] == plain(8) and vals[-1] == 0.0 and all(b <= a for a, b in zip(vals, vals[1:]))
    warm = Schedule(2, 20, ratio=0.1).rebuilt(1, 0.3, 20)  # a longer warm-up while still warming up
    assert warm(1) == Schedule(2, 20)(1) and warm(6) == 1.0 and warm(3) < warm(5) < 1.0
    again = plain.rebuilt(20, 0.1, 40)  # a finished run (LR 0) given more epochs: warms up again from 0
    assert again(20) == 0.0 and again(22) == 1.0 and again(40) == 0.0 and 0 < again(30) < 1
    assert Schedule.from_json(json.loads(json.dumps(longer.to_json()))).to_json() == longer.to_json()


def test_resume_with_new_lr_epochs_warmup_and_save_steps(tmp_path):
    cfg_a = make_cfg(lr_projector=1e-2)
    with pytest.raises(Stop):
        run_toy(tmp_path, cfg_a, model="vlm", progress=stop_at(6))  # checkpoints at 0 and 4
    cfg_b = make_cfg(lr=1e-2, lr_projector=5e-3, epochs=3, warmup_ratio=0.2, save_steps=3)
    res = run_toy(tmp_path, cfg_b, model="vlm")
    assert res.resumed_from_step == 4 and res.steps == 18 and res.epochs_completed == 3
    changed = {c["key"]: (c["old"], c["new"], c["step"]) for c in res.settings_changes}
    assert changed == {"train.lr": (3e-2, 1e-2, 4), "train.lr_projector": (1e-2, 5e-3, 4),
                       "train.epochs": (2, 3, 4), "train.warmup_ratio": (0.1, 0.2, 4), "train.save_steps": (4, 3, 4)}
    recs = read_metrics(res.metrics_path)
    events = [r for r in recs if r.get("event") == "settings_changed"]
    assert sorted(e["key"] for e in events) == sorted(changed) and all(e["step"] == 4 for e in events)
    # the schedule: rebuilt at step 4 from the old one's multiplier, over 18 steps with 3 warm-up steps
    sched = Schedule(1, 12, ratio=0.1).rebuilt(4, 0.2, 18)
    lrs = {r["step"]: r["lr"] for r in recs if "event" not in r}  # the first param group's: the projector's
    assert lrs[4] == pytest.approx(1e-2 * Schedule(1, 12)(4))  # before the resume: the old settings
    for s in range(5, 19):
        assert lrs[s] == pytest.approx(5e-3 * sched(s)), s  # after: the new base LR on the rebuilt schedule
    assert all(lrs[s + 1] <= lrs[s] for s in range(5, 18))  # no cosine jump back up
    ck = [r["step"] for r in recs if r.get("event") == "checkpoint"]
    assert {6, 9, 12, 15, 18} <= set(ck)  # save_steps=3 took effect
    opt = torch.load(res.checkpoints[-1] + "/optimizer.pt", weights_only=True)
    by_name = {g["name"]: g["initial_lr"] for g in opt["param_groups"]}
    assert by_name["projector"] == 5e-3 and by_name["language_model"] == 1e-2  # per-module LRs too
    from openmind_core.training.trainer import summary_line

    assert "train.lr 0.03 -> 0.01 at step 4" in summary_line(res) and res.state_restore_checked is True


def test_unchanged_settings_record_no_change(tmp_path):
    with pytest.raises(Stop):
        run_toy(tmp_path, make_cfg(), progress=stop_at(6))
    res = run_toy(tmp_path, make_cfg())
    assert res.resumed_from_step == 4 and res.settings_changes == [] and res.state_restore_checked is True
    assert not any(r.get("event") == "settings_changed" for r in read_metrics(res.metrics_path))


def test_a_blown_up_lr_on_resume_diverges_and_is_caught(tmp_path):
    """A real divergence: resume with the LR x 1000; the default patience (3 bad steps) confirms it,
    each rollback halves the LR (default lr_factor), and the cap stops the run with a clear error."""
    spike = {"window": 4, "min_history": 4, "patience": 3, "lr_factor": 0.5, "max_rollbacks": 2}
    run_toy(tmp_path, make_cfg(max_steps=6, spike=spike))
    with pytest.raises(TrainingError, match="max_rollbacks=2 is used up"):
        run_toy(tmp_path, make_cfg(max_steps=12, lr=30.0, spike=spike))
    recs = read_metrics(tmp_path / "metrics.jsonl")
    rb = [r for r in recs if r.get("event") == "rollback"]
    assert len(rb) == 2 and all(r["restored_step"] == 6 and r["spike_step"] > 6 for r in rb)
    assert [r["lr_scale"] for r in rb] == [0.5, 0.25] and all("in a row" in r["reason"] or "largest" in r["reason"]
                                                             or "non-finite" in r["reason"] for r in rb)
    assert {r["key"] for r in recs if r.get("event") == "settings_changed"} == {"train.lr", "train.max_steps"}


def test_the_trainer_refuses_a_changed_batch_before_writing(tmp_path):
    run_toy(tmp_path, make_cfg(max_steps=4))
    files = {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}
    with pytest.raises(ResumeError, match=r"batch: checkpoint '4x2', now '8x2'.*train.micro_batch_size"):
        run_toy(tmp_path, make_cfg(max_steps=8, micro_batch_size=8))
    assert {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()} == files
