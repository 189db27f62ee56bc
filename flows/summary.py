"""The end-of-run summary ``openmind run`` prints: what ran, the losses, the scores, the criteria, the paths."""

from __future__ import annotations

from pathlib import Path


def raw_rows(raw) -> str:
    """'1000 caption + 500 VQA rows', with conversation rows when there are any."""
    conv = raw.conversation_rows
    return (f"{raw.caption_rows} caption + {raw.vqa_rows} VQA" + (f" + {conv} conversation" if conv else "")
            + " rows")


def normalised_note(cur) -> str:
    """'; normalised 12 CRLF line ends, 1 BOM' when a Windows-written file was read, else ''."""
    text = cur.normalised_text()
    return f"; normalised {text}" if text else ""


def training_events(t) -> list[str]:
    """The trainer's rollbacks and resume-time settings changes, one line each (nothing on a clean run)."""
    lines = []
    for e in t.rollbacks:
        lines.append(f"rollback at step {e.step} -> step {e.restored_step}: {e.reason} "
                     f"({e.skipped_samples} samples skipped, LR x {e.lr_scale:.3g})")
    for c in t.settings_changes:
        lines.append(f"resumed with {c['key']} {c['old']!r} -> {c['new']!r} at step {c['step']}")
    if t.skipped_steps:
        lines.append(f"{t.skipped_steps} optimizer step(s) skipped (reasons in metrics.jsonl)")
    return lines


def summary(report) -> str:
    # start-up cost: the report module loads the model package; the CLI imports this file before its checks
    from openmind_core.app.report import MARKS, verdict
    from openmind_core.app.report import fmt_float as fmt
    from openmind_core.evaluation import summary_lines

    t, inf, cur = report.training, report.inference, report.curated
    lines = [
        "",
        f"OpenMind week1 — run {report.run_name}: {verdict(report)}",
        f"  download   {raw_rows(report.raw)} ({report.raw.source})"
        f"{' [reused]' if report.raw.reused else ''}",
        f"  convert    {cur.rows_kept} kept, {cur.rows_quarantined} quarantined; splits {cur.splits}"
        + normalised_note(cur),
        f"  smoke      {sum(c.passed for c in report.smoke.checks)}/{len(report.smoke.checks)} checks passed; "
        f"{report.smoke.total_params:,} params ({report.smoke.trainable_params:,} trainable)",
        f"  train      {t.steps} steps, {t.epochs_completed} epoch(s): loss {fmt(t.first_loss)} -> {fmt(t.last_loss)}, "
        f"val {fmt(t.first_val_loss)} -> {fmt(t.final_val_loss)}"
        + (f" [resumed from step {t.resumed_from_step}]" if t.resumed_from_step else ""),
        *(f"             {part}" for part in training_events(t)),
        *(f"  {'inference' if i == 0 else '':<9}  {line}" for i, line in enumerate(summary_lines(inf))),
    ]
    prompts = list({p.prompt: p for p in reversed([p for p in inf.predictions if p.kind == "prompt"])}.values())
    for p in prompts[::-1]:  # each extra prompt's answer about the first image
        lines.append(f"             {p.prompt} -> {p.prediction!r}")
    lines += [f"  {'criteria' if i == 0 else '':<9}  [{MARKS[c.status]}] {c.name}" for i, c in enumerate(report.criteria)]
    if report.advice:
        lines.append(f"  advice     {report.advice}")
    lines += [
        f"  run dir    {report.run_dir}",
        f"  report     {Path(report.run_dir) / 'report.json'}",
        f"  model      {t.final_dir} (best: {t.best_dir})",
        f"  lake       raw {report.raw.root}",
        f"             curated {cur.root}" + (f"; quarantine {cur.quarantine_path}" if cur.rows_quarantined else ""),
    ]
    return "\n".join(lines)
