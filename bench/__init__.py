"""Benchmarks: each prints a ratio against a baseline measured in the same run (``python -m bench``).

This module holds the table code the harness and each ``bench_<name>.py`` script share.
"""

from __future__ import annotations

import contextlib
import math
import statistics
from collections.abc import Iterator


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` torch threads (None: as they are), then leave the caller's process as it was."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _spread(xs: list[float]) -> str:
    return f"{min(xs):.4g}-{max(xs):.4g}" if len(xs) > 1 else ""


def aggregate(runs: list[list[dict]]) -> list[dict]:
    """Merge repeated runs of one benchmark by row name: medians, spreads, median of the rows' ratios."""
    by_name: dict[str, list[dict]] = {}
    for rows in runs:
        for r in rows:
            by_name.setdefault(r["name"], []).append(r)
    out = []
    for name, rows in by_name.items():
        ours = [r["ours_s"] for r in rows if r.get("ours_s") is not None]
        base = [r["baseline_s"] for r in rows if r.get("baseline_s") is not None]
        med_o = statistics.median(ours) if ours else None
        med_b = statistics.median(base) if base else None
        own = [r["ratio"] for r in rows if isinstance(r.get("ratio"), (int, float)) and not math.isnan(r["ratio"])]
        if len(own) == len(rows):  # the benchmark defines its ratio's direction (time, or throughput)
            ratio = statistics.median(own)
        else:
            ratio = (med_o / med_b) if (med_o is not None and med_b) else None
        out.append({
            "name": name, "ours": med_o, "ours_spread": _spread(ours), "baseline": med_b,
            "baseline_spread": _spread(base), "ratio": ratio, "goal": rows[-1].get("goal", ""),
            "unit": rows[-1].get("unit", "s"), "notes": rows[-1].get("notes", ""), "repeats": len(rows),
        })
    return out


def fmt(x) -> str:
    return "" if x is None else (f"{x:.4g}" if isinstance(x, float) else str(x))


def markdown(rows: list[dict]) -> str:
    head = "| benchmark | ours (median) | spread | baseline (median) | spread | ratio | goal | unit | notes |"
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        lines.append(f"| {r['name']} | {fmt(r['ours'])} | {r['ours_spread']} | {fmt(r['baseline'])} | "
                     f"{r['baseline_spread']} | {fmt(r['ratio'])} | {r['goal']} | {r['unit']} | {r['notes']} |")
    return "\n".join(lines)



def print_rows(rows: list[dict]) -> None:
    """Print one benchmark's rows (as ``run()`` returns them) as the harness's Markdown table."""
    print(markdown(aggregate([rows])))
