"""The Week-1 criteria: pass, fail or not measured, each with its evidence."""

from __future__ import annotations

from pathlib import Path

import pytest

from openmind_core.app.report import build_report, checklist_markdown, random_frozen_lm
from schemas import (Check, CuratedDataset, InferenceReport, Prediction, RawDataset, SmokeReport, TrainingResult,
                     load_config)

GIB = 1 << 30
ROOT = Path(__file__).resolve().parents[1]


def _train(**over):
    base = dict(run_dir="/run", checkpoints_dir="/run/checkpoints", best_dir="/run/best", final_dir="/run/final",
                metrics_path="/run/metrics.jsonl", steps=40, epochs_completed=1, samples_seen=10, first_loss=5.0,
                last_loss=1.0, first_val_loss=4.0, final_val_loss=2.0, val_losses=[4.0, 3.0, 2.0], reload_equal=True,
                state_restore_checked=True, checkpoints=["/run/checkpoints/step-00000040"], device="cpu")
    base.update(over)
    return TrainingResult(**base)


def _inference(acc=0.6, chance=0.2, n=50, empty=0, captions=0):
    preds = [Prediction(kind="vqa", prompt="q", prediction="" if i < empty else "red") for i in range(n)]
    return InferenceReport(model_dir="/run/final", vqa_accuracy=acc, vqa_chance=chance, vqa_chance_answer="red",
                           vqa_random=chance / 2, vqa_count=n, nonempty=n - empty, scored=n, predictions=preds,
                           caption_count=captions)


def _report(train=None, inf=None, cfg=None):
    cfg = cfg or load_config()
    raw = RawDataset(source="synthetic", fingerprint="f", root="/r", manifest="/r/m.json", caption_rows=8, vqa_rows=4)
    cur = CuratedDataset(version="v", schema_version=2, root="/c", shards=["/c/p.parquet"], rows_in=12, rows_kept=12,
                         rows_quarantined=0, splits={"train": 10, "validation": 2})
    smoke = SmokeReport(checks=[Check(name=n, passed=True, detail="ok") for n in
                                ("vision_encoder", "projector", "loader_batch", "forward_backward")],
                        passed=True, total_params=10, trainable_params=10, image_tokens=16, tokenizer_dir="/t")
    return build_report(cfg, "r", "/run", "/run/config.yaml", raw, cur, smoke, train or _train(), inf or _inference())


def _by_name(report):
    return {c.name: c for c in report.criteria}


def test_a_good_cpu_run_passes_with_memory_not_measured():
    report = _report()
    c = _by_name(report)
    assert len(report.criteria) == 7 and all(x.evidence for x in report.criteria)
    mem = c["Training fits in 40 GB"]
    assert mem.status == "not measured" and not mem.passed  # a CPU run never claims a GPU fact
    assert "not measured: training ran on cpu" in mem.evidence
    assert "configs/full.yaml at stage" in mem.evidence and "GiB" in mem.evidence  # the full-size estimate, as info
    assert {x.status for n, x in c.items() if n != mem.name} == {"pass"}
    assert report.passed and report.counts == {"pass": 6, "fail": 0, "not measured": 1} and report.advice is None
    assert "-50.0%" in c["Loss fell normally"].evidence  # 4.0 -> 2.0


def test_cuda_memory_is_measured_against_the_budget():
    ok = _by_name(_report(_train(device="cuda:0", peak_memory_bytes=12 * GIB)))["Training fits in 40 GB"]
    assert ok.status == "pass" and "measured peak 12.00 GiB" in ok.evidence
    over = _by_name(_report(_train(device="cuda:0", peak_memory_bytes=41 * GIB)))["Training fits in 40 GB"]
    assert over.status == "fail"


@pytest.mark.parametrize("over, status, words", [
    (dict(val_losses=[4.0, 3.9, 3.95]), "fail", "fell too little"),
    (dict(val_losses=[4.0, 2.0, 3.0]), "fail", "diverged"),
    (dict(nan_or_inf_losses=2), "fail", "non-finite"),
    (dict(val_losses=[], first_val_loss=None, final_val_loss=None), "not measured", "no validation loss"),
    (dict(val_losses=[3.0], first_val_loss=3.0, final_val_loss=3.0), "not measured", "one validation loss"),
])
def test_loss_fell_normally(over, status, words):
    c = _by_name(_report(_train(**over)))["Loss fell normally"]
    assert c.status == status and words in c.evidence, c.evidence


def test_a_random_init_does_not_pass_on_its_training_loss():
    """Training loss falling from step 1 is not enough: the validation loss must fall."""
    c = _by_name(_report(_train(first_loss=9.0, last_loss=1.0, val_losses=[3.0, 3.0])))["Loss fell normally"]
    assert c.status == "fail"


