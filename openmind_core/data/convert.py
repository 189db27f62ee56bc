"""The JSONL -> Parquet conversion: validate every row, quarantine the bad, write a versioned lake.

``convert(raw, cfg, lake)`` reads a raw download (``sources.download``) and writes
``<lake>/curated/<version>/train-00000-of-0000N.parquet ...`` and ``validation-00000-of-0000M.parquet
...`` (one shard set per split, named as Hugging Face ``datasets`` names shards, so
``load_dataset("parquet", data_dir=<version>)`` finds both splits; zstd; shards and row groups
sized by ``cfg.shard_rows``/``shard_bytes`` and ``row_group_rows``/``row_group_bytes``, see
``shards.py``) and ``_manifest.json`` last (its ``shards``: path, split, rows, bytes, sha256), with
the bad rows (file, line as a number, reason, detail, the line's own text) in
``<lake>/quarantine/<version>/quarantine.jsonl``.

- ``version`` hashes the schema version, the converter settings and the sha256 of every raw
  file: the same input gives the same version and byte-identical files (a rerun that finds a
  complete manifest reuses it); a changed input gives a new version beside the old one.
- ``rows_in == rows_kept + rows_quarantined`` always; a fully bad input raises ``DataError``.
- ``sample_id`` is the row's content hash (xxh3-128 of kind, texts and image sha256; see
  ``content.py``); a repeated one is quarantined as ``duplicate``.  ``split`` comes from it, so a
  row keeps its split when others are added.
- Images are embedded as bytes with their sha256, width, height and format; decoding them for
  validation runs in ``cfg.num_workers`` processes (default: all cores) when there are many.

The parts, one concept a file: ``reader`` (blocks of lines, text checks: ``validate``),
``image_checks`` (references, inspection, the image cache and worker pool), ``rows`` (Arrow row
assembly), ``quarantine`` (the bad rows and the ``ConversionLedger``), ``shards`` (Parquet
layout).  This driver is two separable steps: ``file_rows`` converts one raw file into its kept
rows (the bad ones go to the ``ConversionLedger``), and ``write_version`` merges the row streams
of every file, in order, into one curated version.

Speed: blocks of lines are parsed by ``pyarrow.json`` in a background thread, one or two blocks
ahead, and checked column-wise (``validate.parse_block``); only the rows it cannot accept (and
blocks it cannot parse, retried in pieces) go line by line, so a bad row costs its own line, not
its file.  Rows are then handled in columnar batches: each distinct image is read, hashed and
decoded once, content hashes and splits are computed per batch, and a background thread encodes
the Parquet row groups meanwhile.

Memory does not grow with the input's size but for the content hashes kept (about 140 bytes a
row): the JSONL is read a block at a time, bad rows are spooled to disk a block at a time (in
file and line order), a batch holds at most ``CHUNK_ROWS`` rows and about ``IMAGE_BATCH_BYTES``
of images, inspected images' bytes are kept for later rows up to 32 MiB (beyond, a known image
is read again and its sha256 checked, not decoded again), and at most ``MAX_QUEUED`` row groups
wait for the encoder.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from schemas.artifacts import CuratedDataset, RawDataset
from schemas.config import DataConfig

from openmind_core.data import rows as rows_mod
from openmind_core.data.image_checks import ImageCache, Pool
from openmind_core.data.layout import CURATED_MANIFEST, SCHEMA_VERSION, DataError, read_json, stable_hash
from openmind_core.data.quarantine import SPOOL_FILE, ConversionLedger, write_quarantine
from openmind_core.data.reader import SourceFile, candidates, source_files
from openmind_core.data.rows import SCHEMA, SPLITS, shard_writer
from openmind_core.data.sources import load_raw
from openmind_core.io import atomic_write_text, clean_stale, remove_dir, staged_dir
from openmind_core.progress import Reported, progress

log = logging.getLogger(__name__)

# 2: xxh3-128 sample ids, shards and row groups sized by bytes; 3: statistics, line encoding; 4: BOM/CRLF kept,
# conversations, answers; 5: one shard set per split named as datasets names them (train-00000-of-00001.parquet),
# pandas metadata (nullable image sizes), quarantine lines' own text; 6: rows with several images (schema 3),
# data.max_images_per_row.  A version of an earlier converter is
# still read (its manifest lists its shards); a new conversion of the same input writes a version of this one.
CONVERTER_VERSION = 6
# the settings that change a curated version's content
LAYOUT_SETTINGS = {"val_fraction", "shard_rows", "shard_bytes", "row_group_rows", "row_group_bytes",
                   "max_text_chars", "max_image_bytes", "max_image_pixels", "max_images_per_row"}


def version_of(raw_manifest: dict, cfg: DataConfig) -> str:
    settings = cfg.model_dump(include=LAYOUT_SETTINGS)
    files = sorted((f["path"], f["sha256"]) for f in raw_manifest["files"])
    return stable_hash({"schema": SCHEMA_VERSION, "converter": CONVERTER_VERSION, "settings": settings,
                        "files": files, "roots": raw_manifest.get("image_roots"),
                        "absolute": raw_manifest.get("absolute_images"),
                        "problems": raw_manifest.get("image_problems")})


def file_rows(f: SourceFile, cfg: DataConfig, ledger: ConversionLedger, raw_root: Path, cache: ImageCache, pool: Pool,
              bar=None) -> Iterator[pa.Table]:
    """One raw file's kept rows, in line order (its bad rows go to ``ledger``, flushed per block)."""
    first = done = ledger.rows_in  # rows on the bar
    for cand, refs in candidates(f, cfg, ledger, raw_root):
        before = ledger.rows_in - cand.num_rows  # rows of earlier batches, and the text checks' rejects
        if bar is not None:
            bar.update(before - done)
        done = before
        for start, stop in rows_mod.slices(f, cand, refs):
            rows = rows_mod.assemble(f, cand.slice(start, stop - start), refs, cfg, ledger, cache, pool)
            if bar is not None:
                bar.update(stop - start)
            done += stop - start
            if rows is not None:
                yield rows
        ledger.flush()
    if bar is not None:
        bar.update(ledger.rows_in - done)
    f.rows_in = ledger.rows_in - first


