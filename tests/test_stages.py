"""The stage functions behind the tasks, without Prefect: smoke failures, reload checks, training without
validation rows.  Scoring: test_vqa_metric.py, test_caption_metrics.py; the criteria: test_criteria.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from schemas import load_config

TINY = ["data.synthetic.num_captions=24", "data.synthetic.num_vqa=12"]


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    from openmind_core.data import convert, download

    cfg = load_config(overrides=TINY)
    lake = tmp_path_factory.mktemp("lake")
    return convert(download(cfg.data, lake), cfg.data, lake)


def test_smoke_passes_on_the_default_model(curated, tmp_path):
    from openmind_core.app.smoke import raise_if_failed, run_smoke
    from openmind_core.app.tokenizer import prepare_tokenizer

    report = run_smoke(load_config(overrides=TINY), curated, prepare_tokenizer(load_config(overrides=TINY), curated, tmp_path))
    assert report.passed, report.checks
    assert [c.name for c in report.checks] == ["vision_encoder", "projector", "loader_batch", "forward_backward"]
    assert report.image_tokens == 16 and report.trainable_params == report.total_params > 0
    assert (Path(report.tokenizer_dir) / "tokenizer_config.json").exists()
    raise_if_failed(report)  # does not raise


def test_smoke_failure_names_the_check_and_why(curated, tmp_path, monkeypatch):
    from openmind_core.model import ImprovedProjector
    from openmind_core.app.smoke import SmokeError, raise_if_failed, run_smoke
    from openmind_core.app.tokenizer import prepare_tokenizer

    real = ImprovedProjector.forward
    monkeypatch.setattr(ImprovedProjector, "forward", lambda self, x: real(self, x)[:, :-1])  # drop a token
    report = run_smoke(load_config(overrides=TINY), curated, prepare_tokenizer(load_config(overrides=TINY), curated, tmp_path))
    failed = {c.name for c in report.checks if not c.passed}
    assert "projector" in failed and not report.passed
    with pytest.raises(SmokeError, match=r"smoke check projector failed: .*expected \(2, 16, 128\)"):
        raise_if_failed(report)


def test_align_stage_smoke_trains_projector_only(curated, tmp_path):
    from openmind_core.app.smoke import run_smoke
    from openmind_core.app.tokenizer import prepare_tokenizer

    report = run_smoke(load_config(overrides=TINY + ["model.stage=align"]), curated,
                       prepare_tokenizer(load_config(overrides=TINY), curated, tmp_path))
    assert report.passed
    assert 0 < report.trainable_params < report.total_params


def test_reload_check_detects_a_different_model(curated, tmp_path):
    from openmind_core.app.tokenizer import load_prepared, prepare_tokenizer
    from openmind_core.app.train import build_datasets, build_model, check_reload

    cfg = load_config(overrides=TINY)
    tok = load_prepared(prepare_tokenizer(cfg, curated, tmp_path))
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
    from openmind_core.app.tokenizer import prepare_tokenizer
    from openmind_core.app.train import train_from_config

    cfg = load_config(overrides=["data.synthetic.num_captions=6", "data.synthetic.num_vqa=0", "data.val_fraction=0.0",
                                 "train.micro_batch_size=2", "train.wandb.mode=disabled"])
    cur = convert(download(cfg.data, tmp_path), cfg.data, tmp_path)
    assert cur.splits.get("validation", 0) == 0
    tok_dir = prepare_tokenizer(cfg, cur, tmp_path / "run").path
    result = train_from_config(cfg, cur, tmp_path / "run", tok_dir)
    assert result.steps == 3 and result.reload_equal and result.best_val_loss is None
