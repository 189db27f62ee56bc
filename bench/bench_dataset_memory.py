"""Benchmark: the training dataset's resident memory per row, and loader images/s with no pixel cache.

A caption lake of ``--rows`` rows (default 50,000; quick 20,000; ``--rows 1000000`` for the
issue's Week-2 scale) is written straight with pyarrow in the curated layout of schema version 2
(Hugging Face image struct, eight tiny PNGs reused), in a temporary directory.  Each measurement
runs in a fresh interpreter:

* **build**: ``VLMDataset`` over the lake, building its caches (row and image columns as Arrow
  files, token ids as a flat ``.npy``): seconds.  Baseline: the old list-based layout (the whole
  split ``to_pylist()`` + ``encode_many`` Python lists), same rows.
* **heap per row, main process**: anonymous memory (``Anonymous`` in ``/proc/self/smaps_rollup``:
  everything that is not a mapped file) after opening the built dataset, minus the same after
  opening one of ``SMALL`` rows, over the row difference: the marginal bytes a row costs beyond the
  memory-mapped files (goal <= 64).  Baseline: the old layout measured the same way (at most
  ``OLD_ROWS`` rows: it grows linearly and costs gigabytes at 1M).
* **heap per row, per loader worker**: the same marginal figure for each of 2 forked
  ``DataLoader`` workers (their ``Private_Dirty``: pages only that worker holds) after they served
  ``BATCHES`` batches from a ``ResumableSampler`` over the whole split.
* **images/s at 384 px**: the pixel cache too small (``pixel_cache_bytes=0``), every image decoded,
  resized and normalised in 2 loader workers; baseline: the same in the main process.

Run: ``python bench/bench_dataset_memory.py [--quick] [--rows N]``.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SMALL = 1_000  # the reference dataset the per-row figures are measured against
OLD_ROWS = 100_000  # the old layout is measured at most at this size
BATCHES = 20
IMAGES = 8
IMAGE_SIZE = 384


def build_lake(root: Path, rows: int) -> Path:
    """A curated caption lake of ``rows`` rows (schema version 2 layout), written with pyarrow."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    version = root / "curated" / f"bench{rows}"
    version.mkdir(parents=True)
    pngs = []
    for k in range(IMAGES):
        buf = io.BytesIO()
        Image.new("RGB", (24, 24), (30 * k, 255 - 30 * k, 90)).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    words = ["red", "green", "blue", "small", "large", "square", "circle", "left", "right", "top"]
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    meta = {"huggingface": json.dumps({"info": {"features": {"image": {"_type": "Image"}}}}),
            "openmind.schema_version": "2"}
    shard_rows = 250_000
    entries = []
    for k, lo in enumerate(range(0, rows, shard_rows)):
        idx = np.arange(lo, min(lo + shard_rows, rows))
        n = len(idx)
        which = idx % IMAGES
        image = pa.StructArray.from_arrays([pa.array(pngs, pa.binary()).take(pa.array(which)),
                                            pa.nulls(n, pa.string())], fields=list(image_type))
        text = [f"a {words[i % 10]} {words[(i // 10) % 10]} {words[(i // 100) % 10]} shape number {i % 9973}"
                for i in idx.tolist()]
        none = pa.nulls(n, pa.string())
        table = pa.table({
            "sample_id": pa.array([f"{i:032x}" for i in idx.tolist()]), "kind": pa.array(["caption"] * n),
            "split": pa.array(["train"] * n), "language": pa.array(["en"] * n), "text": pa.array(text),
            "question": none, "answer": none, "answers": pa.nulls(n, pa.list_(pa.string())),
            "image": image, "image_sha256": pa.array([f"{w:064x}" for w in which.tolist()]),
            "image_width": pa.array(np.full(n, 24, np.int32)), "image_height": pa.array(np.full(n, 24, np.int32)),
            "image_format": pa.array(["PNG"] * n), "source_file": pa.array(["captions.jsonl"] * n),
            "source_line": pa.array(idx + 1),
        }).replace_schema_metadata(meta)
        name = f"shard-{k:05d}.parquet"
        pq.write_table(table, version / name)
        entries.append({"path": name, "rows": n})
    (version / "_manifest.json").write_text(json.dumps({"shards": entries}))
    return version


