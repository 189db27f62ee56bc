"""Benchmark: our validated JSONL -> Parquet conversion against raw pyarrow, timed in one run.

1. text: a generated caption JSONL (100,000 rows; quick: 5,000) whose rows share a small pool of
   images.  Baseline: ``pyarrow.json.read_json`` + ``pyarrow.parquet.write_table`` (zstd) on the
   same file, which validates nothing and embeds no images.  Goal: ours >= 0.5 of raw rows/s.
2. memory: peak resident memory above the process's start, converting 1,000,000 caption rows
   (quick: 20,000), each side in a fresh process, against raw ``read_json`` + ``write_table``
   (which holds the whole table).
3. images: one row per distinct image (2,000 images; quick: 300).  Baseline: a plain loop that
   only decodes every image (``Image.open(path).load()``).  Goal: ours <= 1.25x its time.

Each side is warmed up once in the process first (imports and first-call costs: pyarrow imports
pandas on its first ``pa.array`` call, ~0.4 s, which would otherwise land on whichever side runs
first), then timed ``repeat`` times, alternating; the table shows the best time of each side and
the notes every run, because the machine is shared and single runs vary by 2x.

Run: ``python bench/bench_convert.py [--quick] [--repeat N]``; ``--breakdown`` prints instead the CPU
time of each part of the text conversion next to the raw baseline's two parts, then the wall time
of the conversion with its parsing, and then also its Parquet encoding, taken away (what is left
is the main thread's own per-row work).
"""

from __future__ import annotations

import io
import json
import logging
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pyarrow as pa  # noqa: E402
import pyarrow.json as pa_json  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from PIL import Image  # noqa: E402

from openmind_core.data import convert, download  # noqa: E402
from schemas.config import DataConfig  # noqa: E402


