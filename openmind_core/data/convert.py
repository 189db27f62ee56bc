"""The JSONL -> Parquet conversion: validate every row, quarantine the bad, write a versioned lake.

``convert(raw, cfg, lake)`` reads a raw download (``sources.download``) and writes
``<lake>/curated/<version>/part-00000.parquet ...`` (zstd; shards and row groups sized by
``cfg.shard_rows``/``shard_bytes`` and ``row_group_rows``/``row_group_bytes``, see ``shards.py``)
and ``_manifest.json`` last, with the bad rows (file, line, reason, detail, the line's text) in
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
import multiprocessing as mp
import os
import shutil
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from itertools import islice
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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
from openmind_core.data.content import SeenContent, digests_of, hex_ids, splits_of
from openmind_core.data.shards import ShardWriter, rows_that_fit
from openmind_core.data.sources import CAPTIONS, VQA, load_raw
from openmind_core.data.validate import (
    ImageInfo,
    ImageRef,
    ParsedBlock,
    Problem,
    check_encoding,
    load_and_inspect,
    parse_block,
    parse_row,
    resolve_image,
)
from openmind_core.io import atomic_write_text, sha256_bytes
from openmind_core.progress import progress

log = logging.getLogger(__name__)

CONVERTER_VERSION = 3  # 2: xxh3-128 sample ids, shards and row groups sized by bytes; 3: statistics, line encoding
# the settings that change a curated version's content
LAYOUT_SETTINGS = {"val_fraction", "shard_rows", "shard_bytes", "row_group_rows", "row_group_bytes",
                   "max_text_chars", "max_image_bytes", "max_image_pixels"}
QUARANTINE_FILE = "quarantine.jsonl"
SPOOL_FILE = ".quarantine.jsonl"  # the bad rows while converting, inside the staged curated directory
PARALLEL_MIN_IMAGES = 256  # new images in a batch below which worker start-up costs more than it saves
CHUNK_ROWS = 8192  # rows whose images are inspected (and held) together
IMAGE_BATCH_BYTES = 64 << 20  # and the image bytes they may hold (about): memory stays bounded with large images
IMAGE_CACHE_KEYS = 1_000_000  # inspected images whose verdict is remembered (a few hundred bytes each)
IMAGE_CACHE_BYTES = 32 << 20  # and whose bytes are kept for later rows (others are read again: no decode)
DICTIONARY_COLUMNS = ("kind", "split", "language", "image", "image_sha256", "image_width", "image_height",
                      "image_format", "source_file")  # often repeated; ids, texts and lines are not
STATISTICS_COLUMNS = ("kind", "split", "language", "image_width", "image_height", "image_format", "source_file",
                      "source_line")  # min/max worth keeping: not on hashes, free text or image bytes
ENCODINGS = {"source_line": "DELTA_BINARY_PACKED"}  # ascending line numbers: a few bytes per page
BLOCK_BYTES = 1 << 20  # JSONL bytes parsed by one pyarrow.json call
PARSE_AHEAD = 2  # blocks parsed ahead of the one being checked
SUB_BLOCK_LINES = 1024  # a block that fails to parse is retried in pieces of this many lines
FAST_PATH = True  # False: every line through the line-by-line checks (tests compare the two)

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
class _File:
    """One raw JSONL file of the download, with where its image paths resolve."""

    order: int
    kind: str
    path: Path
    shown: str  # the user's own file where there is one, else the raw file relative to the lake
    root: Path
    absolute: dict[str, str]
    problems: dict[str, str]
    images: dict[str, int]  # the download's image files: full path -> bytes
    resolved: dict[str, ImageRef | Problem] = field(default_factory=dict)  # rows often share an image path
    constants: dict[str, pa.Array] = field(default_factory=dict)  # constant columns, see _constant


@dataclass
class Tally:
    """Rows in, rows quarantined (by reason, and spooled to a file in file and line order), and
    content hashes seen."""

    files: list[_File] = field(default_factory=list)
    rows_in: int = 0
    reasons: Counter[str] = field(default_factory=Counter)  # rows quarantined, by reason
    pending: list[tuple[int, int, dict]] = field(default_factory=list)  # the current block's bad rows
    spool: IO[str] | None = None  # where ``flush`` writes them
    seen: SeenContent = field(default_factory=SeenContent)  # content hashes of the rows kept so far

    def quarantine(self, f: _File, line: int, problem: Problem, text: str) -> None:
        self.pending.append((f.order, line, {"file": f.shown, "line": line, "reason": problem.reason,
                                             "detail": problem.detail, "text": text[:2000]}))
        self.reasons[problem.reason] += 1

    @property
    def rows_bad(self) -> int:
        return sum(self.reasons.values())

    def flush(self) -> None:
        """Write the bad rows gathered so far to ``spool``, sorted: files are read in order and
        blocks in line order, so every later bad row has a later (file, line).  Memory holds one
        block's bad rows, not the whole input's."""
        if self.pending:
            self.pending.sort(key=lambda t: (t[0], t[1]))
            assert self.spool is not None
            self.spool.write("".join(json.dumps(b, ensure_ascii=False, sort_keys=True) + "\n"
                                     for _, _, b in self.pending))
            self.pending.clear()

    def first(self, digest: np.ndarray) -> str:
        """'file:line' where this content was first kept."""
        order, line = self.seen.first(digest)
        return f"{self.files[order].shown}:{line}"


def version_of(raw_manifest: dict, cfg: DataConfig) -> str:
    settings = cfg.model_dump(include=LAYOUT_SETTINGS)
    files = sorted((f["path"], f["sha256"]) for f in raw_manifest["files"])
    return stable_hash({"schema": SCHEMA_VERSION, "converter": CONVERTER_VERSION, "settings": settings,
                        "files": files, "roots": raw_manifest.get("image_roots"),
                        "absolute": raw_manifest.get("absolute_images"),
                        "problems": raw_manifest.get("image_problems")})


# --------------------------------------------------------------------------- reading: text checks

# a batch of rows that passed the text checks, images not yet inspected
CANDIDATE = pa.schema([("line", pa.int64()), ("text", pa.string()), ("question", pa.string()),
                       ("answer", pa.string()), ("language", pa.string()), ("key", pa.string())])
Batch = tuple[pa.Table, dict[str, ImageRef]]  # candidates and the images their ``key`` names


def _files(raw_root: Path, manifest: dict, tally: Tally) -> list[_File]:
    inputs = manifest.get("inputs") or {}
    images = {os.path.join(str(raw_root), f["path"]): int(f["bytes"]) for f in manifest["files"] if f["kind"] == "image"}
    out: list[_File] = []
    for name, kind in ((CAPTIONS, "caption"), (VQA, "vqa")):
        if not manifest.get("captions" if kind == "caption" else "vqa"):
            continue
        out.append(_File(
            order=len(out), kind=kind, path=raw_root / name,
            shown=inputs.get(name) or f"raw/{manifest['source']}/{manifest['fingerprint']}/{name}",
            root=raw_root / (manifest.get("image_roots") or {}).get(name, "files"),
            absolute=(manifest.get("absolute_images") or {}).get(name, {}),
            problems=(manifest.get("image_problems") or {}).get(name, {}), images=images))
    tally.files = out
    return out


def _resolve(f: _File, value: Any, raw_root: Path) -> ImageRef | Problem:
    ref = f.resolved.get(value) if isinstance(value, str) else None
    if ref is None:
        try:
            ref = resolve_image(value, f.root, f.absolute, f.problems, raw_root, f.images)
        except Problem as p:
            ref = p
        if isinstance(value, str) and len(f.resolved) < 1_000_000 and not (
                isinstance(ref, ImageRef) and ref.data is not None):
            f.resolved[value] = ref
    return ref


def _slow_lines(f: _File, lines: list[tuple[int, bytes]], cfg: DataConfig, tally: Tally,
                raw_root: Path) -> Batch:
    """The line-by-line path: every check in order, the first failure is the row's reason."""
    cols: dict[str, list] = {name: [] for name in CANDIDATE.names}
    refs: dict[str, ImageRef] = {}
    for lineno, raw in lines:
        tally.rows_in += 1
        try:
            fields = parse_row(check_encoding(raw), f.kind, cfg.max_text_chars)
            ref = _resolve(f, fields.pop("image"), raw_root)
            if isinstance(ref, Problem):
                raise ref
        except Problem as p:
            tally.quarantine(f, lineno, p, raw.decode("utf-8", errors="replace"))
            continue
        refs[ref.key] = ref
        for name in ("text", "question", "answer", "language"):
            cols[name].append(fields.get(name))
        cols["line"].append(lineno)
        cols["key"].append(ref.key)
    return pa.Table.from_pydict(cols, schema=CANDIDATE), refs


