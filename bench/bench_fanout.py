"""Conversion fan-out: 8 raw files (8 local ``data.hf`` entries) as one Prefect task each, merged.

Rows (same run, same download, a fresh output lake each time):
- Dask, 2 worker processes (``DaskTaskRunner`` with a temporary ``LocalCluster``, its start-up
  included) against Prefect's thread runner;
- the thread runner's fan-out against the serial ``convert`` in one process (no Prefect).

Every image is distinct noise (a PNG decode per row), so the work is image inspection, hashing and
Parquet encoding.  ``python bench/bench_fanout.py [--quick]``.
"""

from __future__ import annotations

import io
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

FILES = 8


def _png(rng: random.Random, size: int) -> bytes:
    from PIL import Image

    img = Image.frombytes("RGB", (size, size), bytes(rng.getrandbits(8) for _ in range(size * size * 3)))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def make_entries(root: Path, rows: int, size: int = 48) -> list[dict]:
    import datasets

    feats = datasets.Features({"img": datasets.Image(), "sentence": datasets.Value("string")})
    out = []
    for k in range(FILES):
        rng = random.Random(k)
        ds = datasets.Dataset.from_dict({"img": [{"bytes": _png(rng, size), "path": None} for _ in range(rows)],
                                         "sentence": [f"file {k} picture {i}" for i in range(rows)]}, features=feats)
        ds.to_parquet(str(root / f"part-{k}.parquet"))
        out.append({"name": str(root / f"part-{k}.parquet"), "split": "train",
                    "columns": {"image": "img", "text": "sentence"}})
    return out


def run(quick: bool = False) -> list[dict]:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    import tasks  # noqa: F401  (Prefect defaults)
    from prefect import flow
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect.testing.utilities import prefect_test_harness
    from prefect_dask import DaskTaskRunner

    from openmind_core.data import convert, download
    from schemas import DataConfig
    from tasks.fanout import fan_out_convert

    rows = 60 if quick else 600
    tmp = Path(tempfile.mkdtemp(prefix="bench-fanout-"))
    try:
        cfg = DataConfig(source="hf", hf=make_entries(tmp, rows), num_workers=1)
        raw = download(cfg, tmp / "lake")

        def timed(fn) -> float:
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0

        lakes = iter(range(100))
        serial = timed(lambda: convert(raw, cfg, tmp / f"out-{next(lakes)}"))
        runners = {
            "thread": ThreadPoolTaskRunner(max_workers=FILES),
            "dask": DaskTaskRunner(cluster_kwargs={"n_workers": 2, "threads_per_worker": 1, "processes": True,
                                                   "dashboard_address": None}),
        }
        secs = {}
        with prefect_test_harness(server_startup_timeout=120):
            for name, runner in runners.items():
                out = tmp / f"out-{next(lakes)}"

                @flow(name=f"bench-fanout-{name}", task_runner=runner)
                def fan(out=out):
                    return fan_out_convert(raw, cfg, str(out))

                secs[name] = timed(fan)
        note = f"{FILES} files x {rows} rows, 48 px noise PNGs, {os.cpu_count()} cores"
        return [
            {"name": "fan-out 8 files: Dask 2 workers vs thread runner", "ours_s": secs["dask"],
             "baseline_s": secs["thread"], "ratio": secs["dask"] / secs["thread"], "goal": "< 1x time with >= 2 free cores",
             "unit": "s", "notes": note + "; Dask's LocalCluster start-up included"},
            {"name": "fan-out 8 files: thread runner vs serial convert", "ours_s": secs["thread"],
             "baseline_s": serial, "ratio": secs["thread"] / serial, "goal": "<= 1.2x time",
             "unit": "s", "notes": note + "; Prefect task overhead included"},
        ]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    from bench import print_rows

    print_rows(run(quick="--quick" in sys.argv))
