"""The Week-1 report: the five stage artifacts plus the guide's seven success criteria.

Each criterion is pass/fail with the evidence that decided it, so a reader of ``report.json`` (or
the checklist artifact in the Prefect UI) sees why, not just whether.
"""

from __future__ import annotations

import math

GIB = 1 << 30

from schemas import (
    Criterion,
    CuratedDataset,
    InferenceReport,
    OpenMindConfig,
    RawDataset,
    SmokeReport,
    TrainingResult,
    Week1Report,
)


def fmt_float(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def week1_criteria(
    cfg: OpenMindConfig,
    curated: CuratedDataset,
    smoke: SmokeReport,
    training: TrainingResult,
    inference: InferenceReport,
    memory_estimate=None,
) -> list[Criterion]:
    checks = {c.name: c for c in smoke.checks}
    enc, proj = checks.get("vision_encoder"), checks.get("projector")
    train_rows = curated.splits.get("train", 0)
    crit = [
        Criterion(
            name="Vision encoder integrated",
            passed=bool(enc and enc.passed and proj and proj.passed),
            evidence=f"encoder {enc.detail if enc else 'not run'}; projector {proj.detail if proj else 'not run'}",
        ),
        Criterion(
            name="Trainer built and tested",
            passed=smoke.passed and training.steps > 0,
            evidence=(
                f"smoke checks {sum(c.passed for c in smoke.checks)}/{len(smoke.checks)} passed; "
                f"{training.steps} optimizer steps, {training.skipped_steps} skipped, "
                f"{len(training.rollbacks)} rollbacks, amp={training.amp}"
            ),
        ),
        Criterion(
            name="One epoch on the training set",
            passed=training.epochs_completed >= 1 and training.samples_seen >= train_rows,
            evidence=f"{training.epochs_completed} epoch(s), {training.samples_seen} samples seen "
            f"of {train_rows} training rows",
        ),
    ]
    first, last = training.first_loss, training.last_loss
    finite = first is not None and last is not None and math.isfinite(first) and math.isfinite(last)
    fell = finite and last < first
    crit.append(
        Criterion(
            name="Loss fell normally",
            passed=bool(fell and training.nan_or_inf_losses == 0),
            evidence=f"loss {fmt_float(first)} -> {fmt_float(last)}; val {fmt_float(training.first_val_loss)} -> "
            f"{fmt_float(training.final_val_loss)}; {training.nan_or_inf_losses} NaN/inf losses",
        )
    )
    crit.append(
        Criterion(
            name="Checkpoints save and load",
            passed=bool(training.reload_equal) and len(training.checkpoints) > 0,
            evidence=f"{len(training.checkpoints)} checkpoint(s) kept; final/ reloaded with from_pretrained: "
            + ("logits equal" if training.reload_equal else "logits DIFFER or not checked")
            + (f"; resumed from step {training.resumed_from_step}" if training.resumed_from_step else ""),
        )
    )
    generated = [p for p in inference.predictions if p.prediction.strip()]
    crit.append(
        Criterion(
            name="Inference generates text",
            passed=len(generated) > 0,
            evidence=f"{len(generated)}/{len(inference.predictions)} non-empty answers; VQA accuracy "
            f"{fmt_float(inference.vqa_accuracy)} (chance {fmt_float(inference.vqa_chance)}); caption F1 "
            f"{fmt_float(inference.caption_score)}",
        )
    )
    if memory_estimate is not None:
        gib = memory_estimate.train_peak_bytes / GIB
        budget = cfg.memory.budget_gb
        measured = training.peak_memory_bytes
        passed = gib <= budget and (measured is None or measured / GIB <= budget)
        evidence = (f"estimated GPU training peak {gib:.2f} GiB (stage {cfg.model.stage}, {cfg.model.dtype}) "
                    f"vs budget {budget:g} GiB")
        if measured is not None:
            evidence += f"; measured peak {measured / GIB:.2f} GiB on {training.device}"
    else:
        passed, evidence = False, "memory estimate unavailable"
    crit.append(Criterion(name=f"Training fits in {cfg.memory.budget_gb:g} GB", passed=passed, evidence=evidence))
    return crit


def build_report(
    cfg: OpenMindConfig,
    run_name: str,
    run_dir: str,
    config_path: str,
    raw: RawDataset,
    curated: CuratedDataset,
    smoke: SmokeReport,
    training: TrainingResult,
    inference: InferenceReport,
    memory_estimate=None,
) -> Week1Report:
    criteria = week1_criteria(cfg, curated, smoke, training, inference, memory_estimate)
    return Week1Report(
        run_name=run_name,
        run_dir=run_dir,
        config_path=config_path,
        raw=raw,
        curated=curated,
        smoke=smoke,
        training=training,
        inference=inference,
        criteria=criteria,
        passed=all(c.passed for c in criteria),
    )


def checklist_markdown(report: Week1Report) -> str:
    lines = [f"# Week-1 checklist: {report.run_name}", "", "| | criterion | evidence |", "|---|---|---|"]
    for c in report.criteria:
        lines.append(f"| {'✅' if c.passed else '❌'} | {c.name} | {c.evidence} |")
    t = report.training
    if t.stage:  # which stage ran and from what
        lora = f" with LoRA r={t.lora['r']} on {', '.join(t.lora['target_modules'])}" if t.lora else ""
        origin = f"projector from `{t.started_from}`" if t.started_from else "a fresh projector"
        lines += ["", f"Stage `{t.stage}`{lora}, starting from {origin}."]
    lines += ["", f"**{'All criteria met' if report.passed else 'Some criteria not met'}.** Run directory: `{report.run_dir}`"]
    return "\n".join(lines)
