"""The map-style training dataset over the curated lake: ``VLMDataset`` and its ``SampleIds``.

``VLMDataset`` keeps nothing per row on the Python heap.  The row columns and the image column are
memory-mapped from uncompressed Arrow copies (``cache.py``); every row is tokenised once, in
batches, into a flat int32 array of token ids and labels plus an index, memory-mapped too
(``token_cache.py``).  Forked loader workers share all of these pages; a spawned worker receives
their paths, not their data.  When the decoded, resized images fit ``pixel_cache_bytes``
(default 2 GiB) they are cached once as a memory-mapped uint8 array (``pixels.py``) and
``__getitem__`` only normalises; otherwise ``__getitem__`` decodes, resizes and SigLIP-normalises
the image, so that work runs in the loader workers.  Both give the same tensors.

Rows of kind ``conversation`` are tokenised through ``openmind_core.prompting`` (every assistant
turn a target, each image's tokens at its ``<image>`` tag, in order); a text-only row's item has
``pixel_values`` None, a one-image row's ``[3, H, W]`` and a row with k images ``[k, 3, H, W]``
(in tag order; caption and VQA rows put their k images first).  The pixel cache holds every image
of the split, so a row's k images are k consecutive slots.  Batches are made by ``collate.Collator``; reading rows as dicts is
``curated.read_rows``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch.utils.data import Dataset

from schemas.artifacts import CuratedDataset

from openmind_core.data.cache import cache_dir, cache_path, cached_images, cached_rows, open_arrow
from openmind_core.data.curated import curated_root
from openmind_core.data.pixels import PIXEL_CACHE_BYTES, cached_pixels, image_slots
from openmind_core.data.token_cache import token_arrays
from openmind_core.imaging import BICUBIC, normalise, preprocess_image
from openmind_core.prompting import IGNORE_INDEX, Encoded


class SampleIds(Sequence):
    """The ``sample_id`` column as a read-only sequence of str, without a Python object per row."""

    def __init__(self, column: pa.ChunkedArray) -> None:
        self.column = column

    def __len__(self) -> int:
        return len(self.column)

    def __getitem__(self, key):
        if isinstance(key, slice):
            idx = range(len(self))[key]
            if idx.step == 1:
                return self.column.slice(idx.start, len(idx)).to_pylist()
            return self.column.take(pa.array(idx, pa.int64())).to_pylist()
        return self.column[int(key)].as_py()

    def __iter__(self) -> Iterator[str]:
        for chunk in self.column.chunks:
            yield from chunk.to_pylist()


class VLMDataset(Dataset):
    """Map-style dataset of ``{sample_id, input_ids, labels, pixel_values}`` over curated shards
    (``pixel_values`` None for a text-only conversation row)."""

    def __init__(
        self,
        curated: CuratedDataset | str | Path,
        split: str | None,
        tokenizer,
        image_size: int,
        num_image_tokens: int,
        image_token_id: int,
        max_length: int,
        kinds: Iterable[str] | None = None,
        pixel_cache_bytes: int = PIXEL_CACHE_BYTES,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        image_resample: int = BICUBIC,
    ) -> None:
        kinds = sorted(kinds) if kinds is not None else None  # read more than once below
        if image_token_id is None or image_token_id < 0:
            raise ValueError(f"image_token_id must be a token id, got {image_token_id!r}")
        self.table, self._table_path = cached_rows(curated, split, kinds)
        if self.table.num_rows == 0:
            raise ValueError(f"no rows in split {split!r} of {curated_root(curated)}")
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.num_image_tokens = num_image_tokens
        self.image_token_id = image_token_id
        self.max_length = max_length
        self.image_mean, self.image_std, self.image_resample = image_mean, image_std, image_resample
        self.images, self._images_path = cached_images(curated, split, kinds, self.table.num_rows)
        slots, counts = image_slots(self.images)  # a row's first image among all the split's images, its count
        self.pixels = cached_pixels(curated, split, kinds, self.flat_images, image_size, pixel_cache_bytes,
                                    image_resample)
        self.sample_ids = SampleIds(self.table["sample_id"])
        # every row tokenised once, in batches, into memory-mapped arrays: workers then only decode images
        tokens_dir = cache_dir(curated) if self._table_path else None  # rows held in memory: tokens too
        name = cache_path(curated, split, kinds, "tokens-{key}").name
        self.tokens, self.index = token_arrays(tokens_dir, name, self.table, slots, tokenizer, num_image_tokens,
                                               image_token_id, max_length, image_counts=counts)

    def __len__(self) -> int:
        return self.table.num_rows

    def __getstate__(self) -> dict:
        # a spawned loader worker re-maps every cache file instead of receiving a pickled copy
        state = dict(self.__dict__)
        for key in ("pixels", "tokens", "index"):
            if isinstance(state[key], np.memmap):
                state[key] = str(state[key].filename)
        if self._table_path:
            state["table"] = None
            state["sample_ids"] = None
        if self._images_path:
            state["images"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        for key in ("pixels", "tokens", "index"):
            if isinstance(state.get(key), str):
                state[key] = np.load(state[key], mmap_mode="r")
        if state.get("table") is None:
            state["table"] = open_arrow(state["_table_path"])
            state["sample_ids"] = SampleIds(state["table"]["sample_id"])
        if state.get("images") is None:
            state["images"] = open_arrow(state["_images_path"])["images"]
        self.__dict__.update(state)

    def row(self, index: int) -> dict[str, Any]:
        return self.table.slice(int(index), 1).to_pylist()[0]

    def lengths(self) -> np.ndarray:
        """Every row's tokens (text + image placeholders), from the token index: no decoding."""
        return (self.index[:, 1] + self.index[:, 3] - self.index[:, 2]).astype(np.int64)

    def kinds(self) -> list[str]:
        return self.table["kind"].to_pylist()

    @property
    def flat_images(self) -> pa.ChunkedArray:
        """Every image of the split, row after row (a row's k images at its k slots): zero-copy."""
        return pc.list_flatten(self.images)

    def has_image(self, index: int) -> bool:
        return int(self.index[index, 5]) >= 0

    def image_count(self, index: int) -> int:
        return int(self.index[index, 6])

    def image_counts(self) -> np.ndarray:
        """Every row's number of images."""
        return np.asarray(self.index[:, 6], dtype=np.int64)

    def image_bytes(self, index: int) -> bytes | None:
        """The row's (first) image, None for a text-only row."""
        images = self.images[int(index)].as_py()
        return images[0] if images else None

    def images_of(self, index: int) -> list[bytes]:
        """The row's images, in order."""
        return self.images[int(index)].as_py()

    def encode_row(self, index: int):
        """``openmind_core.prompting.Encoded`` of one row (tokenised at construction; no image decoding)."""
        off, n, start, end, truncated, _, k = (int(x) for x in self.index[index])
        ids, labels = self._with_image_run(off, n, start, end)
        runs = _runs(ids, self.image_token_id, self.num_image_tokens) if k > 1 else ()
        return Encoded(ids.tolist(), labels.tolist(), (start, end), bool(truncated), runs)

    def _with_image_run(self, off: int, n: int, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        """A row's input_ids and labels (int64), its image placeholder run put back at ``[start, end)``."""
        ids = self.tokens[0, off: off + n].astype(np.int64)
        labels = self.tokens[1, off: off + n].astype(np.int64)
        if end > start:
            ids = np.concatenate([ids[:start], np.full(end - start, self.image_token_id, np.int64), ids[start:]])
            labels = np.concatenate([labels[:start], np.full(end - start, IGNORE_INDEX, np.int64), labels[start:]])
        return ids, labels

    def __getitem__(self, index: int) -> dict[str, Any]:
        off, n, start, end, _, slot, k = (int(x) for x in self.index[index])
        ids, labels = self._with_image_run(off, n, start, end)
        if slot < 0:
            pixel_values = None
        elif self.pixels is not None:
            pixel_values = normalise(np.array(self.pixels[slot]), self.image_mean, self.image_std) if k == 1 else \
                torch.stack([normalise(np.array(p), self.image_mean, self.image_std) for p in self.pixels[slot: slot + k]])
        elif k > 1:
            pixel_values = torch.stack([preprocess_image(b, self.image_size, self.image_mean, self.image_std,
                                                         self.image_resample) for b in self.images_of(index)])
        else:
            pixel_values = preprocess_image(self.image_bytes(index), self.image_size, self.image_mean,
                                            self.image_std, self.image_resample)
        return {
            "sample_id": self.sample_ids[index],
            "input_ids": torch.from_numpy(ids),
            "labels": torch.from_numpy(labels),
            "pixel_values": pixel_values,
        }


def _runs(ids: np.ndarray, image_token_id: int, per_image: int) -> tuple[tuple[int, int], ...]:
    """The [start, end) run of each image's ``per_image`` placeholder ids in ``ids``, in order."""
    is_image = np.concatenate([[0], (ids == image_token_id).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(is_image))
    return tuple((int(s), int(s) + per_image) for a, b in zip(edges[::2], edges[1::2])
                 for s in range(int(a), int(b), max(per_image, 1)))