def _lake_rows(raw_root: Path, manifest: dict, cfg: DataConfig, ledger: ConversionLedger,
               pool: Pool, report=None) -> Iterator[pa.Table]:
    cache = ImageCache()
    total = sum(int(manifest.get(k) or 0) for k in ("caption_rows", "vqa_rows", "conversation_rows"))
    with progress(total, "converting", unit="row") as bar:
        shown = Reported(bar, total, report)  # one count over every file
        for f in source_files(raw_root, manifest, ledger):
            yield from file_rows(f, cfg, ledger, raw_root, cache, pool, shown)


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
        normalised=m.get("normalised", {}),
        reused=reused,
    )


def _complete(final: Path) -> dict | None:
    m = read_json(final / CURATED_MANIFEST)
    if m and all((final / s["path"]).is_file() and (final / s["path"]).stat().st_size == s["bytes"] for s in m["shards"]):
        return m
    return None



def existing_version(lake: Path, raw_root: Path, cfg: DataConfig) -> tuple[dict, str, Path, CuratedDataset | None]:
    """(raw manifest, version, its final directory, the complete version's artifact or None); a partial
    version left by a crash is removed, so the caller writes it anew."""
    manifest = load_raw(raw_root)
    version = version_of(manifest, cfg)
    final = lake / "curated" / version
    clean_stale(final.parent, final.name)
    done = _complete(final)
    if done is not None:
        log.info("curated version %s already complete: reusing it", version)
        return manifest, version, final, _artifact(final, done, lake, reused=True)
    if final.exists():
        log.warning("removing incomplete curated version %s", final)
        remove_dir(final)  # renamed away first: a crash mid-delete leaves no half version under its name
    return manifest, version, final, None


