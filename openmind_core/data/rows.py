"""Arrow row assembly: candidates with inspected images become the curated lake's rows.

``assemble`` takes one batch of text-checked candidates (``reader.candidates``), inspects each
distinct image once (``image_checks``), quarantines the rows whose image is bad or whose content was
seen before, and builds the rows of ``SCHEMA``: content-hash ids, splits, the embedded image
bytes with their sha256, size and format.  The image column is Hugging Face's Parquet image layout
(``struct<bytes, path>``) and the schema carries the ``huggingface`` features entry, so
``datasets.load_dataset("parquet", ...)`` yields PIL images and typed columns; a text-only
conversation row has a null image.  A row with several images (schema version 3) keeps its first
in ``image`` (and ``image_sha256``, sizes, format) and the others, in order, in ``extra_images``
(a list of the same image structs, typed ``[Image]`` for ``datasets``) with ``extra_image_sha256``;
both are null for a row with at most one image, so the row's images are ``[image, *extra_images]``.
The split follows the (first) image's sha256, so rows that share an image share a split; a
text-only row's split follows its content hash.  The content hash covers every image's sha256.  ``slices`` cuts a batch into pieces that hold at most
``CHUNK_ROWS`` rows and about ``IMAGE_BATCH_BYTES`` of images; ``shard_writer`` lays one split's rows
out as Parquet shards.  The schema's ``pandas`` entry makes ``pandas.read_parquet`` read the image
sizes as nullable integers (``Int32``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.config import DataConfig

from openmind_core.data.content import digests_of, hex_ids, splits_by_image
from openmind_core.data.image_checks import ImageCache, ImageInfo, ImageRef, Pool, load_and_inspect
from openmind_core.data.layout import SCHEMA_VERSION
from openmind_core.data.quarantine import ConversionLedger
from openmind_core.data.reader import TURN, SourceFile
from openmind_core.data.shards import ShardWriter, rows_that_fit
from openmind_core.data.validate import Problem

CHUNK_ROWS = 8192  # rows whose images are inspected (and held) together
IMAGE_BATCH_BYTES = 64 << 20  # and the image bytes they may hold (about): memory stays bounded with large images
DICTIONARY_COLUMNS = ("kind", "split", "language", "image.bytes", "image.path", "image_sha256", "image_width", "image_height",
                      "image_format", "source_file")  # often repeated; ids, texts and lines are not
STATISTICS_COLUMNS = ("kind", "split", "language", "image_width", "image_height", "image_format", "source_file",
                      "source_line")  # min/max worth keeping: not on hashes, free text or image bytes
ENCODINGS = {"source_line": "DELTA_BINARY_PACKED"}  # ascending line numbers: a few bytes per page

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # datasets.Image's storage


def _VALUE(dtype: str) -> dict:  # noqa: N802 - datasets' feature name
    return {"dtype": dtype, "_type": "Value"}


SPLITS = ("train", "validation")  # each its own shard set, in this order in the manifest


def _pandas_metadata() -> str:
    """pandas' schema entry for the image size columns: nullable ``Int32``, so ``pandas.read_parquet`` keeps
    them integers when a text-only row (no image, no size) is present instead of turning them into floats."""
    cols = [{"name": n, "field_name": n, "pandas_type": "int32", "numpy_type": "Int32", "metadata": None}
            for n in ("image_width", "image_height")]
    return json.dumps({"index_columns": [], "column_indexes": [], "columns": cols,
                       "creator": {"library": "openmind"}, "pandas_version": "2.0.0"})


SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("language", pa.string(), nullable=False),
        pa.field("text", pa.string()),
        pa.field("question", pa.string()),
        pa.field("answer", pa.string()),
        pa.field("answers", pa.list_(pa.string())),
        pa.field("conversation", pa.list_(TURN)),
        pa.field("image", IMAGE),
        pa.field("image_sha256", pa.string()),
        pa.field("image_width", pa.int32()),
        pa.field("image_height", pa.int32()),
        pa.field("image_format", pa.string()),
        pa.field("extra_images", pa.list_(IMAGE)),
        pa.field("extra_image_sha256", pa.list_(pa.string())),
        pa.field("source_file", pa.string(), nullable=False),
        pa.field("source_line", pa.int64(), nullable=False),
    ],
    metadata={"openmind.schema_version": str(SCHEMA_VERSION), "huggingface": json.dumps({"info": {"features": {
        **{n: _VALUE("string") for n in ("sample_id", "kind", "split", "language", "text", "question", "answer")},
        "answers": {"feature": _VALUE("string"), "_type": "Sequence"},  # a list of strings, datasets 3 and later
        "conversation": [{"role": _VALUE("string"), "content": _VALUE("string")}],  # a list of structs
        "image": {"_type": "Image"},
        "image_sha256": _VALUE("string"), "image_width": _VALUE("int32"), "image_height": _VALUE("int32"),
        "image_format": _VALUE("string"),
        "extra_images": [{"_type": "Image"}],  # a list of images
        "extra_image_sha256": {"feature": _VALUE("string"), "_type": "Sequence"},
        "source_file": _VALUE("string"), "source_line": _VALUE("int64"),
    }}}), "pandas": _pandas_metadata()},
)


def _inspect_all(refs: list[ImageRef], cfg: DataConfig, pool: Pool) -> list:
    return pool.map(load_and_inspect, [(r, cfg.max_image_bytes, cfg.max_image_pixels) for r in refs])


TEXT_ONLY = (b"", ImageInfo("", 0, 0, ""))  # the "image" of a text-only row


def _constant(value: str, n: int, cache: dict[str, pa.Array]) -> pa.Array:
    """A string column of ``n`` copies of ``value`` (sliced from a cached one)."""
    arr = cache.get(value)
    if arr is None or len(arr) < n:
        arr = cache[value] = pa.array([value] * max(n, CHUNK_ROWS), pa.string())
    return arr.slice(0, n)


def assemble(f: SourceFile, cand: pa.Table, refs: dict[str, ImageRef], cfg: DataConfig, ledger: ConversionLedger,
          cache: ImageCache, pool: Pool) -> pa.Table | None:
    """Inspect the images of a batch of candidates, hash and de-duplicate: the lake's rows (None
    when none is kept)."""
    keys = cand["key"]
    ukeys = pc.unique(keys)
    ulist = ukeys.to_pylist()
    refs = {**refs, None: None}  # type: ignore[dict-item]
    more = cand["more_keys"].to_pylist() if cand["more_keys"].null_count < cand.num_rows else [None] * cand.num_rows
    extra = [k for k in dict.fromkeys(k for ks in more if ks for k in ks) if k not in set(ulist)]
    known = {k: cache.get(k, refs[k]) if k is not None else TEXT_ONLY for k in ulist + extra}
    todo = [k for k, r in known.items() if r is None]
    for k, result in zip(todo, _inspect_all([refs[k] for k in todo], cfg, pool)):
        cache.put(k, result)
        known[k] = result
    results = [known[k] for k in ulist]
    idx = pc.index_in(keys, value_set=ukeys).to_numpy(zero_copy_only=False).astype(np.int64)
    ok = np.array([not isinstance(r, Problem) for r in results], dtype=bool)[idx]
    problems = {i: results[idx[i]] for i in np.flatnonzero(~ok)}
    for i, ks in enumerate(more):  # a multi-image row is kept only when every image is
        bad = [(j, known[k]) for j, k in enumerate(ks or (), 2) if isinstance(known[k], Problem)]
        if bad and ok[i]:
            j, p = bad[0]
            ok[i], problems[i] = False, Problem(p.reason, f"image {j} of {len(ks) + 1}: {p.detail}")
    if not ok.all():
        lines = cand["line"].to_numpy()
        for i in np.flatnonzero(~ok):
            ledger.quarantine(f, int(lines[i]), problems[int(i)])  # the line's text: read back at flush
        if not ok.any():
            return None
        cand, idx = cand.filter(pa.array(ok)), idx[ok]
        more = [m for m, k in zip(more, ok) if k]
    info = [r[1] if not isinstance(r, Problem) else ImageInfo("", 0, 0, "") for r in results]
    has_image = np.array([k is not None for k in ulist], dtype=bool)
    take = pa.array(idx)
    shas = pa.array([i.sha256 if k is not None else None for k, i in zip(ulist, info)], pa.string()).take(take)
    extra_shas = [[known[k][1].sha256 for k in ks] if ks else None for ks in more]
    digests = digests_of(f.kind, cand, _all_shas(shas, extra_shas))
    lines = cand["line"].to_numpy()
    keep = ledger.seen.keep_new(f.order, digests, lines)
    if keep is not None:
        for i in np.flatnonzero(~keep):
            ledger.quarantine(f, int(lines[i]), Problem("duplicate", f"same content as {ledger.first(digests[i])}"))
        if not keep.any():
            return None
        mask = pa.array(keep)
        cand, idx, shas, digests = cand.filter(mask), idx[keep], shas.filter(mask), digests[keep]
        more = [m for m, k in zip(more, keep) if k]
        extra_shas = [s for s, k in zip(extra_shas, keep) if k]
        take = pa.array(idx)
    n = len(idx)
    data_u = [r[0] if not isinstance(r, Problem) else b"" for r in results]
    consts = f.constants
    present = has_image[idx]
    image_split = np.array([int(i.sha256[:8], 16) if k is not None and i.sha256 else 0 for k, i in zip(ulist, info)],
                           dtype=np.int64)[idx]
    mask = None if present.all() else pa.array(~present)  # nulls where a row has no image
    return pa.Table.from_arrays([
        hex_ids(digests),
        _constant(f.kind, n, consts),
        splits_by_image(image_split, present, digests, cfg.val_fraction),
        cand["language"], cand["text"], cand["question"], cand["answer"],
        _answers(cand) if f.kind == "vqa" else cand["answers"],
        cand["conversation"],
        _image_column(data_u, idx, mask),
        shas,
        *(pa.array([getattr(i, a) if k is not None else None for k, i in zip(ulist, info)], t).take(take)
          for a, t in (("width", pa.int32()), ("height", pa.int32()), ("format", pa.string()))),
        pa.array([[{"bytes": known[k][0], "path": None} for k in ks] if ks else None for ks in more], pa.list_(IMAGE)),
        pa.array(extra_shas, pa.list_(pa.string())),
        _constant(f.shown, n, consts),
        cand["line"],
    ], schema=SCHEMA)


def _all_shas(shas: pa.Array, extra: list[list[str] | None]) -> pa.Array:
    """What the content hash covers of a row's images: the first sha256, and the others after it."""
    if not any(extra):
        return shas
    first = shas.to_pylist()
    return pa.array([s if not e else ",".join([s, *e]) for s, e in zip(first, extra)], pa.string())


