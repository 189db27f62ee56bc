"""The CLI refuses bad input before anything runs: one line on stderr, exit 2, nothing written."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import REPO


def openmind(*args, env=None):
    e = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=REPO, env=e, capture_output=True,
                          text=True, timeout=120)


def _one_line_error(proc) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("openmind: error: ")
    return lines[0]


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["train.lrr=1"], "train.lrr: unknown key"),
        (["nosuchsection.x=1"], "nosuchsection: unknown key"),
        (["train.epochs=zero"], "train.epochs"),
        (["model.projector.type=conv"], "model.projector.type"),
    ],
)
def test_bad_config_exit_2_one_line_nothing_written(tmp_path, overrides, expected):
    lake = tmp_path / "lake"
    proc = openmind("run", *sum((["--set", o] for o in overrides), []), "--lake", str(lake))
    assert proc.returncode == 2
    assert expected in _one_line_error(proc)
    assert not lake.exists()


def test_bad_config_file(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  micro_batch_size: -4\n")
    proc = openmind("run", "--config", str(cfg), "--lake", str(tmp_path / "lake"))
    assert proc.returncode == 2 and "train.micro_batch_size" in _one_line_error(proc)
    proc = openmind("run", "--config", str(tmp_path / "missing.yaml"))
    assert proc.returncode == 2 and "not found" in _one_line_error(proc)


def test_missing_input_file(tmp_path):
    lake = tmp_path / "lake"
    proc = openmind("run", "--set", "data.source=jsonl", "--set", f"data.jsonl.captions={tmp_path}/nope.jsonl",
                    "--lake", str(lake))
    assert proc.returncode == 2
    assert "data.jsonl.captions: input not found" in _one_line_error(proc)
    assert not lake.exists()


def test_unwritable_lake(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    proc = openmind("run", "--lake", str(blocker / "lake"))
    assert proc.returncode == 2 and "is not a directory" in _one_line_error(proc)
    proc = openmind("data", "prepare", "--lake", str(blocker))
    assert proc.returncode == 2 and "not a directory" in _one_line_error(proc)


def test_lake_from_environment(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = openmind("run", env={"OPENMIND_LAKE": str(blocker)})
    assert proc.returncode == 2 and str(blocker) in _one_line_error(proc)


def test_config_command_prints_resolved_yaml():
    proc = openmind("config", "--set", "train.epochs=3")
    assert proc.returncode == 0 and "epochs: 3" in proc.stdout


def test_estimate_memory_full_size():
    proc = openmind("estimate-memory", "--config", "configs/full.yaml")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.lower()
    assert "weights" in out and "optimizer" in out and "activation" in out
    # README's memory table: stage align, checkpointing on, 20.56 GiB at the peak, fits in 40
    lines = [" ".join(ln.split()) for ln in proc.stdout.splitlines()]
    assert "TRAINING peak 20.56 GiB" in lines and "training FITS in 40.0 GiB" in lines, proc.stdout


def test_summary_parts_name_rollbacks_settings_changes_conversations_and_normalised_lines():
    from flows.summary import normalised_note, raw_rows, training_events
    from schemas.artifacts import CuratedDataset, RawDataset, RollbackEvent, TrainingResult

    t = TrainingResult(run_dir="r", checkpoints_dir="c", best_dir=None, final_dir="f", metrics_path="m", steps=9,
                       epochs_completed=1, samples_seen=9, first_loss=2.0, last_loss=1.0,
                       rollbacks=[RollbackEvent(step=6, restored_step=4, reason="loss spike", skipped_samples=16,
                                                lr_scale=0.5)],
                       settings_changes=[{"step": 4, "key": "train.lr", "old": 0.03, "new": 0.01}])
    lines = training_events(t)
    assert lines[0] == "rollback at step 6 -> step 4: loss spike (16 samples skipped, LR x 0.5)"
    assert lines[1] == "resumed with train.lr 0.03 -> 0.01 at step 4"
    assert training_events(t.model_copy(update={"rollbacks": [], "settings_changes": []})) == []
    raw = RawDataset(source="jsonl", fingerprint="x", root="r", manifest="m", caption_rows=3, vqa_rows=0,
                     conversation_rows=2)
    assert raw_rows(raw) == "3 caption + 0 VQA + 2 conversation rows"
    cur = CuratedDataset(version="v", schema_version=2, root="r", shards=[], rows_in=5, rows_kept=5,
                         rows_quarantined=0, normalised={"crlf_lines": 5, "bom_files": 1})
    assert normalised_note(cur) == "; normalised 5 CRLF line ends, 1 BOM"
    assert normalised_note(cur.model_copy(update={"normalised": {}})) == ""