def convert(raw: RawDataset, cfg: DataConfig, lake: str | Path, report=None) -> CuratedDataset:
    """Validate and convert a raw download into ``<lake>/curated/<version>/`` (idempotent).

    ``report(done, total)``: called as rows are converted (the task layer's progress artifact)."""
    lake = Path(lake)
    raw_root = Path(raw.root)
    manifest, version, final, done = existing_version(lake, raw_root, cfg)
    if done is not None:
        return done
    ledger = ConversionLedger()
    pool = Pool(cfg.num_workers or os.cpu_count() or 1)
    try:
        m = write_version(final, lake, version, manifest, cfg, ledger,
                          lambda: _lake_rows(raw_root, manifest, cfg, ledger, pool, report))
    finally:
        pool.shutdown()
    if ledger.rows_bad:
        log.warning("quarantined %d of %d rows (%s); see %s", ledger.rows_bad, ledger.rows_in,
                    ", ".join(f"{k}: {v}" for k, v in m["quarantine_by_reason"].items()), lake / m["quarantine_path"])
    if m["normalised"]["crlf_lines"] or m["normalised"]["bom_files"]:
        log.info("normalised %d CRLF line ends and %d leading byte-order marks (a file's format, not bad rows)",
                 m["normalised"]["crlf_lines"], m["normalised"]["bom_files"])
    log.info("curated version %s: %d rows kept in %d shards (%s)", version, m["rows_kept"], len(m["shards"]), m["splits"])
    return _artifact(final, read_json(final / CURATED_MANIFEST) or m, lake, reused=False)


def write_version(final: Path, lake: Path, version: str, manifest: dict, cfg: DataConfig, ledger: ConversionLedger,
                  streams) -> dict:
    """Merge row tables, in order, into the curated version ``final`` (staged, manifest last) and
    its quarantine; returns the manifest.  ``streams()`` gives the row tables (e.g. ``file_rows``
    of every file in turn) while ``ledger``, which they fill, is spooled to disk."""
    raw_root = f"raw/{manifest['source']}/{manifest['fingerprint']}"
    splits: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    with staged_dir(final) as tmp:
        spool = tmp / SPOOL_FILE  # the bad rows as they come; moved to the quarantine below
        # one shard set per split, each encoded in a background thread while rows are validated
        writers = {split: shard_writer(tmp, cfg, split) for split in SPLITS}
        try:
            with open(spool, "w", encoding="utf-8") as ledger.spool:
                for rows in streams():
                    splits.update({d["values"]: d["counts"] for d in pc.value_counts(rows["split"]).to_pylist()})
                    kinds.update({d["values"]: d["counts"] for d in pc.value_counts(rows["kind"]).to_pylist()})
                    for split, writer in writers.items():
                        writer.write(rows.filter(pc.equal(rows["split"], split)))
                ledger.flush()
            shards = [dict(s, split=split) for split, writer in writers.items() for s in writer.close()]
        finally:
            for writer in writers.values():
                writer.abort()
        kept = sum(s["rows"] for s in shards)
        by_reason = dict(sorted(ledger.reasons.items()))
        assert ledger.rows_in == kept + ledger.rows_bad, (ledger.rows_in, kept, ledger.rows_bad)
        qpath = write_quarantine(lake, version, spool) if ledger.rows_bad else None
        spool.unlink(missing_ok=True)
        if kept == 0:
            raise DataError(
                f"no usable rows in {lake / raw_root}: all {ledger.rows_in} rows were quarantined "
                f"({', '.join(f'{k}: {v}' for k, v in by_reason.items()) or 'the input is empty'})"
                + (f"; see {lake / qpath}" if qpath else "")
            )
        m = {
            "schema_version": SCHEMA_VERSION,
            "version": version,
            "converter_version": CONVERTER_VERSION,  # lakes of earlier converters lack it
            "raw": {"source": manifest["source"], "fingerprint": manifest["fingerprint"], "root": raw_root},
            "shards": shards,
            "columns": SCHEMA.names,
            "rows_in": ledger.rows_in,
            "rows_kept": kept,
            "rows_quarantined": ledger.rows_bad,
            "quarantine_by_reason": by_reason,
            "quarantine_path": qpath,
            "splits": dict(sorted(splits.items())),
            "kinds": dict(sorted(kinds.items())),
            # per input file: rows read, CRLF line ends and a leading BOM normalised, a conversation file's form
            "inputs": [f.summary() for f in ledger.files],
            "normalised": {"crlf_lines": sum(f.crlf_lines for f in ledger.files),
                           "bom_files": sum(f.bom for f in ledger.files)},
            "settings": cfg.model_dump(mode="json", include=LAYOUT_SETTINGS),
        }
        atomic_write_text(tmp / CURATED_MANIFEST, json.dumps(m, indent=2, ensure_ascii=False, sort_keys=True) + "\n")
    return m