def _tokenizer(root: Path):
    from openmind_core.model import load_tokenizer, train_bpe_tokenizer
    from openmind_core.prompting import format_prompt

    path = root / "tokenizer"
    if not path.exists():
        words = "a red green blue small large square circle left right top shape number".split()
        corpus = [" ".join(words[i:] + words[:i]) + f" {i}" for i in range(len(words))]
        train_bpe_tokenizer(corpus + [format_prompt("Describe the image.")], vocab_size=300).save_pretrained(path)
    return load_tokenizer(path)


def _rollup(pid: int | str = "self") -> dict[str, int]:
    """``/proc/<pid>/smaps_rollup`` in bytes (Linux); psutil's memory_full_info elsewhere."""
    try:
        out = {}
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
            key, value = line.split(":", 1)
            out[key] = int(value.split()[0]) * 1024
        return out
    except OSError:
        import psutil

        info = psutil.Process(None if pid == "self" else int(pid)).memory_full_info()
        return {"Anonymous": info.uss, "Private_Dirty": info.uss, "Rss": info.rss}


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _child(lake: Path, layout: str, workers_check: bool, rate_images: int) -> dict:
    """One measurement in this (fresh) process."""
    import torch
    from torch.utils.data import DataLoader

    from openmind_core.data import Collator, ResumableSampler, VLMDataset
    from openmind_core.data.curated import read_table
    from openmind_core.prompting import encode_many, instruction_for

    torch.set_num_threads(1)
    tok = _tokenizer(lake.parent.parent)
    image_id = tok.convert_tokens_to_ids("<image>")
    args = (tok, 56, 16, image_id, 48)
    _trim()
    before = _rollup()["Anonymous"]
    t0 = time.perf_counter()
    out: dict = {}
    if layout == "old":  # what VLMDataset held before: every row and its token ids as Python objects
        rows = read_table(lake, "train").to_pylist()
        pairs = [instruction_for(r) for r in rows]
        encoded = encode_many(tok, [i for i, _ in pairs], [t or "" for _, t in pairs], 16, image_id, 48)
        ids = [r["sample_id"] for r in rows]
        del pairs
        out["build_s"] = time.perf_counter() - t0
        _trim()
        out["anon"] = _rollup()["Anonymous"] - before
        out["rows"] = len(rows)
        del rows, encoded, ids
        return out
    ds = VLMDataset(lake, "train", *args, pixel_cache_bytes=0)
    out["build_s"] = time.perf_counter() - t0
    _trim()
    out["anon"] = _rollup()["Anonymous"] - before
    out["rows"] = len(ds)
    if workers_check:
        loader = DataLoader(ds, batch_size=16, sampler=ResumableSampler(ds.sample_ids, seed=0), num_workers=2,
                            collate_fn=Collator(0), prefetch_factor=2, persistent_workers=True)
        it = iter(loader)
        for _ in range(BATCHES):
            next(it)
        out["worker_private_dirty"] = [_rollup(w.pid)["Private_Dirty"] for w in it._workers]
        del it, loader
    if rate_images:
        # the same token ids as above (the count of image tokens does not change the loader's work)
        big = VLMDataset(lake, "train", tok, IMAGE_SIZE, 16, image_id, 48, pixel_cache_bytes=0)
        for workers in (2, 0):
            loader = DataLoader(big, batch_size=16, sampler=ResumableSampler(big.sample_ids, seed=0),
                                num_workers=workers, collate_fn=Collator(0), prefetch_factor=4 if workers else None)
            it = iter(loader)
            for _ in range(2 * max(workers, 1)):  # start-up: every worker's first batches
                next(it)
            t = time.perf_counter()
            n = 0
            while n < rate_images:
                n += len(next(it)["sample_ids"])
            out[f"images_per_s_{workers}"] = n / (time.perf_counter() - t)
            del it, loader
    return out


def _spawn(lake: Path, layout: str, workers_check: bool = False, rate_images: int = 0) -> dict:
    cmd = [sys.executable, __file__, "--child", str(lake), "--layout", layout, "--rate-images", str(rate_images)]
    if workers_check:
        cmd.append("--workers-check")
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OPENMIND_PROGRESS": "0"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"bench_dataset_memory child failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _lake(root: Path, rows: int) -> Path:
    version = root / "curated" / f"bench{rows}"
    return version if (version / "_manifest.json").exists() else build_lake(root, rows)


