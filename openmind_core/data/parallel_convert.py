"""Conversion fanned out: one job per raw file, merged into the curated version a serial run writes.

``convert_file(raw_root, cfg, order, work)`` converts one file of the download (``reader.source_files``
order) on its own: text checks, images, rows and duplicates within that file (``convert.file_rows``),
writing its kept rows as Arrow IPC (``rows.arrow``, plus how many batches each row table had) and its
bad rows as a quarantine spool under ``work``.  It returns a small, picklable ``FilePart``, so the
jobs can run in threads, processes or on a Dask cluster that shares the lake's file system.

``merge(raw, cfg, lake, parts)`` then streams the parts, in file order, through ``convert.write_version``
(the serial driver's own writer), doing what only the whole input can: a row whose content an earlier
file already kept is quarantined as ``duplicate`` (its record holds the line's text, read from the file
as the serial run reads it), and a within-file duplicate of such a row names the globally first copy.
Row tables keep their boundaries and the quarantine its file and line order, so the shards, the
manifest and the quarantine are byte for byte those of ``convert.convert`` (tested).

Image verdicts are cached per file here, not across files: a download whose files share images
inspects a shared image once per file.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from schemas.artifacts import CuratedDataset, RawDataset
from schemas.config import DataConfig

from openmind_core.data.convert import _artifact, _complete, existing_version, file_rows, version_of, write_version
from openmind_core.data.image_checks import ImageCache, Pool
from openmind_core.data.layout import CURATED_MANIFEST, read_json
from openmind_core.data.quarantine import ConversionLedger
from openmind_core.data.reader import source_files
from openmind_core.data.rows import SCHEMA
from openmind_core.data.sources import load_raw
from openmind_core.data.validate import Problem
from openmind_core.progress import Reported

PARTS = "rows.arrow"
SPOOL = "quarantine.jsonl"


@dataclass
class FilePart:
    """What one file's job produced (paths and counts; the rows stay on disk)."""

    order: int
    work: str  # directory holding rows.arrow, its batch counts and the quarantine spool
    rows_in: int
    reasons: dict[str, int]
    crlf_lines: int = 0
    bom: bool = False
    format: str | None = None
    tables: list[int] = field(default_factory=list)  # batches per row table, in order


def plan(raw: RawDataset, cfg: DataConfig, lake: str | Path) -> tuple[str, int, Path]:
    """(curated version, number of raw files, the fan-out's work directory in the lake)."""
    manifest = load_raw(Path(raw.root))
    version = version_of(manifest, cfg)
    n = len(source_files(Path(raw.root), manifest, ConversionLedger()))
    return version, n, Path(lake) / "curated" / f".fanout-{version}"


def is_complete(raw: RawDataset, cfg: DataConfig, lake: str | Path) -> bool:
    version, _, _ = plan(raw, cfg, lake)
    return _complete(Path(lake) / "curated" / version) is not None


def convert_file(raw_root: str | Path, cfg: DataConfig, order: int, work: str | Path, report=None) -> FilePart:
    """Convert raw file number ``order`` into ``work`` (replaced if present); ``report(done, total)`` is
    called as its rows are converted."""
    raw_root, work = Path(raw_root), Path(work)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    manifest = load_raw(raw_root)
    ledger = ConversionLedger()
    f = source_files(raw_root, manifest, ledger)[order]
    total = next((int(x.get("rows") or 0) for x in manifest["files"] if raw_root / x["path"] == f.path), 0)
    pool = Pool(cfg.num_workers or 1)  # the fan-out is the parallelism: one core a file unless asked
    tables: list[int] = []
    try:
        with open(work / SPOOL, "w", encoding="utf-8") as ledger.spool, \
                pa.OSFile(str(work / PARTS), "wb") as sink, pa.ipc.new_file(sink, SCHEMA) as writer:
            # no bar on the terminal (files convert side by side); ``report`` feeds the task's progress artifact
            for rows in file_rows(f, cfg, ledger, raw_root, ImageCache(), pool, Reported(None, total, report)):
                batches = rows.to_batches()
                for b in batches:
                    writer.write_batch(b)
                tables.append(len(batches))
            ledger.flush()
    finally:
        pool.shutdown()
    return FilePart(order=order, work=str(work), rows_in=ledger.rows_in, reasons=dict(ledger.reasons),
                    crlf_lines=f.crlf_lines, bom=f.bom, format=f.format, tables=tables)


