"""wandb: offline by default (a run directory under the run), disabled by config or $WANDB_MODE."""

from __future__ import annotations

from openmind_core.training.metrics import WandbLogger


def test_offline_run_is_written_under_the_run_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbLogger("offline", "openmind-test", "unit", tmp_path, config={"lr": 0.1})
    assert logger.run is not None
    logger.log({"loss": 1.0}, step=1)
    logger.finish()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].rglob("*.wandb"))


def test_disabled_never_starts_wandb(tmp_path, monkeypatch):
    assert WandbLogger("disabled", "p", None, tmp_path).run is None
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert WandbLogger("offline", "p", None, tmp_path).run is None
    assert not (tmp_path / "wandb").exists()
