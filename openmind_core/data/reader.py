"""Reading a raw JSONL file: blocks of whole lines, parsed ahead, text-checked into candidates.

A file's own format is not a bad row: a UTF-8 byte-order mark at its start is dropped and CRLF
line ends become LF before any check (line numbers do not change); ``SourceFile`` counts both
for the conversion summary.

``candidates(f, cfg, ledger, raw_root)`` yields, in file order, batches of the rows of one raw
file that passed the text checks (``validate``) with their image references resolved
(``images.resolve_image``): a ``CANDIDATE`` table and the images its ``key`` column names.  Rows
that fail are quarantined in the ``ConversionLedger`` on the way.

Blocks of lines (``BLOCK_BYTES``) are parsed by ``pyarrow.json`` in a background thread, one or two
blocks ahead, and checked column-wise (``validate.parse_block``); only the rows it cannot accept
(and blocks it cannot parse, retried in pieces of ``SUB_BLOCK_LINES``) go line by line, so a bad
row costs its own line, not its file.  Conversation files (``conversations.py``) go line by line.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.config import DataConfig

from openmind_core.data.conversations import as_json, detect_format, parse_conversation
from openmind_core.data.image_checks import ImageRef, resolve_image
from openmind_core.data.quarantine import ConversionLedger
from openmind_core.data.sources.raw import CAPTIONS, VQA, kind_of
from openmind_core.data.validate import BOM, FIELDS, ParsedBlock, Problem, check_encoding, parse_block, parse_row

BLOCK_BYTES = 1 << 20  # JSONL bytes parsed by one pyarrow.json call
PARSE_AHEAD = 2  # blocks parsed ahead of the one being checked
SUB_BLOCK_LINES = 1024  # a block that fails to parse is retried in pieces of this many lines
FAST_PATH = True  # False: every line through the line-by-line checks (tests compare the two)


@dataclass
class SourceFile:
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
    format: str | None = None  # a conversation file's form: 'llava' or 'messages'
    crlf_lines: int = 0  # lines whose CRLF end became LF
    bom: bool = False  # a leading byte-order mark was dropped
    rows_in: int = 0  # rows read (once the file is done)

    def summary(self) -> dict:
        out = {"file": self.shown, "kind": self.kind, "rows_in": self.rows_in, "crlf_lines": self.crlf_lines,
               "bom": self.bom}
        return out | ({"format": self.format} if self.format else {})




TURN = pa.struct([("role", pa.string()), ("content", pa.string())])
CANDIDATE = pa.schema([("line", pa.int64()), ("text", pa.string()), ("question", pa.string()),
                       ("answer", pa.string()), ("language", pa.string()), ("key", pa.string()),
                       ("answers", pa.list_(pa.string())), ("conversation", pa.list_(TURN)),
                       ("content", pa.string()),  # content: what a conversation's hash covers
                       ("more_keys", pa.list_(pa.string()))])  # a multi-image row's 2nd, 3rd, ... images
Batch = tuple[pa.Table, dict[str, ImageRef]]  # candidates and the images their ``key`` (the first image; None:
# text-only) and ``more_keys`` (the others, in order; null: at most one) name


def source_files(raw_root: Path, manifest: dict, ledger: ConversionLedger) -> list[SourceFile]:
    inputs = manifest.get("inputs") or {}
    images = {os.path.join(str(raw_root), f["path"]): int(f["bytes"]) for f in manifest["files"] if f["kind"] == "image"}
    out: list[SourceFile] = []
    names = manifest.get("tables") or [n for n, key in ((CAPTIONS, "captions"), (VQA, "vqa")) if manifest.get(key)]
    for name in names:
        kind = kind_of(name)
        assert kind is not None, name
        out.append(SourceFile(
            order=len(out), kind=kind, path=raw_root / name,
            shown=inputs.get(name) or f"raw/{manifest['source']}/{manifest['fingerprint']}/{name}",
            root=raw_root / (manifest.get("image_roots") or {}).get(name, "files"),
            absolute=(manifest.get("absolute_images") or {}).get(name, {}),
            problems=(manifest.get("image_problems") or {}).get(name, {}), images=images))
        if kind == "conversation":
            with open(raw_root / name, "rb") as fh:
                out[-1].format = detect_format(fh.read(1 << 16))
    ledger.files = out
    return out


def _resolve(f: SourceFile, value: Any, raw_root: Path) -> ImageRef | Problem:
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


def _slow_lines(f: SourceFile, lines: list[tuple[int, bytes]], cfg: DataConfig, ledger: ConversionLedger,
                raw_root: Path) -> Batch:
    """The line-by-line path: every check in order, the first failure is the row's reason."""
    cols: dict[str, list] = {name: [] for name in CANDIDATE.names}
    refs: dict[str, ImageRef] = {}
    for lineno, raw in lines:
        ledger.rows_in += 1
        try:
            text = check_encoding(raw)
            if f.kind == "conversation":
                fields = parse_conversation(text, f.format or "llava", cfg.max_text_chars, cfg.max_images_per_row)
                fields["content"] = as_json(fields["conversation"])
            else:
                fields = parse_row(text, f.kind, cfg.max_text_chars, cfg.max_images_per_row)
            images = fields.pop("images")
            row_refs = []
            for i, image in enumerate(images, 1):
                ref = _resolve(f, image, raw_root)
                if isinstance(ref, Problem):
                    raise ref if len(images) == 1 else Problem(ref.reason, f"image {i} of {len(images)}: {ref.detail}")
                row_refs.append(ref)
        except Problem as p:
            ledger.quarantine(f, lineno, p, raw.decode("utf-8", errors="replace"))
            continue
        for ref in row_refs:
            refs[ref.key] = ref
        for name in ("text", "question", "answer", "language", "answers", "conversation", "content"):
            cols[name].append(fields.get(name))
        cols["line"].append(lineno)
        cols["key"].append(row_refs[0].key if row_refs else None)
        cols["more_keys"].append([r.key for r in row_refs[1:]] if len(row_refs) > 1 else None)
    return pa.Table.from_pydict(cols, schema=CANDIDATE), refs