def run(quick: bool = False, rows: int | None = None, root: Path | None = None) -> list[dict]:
    """``root``: a directory kept between runs (its lakes and caches are reused); default a temporary one."""
    rows = rows or (20_000 if quick else 50_000)
    rate_images = 128 if quick else 1024
    keep = root is not None
    root = Path(root) if keep else Path(tempfile.mkdtemp(prefix="bench-dsmem-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        t = time.perf_counter()
        lake, small = _lake(root, rows), _lake(root, SMALL)
        lake_s = time.perf_counter() - t
        _tokenizer(root)
        first = _spawn(lake, "new")  # builds the caches
        _spawn(small, "new")
        big = _spawn(lake, "new", workers_check=True, rate_images=rate_images)
        ref = _spawn(small, "new", workers_check=True)
        per_row = (big["anon"] - ref["anon"]) / (rows - SMALL)
        worker = [(b - r) / (rows - SMALL) for b, r in zip(big["worker_private_dirty"], ref["worker_private_dirty"])]
        old_rows = min(rows, OLD_ROWS)
        old_lake = lake if old_rows == rows else _lake(root, old_rows)
        old, old_ref = _spawn(old_lake, "old"), _spawn(small, "old")
        old_per_row = (old["anon"] - old_ref["anon"]) / (old_rows - SMALL)
        cache_mb = sum(f.stat().st_size for f in (root / "cache" / lake.name).iterdir()) / 1e6
        n = f"{rows:,} caption rows"
        return [
            {"name": f"dataset heap per row, main process ({n})", "ours_s": per_row, "baseline_s": old_per_row,
             "ratio": per_row / old_per_row if old_per_row > 0 else None, "goal": "<= 64 B/row", "unit": "B/row",
             "notes": f"anonymous memory beyond the mapped files (baseline: old list layout at {old_rows:,} rows); "
                      f"dataset at {rows:,} rows: {big['anon'] / 1e6:.1f} MB heap, {cache_mb:.0f} MB mapped caches"},
            {"name": f"dataset heap per row, each of 2 loader workers ({n})", "ours_s": max(worker),
             "baseline_s": None, "ratio": None, "goal": "<= 64 B/row", "unit": "B/row",
             "notes": f"private dirty pages per worker after {BATCHES} batches: "
                      + ", ".join(f"{w:.2f}" for w in worker) + f" B/row ({[round(b / 1e6, 1) for b in big['worker_private_dirty']]} MB)"},
            {"name": f"dataset build: tokenise + caches ({n})", "ours_s": first["build_s"],
             "baseline_s": old["build_s"] * rows / old_rows, "ratio": first["build_s"] / (old["build_s"] * rows / old_rows),
             "goal": "<= 1.5x time", "unit": "s",
             "notes": f"baseline: to_pylist + encode_many lists (scaled from {old_rows:,} rows); reopening: "
                      f"{big['build_s']:.2f} s; writing the lake with pyarrow: {lake_s:.1f} s"
                      + (" (reused)" if keep else "")},
            {"name": f"loader images/s at {IMAGE_SIZE} px, no pixel cache, 2 workers", "ours_s": big["images_per_s_2"],
             "baseline_s": big["images_per_s_0"], "ratio": big["images_per_s_2"] / big["images_per_s_0"],
             "goal": ">= 1x throughput", "unit": "img/s",
             "notes": f"decode + resize + normalise per sample in 2 workers, baseline in the main process; "
                      f"{rate_images} images of 24 px PNG; os.cpu_count()={os.cpu_count()}"},
        ]
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rows", type=int, default=None, help="rows in the lake (e.g. 1000000)")
    p.add_argument("--root", type=Path, default=None, help="keep lakes and caches here and reuse them")
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--layout", default="new", help=argparse.SUPPRESS)
    p.add_argument("--workers-check", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--rate-images", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(_child(a.child, a.layout, a.workers_check, a.rate_images)))
        return
    from bench import print_rows

    print_rows(run(quick=a.quick, rows=a.rows, root=a.root))


if __name__ == "__main__":
    main()
