"""The JSONL -> Parquet conversion: validate every row, quarantine the bad, write a versioned lake.

``convert(raw, cfg, lake)`` reads a raw download (``sources.download``) and writes
``<lake>/curated/<version>/part-00000.parquet ...`` (zstd, ``cfg.shard_rows`` rows per shard,
row groups of ``cfg.row_group_rows``) and ``_manifest.json`` last, with the bad rows (file, line,
reason, detail, the line's text) in ``<lake>/quarantine/<version>/quarantine.jsonl``.

- ``version`` hashes the schema version, the converter settings and the sha256 of every raw
  file: the same input gives the same version and byte-identical files (a rerun that finds a
  complete manifest reuses it); a changed input gives a new version beside the old one.
- ``rows_in == rows_kept + rows_quarantined`` always; a fully bad input raises ``DataError``.
- ``split`` comes from the content hash (``sample_id``), so a row keeps its split when others
  are added.
- Images are embedded as bytes with their sha256, width, height and format; decoding them for
  validation runs in ``cfg.num_workers`` processes (default: all cores) when there are many.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
import shutil
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from schemas.artifacts import CuratedDataset, RawDataset
from schemas.config import DataConfig

from openmind_core.data.lake import (
    CURATED_MANIFEST,
    SCHEMA_VERSION,
    DataError,
    clean_stale_tmp,
    read_json,
    stable_hash,
    staged_dir,
)
from openmind_core.data.sources import CAPTIONS, VQA, load_raw
from openmind_core.data.validate import (
    ImageInfo,
    ImageRef,
    Problem,
    check_encoding,
    load_and_inspect,
    parse_row,
    resolve_image,
    split_lines,
)
from openmind_core.io import atomic_write_text, sha256_file

log = logging.getLogger(__name__)

CONVERTER_VERSION = 1
QUARANTINE_FILE = "quarantine.jsonl"
PARALLEL_MIN_IMAGES = 256  # below this, worker start-up costs more than it saves
CHUNK_ROWS = 4096

SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("language", pa.string(), nullable=False),
        pa.field("text", pa.string()),
        pa.field("question", pa.string()),
        pa.field("answer", pa.string()),
        pa.field("image", pa.binary(), nullable=False),
        pa.field("image_sha256", pa.string(), nullable=False),
        pa.field("image_width", pa.int32(), nullable=False),
        pa.field("image_height", pa.int32(), nullable=False),
        pa.field("image_format", pa.string(), nullable=False),
        pa.field("source_file", pa.string(), nullable=False),
        pa.field("source_line", pa.int64(), nullable=False),
    ],
    metadata={"openmind.schema_version": str(SCHEMA_VERSION)},
)


@dataclass
class Candidate:
    """A row that passed the text checks; its image is still to be inspected."""

    kind: str
    file: str
    line: int
    fields: dict[str, Any]
    image: ImageRef


@dataclass
class Tally:
    rows_in: int = 0
    bad: list[dict] = field(default_factory=list)
    seen: dict[str, str] = field(default_factory=dict)  # sample_id -> "file:line"

    def quarantine(self, file: str, line: int, problem: Problem, text: str) -> None:
        self.bad.append({"file": file, "line": line, "reason": problem.reason, "detail": problem.detail,
                         "text": text[:2000]})


def sample_id(kind: str, fields: dict[str, Any], image_sha256: str) -> str:
    """Content hash of a row: kind, texts and image bytes (not its file name or line)."""
    parts = [kind, fields.get("text") or "", fields.get("question") or "", fields.get("answer") or "", image_sha256]
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:24]


def split_of(sid: str, val_fraction: float) -> str:
    """'validation' for a fixed ``val_fraction`` of content hashes, else 'train' (stable under growth)."""
    return "validation" if int(sid[:8], 16) / 0x1_0000_0000 < val_fraction else "train"


def version_of(raw_manifest: dict, cfg: DataConfig) -> str:
    settings = cfg.model_dump(include={"val_fraction", "shard_rows", "row_group_rows", "max_text_chars",
                                       "max_image_bytes", "max_image_pixels"})
    files = sorted((f["path"], f["sha256"]) for f in raw_manifest["files"])
    return stable_hash({"schema": SCHEMA_VERSION, "converter": CONVERTER_VERSION, "settings": settings,
                        "files": files, "roots": raw_manifest.get("image_roots"),
                        "absolute": raw_manifest.get("absolute_images"),
                        "problems": raw_manifest.get("image_problems")})


# --------------------------------------------------------------------------- reading


def _candidates(raw_root: Path, manifest: dict, cfg: DataConfig, tally: Tally) -> Iterator[Candidate]:
    """Every non-blank line of the raw JSONL files, text-validated, in file order."""
    inputs = manifest.get("inputs") or {}
    for name, kind in ((CAPTIONS, "caption"), (VQA, "vqa")):
        if not manifest.get("captions" if kind == "caption" else "vqa"):
            continue
        path = raw_root / name
        # the user's own file where there is one, else the raw file relative to the lake
        shown = inputs.get(name) or f"raw/{manifest['source']}/{manifest['fingerprint']}/{name}"
        root = raw_root / (manifest.get("image_roots") or {}).get(name, "files")
        absolute = (manifest.get("absolute_images") or {}).get(name, {})
        problems = (manifest.get("image_problems") or {}).get(name, {})
        data = path.read_bytes()
        resolved: dict[str, ImageRef | Problem] = {}  # rows often share an image path
        for lineno, raw in split_lines(data):
            tally.rows_in += 1
            try:
                decoded = check_encoding(raw)
                fields = parse_row(decoded, kind, cfg.max_text_chars)
                value = fields.pop("image")
                ref = resolved.get(value) if isinstance(value, str) else None
                if ref is None:
                    try:
                        ref = resolve_image(value, root, absolute, problems, raw_root)
                    except Problem as p:
                        ref = p
                    if isinstance(value, str) and len(resolved) < 1_000_000 and not (
                            isinstance(ref, ImageRef) and ref.data is not None):
                        resolved[value] = ref
                if isinstance(ref, Problem):
                    raise ref
            except Problem as p:
                tally.quarantine(shown, lineno, p, raw.decode("utf-8", errors="replace"))
                continue
            yield Candidate(kind, shown, lineno, fields, ref)


def _chunks(it: Iterator[Candidate], n: int) -> Iterator[list[Candidate]]:
    buf: list[Candidate] = []
    for c in it:
        buf.append(c)
        if len(buf) >= n:
            yield buf
            buf = []
    if buf:
        yield buf


class _ImageCache:
    """Inspected images by key, bytes kept up to a memory bound (rows often share images)."""

    def __init__(self, limit_bytes: int = 256 << 20) -> None:
        self.items: dict[str, tuple[bytes, ImageInfo] | Problem] = {}
        self.size = 0
        self.limit = limit_bytes

    def get(self, key: str):
        return self.items.get(key)

    def put(self, key: str, value) -> None:
        n = len(value[0]) if isinstance(value, tuple) else 0
        if self.size + n <= self.limit:
            self.items[key] = value
            self.size += n


def _inspect_all(refs: list[ImageRef], cfg: DataConfig, pool: ProcessPoolExecutor | None):
    jobs = [(r, cfg.max_image_bytes, cfg.max_image_pixels) for r in refs]
    if pool is not None and len(jobs) >= PARALLEL_MIN_IMAGES:
        return list(pool.map(load_and_inspect, jobs, chunksize=max(1, len(jobs) // (8 * pool._max_workers))))
    return [load_and_inspect(j) for j in jobs]


def _rows(raw_root: Path, manifest: dict, cfg: DataConfig, tally: Tally, pool) -> Iterator[dict]:
    cache = _ImageCache()
    for chunk in _chunks(_candidates(raw_root, manifest, cfg, tally), CHUNK_ROWS):
        todo: dict[str, ImageRef] = {}
        for c in chunk:
            if cache.get(c.image.key) is None and c.image.key not in todo:
                todo[c.image.key] = c.image
        local = dict(zip(todo, _inspect_all(list(todo.values()), cfg, pool)))
        for key, result in local.items():
            cache.put(key, result)
        for c in chunk:
            result = local.get(c.image.key) or cache.get(c.image.key)
            if isinstance(result, Problem):
                tally.quarantine(c.file, c.line, result, json.dumps({**c.fields, "image": c.image.path or "<inline>"},
                                                                     ensure_ascii=False))
                continue
            data, info = result
            sid = sample_id(c.kind, c.fields, info.sha256)
            if sid in tally.seen:
                tally.quarantine(c.file, c.line, Problem("duplicate", f"same content as {tally.seen[sid]}"),
                                 json.dumps({**c.fields, "image": c.image.path or "<inline>"}, ensure_ascii=False))
                continue
            tally.seen[sid] = f"{c.file}:{c.line}"
            yield {
                "sample_id": sid,
                "kind": c.kind,
                "split": split_of(sid, cfg.val_fraction),
                "language": c.fields["language"],
                "text": c.fields.get("text"),
                "question": c.fields.get("question"),
                "answer": c.fields.get("answer"),
                "image": data,
                "image_sha256": info.sha256,
                "image_width": info.width,
                "image_height": info.height,
                "image_format": info.format,
                "source_file": c.file,
                "source_line": c.line,
            }


# --------------------------------------------------------------------------- writing


def write_shard(rows: list[dict], path: Path, cfg: DataConfig) -> None:
    """One zstd Parquet shard with the schema version in its metadata."""
    table = pa.Table.from_pydict({name: [r[name] for r in rows] for name in SCHEMA.names}, schema=SCHEMA)
    pq.write_table(table, path, compression="zstd", row_group_size=cfg.row_group_rows)


def _pool(cfg: DataConfig) -> ProcessPoolExecutor | None:
    workers = cfg.num_workers or os.cpu_count() or 1
    if workers <= 1:
        return None
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context("spawn")
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx)


def _artifact(final: Path, m: dict, lake: Path, reused: bool) -> CuratedDataset:
    q = m.get("quarantine_path")
    return CuratedDataset(
        version=m["version"],
        schema_version=m["schema_version"],
        root=str(final),
        shards=[str(final / s["path"]) for s in m["shards"]],
        rows_in=m["rows_in"],
        rows_kept=m["rows_kept"],
        rows_quarantined=m["rows_quarantined"],
        quarantine_by_reason=m["quarantine_by_reason"],
        quarantine_path=str(lake / q) if q else None,
        splits=m["splits"],
        kinds=m["kinds"],
        reused=reused,
    )


def _complete(final: Path) -> dict | None:
    m = read_json(final / CURATED_MANIFEST)
    if m and all((final / s["path"]).is_file() and (final / s["path"]).stat().st_size == s["bytes"] for s in m["shards"]):
        return m
    return None


def convert(raw: RawDataset, cfg: DataConfig, lake: str | Path) -> CuratedDataset:
    """Validate and convert a raw download into ``<lake>/curated/<version>/`` (idempotent)."""
    lake = Path(lake)
    raw_root = Path(raw.root)
    manifest = load_raw(raw_root)
    version = version_of(manifest, cfg)
    final = lake / "curated" / version
    clean_stale_tmp(final.parent, final.name)
    done = _complete(final)
    if done is not None:
        log.info("curated version %s already complete: reusing it", version)
        return _artifact(final, done, lake, reused=True)
    if final.exists():
        log.warning("removing incomplete curated version %s", final)
        shutil.rmtree(final)

    tally = Tally()
    shards: list[dict] = []
    splits: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    pool = _pool(cfg)
    try:
        with staged_dir(final) as tmp:
            buf: list[dict] = []

            def flush() -> None:
                name = f"part-{len(shards):05d}.parquet"
                write_shard(buf, tmp / name, cfg)
                shards.append({"path": name, "rows": len(buf), "bytes": (tmp / name).stat().st_size,
                               "sha256": sha256_file(tmp / name)})
                buf.clear()

            for row in _rows(raw_root, manifest, cfg, tally, pool):
                splits[row["split"]] += 1
                kinds[row["kind"]] += 1
                buf.append(row)
                if len(buf) >= cfg.shard_rows:
                    flush()
            if buf:
                flush()
            kept = sum(s["rows"] for s in shards)
            by_reason = dict(sorted(Counter(b["reason"] for b in tally.bad).items()))
            assert tally.rows_in == kept + len(tally.bad), (tally.rows_in, kept, len(tally.bad))
            qpath = _write_quarantine(lake, version, tally.bad) if tally.bad else None
            if kept == 0:
                raise DataError(
                    f"no usable rows in {raw_root}: all {tally.rows_in} rows were quarantined "
                    f"({', '.join(f'{k}: {v}' for k, v in by_reason.items()) or 'the input is empty'})"
                    + (f"; see {lake / qpath}" if qpath else "")
                )
            m = {
                "schema_version": SCHEMA_VERSION,
                "version": version,
                "raw": {"source": manifest["source"], "fingerprint": manifest["fingerprint"], "root": f"raw/{manifest['source']}/{manifest['fingerprint']}"},
                "shards": shards,
                "columns": SCHEMA.names,
                "rows_in": tally.rows_in,
                "rows_kept": kept,
                "rows_quarantined": len(tally.bad),
                "quarantine_by_reason": by_reason,
                "quarantine_path": qpath,
                "splits": dict(sorted(splits.items())),
                "kinds": dict(sorted(kinds.items())),
                "settings": cfg.model_dump(mode="json", include={"val_fraction", "shard_rows", "row_group_rows",
                                                                 "max_text_chars", "max_image_bytes",
                                                                 "max_image_pixels"}),
            }
            atomic_write_text(tmp / CURATED_MANIFEST, json.dumps(m, indent=2, ensure_ascii=False, sort_keys=True) + "\n")
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    if tally.bad:
        log.warning("quarantined %d of %d rows (%s); see %s", len(tally.bad), tally.rows_in,
                    ", ".join(f"{k}: {v}" for k, v in m["quarantine_by_reason"].items()), lake / m["quarantine_path"])
    log.info("curated version %s: %d rows kept in %d shards (%s)", version, m["rows_kept"], len(shards), m["splits"])
    return _artifact(final, read_json(final / CURATED_MANIFEST) or m, lake, reused=False)


def _write_quarantine(lake: Path, version: str, bad: list[dict]) -> str:
    """Write the bad rows (atomic directory); returns the path relative to the lake."""
    final = lake / "quarantine" / version
    clean_stale_tmp(final.parent, final.name)
    if final.exists():
        shutil.rmtree(final)
    with staged_dir(final) as tmp:
        text = "".join(json.dumps(b, ensure_ascii=False, sort_keys=True) + "\n" for b in bad)
        atomic_write_text(tmp / QUARANTINE_FILE, text)
    return f"quarantine/{version}/{QUARANTINE_FILE}"
