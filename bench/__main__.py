"""``python -m bench``: run every benchmark, print one table of ratios against same-run baselines.

Each ``bench/bench_<name>.py`` exposes ``run(quick: bool = False) -> list[dict]``; every row has
``name``, ``ours_s``, ``baseline_s`` (seconds, or ``None`` where there is no baseline), ``goal``
(e.g. ``"<= 1.05x time"``), ``unit`` and ``notes``.  The harness calls each benchmark once to
warm up, then ``--repeats`` times, and reports per row the median and spread (min-max) of ours
and the baseline, and the median of the rows' own ``ratio`` (a benchmark chooses its direction:
time over baseline time, or throughput over baseline throughput, as its ``goal`` says); a row
without a ratio gets the ratio of the medians.  It writes ``bench/results/latest.json`` and
``latest.md``, and exits non-zero only when a benchmark fails to run, never because a machine is
slow.

    python -m bench                 # all, 3 repeats
    python -m bench --quick         # small sizes, 1 repeat (what the tests run)
    python -m bench model trainer   # only these
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import statistics
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def discover(names: list[str] | None = None) -> dict[str, Path]:
    found = {p.stem.removeprefix("bench_"): p for p in sorted(HERE.glob("bench_*.py"))}
    if names:
        missing = [n for n in names if n not in found]
        if missing:
            raise SystemExit(f"bench: unknown benchmark(s) {missing}; have {sorted(found)}")
        found = {n: found[n] for n in names}
    return found


def load(path: Path):
    spec = importlib.util.spec_from_file_location(f"bench_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(HERE.parent))
    spec.loader.exec_module(mod)
    return mod


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    p.add_argument("--quick", action="store_true", help="small sizes, one repeat")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats after the warm-up (default 3; quick 1)")
    p.add_argument("--out", type=Path, default=RESULTS, help="where to write latest.json / latest.md")
    a = p.parse_args(argv)
    repeats = a.repeats or (1 if a.quick else 3)
    table: list[dict] = []
    failures: list[str] = []
    t0 = time.perf_counter()
    for name, path in discover(a.names).items():
        print(f"bench: {name} (warm-up + {repeats} repeat(s))", file=sys.stderr, flush=True)
        try:
            mod = load(path)
            mod.run(quick=True)  # warm-up: imports, caches, allocator
            runs = [mod.run(quick=a.quick) for _ in range(repeats)]
            for row in aggregate(runs):
                table.append({"benchmark": name, **row})
        except Exception:
            failures.append(name)
            traceback.print_exc()
            table.append({"benchmark": name, "name": f"{name} FAILED", "ours": None, "ours_spread": "",
                          "baseline": None, "baseline_spread": "", "ratio": None, "goal": "", "unit": "",
                          "notes": "see traceback", "repeats": 0})
    a.out.mkdir(parents=True, exist_ok=True)
    meta = {"quick": a.quick, "repeats": repeats, "seconds": round(time.perf_counter() - t0, 1),
            "python": sys.version.split()[0], "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:
        import torch

        meta.update(torch=torch.__version__, threads=torch.get_num_threads(), cuda=torch.cuda.is_available())
    except ImportError:
        pass
    (a.out / "latest.json").write_text(json.dumps({"meta": meta, "rows": table}, indent=2))
    md = markdown(table)
    (a.out / "latest.md").write_text(f"{md}\n\n{json.dumps(meta)}\n")
    print(md)
    print(f"\n{meta}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