def _png(rng: random.Random, size: int) -> bytes:
    img = Image.new("RGB", (size, size), tuple(rng.randint(0, 255) for _ in range(3)))
    for _ in range(6):  # some structure so PNGs are not trivially small
        x, y = rng.randint(0, size - 8), rng.randint(0, size - 8)
        img.paste(tuple(rng.randint(0, 255) for _ in range(3)), (x, y, x + 8, y + 8))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def make_caption_jsonl(root: Path, rows: int, pool: int = 50, size: int = 32, seed: int = 0) -> Path:
    rng = random.Random(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    for i in range(pool):
        (root / "img" / f"{i}.png").write_bytes(_png(rng, size))
    words = ["red", "blue", "green", "circle", "square", "small", "large", "left", "right", "top", "bottom"]
    path = root / "captions.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i in range(rows):
            text = " ".join(rng.choice(words) for _ in range(8)) + f" #{i}"
            f.write(json.dumps({"image": f"img/{i % pool}.png", "text": text}) + "\n")
    return path


def make_image_jsonl(root: Path, images: int, size: int = 64, seed: int = 1) -> Path:
    rng = random.Random(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    path = root / "captions.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i in range(images):
            (root / "img" / f"{i}.png").write_bytes(_png(rng, size))
            f.write(json.dumps({"image": f"img/{i}.png", "text": f"image number {i}"}) + "\n")
    return path


def _ours(jsonl: Path, lake: Path, workers: int | None = None) -> tuple[float, int]:
    cfg = DataConfig(source="jsonl", jsonl={"captions": str(jsonl)}, num_workers=workers)
    raw = download(cfg, lake)  # the copy + hash step is the download task, not timed here
    t = time.perf_counter()
    curated = convert(raw, cfg, lake)
    elapsed = time.perf_counter() - t
    shutil.rmtree(lake, ignore_errors=True)
    return elapsed, curated.rows_kept


def _raw_pyarrow(jsonl: Path, out: Path) -> tuple[float, int]:
    t = time.perf_counter()
    table = pa_json.read_json(jsonl)
    pq.write_table(table, out, compression="zstd")
    return time.perf_counter() - t, table.num_rows


def _decode_loop(paths: list[Path]) -> float:
    t = time.perf_counter()
    for p in paths:
        with Image.open(p) as im:
            im.load()
    return time.perf_counter() - t


def _warm_up(tmp: Path) -> None:
    jsonl = make_caption_jsonl(tmp / "warm", 200, pool=5)
    _raw_pyarrow(jsonl, tmp / "warm.parquet")
    _ours(jsonl, tmp / "lake-warm")
    _decode_loop(sorted((tmp / "warm" / "img").glob("*.png")))


def _spread(times: list[float]) -> str:
    return "/".join(f"{t:.3f}" for t in times)


def bench_text(rows: int, tmp: Path, repeat: int = 1) -> dict:
    jsonl = make_caption_jsonl(tmp / "text", rows)
    base, ours = [], []
    for i in range(repeat):
        t, n = _raw_pyarrow(jsonl, tmp / "raw.parquet")
        base.append(t)
        t, kept = _ours(jsonl, tmp / f"lake-text-{i}")
        ours.append(t)
        assert kept == rows == n
    b, o = min(base), min(ours)
    return {"name": f"text conversion, {rows:,} caption rows", "ours_s": o, "baseline_s": b,
            "ratio": (rows / o) / (rows / b), "goal": ">= 0.5 (ours rows/s over raw pyarrow rows/s)", "unit": "s",
            "notes": f"ours {rows / o:,.0f} rows/s validated + images embedded; raw {rows / b:,.0f} rows/s "
                     f"read_json + write_table; best of {repeat}: ours {_spread(ours)} s, raw {_spread(base)} s"}


def bench_download_again(rows: int, tmp: Path, repeat: int = 1) -> dict:
    """A second download of the same JSONL (a no-op) against hashing the file once."""
    from openmind_core.io import sha256_file

    jsonl = tmp / "text" / "captions.jsonl"  # made by bench_text
    cfg = DataConfig(source="jsonl", jsonl={"captions": str(jsonl)})
    first = download(cfg, tmp / "lake-again")
    base, ours = [], []
    for _ in range(repeat):
        t = time.perf_counter()
        sha256_file(jsonl)
        base.append(time.perf_counter() - t)
        t = time.perf_counter()
        again = download(cfg, tmp / "lake-again")
        ours.append(time.perf_counter() - t)
        assert again.reused and again.fingerprint == first.fingerprint
    b, o = min(base), min(ours)
    return {"name": f"download again, same {rows:,}-row JSONL", "ours_s": o, "baseline_s": b, "ratio": o / b,
            "goal": "report (a no-op: hashes the inputs, copies nothing)", "unit": "s",
            "notes": f"baseline: sha256 of the JSONL alone; best of {repeat}: ours {_spread(ours)} s, "
                     f"sha256 {_spread(base)} s"}


def bench_images(images: int, tmp: Path, repeat: int = 1) -> dict:
    jsonl = make_image_jsonl(tmp / "images", images)
    paths = sorted((tmp / "images" / "img").glob("*.png"))
    base, ours = [], []
    for i in range(repeat):
        base.append(_decode_loop(paths))
        t, kept = _ours(jsonl, tmp / f"lake-images-{i}")
        ours.append(t)
        assert kept == images
    b, o = min(base), min(ours)
    return {"name": f"image conversion, {images:,} 64 px PNGs", "ours_s": o, "baseline_s": b,
            "ratio": o / b, "goal": "<= 1.25 (ours time over a decode-only loop)", "unit": "s",
            "notes": "ours: read, sha256, decode, validate, embed, write zstd Parquet (all cores); "
                     f"best of {repeat}: ours {_spread(ours)} s, decode loop {_spread(base)} s"}


_PEAK_CHILD = r"""
import json, os, resource, sys
sys.path.insert(0, sys.argv[5])
import pyarrow as pa, pyarrow.json as pa_json, pyarrow.parquet as pq
from openmind_core.data import convert
from schemas.artifacts import RawDataset
from schemas.config import DataConfig
mode, jsonl, raw, out = sys.argv[1:5]
pq.write_table(pa_json.read_json(pa.BufferReader(b'{"a": "b"}\n')), out + ".warm.parquet")  # first-use costs
pa.array(["x"]).to_pylist()
unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB elsewhere
try:  # resident now (Linux); elsewhere the peak so far, imports and warm-up
    before = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
except OSError:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit
if mode == "ours":
    convert(RawDataset.model_validate_json(raw), DataConfig(source="jsonl", jsonl={"captions": jsonl}), out)
else:
    pq.write_table(pa_json.read_json(jsonl), out + ".parquet", compression="zstd")
print(json.dumps({"before": before, "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit}))
"""


def bench_memory(rows: int, tmp: Path) -> dict:
    """Peak memory of converting a caption JSONL, each side in a fresh process."""
    jsonl = make_caption_jsonl(tmp / "memory", rows, seed=2)
    cfg = DataConfig(source="jsonl", jsonl={"captions": str(jsonl)})
    raw = download(cfg, tmp / "lake-memory")
    extra = {}
    for mode in ("raw", "ours"):
        done = subprocess.run([sys.executable, "-c", _PEAK_CHILD, mode, str(jsonl), raw.model_dump_json(),
                               str(tmp / f"lake-memory-{mode}"), str(Path(__file__).resolve().parent.parent)],
                              capture_output=True, text=True, check=True)
        m = json.loads(done.stdout.splitlines()[-1])
        extra[mode] = (m["peak"] - m["before"]) / 1e6
    size = jsonl.stat().st_size / 1e6
    return {"name": f"peak memory converting {rows:,} caption rows", "ours_s": extra["ours"],
            "baseline_s": extra["raw"], "ratio": extra["ours"] / extra["raw"] if extra["raw"] > 0 else None, "unit": "MB",
            "goal": "report (MB above the process's start; raw holds the whole table)",
            "notes": f"{size:.0f} MB of JSONL; ours reads it a block at a time and keeps about 140 bytes a row "
                     f"of content hashes; raw read_json + write_table holds the whole table"}


def run(quick: bool = False, repeat: int | None = None) -> list[dict]:
    repeat = repeat or (1 if quick else 5)
    tmp = Path(tempfile.mkdtemp(prefix="bench-convert-"))
    try:
        _warm_up(tmp)
        rows = 5_000 if quick else 100_000
        return [bench_text(rows, tmp, repeat), bench_download_again(rows, tmp, repeat),
                bench_memory(20_000 if quick else 1_000_000, tmp), bench_images(300 if quick else 2_000, tmp, repeat)]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def breakdown(rows: int = 100_000, repeat: int = 7) -> list[tuple[str, float]]:
    """CPU milliseconds (best of ``repeat``, Arrow on one thread) of each part of the text conversion.

    Where the time goes, next to the raw baseline's two parts: what bounds the ratio on few cores.
    """
    import importlib

    from openmind_core.data import content, validate

    cm = importlib.import_module("openmind_core.data.convert")
    from openmind_core.data import reader, rows as rows_mod
    tmp = Path(tempfile.mkdtemp(prefix="bench-convert-breakdown-"))
    threads = pa.cpu_count()
    try:
        jsonl = make_caption_jsonl(tmp / "text", rows)
        data = jsonl.read_bytes()
        cfg = DataConfig(source="jsonl", jsonl={"captions": str(jsonl)})
        raw = download(cfg, tmp / "lake")
        curated = convert(raw, cfg, tmp / "lake")
        lake = pa.concat_tables([pq.read_table(s) for s in curated.shards])
        blocks = list(reader._blocks(jsonl, reader.BLOCK_BYTES))
        batches = [lake.slice(i, rows_mod.CHUNK_ROWS) for i in range(0, rows, rows_mod.CHUNK_ROWS)]
        digests = [content.digests_of("caption", b, b["image_sha256"]) for b in batches]
        lines = [b["source_line"].to_numpy() for b in batches]
        raw_table = pa_json.read_json(pa.BufferReader(data))

        def dedup() -> None:
            seen = content.SeenContent()
            for d, ln in zip(digests, lines):
                seen.keep_new(0, d, ln)

        def write_ours() -> None:
            w = cm.shard_writer(tmp / f"w{time.perf_counter_ns()}", cfg)
            for b in batches:
                w.write(b)
            w.close()

        parts = [
            ("raw: read_json", lambda: pa_json.read_json(pa.BufferReader(data))),
            ("raw: write_table (2 columns)", lambda: pq.write_table(raw_table, tmp / "raw.parquet", compression="zstd")),
            ("ours: parse + text checks (parse_block)", lambda: [validate.parse_block(b, f, "caption", 4000)
                                                                for f, b in blocks]),
            ("ours: content hashes (xxh3-128)", lambda: [content.digests_of("caption", b, b["image_sha256"])
                                                        for b in batches]),
            ("ours: duplicate check", dedup),
            ("ours: ids + splits", lambda: [(content.hex_ids(d), content.splits_of(d, 0.1)) for d in digests]),
            ("ours: write shards (16 columns)", write_ours),
            ("ours: whole convert (threads on)", lambda: shutil.rmtree(
                Path(convert(raw, cfg, tmp / f"l{time.perf_counter_ns()}").root).parent.parent)),
        ]
        out = []
        pa.set_cpu_count(1)
        for name, fn in parts:
            if name.endswith("(threads on)"):
                pa.set_cpu_count(threads)
            best = float("inf")
            for _ in range(repeat):
                t = time.process_time()
                fn()
                best = min(best, time.process_time() - t)
            out.append((name, best * 1000))
        return out
    finally:
        pa.set_cpu_count(threads)
        shutil.rmtree(tmp, ignore_errors=True)


class _CountingWriter:
    """A stand-in for the converter's ShardWriter that keeps the rows' count and encodes nothing."""

    def __init__(self, directory: Path, cfg: DataConfig, split: str | None = None) -> None:
        self.rows = 0

    def write(self, rows: pa.Table) -> None:
        self.rows += rows.num_rows

    def close(self) -> list[dict]:
        return [{"path": "none", "rows": self.rows, "bytes": 0, "sha256": ""}]

    def abort(self) -> None:
        pass


def critical_path(rows: int = 100_000, repeat: int = 7) -> list[tuple[str, float]]:
    """Wall milliseconds (best of ``repeat``, all cores) of the whole text conversion with its
    parsing, then also its Parquet encoding, taken away: what is left is the converter's own
    per-row work in the main thread (checks of image references, hashes, duplicates, building the
    rows), which the two background threads cannot hide."""
    import importlib
    from unittest import mock

    from openmind_core.data import validate

    cm = importlib.import_module("openmind_core.data.convert")
    from openmind_core.data import reader
    tmp = Path(tempfile.mkdtemp(prefix="bench-convert-path-"))
    try:
        jsonl = make_caption_jsonl(tmp / "text", rows)
        cfg = DataConfig(source="jsonl", jsonl={"captions": str(jsonl)})
        raw = download(cfg, tmp / "lake")
        parsed: dict = {}

        def pre_parsed(block: bytes, first: int, kind: str, max_text_chars: int):
            if (first, len(block)) not in parsed:
                parsed[first, len(block)] = validate.parse_block(block, first, kind, max_text_chars)
            return parsed[first, len(block)]

        def whole() -> None:
            convert(raw, cfg, tmp / "l")
            shutil.rmtree(tmp / "l", ignore_errors=True)

        def best_of(fn) -> float:
            fn()  # warm-up (and fills ``parsed``)
            times = []
            for _ in range(repeat):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
            return min(times) * 1000

        out = [("raw: read_json + write_table", best_of(lambda: _raw_pyarrow(jsonl, tmp / "raw.parquet"))),
               ("ours: whole convert", best_of(whole))]
        with mock.patch.object(reader, "parse_block", pre_parsed):
            out.append(("ours: blocks already parsed", best_of(whole)))
            with mock.patch.object(cm, "shard_writer", _CountingWriter):
                out.append(("ours: blocks already parsed, nothing encoded", best_of(whole)))
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def print_table(results: list[dict]) -> None:
    print(f"{'benchmark':42s} {'ours':>10s} {'baseline':>10s} {'ratio':>7s}  goal")
    for r in results:
        ours, base = (f"{r[k]:8.3f}{r['unit']:>2s}" if r["unit"] == "s" else f"{r[k]:7.1f}{r['unit']:>3s}"
                      for k in ("ours_s", "baseline_s"))
        ratio = f"{r['ratio']:7.2f}" if r["ratio"] is not None else f"{'-':>7s}"
        print(f"{r['name']:42s} {ours} {base} {ratio}  {r['goal']}")
        print(f"{'':42s} {r['notes']}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    if "--breakdown" in sys.argv:
        print(f"CPU time per part, {100_000:,} caption rows (best of 7; Arrow on one thread except the last row)")
        for name, ms in breakdown():
            print(f"  {name:45s} {ms:7.1f} ms")
        print(f"Wall time, {100_000:,} caption rows (best of 7, all cores), with parsing and then encoding taken away")
        for name, ms in critical_path():
            print(f"  {name:45s} {ms:7.1f} ms")
        sys.exit(0)
    n = sys.argv.index("--repeat") + 1 if "--repeat" in sys.argv else 0
    print_table(run(quick="--quick" in sys.argv, repeat=int(sys.argv[n]) if n else None))
