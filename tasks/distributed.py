"""Training with more than one process: launch torchrun, stream its output into the Prefect log."""

from __future__ import annotations

from pathlib import Path

from openmind_core import interrupt
from openmind_core.io import atomic_write_text
from openmind_core.training.launch import run_torchrun
from schemas import CuratedDataset, OpenMindConfig, TokenizerReport, TrainingResult


def train_with_torchrun(cfg: OpenMindConfig, curated: CuratedDataset, tokenizer: TokenizerReport, run_dir: str,
                        log) -> TrainingResult:
    run = Path(run_dir)
    cfg_path = atomic_write_text(run / "config.yaml", cfg.to_yaml())
    cur_path = atomic_write_text(run / "curated.json", curated.model_dump_json(indent=2))
    result_path = run / "training_result.json"
    result_path.unlink(missing_ok=True)
    args = ["--config", str(cfg_path), "--curated", str(cur_path), "--run-dir", str(run),
            "--tokenizer-dir", tokenizer.path, "--result", str(result_path)]
    log.info("launching torchrun with %d processes", cfg.train.nproc)
    # a Ctrl-C / SIGTERM to this process is forwarded to torchrun's workers, which stop at a step boundary
    with interrupt.deferred(grace=None):
        code = run_torchrun("openmind_core.app.train_entry", args, cfg.train.nproc,
                            on_line=lambda line: log.info("%s", line), stop=interrupt.requested)
    if interrupt.requested():
        raise KeyboardInterrupt(f"training stopped by a signal (torchrun exited with code {code})")
    if code != 0:
        raise RuntimeError(f"torchrun exited with code {code}; see the log lines above")
    if not result_path.exists():
        raise RuntimeError(f"torchrun finished but wrote no {result_path}")
    return TrainingResult.model_validate_json(result_path.read_text())
