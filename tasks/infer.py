"""Task 5: baseline inference with the trained model reloaded from ``final/``."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from openmind_core.inference import run_inference
from schemas import CuratedDataset, InferenceReport, OpenMindConfig, TrainingResult
from tasks.common import retry_transient


def _cell(text: str | None) -> str:
    return (text or "").replace("|", "\\|").replace("\n", " ")[:120]


@task(name="inference", retries=1, retry_delay_seconds=2, retry_condition_fn=retry_transient, cache_policy=NO_CACHE)
def inference_task(cfg: OpenMindConfig, curated: CuratedDataset, training: TrainingResult) -> InferenceReport:
    log = get_run_logger()
    report = run_inference(training.final_dir, curated, cfg.inference, seed=cfg.run.seed)
    shown = [p for p in report.predictions if p.kind == "prompt"] + [p for p in report.predictions if p.kind != "prompt"][:20]
    rows = "\n".join(f"| {p.kind} | {_cell(p.prompt)} | {_cell(p.prediction)} | {_cell(p.reference)} | "
                     f"{'' if p.correct is None else ('✅' if p.correct else '❌')} |" for p in shown)
    acc = "n/a" if report.vqa_accuracy is None else f"{report.vqa_accuracy:.1%}"
    chance = "n/a" if report.vqa_chance is None else f"{report.vqa_chance:.1%}"
    f1 = "n/a" if report.caption_score is None else f"{report.caption_score:.3f}"
    log.info("VQA exact match %s (chance %s) on %d questions; caption F1 %s on %d images", acc, chance,
             report.vqa_count, f1, report.caption_count)
    create_markdown_artifact(
        key="week1-inference",
        description="baseline inference",
        markdown=(f"# Baseline inference\n\nVQA exact match **{acc}** on {report.vqa_count} held-out questions "
                  f"(chance: {chance}); caption token F1 **{f1}** on {report.caption_count} images.\n\n"
                  f"| kind | prompt | prediction | reference | |\n|---|---|---|---|---|\n{rows}"),
    )
    return report