def _answers(cand: pa.Table) -> pa.ChunkedArray:
    """VQA ``answers``: those given, else the one ``answer`` as a list."""
    answers = cand["answers"]
    if not answers.null_count:
        return answers
    answer = cand["answer"].combine_chunks()
    single = pa.ListArray.from_arrays(pa.array(np.arange(len(answer) + 1, dtype=np.int32)), answer)
    return pc.if_else(pc.is_null(answers), single, answers)


def _image_column(data: list[bytes], idx: np.ndarray, nulls: pa.Array | None = None) -> pa.ChunkedArray:
    """``data[idx]`` as the image column (``{bytes, path: null}``; null where ``nulls`` is set)."""
    binary = _binary_column(data, idx)
    out, start = [], 0
    for chunk in binary.chunks:
        mask = nulls.slice(start, len(chunk)) if nulls is not None else None
        out.append(pa.StructArray.from_arrays([chunk, pa.nulls(len(chunk), pa.string())], fields=list(IMAGE), mask=mask))
        start += len(chunk)
    return pa.chunked_array(out, IMAGE)


def _binary_column(data: list[bytes], idx: np.ndarray, limit: int = 1 << 30) -> pa.ChunkedArray:
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


def slices(f: SourceFile, cand: pa.Table, refs: dict[str, ImageRef]) -> Iterator[tuple[int, int]]:
    """(start, stop) row ranges of a candidate batch that hold at most ``CHUNK_ROWS`` rows and
    about ``IMAGE_BATCH_BYTES`` of images (each first image counted at its first row, a row's other
    images at the row; a larger image gets a range of its own)."""
    n = cand.num_rows
    uniq = pc.unique(cand["key"])

    def size(r) -> int:
        return 0 if r is None else len(r.data) if r.data is not None else f.images.get(r.path or "", 0)

    sizes = np.array([size(r) for r in map(refs.get, uniq.to_pylist())], dtype=np.int64)
    more = cand["more_keys"]
    extra = np.zeros(n, dtype=np.int64)  # a multi-image row's other images, counted at every row
    if more.null_count < n:
        extra = np.array([sum(size(refs.get(k)) for k in ks or ()) for ks in more.to_pylist()], dtype=np.int64)
    if int(sizes.sum()) + int(extra.sum()) <= IMAGE_BATCH_BYTES:
        yield from ((start, min(start + CHUNK_ROWS, n)) for start in range(0, n, CHUNK_ROWS))
        return
    pos = pc.index_in(cand["key"], value_set=uniq).to_numpy(zero_copy_only=False).astype(np.int64)
    row_bytes = np.zeros(n, dtype=np.int64)
    first = np.unique(pos, return_index=True)[1]
    row_bytes[first] = sizes[pos[first]]
    row_bytes += extra
    start = 0
    while start < n:
        stop = start + rows_that_fit(row_bytes[start:start + CHUNK_ROWS], IMAGE_BATCH_BYTES)
        yield start, stop
        start = stop



def shard_writer(directory: Path, cfg: DataConfig, split: str) -> ShardWriter:
    """The shards of one split (``train-00000-of-00002.parquet``, ...): ``SCHEMA`` sized by the config, zstd,
    dictionary-encoded where values repeat."""
    return ShardWriter(directory, SCHEMA, shard_rows=cfg.shard_rows, shard_bytes=cfg.shard_bytes,
                       row_group_rows=cfg.row_group_rows, row_group_bytes=cfg.row_group_bytes,
                       dictionary=DICTIONARY_COLUMNS, statistics=STATISTICS_COLUMNS, encodings=ENCODINGS, name=split)
