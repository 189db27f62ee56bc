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
    python bench/bench_dataset_memory.py --rows 1000000   # dataset memory at Week-2 scale (default 50,000)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
import traceback
from pathlib import Path

from bench import aggregate, fmt, markdown  # noqa: E402,F401  (the shared table code; tests use it from here too)

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