def _digests(sample_ids: pa.ChunkedArray) -> np.ndarray:
    ids = "".join(sample_ids.to_pylist())
    return np.frombuffer(bytes.fromhex(ids), dtype=np.uint8).reshape(-1, 16)


def merge(raw: RawDataset, cfg: DataConfig, lake: str | Path, parts: list[FilePart]) -> CuratedDataset:
    """Merge the files' parts into ``<lake>/curated/<version>/`` exactly as ``convert.convert`` writes it."""
    lake, raw_root = Path(lake), Path(raw.root)
    manifest, version, final, done = existing_version(lake, raw_root, cfg)
    if done is not None:
        return done
    parts = sorted(parts, key=lambda p: p.order)
    ledger = ConversionLedger()
    files = source_files(raw_root, manifest, ledger)
    if [p.order for p in parts] != list(range(len(files))):
        raise ValueError(f"merge: parts for files {[p.order for p in parts]}, the download has {len(files)} files")
    for f, p in zip(files, parts):
        f.rows_in, f.crlf_lines, f.bom, f.format = p.rows_in, p.crlf_lines, p.bom, p.format
        ledger.rows_in += p.rows_in

    def streams():
        for f, p in zip(files, parts):
            yield from _file_stream(f, p, cfg, raw_root, ledger)

    try:
        m = write_version(final, lake, version, manifest, cfg, ledger, streams)
    finally:  # the parts are scratch: gone whether the merge worked or not (a rerun converts again)
        for p in parts:
            shutil.rmtree(p.work, ignore_errors=True)
        work_root = Path(parts[0].work).parent if parts else Path()
        if work_root.name.startswith(".fanout-") and work_root.is_dir() and not any(work_root.iterdir()):
            work_root.rmdir()
    return _artifact(final, read_json(final / CURATED_MANIFEST) or m, lake, reused=False)


def _file_stream(f, p: FilePart, cfg: DataConfig, raw_root: Path, ledger: ConversionLedger):
    """One file's row tables, without rows an earlier file kept; then its quarantine records."""
    reader = pa.ipc.open_file(pa.memory_map(os.path.join(p.work, PARTS)))
    dropped: dict[int, str] = {}  # line -> "file:line" of the globally first copy
    k = 0
    for n in p.tables:
        rows = pa.Table.from_batches([reader.get_batch(k + j) for j in range(n)], schema=SCHEMA)
        k += n
        digests, lines = _digests(rows["sample_id"]), rows["source_line"].to_numpy()
        keep = ledger.seen.keep_new(f.order, digests, lines)
        if keep is not None:
            for i in np.flatnonzero(~keep):
                dropped[int(lines[i])] = ledger.first(digests[i])
            if not keep.any():
                continue
            rows = rows.filter(pa.array(keep))
        yield rows
    # the quarantine: this file's own bad rows and the rows dropped above, in line order
    records = []
    own = f"same content as {f.shown}:"
    with open(os.path.join(p.work, SPOOL), encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            if rec["reason"] == "duplicate" and rec["detail"].startswith(own):
                first = int(rec["detail"][len(own):])
                if first in dropped:  # its first copy in this file was itself a copy of an earlier file's row
                    rec["detail"] = f"same content as {dropped[first]}"
            records.append((f.order, rec["line"], rec))
    for reason, count in p.reasons.items():
        ledger.reasons[reason] += count
    for line, first in dropped.items():  # the line's text is read back from the file at flush
        ledger.quarantine(f, line, Problem("duplicate", f"same content as {first}"))
    ledger.pending += records
    ledger.flush()


def convert_serially(raw: RawDataset, cfg: DataConfig, lake: str | Path) -> CuratedDataset:
    """The fan-out run in this process, one file after the other (what the tasks do, without Prefect)."""
    version, n, work = plan(raw, cfg, lake)
    if _complete(Path(lake) / "curated" / version) is not None:
        return merge(raw, cfg, lake, [])
    parts = [convert_file(raw.root, cfg, i, work / f"file-{i:05d}") for i in range(n)]
    return merge(raw, cfg, lake, parts)
