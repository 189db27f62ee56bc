"""Task 5: train with the ProductionTrainer; a retry or a rerun resumes from the newest checkpoint.

While it trains the UI shows a progress artifact (``week1-training-progress``, single process) and
the loss so far (``week1-training-loss``, ``tasks/live.py``), redrawn every ``train.log_every`` steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from openmind_core.app.report import fmt_float
from openmind_core.app.train import train_from_config
from schemas import CuratedDataset, OpenMindConfig, TokenizerReport, TrainingResult
from tasks.common import md_table, retry_transient
from tasks.distributed import train_with_torchrun
from tasks.events import MetricsEventForwarder, emit_training_finished
from tasks.live import LossChart
from tasks.slots import gpu_slot


@task(name="train", retries=1, retry_delay_seconds=2, retry_condition_fn=retry_transient, cache_policy=NO_CACHE)
def train_task(cfg: OpenMindConfig, curated: CuratedDataset, tokenizer: TokenizerReport, run_dir: str) -> TrainingResult:
    log = get_run_logger()
    progress_id = create_progress_artifact(progress=0.0, key="week1-training-progress",
                                           description="optimizer steps done, percent")

    last = {"step": None}

    run_name = Path(run_dir).name
    chart = LossChart(Path(run_dir) / "metrics.jsonl", run_name, cfg.train.log_every).start()

    def progress(info: dict) -> None:
        total = max(int(info.get("total_steps") or 1), 1)
        chart.total_steps = total
        if info.get("step") == last["step"]:
            return
        last["step"] = info.get("step")
        update_progress_artifact(progress_id, min(100.0, 100.0 * int(info.get("step", 0)) / total))
        log.info("step %s/%s  loss %.4f  lr %.2e  %s tok/s", info.get("step"), total, info.get("loss") or float("nan"),
                 info.get("lr") or 0.0, f"{info['tokens_per_s']:.0f}" if info.get("tokens_per_s") else "-",
                 extra={"openmind_progress": True})  # on a terminal the tqdm bar shows it instead (flows/console.py)

    # a GPU slot while training (concurrent runs queue for the card); trainer events (metrics.jsonl)
    # forwarded as Prefect events, so automations can react to rollbacks and finished runs
    # the loss chart (tasks/live.py) redrawn as the forwarder reads another log interval's lines
    with gpu_slot(_gpu_slots(cfg), logger=log), \
            MetricsEventForwarder(Path(run_dir) / "metrics.jsonl", run_name, observers=[chart.observe]):
        if cfg.train.nproc > 1:
            result = train_with_torchrun(cfg, curated, tokenizer, run_dir, log)
        else:
            result = train_from_config(cfg, curated, run_dir, tokenizer.path, progress=progress)
    emit_training_finished(result, run_name, run_dir)
    update_progress_artifact(progress_id, 100.0)
    chart.total_steps = result.steps
    chart.refresh()
    _publish(result, cfg)
    log.info("trained %d steps: loss %s -> %s, best val loss %s", result.steps, fmt_float(result.first_loss),
             fmt_float(result.last_loss), fmt_float(result.best_val_loss))
    return result


def _gpu_slots(cfg: OpenMindConfig) -> int:
    """Slots of the ``gpu`` limit this training holds: one per process on CUDA, none on the CPU."""
    return cfg.train.nproc if torch.cuda.is_available() else 0


def _publish(result: TrainingResult, cfg: OpenMindConfig) -> None:
    rows = []
    path = Path(result.metrics_path)
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "loss" in rec and "step" in rec and rec.get("event") in (None, "step"):
                rows.append({k: rec.get(k) for k in ("step", "epoch", "loss", "lr", "grad_norm", "tokens_per_s",
                                                     "step_time", "skipped")})
    if len(rows) > 100:  # keep the table readable: every k-th step plus the last
        k = -(-len(rows) // 100)
        rows = rows[::k] + ([rows[-1]] if (len(rows) - 1) % k else [])
    if rows:
        create_table_artifact(table=rows, key="week1-training-metrics", description="training metrics per step")
    create_markdown_artifact(
        key="week1-train",
        description="training summary",
        markdown="# Training\n\n" + md_table([
            ("steps", result.steps), ("epochs", result.epochs_completed), ("samples seen", result.samples_seen),
            ("loss", f"{fmt_float(result.first_loss)} → {fmt_float(result.last_loss)}"),
            ("val loss", f"{fmt_float(result.first_val_loss)} → {fmt_float(result.final_val_loss)} (best {fmt_float(result.best_val_loss)})"),
            ("NaN/inf losses", result.nan_or_inf_losses), ("skipped steps", result.skipped_steps),
            ("rollbacks", len(result.rollbacks)), ("resumed from step", result.resumed_from_step),
            ("tokens/s", result.tokens_per_second),
            ("pad fraction", "n/a" if result.pad_fraction is None else f"{result.pad_fraction:.1%}"), ("device / amp", f"{result.device} / {result.amp}"),
            ("stage", cfg.model.stage), ("final", f"`{result.final_dir}`"), ("best", f"`{result.best_dir}`"),
        ]),
    )
