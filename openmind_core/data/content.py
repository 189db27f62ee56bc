"""Content hashes of lake rows: ``sample_id``, the train/validation split, duplicate detection.

A row's ``sample_id`` is xxh3-128 (32 hex digits) of its kind, texts (a conversation: its turns
as canonical JSON) and image sha256, never of its file or line, so the same content has the same
id wherever it comes from.  The split follows the image: the first 32 bits of its sha256
(``splits_by_image``), so rows that share an image share a split and validation never sees a
training image; a text-only row's split takes its id's first 32 bits (``split_of``).  Either
way a row keeps its split when others are added.  ``digests_of``,
``hex_ids`` and ``splits_of`` compute the same for a whole batch with Arrow and numpy;
``SeenContent`` finds repeated content across batches and files.
"""

from __future__ import annotations

import binascii
import math
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash


def sample_id(kind: str, fields: dict[str, Any], image_sha256: str) -> str:
    """Content hash of a row: xxh3-128 of its kind, texts and image sha256 (not its file or line).

    32 hex digits.  ``digests_of`` computes the same hash for a whole batch.
    """
    if kind == "conversation":
        return xxhash.xxh3_128_hexdigest("\x1f".join([kind, fields.get("content") or "", image_sha256 or ""]).encode("utf-8"))
    parts = [kind, fields.get("text") or "", fields.get("question") or "", fields.get("answer") or "", image_sha256]
    return xxhash.xxh3_128_hexdigest("\x1f".join(parts).encode("utf-8"))


def digests_of(kind: str, cand: pa.Table, image_sha256: pa.Array) -> np.ndarray:
    """The ``sample_id`` hash of every row of a batch, as rows of 16 bytes."""
    texts = [cand["content"]] if kind == "conversation" else [cand["text"], cand["question"], cand["answer"]]
    joined = pc.binary_join_element_wise(pa.scalar(kind), *texts, image_sha256, "\x1f", null_handling="replace",
                                         null_replacement="")
    blob = b"".join(map(xxhash.xxh3_128_digest, joined.cast(pa.binary()).to_pylist()))
    return np.frombuffer(blob, dtype=np.uint8).reshape(-1, 16)


def hex_ids(digests: np.ndarray) -> pa.Array:
    """Rows of 16 bytes -> their 32-digit lowercase hex strings, built as one Arrow buffer."""
    n = len(digests)
    data = binascii.hexlify(digests.tobytes())  # 32 digits per row, back to back
    offsets = np.arange(0, 32 * (n + 1), 32, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def split_of(sid: str, val_fraction: float) -> str:
    """'validation' for a fixed ``val_fraction`` of content hashes, else 'train' (stable under growth)."""
    return "validation" if int(sid[:8], 16) / 0x1_0000_0000 < val_fraction else "train"


def splits_of(digests: np.ndarray, val_fraction: float) -> pa.Array:
    """``split_of`` vectorised over digest rows: their first 4 bytes, big-endian, below f * 2**32."""
    bound = math.ceil(val_fraction * 0x1_0000_0000)  # exact: scaling by a power of two
    first = np.ascontiguousarray(digests[:, :4]).view(">u4").ravel().astype(np.int64)
    return pc.if_else(pa.array(first < bound), "validation", "train")


def splits_by_image(image_bits: np.ndarray, has_image: np.ndarray, digests: np.ndarray,
                    val_fraction: float) -> pa.Array:
    """The split of each row: from its image's first 32 sha256 bits (``image_bits``) where it has an
    image, else from its content hash (``splits_of``)."""
    bound = math.ceil(val_fraction * 0x1_0000_0000)
    first = np.ascontiguousarray(digests[:, :4]).view(">u4").ravel().astype(np.int64)
    return pc.if_else(pa.array(np.where(has_image, image_bits, first) < bound), "validation", "train")


def image_split_of(image_sha256: str, val_fraction: float) -> str:
    """``splits_by_image`` for one image sha256 (hex)."""
    return split_of(image_sha256, val_fraction)


class SeenContent:
    """The content hashes kept so far; ``keep_new`` marks a batch's repeats.

    While no 8-byte prefix repeats, a set of prefixes proves every row new (one C-level set
    update per batch).  From the first repeat on (a duplicate, or rarely two contents sharing a
    prefix) whole hashes are compared, remembering where each was first kept.
    """

    def __init__(self) -> None:
        self.prefixes: set[int] = set()
        self.history: list[tuple[int, np.ndarray, np.ndarray]] = []  # (file order, hashes, lines)
        self.where: dict[bytes, int] | None = None  # whole hash -> file order << 40 | line

    def keep_new(self, order: int, digests: np.ndarray, lines: np.ndarray) -> np.ndarray | None:
        """Record a batch (file ``order``, hashes as rows of 16 bytes, line numbers); None when
        every row is new, else the mask of the rows seen here first."""
        if self.where is None:
            before = len(self.prefixes)
            self.prefixes.update(np.ascontiguousarray(digests[:, :8]).view("<u8").ravel().tolist())
            if len(self.prefixes) - before == len(digests):
                self.history.append((order, digests, lines))
                return None
            self.where = {}
            for o, ds, ls in self.history:
                self.where.update(zip(_each(ds), ((o << 40) | ls).tolist()))
            self.history.clear()
            self.prefixes.clear()
        keep = np.ones(len(digests), dtype=bool)
        for i, (d, at) in enumerate(zip(_each(digests), ((order << 40) | lines).tolist())):
            if self.where.setdefault(d, at) != at:
                keep[i] = False
        return None if keep.all() else keep

    def first(self, digest: np.ndarray) -> tuple[int, int]:
        """(file order, line) where this content was first kept; only after ``keep_new`` dropped it."""
        assert self.where is not None
        at = self.where[digest.tobytes()]
        return at >> 40, at & ((1 << 40) - 1)


def _each(digests: np.ndarray) -> list[bytes]:
    blob = digests.tobytes()
    return [blob[i:i + 16] for i in range(0, len(blob), 16)]