def _fast_block(f: _File, block: bytes, first_line: int, cfg: DataConfig, tally: Tally,
                raw_root: Path, pb: ParsedBlock | None = None) -> Batch | None:
    """The vectorised path for a block; rows it cannot accept go through ``_slow_lines``.

    ``pb``: the block already parsed (``parse_block``), else it is parsed here.
    """
    if pb is None:
        pb = parse_block(block, first_line, f.kind, cfg.max_text_chars)
    if pb is None:
        return None
    table, lines, clean = pb.table, pb.lines, pb.clean
    split: list[bytes] = []

    def raw(i: int) -> bytes:  # the bytes of row i's line
        if not split:
            split.extend(block.split(b"\n"))
        return split[int(lines[i]) - first_line]

    values = table["image"]
    uniq = pc.unique(values.filter(pa.array(clean))) if clean.any() else pa.array([], pa.string())
    refs: dict[str, ImageRef] = {}
    found = [_resolve(f, value, raw_root) for value in uniq.to_pylist()]
    for ref in found:
        if isinstance(ref, ImageRef):
            refs[ref.key] = ref
    pos = pc.fill_null(pc.index_in(values, value_set=uniq), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    good = clean & np.array([isinstance(r, ImageRef) for r in found] or [False], dtype=bool)[pos]
    for i in np.flatnonzero(clean & ~good):  # the image path itself is bad: missing, escaping, ...
        tally.quarantine(f, int(lines[i]), found[pos[i]], raw(int(i)).decode("utf-8", errors="replace"))
    rest = np.flatnonzero(~clean)
    tally.rows_in += len(lines) - len(rest)
    keys = pa.array([r.key if isinstance(r, ImageRef) else None for r in found], pa.string())
    mask = pa.array(good)
    fast = pa.Table.from_arrays(
        [pa.array(lines[good], pa.int64()),
         *(table[n].filter(mask) if n in table.column_names else pa.nulls(int(good.sum()), pa.string())
           for n in ("text", "question", "answer", "language")),
         keys.take(pa.array(pos[good]))], schema=CANDIDATE)
    if not len(rest):
        return fast, refs
    slow, slow_refs = _slow_lines(f, [(int(lines[i]), raw(int(i))) for i in rest], cfg, tally, raw_root)
    refs.update(slow_refs)
    both = pa.concat_tables([fast, slow])
    return both.take(pc.sort_indices(both["line"])), refs


def _blocks(path: Path, size: int) -> Iterator[tuple[int, bytes]]:
    """(first line number, bytes) of pieces of ``size`` to ``2 * size`` bytes that end at a line
    break (longer where a line is longer), read from the file as they are asked for."""
    line, pending = 1, []  # pending: the start of a line not yet ended
    with open(path, "rb") as fh:
        while chunk := fh.read(size):
            end = chunk.rfind(b"\n") + 1
            if not end:
                pending.append(chunk)
                continue
            block = b"".join([*pending, chunk[:end]]) if pending else chunk[:end]
            pending = [chunk[end:]] if end < len(chunk) else []
            yield line, block
            line += block.count(b"\n")
    if pending:
        yield line, b"".join(pending)


def _candidates(f: _File, cfg: DataConfig, tally: Tally, raw_root: Path) -> Iterator[Batch]:
    """Every non-blank line of a raw JSONL file, text-validated, in file order.

    The next block is parsed in a background thread (``pyarrow.json`` releases the GIL) while
    this one's rows are checked, hashed and written.
    """
    blocks = _blocks(f.path, BLOCK_BYTES)
    if not FAST_PATH:
        for first, block in blocks:
            yield from _block_batches(f, block, first, None, cfg, tally, raw_root)
        return
    parser = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jsonl-parser")
    parse = partial(parse_block, kind=f.kind, max_text_chars=cfg.max_text_chars)
    try:
        ahead = [(first, block, parser.submit(parse, block, first)) for first, block in islice(blocks, PARSE_AHEAD)]
        while ahead:
            ahead += [(first, block, parser.submit(parse, block, first)) for first, block in islice(blocks, 1)]
            first, block, parsed = ahead.pop(0)
            yield from _block_batches(f, block, first, parsed.result(), cfg, tally, raw_root)
    finally:
        parser.shutdown(wait=True, cancel_futures=True)


def _block_batches(f: _File, block: bytes, first: int, pb: ParsedBlock | None, cfg: DataConfig, tally: Tally,
                   raw_root: Path) -> Iterator[Batch]:
    if pb is not None:
        batch = _fast_block(f, block, first, cfg, tally, raw_root, pb)
        assert batch is not None
        yield batch
        return
    lines = block.split(b"\n")
    if FAST_PATH and len(lines) > 2 * SUB_BLOCK_LINES:  # retry in pieces: one bad line spoils only its piece
        for i in range(0, len(lines), SUB_BLOCK_LINES):
            piece = b"\n".join(lines[i:i + SUB_BLOCK_LINES])
            batch = _fast_block(f, piece, first + i, cfg, tally, raw_root)
            if batch is None:
                batch = _slow_lines(f, [(first + i + j, ln) for j, ln in enumerate(lines[i:i + SUB_BLOCK_LINES])
                                        if ln.strip()], cfg, tally, raw_root)
            yield batch
        return
    yield _slow_lines(f, [(first + j, ln) for j, ln in enumerate(lines) if ln.strip()], cfg, tally, raw_root)


# --------------------------------------------------------------------------- images, content hashes, rows


class _ImageCache:
    """What inspecting each image found, by key: rows often share images, near or far apart.

    The verdict (``ImageInfo`` or ``Problem``) is kept for up to ``IMAGE_CACHE_KEYS`` images, the
    bytes only up to ``IMAGE_CACHE_BYTES``.  A known image whose bytes were not kept is read again
    and its sha256 checked: a read and a hash instead of a decode (COCO's five captions of an
    image lie far apart in its file).
    """

    def __init__(self) -> None:
        self.found: dict[str, ImageInfo | Problem] = {}
        self.data: dict[str, bytes] = {}
        self.size = 0

    def get(self, key: str, ref: ImageRef) -> tuple[bytes, ImageInfo] | Problem | None:
        """A known image's (bytes, info) or Problem; None when it must be inspected."""
        found = self.found.get(key)
        if found is None or isinstance(found, Problem):
            return found
        data = self.data.get(key, ref.data)
        if data is None:
            try:
                with open(ref.path or "", "rb") as fh:
                    data = fh.read()
            except OSError:
                return None
            if sha256_bytes(data) != found.sha256:
                return None
        return data, found

    def put(self, key: str, value: tuple[bytes, ImageInfo] | Problem) -> None:
        if len(self.found) < IMAGE_CACHE_KEYS:
            self.found[key] = value[1] if isinstance(value, tuple) else value
        if isinstance(value, tuple) and key in self.found and self.size + len(value[0]) <= IMAGE_CACHE_BYTES:
            self.data[key] = value[0]
            self.size += len(value[0])


class _Pool:
    """Image decoding on ``workers`` cores: this process and ``workers - 1`` worker processes.

    The workers start only when a batch has enough new images to pay for them; this process
    decodes its own share meanwhile instead of waiting.
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.pool: ProcessPoolExecutor | None = None

    def map(self, fn, jobs: list) -> list:
        if self.workers <= 1 or len(jobs) < PARALLEL_MIN_IMAGES:
            return [fn(j) for j in jobs]
        if self.pool is None:
            ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context("spawn")
            self.pool = ProcessPoolExecutor(max_workers=self.workers - 1, mp_context=ctx)
        own = len(jobs) // self.workers
        rest = jobs[own:]
        size = max(1, len(rest) // (4 * (self.workers - 1)))
        futures = [self.pool.submit(_map_chunk, fn, rest[i:i + size]) for i in range(0, len(rest), size)]
        out = [fn(j) for j in jobs[:own]]
        for fut in futures:
            out.extend(fut.result())
        return out

    def shutdown(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)


def _map_chunk(fn, jobs: list) -> list:
    return [fn(j) for j in jobs]


def _inspect_all(refs: list[ImageRef], cfg: DataConfig, pool: _Pool) -> list:
    return pool.map(load_and_inspect, [(r, cfg.max_image_bytes, cfg.max_image_pixels) for r in refs])


def _shown(cand: pa.Table, i: int, ref: ImageRef) -> str:
    """A candidate row as JSON for the quarantine (its line already passed the text checks)."""
    row = cand.slice(i, 1).to_pylist()[0]
    fields = {n: row[n] for n in ("text", "question", "answer") if row[n] is not None}
    fields["language"] = row["language"]
    return json.dumps({**fields, "image": ref.path or "<inline>"}, ensure_ascii=False)


def _constant(value: str, n: int, cache: dict[str, pa.Array]) -> pa.Array:
    """A string column of ``n`` copies of ``value`` (sliced from a cached one)."""
    arr = cache.get(value)
    if arr is None or len(arr) < n:
        arr = cache[value] = pa.array([value] * max(n, CHUNK_ROWS), pa.string())
    return arr.slice(0, n)


def _rows(f: _File, cand: pa.Table, refs: dict[str, ImageRef], cfg: DataConfig, tally: Tally,
          cache: _ImageCache, pool: _Pool) -> pa.Table | None:
    """Inspect the images of a batch of candidates, hash and de-duplicate: the lake's rows (None
    when none is kept)."""
    keys = cand["key"]
    ukeys = pc.unique(keys)
    ulist = ukeys.to_pylist()
    known = {k: cache.get(k, refs[k]) for k in ulist}
    todo = [k for k, r in known.items() if r is None]
    for k, result in zip(todo, _inspect_all([refs[k] for k in todo], cfg, pool)):
        cache.put(k, result)
        known[k] = result
    results = [known[k] for k in ulist]
    idx = pc.index_in(keys, value_set=ukeys).to_numpy(zero_copy_only=False).astype(np.int64)
    ok = np.array([not isinstance(r, Problem) for r in results], dtype=bool)[idx]
    if not ok.all():
        lines = cand["line"].to_numpy()
        for i in np.flatnonzero(~ok):
            tally.quarantine(f, int(lines[i]), results[idx[i]], _shown(cand, int(i), refs[ulist[idx[i]]]))
        if not ok.any():
            return None
        cand, idx = cand.filter(pa.array(ok)), idx[ok]
    info = [r[1] if not isinstance(r, Problem) else ImageInfo("", 0, 0, "") for r in results]
    take = pa.array(idx)
    shas = pa.array([i.sha256 for i in info], pa.string()).take(take)
    digests = digests_of(f.kind, cand, shas)
    lines = cand["line"].to_numpy()
    keep = tally.seen.keep_new(f.order, digests, lines)
    if keep is not None:
        for i in np.flatnonzero(~keep):
            tally.quarantine(f, int(lines[i]), Problem("duplicate", f"same content as {tally.first(digests[i])}"),
                             _shown(cand, int(i), refs[ulist[idx[i]]]))
        if not keep.any():
            return None
        mask = pa.array(keep)
        cand, idx, shas, digests = cand.filter(mask), idx[keep], shas.filter(mask), digests[keep]
        take = pa.array(idx)
    n = len(idx)
    data_u = [r[0] if not isinstance(r, Problem) else b"" for r in results]
    consts = f.constants
    return pa.Table.from_arrays([
        hex_ids(digests),
        _constant(f.kind, n, consts),
        splits_of(digests, cfg.val_fraction),
        cand["language"], cand["text"], cand["question"], cand["answer"],
        _image_column(data_u, idx),
        shas,
        pa.array([i.width for i in info], pa.int32()).take(take),
        pa.array([i.height for i in info], pa.int32()).take(take),
        pa.array([i.format for i in info], pa.string()).take(take),
        _constant(f.shown, n, consts),
        cand["line"],
    ], schema=SCHEMA)


def _image_column(data: list[bytes], idx: np.ndarray, limit: int = 1 << 30) -> pa.ChunkedArray:
    """``data[idx]`` as a binary column, in chunks of at most ``limit`` bytes (a chunk holds < 2 GiB)."""
    sizes = np.array([len(d) for d in data], dtype=np.int64)
    if int(sizes[idx].sum()) < limit and int(sizes.sum()) < limit:
        return pa.chunked_array([pa.array(data, pa.binary()).take(pa.array(idx))])  # one copy, in C++
    chunks, part, size = [], [], 0
    for j in idx.tolist():
        if part and size + len(data[j]) > limit:
            chunks.append(pa.array(part, pa.binary()))
            part, size = [], 0
        part.append(data[j])
        size += len(data[j])
    chunks.append(pa.array(part, pa.binary()))
    return pa.chunked_array(chunks, pa.binary())


def _slices(f: _File, cand: pa.Table, refs: dict[str, ImageRef]) -> Iterator[tuple[int, int]]:
    """(start, stop) row ranges of a candidate batch that hold at most ``CHUNK_ROWS`` rows and
    about ``IMAGE_BATCH_BYTES`` of images (each image counted at its first row; a larger image
    gets a range of its own)."""
    n = cand.num_rows
    uniq = pc.unique(cand["key"])
    sizes = np.array([len(r.data) if r.data is not None else f.images.get(r.path or "", 0)
                      for r in map(refs.__getitem__, uniq.to_pylist())], dtype=np.int64)
    if int(sizes.sum()) <= IMAGE_BATCH_BYTES:
        yield from ((start, min(start + CHUNK_ROWS, n)) for start in range(0, n, CHUNK_ROWS))
        return
    pos = pc.index_in(cand["key"], value_set=uniq).to_numpy(zero_copy_only=False).astype(np.int64)
    row_bytes = np.zeros(n, dtype=np.int64)
    first = np.unique(pos, return_index=True)[1]
    row_bytes[first] = sizes[pos[first]]
    start = 0
    while start < n:
        stop = start + rows_that_fit(row_bytes[start:start + CHUNK_ROWS], IMAGE_BATCH_BYTES)
        yield start, stop
        start = stop


def _lake_rows(raw_root: Path, manifest: dict, cfg: DataConfig, tally: Tally,
               pool: _Pool) -> Iterator[pa.Table]:
    cache = _ImageCache()
    total = int(manifest.get("caption_rows") or 0) + int(manifest.get("vqa_rows") or 0)
    with progress(total, "converting", unit="row") as bar:
        done = 0  # rows on the bar
        for f in _files(raw_root, manifest, tally):
            for cand, refs in _candidates(f, cfg, tally, raw_root):
                before = tally.rows_in - cand.num_rows  # rows of earlier batches, and the text checks' rejects
                bar.update(before - done)
                done = before
                for start, stop in _slices(f, cand, refs):
                    rows = _rows(f, cand.slice(start, stop - start), refs, cfg, tally, cache, pool)
                    bar.update(stop - start)
                    done += stop - start
                    if rows is not None:
                        yield rows
                tally.flush()
        bar.update(tally.rows_in - done)


# --------------------------------------------------------------------------- writing


def shard_writer(directory: Path, cfg: DataConfig) -> ShardWriter:
    """Shards of ``SCHEMA`` sized by the config, zstd, dictionary-encoded where values repeat."""
    return ShardWriter(directory, SCHEMA, shard_rows=cfg.shard_rows, shard_bytes=cfg.shard_bytes,
                       row_group_rows=cfg.row_group_rows, row_group_bytes=cfg.row_group_bytes,
                       dictionary=DICTIONARY_COLUMNS, statistics=STATISTICS_COLUMNS, encodings=ENCODINGS)


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
    splits: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    pool = _Pool(cfg.num_workers or os.cpu_count() or 1)
    try:
        with staged_dir(final) as tmp:
            spool = tmp / SPOOL_FILE  # the bad rows as they come; moved to the quarantine below
            writer = shard_writer(tmp, cfg)  # encodes in a background thread while rows are validated
            try:
                with open(spool, "w", encoding="utf-8") as tally.spool:
                    for rows in _lake_rows(raw_root, manifest, cfg, tally, pool):
                        splits.update({d["values"]: d["counts"] for d in pc.value_counts(rows["split"]).to_pylist()})
                        kinds[rows["kind"][0].as_py()] += rows.num_rows
                        writer.write(rows)
                    tally.flush()
                shards = writer.close()
            finally:
                writer.abort()
            kept = sum(s["rows"] for s in shards)
            by_reason = dict(sorted(tally.reasons.items()))
            assert tally.rows_in == kept + tally.rows_bad, (tally.rows_in, kept, tally.rows_bad)
            qpath = _write_quarantine(lake, version, spool) if tally.rows_bad else None
            spool.unlink(missing_ok=True)
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
                "rows_quarantined": tally.rows_bad,
                "quarantine_by_reason": by_reason,
                "quarantine_path": qpath,
                "splits": dict(sorted(splits.items())),
                "kinds": dict(sorted(kinds.items())),
                "settings": cfg.model_dump(mode="json", include=LAYOUT_SETTINGS),
            }
            atomic_write_text(tmp / CURATED_MANIFEST, json.dumps(m, indent=2, ensure_ascii=False, sort_keys=True) + "\n")
    finally:
        pool.shutdown()
    if tally.rows_bad:
        log.warning("quarantined %d of %d rows (%s); see %s", tally.rows_bad, tally.rows_in,
                    ", ".join(f"{k}: {v}" for k, v in m["quarantine_by_reason"].items()), lake / m["quarantine_path"])
    log.info("curated version %s: %d rows kept in %d shards (%s)", version, m["rows_kept"], len(shards), m["splits"])
    return _artifact(final, read_json(final / CURATED_MANIFEST) or m, lake, reused=False)


def _write_quarantine(lake: Path, version: str, spool: Path) -> str:
    """Move the spooled bad rows into ``<lake>/quarantine/<version>/`` (atomic directory); returns
    the path relative to the lake."""
    final = lake / "quarantine" / version
    clean_stale_tmp(final.parent, final.name)
    if final.exists():
        shutil.rmtree(final)
    with staged_dir(final) as tmp:
        shutil.move(spool, tmp / QUARANTINE_FILE)  # a rename within the lake's file system
    return f"quarantine/{version}/{QUARANTINE_FILE}"
