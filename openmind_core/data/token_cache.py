"""Every curated row tokenised once, kept off the Python heap in two memory-mapped ``.npy`` files.

``tokens-<key>-<tok>.npy`` is int32 ``[2, T]``: row 0 every sample's ``input_ids`` one after
another, row 1 their ``labels`` (``-100`` where masked), each without its run of image placeholder
ids (a constant: 729 of them at 384 px would be most of the file).  ``tokens-<key>-<tok>-index.npy``
is int64 ``[rows, 6]``: per row its offset into ``T``, its stored length, where the image tokens
go ``[start, end)`` in the full sequence, whether it was truncated, and its image's slot in the
pixel cache (``-1``: a text-only row).
Both live under ``<lake>/cache/<version>/`` beside the pixel cache; ``<tok>`` hashes what the
tokens depend on (the tokenizer's vocabulary and template, the image token, its count, the text
budget and ``prompting.py`` itself), so another tokenizer or prompt layout gets its own files.
Loader workers share their pages (a fork inherits the mapping, a spawn re-maps the paths).

Rows are tokenised in chunks of ``CHUNK`` (caption / VQA rows in two batched tokenizer calls,
conversations in one, ``openmind_core.prompting``) and streamed to temporary files, so building
them holds one chunk's Python objects at a time.  A lake that cannot be written (read-only) gets
the same arrays in memory instead, with a warning.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
from itertools import chain
from pathlib import Path

import numpy as np
import pyarrow as pa

from openmind_core import prompting
from openmind_core.progress import progress
from openmind_core.prompting import IMAGE_TAG, Encoded, encode_conversations, encode_many, instruction_for

log = logging.getLogger(__name__)

CHUNK = 16_384  # rows tokenised per batch
TOKENS_VERSION = 2  # bump when the file layout changes
INDEX_FIELDS = ("offset", "length", "image_start", "image_end", "truncated", "image_slot")
_PROMPTING = hashlib.sha256(inspect.getsource(prompting).encode()).hexdigest()[:16]


def tokenizer_key(tokenizer, num_image_tokens: int, image_token_id: int, max_length: int) -> str:
    """A short hash of everything the token ids depend on."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(json.dumps([getattr(tokenizer, "chat_template", None), tokenizer.bos_token_id,
                         tokenizer.eos_token_id, num_image_tokens, image_token_id, max_length, TOKENS_VERSION,
                         _PROMPTING], default=str).encode())
    return h.hexdigest()[:16]


