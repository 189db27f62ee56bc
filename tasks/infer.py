"""Task 6: baseline inference with the trained model reloaded from ``final/``; and ``openmind eval``'s task.

Both score with :mod:`openmind_core.evaluation` (VQAv2 accuracy, CIDEr-D / BLEU-4, chance baselines)
and show the scores and a sample of predictions as a markdown artifact.
"""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from openmind_core.evaluation import evaluate_path, report_markdown, summary_lines
from openmind_core.app.baseline_eval import run_inference
from schemas import CuratedDataset, InferenceConfig, InferenceReport, OpenMindConfig, TrainingResult
from tasks.common import retry_transient


@task(name="inference", retries=1, retry_delay_seconds=2, retry_condition_fn=retry_transient, cache_policy=NO_CACHE)
def inference_task(cfg: OpenMindConfig, curated: CuratedDataset, training: TrainingResult) -> InferenceReport:
    log = get_run_logger()
    report = run_inference(training.final_dir, curated, cfg.inference, seed=cfg.run.seed)
    for line in summary_lines(report):
        log.info(line)
    create_markdown_artifact(key="week1-inference", description="baseline inference",
                             markdown=report_markdown(report, "Baseline inference"))
    return report


@task(name="eval", retries=1, retry_delay_seconds=2, retry_condition_fn=retry_transient, cache_policy=NO_CACHE)
def eval_task(path: str, cfg: InferenceConfig, lake: str | None = None, jsonl: str | None = None,
              hf: str | None = None, kind: str | None = None, split: str = "validation",
              columns: dict[str, str] | None = None, out: str | None = None, seed: int = 0) -> InferenceReport:
    log = get_run_logger()
    report, written = evaluate_path(path, cfg, lake=lake, jsonl=jsonl, hf=hf, kind=kind, split=split,
                                    columns=columns, out=out, seed=seed)
    for line in summary_lines(report):
        log.info(line)
    log.info("wrote %s", written)
    create_markdown_artifact(key="openmind-eval", description=f"evaluation of {report.model_dir}",
                             markdown=report_markdown(report) + f"\n\nWritten to `{written}`.")
    return report
