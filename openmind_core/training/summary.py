"""A finished run in one line: steps, losses, and every rollback and settings change (the log's summary)."""

from __future__ import annotations

from schemas.artifacts import TrainingResult


def summary_line(r: TrainingResult) -> str:
    """One line: steps, losses, and every rollback and settings change (the log's and the CLI's summary)."""
    def f(x):
        return "n/a" if x is None else f"{x:.4g}"

    parts = [f"trained {r.steps} steps ({r.epochs_completed} epochs): loss {f(r.first_loss)} -> {f(r.last_loss)}, "
             f"val {f(r.first_val_loss)} -> {f(r.final_val_loss)}"]
    if r.pad_fraction is not None:
        parts.append(f"{r.tokens:,} tokens in {r.slots:,} slots (pad fraction {r.pad_fraction:.1%})")
    if r.skipped_steps:
        parts.append(f"{r.skipped_steps} skipped steps")
    parts.append(f"{len(r.rollbacks)} rollbacks" + (": " + "; ".join(
        f"step {e.step} -> {e.restored_step} ({e.skipped_samples} samples skipped, LR x {e.lr_scale:.3g})"
        for e in r.rollbacks) if r.rollbacks else ""))
    if r.settings_changes:
        parts.append("settings changed on resume: " + ", ".join(
            f"{c['key']} {c['old']!r} -> {c['new']!r} at step {c['step']}" for c in r.settings_changes))
    return "; ".join(parts)