def test_inference_needs_text_and_accuracy_above_chance():
    c = _by_name(_report(inf=_inference(acc=0.16, chance=0.16)))["Inference generates text"]
    assert c.status == "fail" and "+0.0 points, needed +10.4 on 50 questions" in c.evidence
    c = _by_name(_report(inf=_inference(empty=10)))["Inference generates text"]
    assert c.status == "fail" and "40/50 non-empty answers (80%, needed 90%)" in c.evidence
    c = _by_name(_report(inf=_inference(n=6)))["Inference generates text"]
    assert c.status == "not measured" and "too few questions" in c.evidence
    c = _by_name(_report(inf=_inference(acc=0.9, chance=0.2)))["Inference generates text"]
    assert c.status == "pass" and "most common answer 'red' 20.0%" in c.evidence


def test_checkpoints_need_reload_and_state_restore():
    assert _by_name(_report(_train(reload_equal=False)))["Checkpoints save and load"].status == "fail"
    assert _by_name(_report(_train(state_restore_checked=False)))["Checkpoints save and load"].status == "fail"
    c = _by_name(_report(_train(state_restore_checked=None)))["Checkpoints save and load"]
    assert c.status == "not measured" and "not checked" in c.evidence
    assert _by_name(_report(_train(checkpoints=[])))["Checkpoints save and load"].status == "fail"


def test_too_little_training_says_so_and_suggests_what_to_change():
    """The Chinese 1-epoch run: chance accuracy, a flat loss: fail, with advice on epochs and lr."""
    report = _report(_train(val_losses=[4.0, 3.95]), _inference(acc=0.16, chance=0.16))
    assert not report.passed and report.counts["fail"] == 2
    assert "trained too little" in report.advice and "train.epochs=3" in report.advice and "train.lr=" in report.advice
    assert "trained too little" in checklist_markdown(report)
    # a NaN is not "too little training": no such advice
    nan = _report(_train(val_losses=[4.0, 3.95], nan_or_inf_losses=1), _inference(acc=0.16, chance=0.16))
    assert nan.advice is None


def test_checklist_reads_without_emoji_fonts():
    md = checklist_markdown(_report(_train(reload_equal=False)))
    assert "| **PASS** |" in md and "| **FAIL** |" in md and "| **NOT MEASURED** |" in md
    assert not any(ch in md for ch in "✅❌✓✗")
    assert "1 of 7 criteria FAILED (5 pass, 1 fail, 1 not measured)" in md


def test_old_style_full_recipe_estimate_uses_the_configured_stage():
    cfg = load_config(overrides=["model.stage=full"])
    mem = _by_name(_report(cfg=cfg))["Training fits in 40 GB"]
    assert mem.status == "not measured" and "at stage full" in mem.evidence


def test_a_random_frozen_lm_says_so_instead_of_train_longer():
    """The tiny default at stage align: its LM is random and frozen, so no answer comes; the evidence and
    the advice say that this is expected and what to change (a pretrained LM, or stage full)."""
    cfg = load_config(overrides=["model.stage=align"])
    report = _report(_train(val_losses=[4.0, 3.95]), _inference(acc=0.0, chance=0.16, empty=50), cfg=cfg)
    c = _by_name(report)
    assert not report.passed
    for name in ("Inference generates text", "Loss fell normally"):
        assert c[name].status == "fail"
        assert "expected: the language model is random" in c[name].evidence and "frozen at stage align" in c[name].evidence
    assert "trained too little" not in report.advice
    assert "configs/smol.yaml" in report.advice and "--set model.stage=full" in report.advice
    assert "pretrained LM" in checklist_markdown(report)
    # the second stage on the same random LM (LoRA adapters on a frozen random base) says so too
    lora = load_config(ROOT / "configs" / "full-finetune-lora.yaml")
    lora_report = _report(_train(), _inference(acc=0.0, chance=0.16, empty=50), cfg=lora)
    assert "frozen under LoRA r=16 adapters" in _by_name(lora_report)["Inference generates text"].evidence
    # a random LM that trains (stage full), or a pretrained one, gets no such note
    full = _report(_train(), _inference(acc=0.0, chance=0.16, empty=50), cfg=load_config())
    assert "language model is random" not in _by_name(full)["Inference generates text"].evidence
    assert random_frozen_lm(load_config(ROOT / "configs" / "smol.yaml")) is None  # SmolLM2, pretrained, at align


def test_conversation_rows_are_scored_when_nothing_else_is():
    inf = InferenceReport(model_dir="/m", nonempty=8, scored=8, conversation_count=8, conversation_cider=0.9,
                          conversation_chance_cider=0.2, conversation_bleu4=0.3, conversation_chance_bleu4=0.0,
                          predictions=[Prediction(kind="conversation", prompt="q", prediction="a")] * 8)
    c = _by_name(_report(inf=inf))["Inference generates text"]
    assert c.status == "pass" and "conversations' last answers CIDEr-D 0.900 vs a random training answer 0.200" in c.evidence
    low = inf.model_copy(update={"conversation_cider": 0.25})
    assert _by_name(_report(inf=low))["Inference generates text"].status == "fail"
