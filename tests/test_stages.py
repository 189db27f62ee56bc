"""The stage functions behind the tasks, without Prefect: smoke failures, scoring, the Week-1 criteria."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from openmind_core.inference import normalize_answer, token_f1
from openmind_core.report import build_report, checklist_markdown
from schemas import (Check, CuratedDataset, InferenceReport, Prediction, RawDataset, SmokeReport, TrainingResult,
                     load_config)

TINY = ["data.synthetic.num_captions=24", "data.synthetic.num_vqa=12"]


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    from openmind_core.data import convert, download

    cfg = load_config(overrides=TINY)
    lake = tmp_path_factory.mktemp("lake")
    return convert(download(cfg.data, lake), cfg.data, lake)


def test_smoke_passes_on_the_default_model(curated, tmp_path):
    from openmind_core.smoke import raise_if_failed, run_smoke

    report = run_smoke(load_config(overrides=TINY), curated, tmp_path)
    assert report.passed, report.checks
    assert [c.name for c in report.checks] == ["vision_encoder", "projector", "loader_batch", "forward_backward"]
    assert report.image_tokens == 16 and report.trainable_params == report.total_params > 0
    assert (Path(report.tokenizer_dir) / "tokenizer_config.json").exists()
    raise_if_failed(report)  # does not raise


def test_smoke_failure_names_the_check_and_why(curated, tmp_path, monkeypatch):
    from openmind_core.model import ImprovedProjector
    from openmind_core.smoke import SmokeError, raise_if_failed, run_smoke

    real = ImprovedProjector.forward
    monkeypatch.setattr(ImprovedProjector, "forward", lambda self, x: real(self, x)[:, :-1])  # drop a token
    report = run_smoke(load_config(overrides=TINY), curated, tmp_path)
    failed = {c.name for c in report.checks if not c.passed}
    assert "projector" in failed and not report.passed
    with pytest.raises(SmokeError, match=r"smoke check projector failed: .*expected \(2, 16, 128\)"):
        raise_if_failed(report)


def test_align_stage_smoke_trains_projector_only(curated, tmp_path):
    from openmind_core.smoke import run_smoke

    report = run_smoke(load_config(overrides=TINY + ["model.stage=align"]), curated, tmp_path)
    assert report.passed
    assert 0 < report.trainable_params < report.total_params


def test_answer_scoring():
    assert normalize_answer("The Red.") == "red" and normalize_answer(" 3 ") == "3"
    assert token_f1("a red circle", "red circle at the top") == pytest.approx(2 * 1 * 0.5 / 1.5)
    assert token_f1("", "") == 1.0 and token_f1("blue", "red") == 0.0
    assert token_f1("图中有两个黄色正方形", "图中有两个红色正方形") == pytest.approx(9 / 10)  # by character


def _artifacts(steps=10, first=5.0, last=1.0, reload_equal=True, preds=("red",)):
    raw = RawDataset(source="synthetic", fingerprint="f", root="/r", manifest="/r/m.json", caption_rows=8, vqa_rows=4)
    cur = CuratedDataset(version="v", schema_version=1, root="/c", shards=["/c/p.parquet"], rows_in=12, rows_kept=12,
                         rows_quarantined=0, splits={"train": 10, "validation": 2})
    smoke = SmokeReport(checks=[Check(name=n, passed=True, detail="ok") for n in
                                ("vision_encoder", "projector", "loader_batch", "forward_backward")],
                        passed=True, total_params=10, trainable_params=10, image_tokens=16, tokenizer_dir="/t")
    train = TrainingResult(run_dir="/run", checkpoints_dir="/run/checkpoints", best_dir="/run/best",
                           final_dir="/run/final", metrics_path="/run/metrics.jsonl", steps=steps, epochs_completed=1,
                           samples_seen=10, first_loss=first, last_loss=last, reload_equal=reload_equal,
                           checkpoints=["/run/checkpoints/step-00000010"])
    inf = InferenceReport(model_dir="/run/final", vqa_accuracy=0.5, vqa_chance=0.2, vqa_count=2,
                          predictions=[Prediction(kind="vqa", prompt="q", prediction=p) for p in preds])
    return raw, cur, smoke, train, inf


def test_week1_criteria_pass_and_fail_with_evidence():
    from openmind_core.model import estimate_memory

    cfg = load_config()
    est = estimate_memory(cfg)
    report = build_report(cfg, "r", "/run", "/run/config.yaml", *_artifacts(), memory_estimate=est)
    assert report.passed and len(report.criteria) == 7
    assert "loss 5.000 -> 1.000" in next(c.evidence for c in report.criteria if c.name == "Loss fell normally")
    bad = build_report(cfg, "r", "/run", "/run/config.yaml",
                       *_artifacts(first=1.0, last=float("nan"), reload_equal=False, preds=("",)), memory_estimate=est)
    failed = {c.name for c in bad.criteria if not c.passed}
    assert failed == {"Loss fell normally", "Checkpoints save and load", "Inference generates text"}
    assert "❌" in checklist_markdown(bad) and not bad.passed
    full = load_config("configs/full.yaml", ["model.stage=full", "model.gradient_checkpointing=false"])
    over = build_report(full, "r", "/run", "/c", *_artifacts(), memory_estimate=estimate_memory(full))
    assert not next(c for c in over.criteria if c.name.startswith("Training fits")).passed


def test_reload_check_detects_a_different_model(curated, tmp_path):
    from openmind_core.pipeline import build_datasets, build_model, check_reload, prepare_tokenizer

    cfg = load_config(overrides=TINY)
    tok, _ = prepare_tokenizer(cfg, curated, tmp_path)
    model = build_model(cfg, tok)
    model.save_pretrained(tmp_path / "m")
    train, _, collate = build_datasets(cfg, curated, model)
    assert check_reload(model, tmp_path / "m", train, collate)
    with torch.no_grad():
        next(model.projector.parameters()).add_(1.0)
    assert not check_reload(model, tmp_path / "m", train, collate)


def test_training_without_validation_rows(tmp_path):
    """A data set too small for a validation split still trains (no evaluation) and reloads."""
    from openmind_core.data import convert, download
    from openmind_core.pipeline import prepare_tokenizer, train_from_config

    cfg = load_config(overrides=["data.synthetic.num_captions=6", "data.synthetic.num_vqa=0", "data.val_fraction=0.0",
                                 "train.micro_batch_size=2", "train.wandb.mode=disabled"])
    cur = convert(download(cfg.data, tmp_path), cfg.data, tmp_path)
    assert cur.splits.get("validation", 0) == 0
    _, tok_dir = prepare_tokenizer(cfg, cur, tmp_path / "run")
    result = train_from_config(cfg, cur, tmp_path / "run", tok_dir)
    assert result.steps == 3 and result.reload_equal and result.best_val_loss is None