def image_slots(images: pa.ChunkedArray) -> np.ndarray:
    """Each row's index among the rows that have an image (-1 for a text-only row)."""
    valid = np.asarray(images.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    slots = np.cumsum(valid, dtype=np.int64) - 1
    slots[~valid] = -1
    return slots


def _encode_chunk(part: pa.Table, slots: np.ndarray, tokenizer, num_image_tokens: int, image_token_id: int,
                  max_length: int) -> list[Encoded]:
    cols = {c: part[c].to_pylist() for c in ("kind", "language", "text", "question", "answer", "conversation")}
    n = part.num_rows
    out: list[Encoded | None] = [None] * n
    convs = [i for i in range(n) if cols["kind"][i] == "conversation"]
    if convs:
        turns = []
        for i in convs:
            conv = cols["conversation"][i]
            if not conv:
                raise ValueError(f"conversation row {part['sample_id'][i].as_py()} has no turns")
            turns.append([(t["role"], t["content"] or "") for t in conv])
        counts = [num_image_tokens if slots[i] >= 0 else 0 for i in convs]
        for i, enc in zip(convs, encode_conversations(tokenizer, turns, counts, image_token_id, max_length,
                                                      image_tag=IMAGE_TAG)):
            out[i] = enc
    for with_image in (True, False):  # caption and VQA rows: their literal "<image>" stays text
        rows = [i for i in range(n) if cols["kind"][i] != "conversation" and (slots[i] >= 0) == with_image]
        if not rows:
            continue
        pairs = [instruction_for({c: cols[c][i] for c in cols}) for i in rows]
        encs = encode_many(tokenizer, [p for p, _ in pairs], [t or "" for _, t in pairs],
                           num_image_tokens if with_image else 0, image_token_id, max_length)
        for i, enc in zip(rows, encs):
            out[i] = enc
    return out  # type: ignore[return-value]


def _text(values: list[int], enc: Encoded):
    """``values`` without the image's placeholder run."""
    start, end = enc.image_positions
    return chain(values[:start], values[end:]) if end > start else values


def _encoded_chunks(table: pa.Table, slots: np.ndarray, tokenizer, num_image_tokens, image_token_id, max_length,
                    index: np.ndarray):
    """Yield (input_ids, labels) int32 arrays chunk by chunk, filling ``index`` as it goes."""
    offset = 0
    bar = progress(table.num_rows, "tokenising", unit="row")
    try:
        for lo in range(0, table.num_rows, CHUNK):
            part = table.slice(lo, CHUNK)
            encs = _encode_chunk(part, slots[lo: lo + part.num_rows], tokenizer, num_image_tokens, image_token_id,
                                 max_length)
            # the image's run of placeholder ids is not stored: the index says where it goes
            lengths = np.fromiter((len(e.input_ids) - (e.image_positions[1] - e.image_positions[0]) for e in encs),
                                  np.int64, len(encs))
            rows = index[lo: lo + len(encs)]
            rows[:, 0] = offset + np.concatenate([[0], np.cumsum(lengths)[:-1]])
            rows[:, 1] = lengths
            rows[:, 2] = [e.image_positions[0] for e in encs]
            rows[:, 3] = [e.image_positions[1] for e in encs]
            rows[:, 4] = [e.truncated for e in encs]
            rows[:, 5] = slots[lo: lo + len(encs)]
            total = int(lengths.sum())
            offset += total
            ids = np.fromiter(chain.from_iterable(_text(e.input_ids, e) for e in encs), np.int32, total)
            labels = np.fromiter(chain.from_iterable(_text(e.labels, e) for e in encs), np.int32, total)
            bar.update(len(encs))
            yield ids, labels
    finally:
        bar.close()


def token_arrays(cache_dir: Path | None, name: str, table: pa.Table, slots: np.ndarray, tokenizer,
                 num_image_tokens: int, image_token_id: int, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """(tokens [2, T] int32, index [rows, 6] int64): memory-mapped from ``cache_dir`` (built there
    once), or in memory when ``cache_dir`` is None or cannot be written."""
    rows = table.num_rows
    key = tokenizer_key(tokenizer, num_image_tokens, image_token_id, max_length)
    args = (tokenizer, num_image_tokens, image_token_id, max_length)
    if cache_dir is not None:
        path = Path(cache_dir) / f"{name}-{key}.npy"
        index_path = path.with_name(f"{name}-{key}-index.npy")
        try:
            if not (path.exists() and index_path.exists()):
                _build_files(path, index_path, table, slots, args)
            tokens, index = np.load(path, mmap_mode="r"), np.load(index_path, mmap_mode="r")
            total = int(index[-1, 0] + index[-1, 1]) if rows else 0
            if index.shape == (rows, len(INDEX_FIELDS)) and tokens.shape == (2, total):
                return tokens, index
            log.warning("token cache %s does not match %d rows; rebuilding it next time", path, rows)
            path.unlink(missing_ok=True)
            index_path.unlink(missing_ok=True)
        except (OSError, ValueError) as e:
            log.warning("token cache %s not usable (%s); keeping token ids in memory", path, e)
    index = np.zeros((rows, len(INDEX_FIELDS)), np.int64)
    parts = list(_encoded_chunks(table, slots, *args, index))
    ids = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int32)
    labels = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int32)
    return np.stack([ids, labels]), index


def _build_files(path: Path, index_path: Path, table: pa.Table, slots: np.ndarray, args) -> None:
    from openmind_core.data.dataset import _staging

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _staging(path)
    raw_ids, raw_labels = tmp.with_suffix(".ids"), tmp.with_suffix(".labels")
    index_tmp = _staging(index_path)
    try:
        index = np.zeros((table.num_rows, len(INDEX_FIELDS)), np.int64)
        total = 0
        with open(raw_ids, "wb") as fi, open(raw_labels, "wb") as fl:
            for ids, labels in _encoded_chunks(table, slots, *args, index):
                fi.write(ids.tobytes())
                fl.write(labels.tobytes())
                total += len(ids)
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.int32, shape=(2, total))
        for row, raw in ((0, raw_ids), (1, raw_labels)):
            src = np.memmap(raw, dtype=np.int32, mode="r") if total else np.zeros(0, np.int32)
            for lo in range(0, total, 1 << 24):  # 64 MB at a time
                out[row, lo: lo + (1 << 24)] = src[lo: lo + (1 << 24)]
            del src
        out.flush()
        del out
        with open(index_tmp, "wb") as f:
            np.save(f, index)
        os.replace(tmp, path)
        os.replace(index_tmp, index_path)  # the index last: a reader needs both
    finally:
        for f in (tmp, raw_ids, raw_labels, index_tmp):
            f.unlink(missing_ok=True)
