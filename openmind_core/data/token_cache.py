"""Every curated row tokenised once, kept off the Python heap in two memory-mapped ``.npy`` files.

``tokens-<key>-<tok>.npy`` is int32 ``[2, T]``: row 0 every sample's ``input_ids`` one after
another, row 1 their ``labels`` (``-100`` where masked), each without its run of image placeholder
ids (a constant: 729 of them at 384 px would be most of the file).  ``tokens-<key>-<tok>-index.npy``
is int64 ``[rows, 7]``: per row its offset into ``T``, its stored length, where the (first) image's tokens
go ``[start, end)`` in the full sequence, whether it was truncated, its first image's slot in the
pixel cache (``-1``: a text-only row; a row's k images have slots ``slot .. slot + k - 1``) and its
number of images k.  Only the first image's run is left out of the stored ids: a row with several
images keeps the placeholder runs of the others where its prompt puts them (at its ``<image>`` tags).
Both live under ``<lake>/cache/<version>/`` beside the pixel cache; ``<tok>`` hashes what the
tokens depend on (the tokenizer's vocabulary and template, the image token, its count, the text
budget and ``prompting.py`` and ``chat_template.py`` themselves), so another tokenizer or prompt layout gets its own files.
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
from itertools import chain
from pathlib import Path

import numpy as np
import pyarrow as pa

from openmind_core import chat_template, prompt_layout, prompting
from openmind_core.data.cache import mapped_cache
from openmind_core.progress import progress
from openmind_core.prompting import IMAGE_TAG, Encoded, encode_conversations, encode_many, instruction_for

CHUNK = 16_384  # rows tokenised per batch
TOKENS_VERSION = 3  # bump when the file layout changes (3: image_count, rows with several images)
INDEX_FIELDS = ("offset", "length", "image_start", "image_end", "truncated", "image_slot", "image_count")
# how samples become tokens: prompting and the template rendering it uses (chat_template)
_PROMPTING = hashlib.sha256("".join(map(inspect.getsource, (prompting, prompt_layout, chat_template))).encode()).hexdigest()[:16]


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


def _encode_chunk(part: pa.Table, counts: np.ndarray, tokenizer, num_image_tokens: int, image_token_id: int,
                  max_length: int) -> list[Encoded]:
    """Every row of ``part`` encoded; ``counts``: each row's number of images."""
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
        tokens = [num_image_tokens if counts[i] > 0 else 0 for i in convs]
        for i, enc in zip(convs, encode_conversations(tokenizer, turns, tokens, image_token_id, max_length,
                                                      image_tag=IMAGE_TAG, num_images=[int(counts[i]) for i in convs])):
            out[i] = enc
    for k in sorted(set(counts.tolist())):  # caption and VQA rows: their k images first; a literal "<image>" stays text
        rows = [i for i in range(n) if cols["kind"][i] != "conversation" and counts[i] == k]
        if not rows:
            continue
        pairs = [instruction_for({c: cols[c][i] for c in cols}) for i in rows]
        encs = encode_many(tokenizer, [p for p, _ in pairs], [t or "" for _, t in pairs],
                           num_image_tokens * k, image_token_id, max_length)
        for i, enc in zip(rows, encs):
            out[i] = enc
    return out  # type: ignore[return-value]


def _without_image_run(values: list[int], enc: Encoded):
    """``values`` without the image's run of placeholder ids (the index says where it goes)."""
    start, end = enc.image_positions
    return chain(values[:start], values[end:]) if end > start else values


def _encoded_chunks(table: pa.Table, slots: np.ndarray, counts: np.ndarray, tokenizer, num_image_tokens,
                    image_token_id, max_length, index: np.ndarray):
    """Yield (input_ids, labels) int32 arrays chunk by chunk, filling ``index`` as it goes."""
    offset = 0
    bar = progress(table.num_rows, "tokenising", unit="row")
    try:
        for lo in range(0, table.num_rows, CHUNK):
            part = table.slice(lo, CHUNK)
            encs = _encode_chunk(part, counts[lo: lo + part.num_rows], tokenizer, num_image_tokens, image_token_id,
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
            rows[:, 6] = counts[lo: lo + len(encs)]
            total = int(lengths.sum())
            offset += total
            ids = np.fromiter(chain.from_iterable(_without_image_run(e.input_ids, e) for e in encs), np.int32, total)
            labels = np.fromiter(chain.from_iterable(_without_image_run(e.labels, e) for e in encs), np.int32, total)
            bar.update(len(encs))
            yield ids, labels
    finally:
        bar.close()


def token_arrays(cache_dir: Path | None, name: str, table: pa.Table, slots: np.ndarray, tokenizer,
                 num_image_tokens: int, image_token_id: int, max_length: int,
                 image_counts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(tokens [2, T] int32, index [rows, 7] int64): memory-mapped from ``cache_dir`` (built there
    once, ``cache.mapped_cache``), or in memory when ``cache_dir`` is None or cannot be written.
    ``image_counts``: each row's number of images (default: 1 where ``slots`` has one)."""
    rows = table.num_rows
    counts = (np.asarray(slots) >= 0).astype(np.int64) if image_counts is None else np.asarray(image_counts, np.int64)
    args = (tokenizer, num_image_tokens, image_token_id, max_length)

    def in_memory() -> tuple[np.ndarray, np.ndarray]:
        index = np.zeros((rows, len(INDEX_FIELDS)), np.int64)
        parts = list(_encoded_chunks(table, slots, counts, *args, index))
        ids = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int32)
        labels = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int32)
        return np.stack([ids, labels]), index

    if cache_dir is None:
        return in_memory()
    key = tokenizer_key(tokenizer, num_image_tokens, image_token_id, max_length)
    path = Path(cache_dir) / f"{name}-{key}.npy"
    index_path = path.with_name(f"{name}-{key}-index.npy")

    def mismatch(arrays: tuple[np.ndarray, np.ndarray]) -> str | None:
        tokens, index = arrays
        total = int(index[-1, 0] + index[-1, 1]) if rows else 0
        if index.shape == (rows, len(INDEX_FIELDS)) and tokens.shape == (2, total):
            return None
        return f"does not match {rows} rows"

    def build(tmp: Path, index_tmp: Path) -> None:
        _write_files(tmp, index_tmp, table, slots, counts, args)

    def open_mapped(p: Path, ip: Path) -> tuple[np.ndarray, np.ndarray]:
        return np.load(p, mmap_mode="r"), np.load(ip, mmap_mode="r")

    # the index last: a reader needs both files, and finds the index only once the tokens are in place
    arrays, _ = mapped_cache([path, index_path], build, open_mapped, mismatch, in_memory, what="token",
                             fallback="keeping token ids in memory", errors=(OSError, ValueError))
    return arrays


def _write_files(tmp: Path, index_tmp: Path, table: pa.Table, slots: np.ndarray, counts: np.ndarray, args) -> None:
    """Tokenise every row into the (staged) token file ``tmp`` and index file ``index_tmp``.

    The ids and labels are streamed chunk by chunk to two raw scratch files first (their total
    length, the array's shape, is known only at the end), then copied into the ``.npy``."""
    raw_ids, raw_labels = tmp.with_suffix(".ids"), tmp.with_suffix(".labels")
    try:
        index = np.zeros((table.num_rows, len(INDEX_FIELDS)), np.int64)
        total = 0
        with open(raw_ids, "wb") as fi, open(raw_labels, "wb") as fl:
            for ids, labels in _encoded_chunks(table, slots, counts, *args, index):
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
    finally:
        for f in (raw_ids, raw_labels):
            f.unlink(missing_ok=True)