def _fast_block(f: SourceFile, block: bytes, first_line: int, cfg: DataConfig, ledger: ConversionLedger,
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
        ledger.quarantine(f, int(lines[i]), found[pos[i]], raw(int(i)).decode("utf-8", errors="replace"))
    rest = np.flatnonzero(~clean)
    ledger.rows_in += len(lines) - len(rest)
    keys = pa.array([r.key if isinstance(r, ImageRef) else None for r in found], pa.string())
    mask = pa.array(good)
    n_good = int(good.sum())
    fast = pa.Table.from_arrays(
        [pa.array(lines[good], pa.int64()),
         *(table[n].filter(mask) if n in table.column_names else pa.nulls(n_good, pa.string())
           for n in ("text", "question", "answer", "language")),
         keys.take(pa.array(pos[good])),
         table["answers"].filter(mask) if "answers" in table.column_names else pa.nulls(n_good, CANDIDATE.field("answers").type),
         pa.nulls(n_good, CANDIDATE.field("conversation").type), pa.nulls(n_good, pa.string()),
         pa.nulls(n_good, CANDIDATE.field("more_keys").type)], schema=CANDIDATE)
    if not len(rest):
        return fast, refs
    slow, slow_refs = _slow_lines(f, [(int(lines[i]), raw(int(i))) for i in rest], cfg, ledger, raw_root)
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


def _normalised(f: SourceFile, blocks: Iterator[tuple[int, bytes]]) -> Iterator[tuple[int, bytes]]:
    """The blocks without the file's leading BOM and with LF line ends (counted in ``f``)."""
    for first, block in blocks:
        if first == 1 and block.startswith(BOM):
            block = block[len(BOM):]
            f.bom = True
        if b"\r" in block:
            n = block.count(b"\r\n")
            if n:
                block = block.replace(b"\r\n", b"\n")
                f.crlf_lines += n
            if block.endswith(b"\r"):  # the last line's CR without its LF
                block = block[:-1]
                f.crlf_lines += 1
        yield first, block


def candidates(f: SourceFile, cfg: DataConfig, ledger: ConversionLedger, raw_root: Path) -> Iterator[Batch]:
    """Every non-blank line of a raw JSONL file, text-validated, in file order.

    The next block is parsed in a background thread (``pyarrow.json`` releases the GIL) while
    this one's rows are checked, hashed and written.
    """
    blocks = _normalised(f, _blocks(f.path, BLOCK_BYTES))
    if not FAST_PATH or f.kind not in FIELDS:
        for first, block in blocks:
            yield from _block_batches(f, block, first, None, cfg, ledger, raw_root)
        return
    parser = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jsonl-parser")
    parse = partial(parse_block, kind=f.kind, max_text_chars=cfg.max_text_chars)
    try:
        ahead = [(first, block, parser.submit(parse, block, first)) for first, block in islice(blocks, PARSE_AHEAD)]
        while ahead:
            ahead += [(first, block, parser.submit(parse, block, first)) for first, block in islice(blocks, 1)]
            first, block, parsed = ahead.pop(0)
            yield from _block_batches(f, block, first, parsed.result(), cfg, ledger, raw_root)
    finally:
        parser.shutdown(wait=True, cancel_futures=True)


def _block_batches(f: SourceFile, block: bytes, first: int, pb: ParsedBlock | None, cfg: DataConfig,
                   ledger: ConversionLedger, raw_root: Path) -> Iterator[Batch]:
    if pb is not None:
        batch = _fast_block(f, block, first, cfg, ledger, raw_root, pb)
        assert batch is not None
        yield batch
        return
    lines = block.split(b"\n")
    if FAST_PATH and f.kind in FIELDS and len(lines) > 2 * SUB_BLOCK_LINES:  # retry in pieces: one bad line spoils only its piece
        for i in range(0, len(lines), SUB_BLOCK_LINES):
            piece = b"\n".join(lines[i:i + SUB_BLOCK_LINES])
            batch = _fast_block(f, piece, first + i, cfg, ledger, raw_root)
            if batch is None:
                batch = _slow_lines(f, [(first + i + j, ln) for j, ln in enumerate(lines[i:i + SUB_BLOCK_LINES])
                                        if ln.strip()], cfg, ledger, raw_root)
            yield batch
        return
    yield _slow_lines(f, [(first + j, ln) for j, ln in enumerate(lines) if ln.strip()], cfg, ledger, raw_root)


