"""The map-style training dataset over the curated lake, and its collator.

Reading rows is ``curated.py`` (``read_table`` / ``read_rows``, re-exported here: ``image`` as
bytes, None for a text-only row); ``openmind data inspect`` is ``inspection.py``.

``VLMDataset`` keeps nothing per row on the Python heap.  The text columns and the image column
are memory-mapped from uncompressed Arrow copies under ``<lake>/cache/<version>/`` (written once
per version, split and kinds); every row is tokenised once, in batches, into a flat int32 array
of token ids and labels plus an index, saved as ``.npy`` beside them and memory-mapped too
(``openmind_core.data.token_cache``).  Forked loader workers share all of these pages; a spawned
worker receives their paths, not their data.  When the decoded, resized images fit
``pixel_cache_bytes`` (default 2 GiB) they are written once (by worker processes when there are
many) to a memory-mapped uint8 array, and ``__getitem__`` only normalises; otherwise
``__getitem__`` decodes, resizes and SigLIP-normalises the image, so that work runs in the loader
workers.  Both give the same tensors.

Rows of kind ``conversation`` are tokenised through ``openmind_core.prompting`` (every assistant
turn a target, the image's tokens at the ``<image>`` tag); a text-only row's item has
``pixel_values`` None.  ``Collator`` pads to the longest sample on the right (labels with -100)
and stacks the images of the rows that have one, in row order (LLaVA's layout: the model fills
the image tokens in order), so batches may mix image and text-only rows.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing as mp
import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import Dataset

from schemas.artifacts import CuratedDataset

from openmind_core.data.curated import (  # noqa: F401  (read_table, read_rows, ... re-exported)
    IMAGE_COLUMNS,
    OPTIONAL_COLUMNS,
    ROW_COLUMNS,
    SPLITS,
    TEXT_COLUMNS,
    _filtered,
    _read_shard,
    _root,
    flat_image,
    read_rows,
    read_table,
    shard_paths,
)
from openmind_core.imaging import BICUBIC, normalise, preprocess_image, resized_pixels
from openmind_core.progress import progress
from openmind_core.prompting import IGNORE_INDEX

log = logging.getLogger(__name__)

PIXEL_CACHE_BYTES = 2 << 30  # decoded images up to this size are cached; above it, decoded per sample
PIXELS_VERSION = 1  # bump when resized_pixels changes: old caches are then ignored
ROWS_VERSION = 2  # bump when the mapped row columns change
PIXEL_CHUNK = 256  # images a cache-building worker decodes per task
PARALLEL_PIXELS = 20_000_000  # output pixels from which building the cache uses worker processes


def _staging(path: Path) -> Path:
    """A temporary name for building ``path`` in this process; removes what dead builders left."""
    for old in path.parent.glob(f".{path.name}.*.tmp"):
        try:
            pid = int(old.name[len(path.name) + 2:-4])
            os.kill(pid, 0)  # raises when no such process: its file is a leftover
        except ProcessLookupError:
            old.unlink(missing_ok=True)
        except (ValueError, PermissionError):
            pass
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _mapped(curated, split: str | None, kinds: Iterable[str] | None, rows: int | None, name: str,
            schema: pa.Schema, part_of) -> tuple[pa.Table, str | None]:
    """Columns backed by a memory-mapped Arrow file, so their bytes live in the page cache.

    Parquet pages are compressed and cannot be read at random; an uncompressed Arrow IPC copy under
    ``<lake>/cache/<version>/`` can, zero-copy, and loader workers share its pages.  It is written
    once per (version, split, kinds), one shard at a time (memory: one shard's columns); where it
    cannot be written (a read-only lake) the columns are read into memory instead.  Returns the
    table and the file it is mapped from (None: in memory).
    """
    path = _cache_path(curated, split, kinds, name)
    what = name.split("-")[0].rstrip("s")  # "image", "row"
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = _staging(path)
            try:
                with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
                    for shard in shard_paths(curated):
                        writer.write_table(part_of(shard).cast(schema), max_chunksize=8192)
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
        mapped = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
        if (rows is None or mapped.num_rows == rows) and mapped.schema.names == schema.names:
            return mapped, str(path)
        log.warning("%s cache %s holds %d rows, not %s; rebuilding it next time", what, path, mapped.num_rows, rows)
        path.unlink(missing_ok=True)
    except OSError as e:
        log.warning("%s cache %s not usable (%s); keeping its columns in memory", what, path, e)
    return pa.concat_tables([part_of(shard).cast(schema) for shard in shard_paths(curated)]), None


def _mapped_rows(curated, split: str | None, kinds: Iterable[str] | None) -> tuple[pa.Table, str | None]:
    """The row columns (no image bytes), memory-mapped (see ``_mapped``)."""
    shards = shard_paths(curated)
    if not shards:
        raise ValueError(f"no shards in {_root(curated)}")
    first = pq.read_schema(shards[0])
    schema = pa.schema([first.field(c) if c in first.names else pa.field(c, OPTIONAL_COLUMNS[c])
                        for c in ROW_COLUMNS])
    return _mapped(curated, split, kinds, None, f"rows-{{key}}-v{ROWS_VERSION}.arrow", schema,
                   lambda shard: _filtered(_read_shard(shard, ROW_COLUMNS, False), split, kinds))


def _mapped_images(curated, split: str | None, kinds: Iterable[str] | None,
                   rows: int) -> tuple[pa.ChunkedArray, str | None]:
    """The image column (nullable bytes), memory-mapped (see ``_mapped``); image bytes never on the heap."""
    schema = pa.schema([pa.field("image", pa.binary())])

    def part(shard):
        t = pq.read_table(shard, columns=["image", "split", "kind"])
        t = _filtered(t.set_column(0, "image", flat_image(t["image"])), split, kinds)
        return t.select(["image"])

    table, path = _mapped(curated, split, kinds, rows, "images-{key}.arrow", schema, part)
    return table["image"], path


def _cache_path(curated, split: str | None, kinds: Iterable[str] | None, name: str) -> Path:
    kinds = sorted(kinds) if kinds is not None else None
    root = _root(curated)
    key = hashlib.sha256(f"{split}|{kinds}".encode()).hexdigest()[:12]
    return root.parent.parent / "cache" / root.name / name.format(key=key)


def _cached_pixels(curated, split: str | None, kinds: Iterable[str] | None, images: pa.ChunkedArray,
                   size: int, limit: int, resample: int = BICUBIC,
                   image_rows: np.ndarray | None = None) -> np.ndarray | None:
    """Every image decoded and resized once, as a memory-mapped uint8 array [images, size, size, 3].

    ``image_rows``: the rows of ``images`` that have one (default: all), in slot order.  Written
    under ``<lake>/cache/<version>/`` (temporary name, then renamed) when it fits ``limit`` bytes;
    forked loader workers share its pages.  None when it does not fit or cannot be written: the
    dataset then decodes per sample.
    """
    rows = len(images) if image_rows is None else len(image_rows)
    if rows * size * size * 3 > limit:
        return None
    filt = "" if resample == BICUBIC else f"-r{resample}"
    path = _cache_path(curated, split, kinds, f"pixels-{{key}}-{size}px{filt}-v{PIXELS_VERSION}.npy")
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = _staging(path)
            try:
                np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(rows, size, size, 3)).flush()
                _fill_pixels(images, tmp, size, resample, image_rows)
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
        pixels = np.load(path, mmap_mode="r")
        if pixels.shape == (rows, size, size, 3) and pixels.dtype == np.uint8:
            return pixels
        log.warning("pixel cache %s has shape %s, not %s; rebuilding it next time", path, pixels.shape,
                    (rows, size, size, 3))
        path.unlink(missing_ok=True)
    except (OSError, ValueError, BrokenProcessPool) as e:
        log.warning("pixel cache %s not usable (%s); decoding images per sample", path, e)
    return None


def _fill_pixels(images: pa.ChunkedArray, path: Path, size: int, resample: int = BICUBIC,
                 image_rows: np.ndarray | None = None) -> None:
    """Decode and resize every image into the .npy at ``path``: in worker processes when the work
    is large and processes can be forked (they inherit the mapped images and write their own rows
    of the file), else here."""
    rows = len(images) if image_rows is None else len(image_rows)
    chunks = [(start, min(start + PIXEL_CHUNK, rows)) for start in range(0, rows, PIXEL_CHUNK)]
    workers = min(os.cpu_count() or 1, 8, len(chunks))
    bar = progress(rows, f"caching {size} px images", unit="img")
    global _FILLING
    _FILLING = (images, str(path), size, resample, image_rows)
    try:
        if workers > 1 and rows * size * size >= PARALLEL_PIXELS and "fork" in mp.get_all_start_methods():
            with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as pool:
                for n in pool.map(_fill_range, chunks):
                    bar.update(n)
        else:
            for chunk in chunks:
                bar.update(_fill_range(chunk))
    finally:
        _FILLING = None
        bar.close()


# what _fill_range works on (inherited by forked workers): images, path, size, resample, image rows
_FILLING: tuple[pa.ChunkedArray, str, int, int, np.ndarray | None] | None = None


def _fill_range(bounds: tuple[int, int]) -> int:
    images, path, size, resample, image_rows = _FILLING
    out = np.load(path, mmap_mode="r+")
    for i in range(*bounds):
        out[i] = resized_pixels(images[int(i if image_rows is None else image_rows[i])].as_py(), size, resample)
    out.flush()
    return bounds[1] - bounds[0]


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


def _remap(path: str) -> pa.Table:
    return pa.ipc.open_file(pa.memory_map(path, "r")).read_all()


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
        from openmind_core.data.token_cache import image_slots, token_arrays

        kinds = sorted(kinds) if kinds is not None else None  # read more than once below
        if image_token_id is None or image_token_id < 0:
            raise ValueError(f"image_token_id must be a token id, got {image_token_id!r}")
        self.table, self._table_path = _mapped_rows(curated, split, kinds)
        if self.table.num_rows == 0:
            raise ValueError(f"no rows in split {split!r} of {_root(curated)}")
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.num_image_tokens = num_image_tokens
        self.image_token_id = image_token_id
        self.max_length = max_length
        self.image_mean, self.image_std, self.image_resample = image_mean, image_std, image_resample
        self.images, self._images_path = _mapped_images(curated, split, kinds, self.table.num_rows)
        slots = image_slots(self.images)
        image_rows = np.flatnonzero(slots >= 0) if self.images.null_count else None
        self.pixels = _cached_pixels(curated, split, kinds, self.images, image_size, pixel_cache_bytes,
                                     image_resample, image_rows)
        del image_rows
        self.sample_ids = SampleIds(self.table["sample_id"])
        # every row tokenised once, in batches, into memory-mapped arrays: workers then only decode images
        cache_dir = _cache_path(curated, split, kinds, "x").parent if self._table_path else None
        name = Path(_cache_path(curated, split, kinds, "tokens-{key}")).name
        self.tokens, self.index = token_arrays(cache_dir, name, self.table, slots, tokenizer, num_image_tokens,
                                               image_token_id, max_length)

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
            state["table"] = _remap(state["_table_path"])
            state["sample_ids"] = SampleIds(state["table"]["sample_id"])
        if state.get("images") is None:
            state["images"] = _remap(state["_images_path"])["image"]
        self.__dict__.update(state)

    def row(self, index: int) -> dict[str, Any]:
        return self.table.slice(int(index), 1).to_pylist()[0]

    def kinds(self) -> list[str]:
        return self.table["kind"].to_pylist()

    def has_image(self, index: int) -> bool:
        return int(self.index[index, 5]) >= 0

    def image_bytes(self, index: int) -> bytes | None:
        return self.images[int(index)].as_py()

    def encode_row(self, index: int):
        """``openmind_core.prompting.Encoded`` of one row (tokenised at construction; no image decoding)."""
        from openmind_core.prompting import Encoded

        off, n, start, end, truncated, _ = (int(x) for x in self.index[index])
        ids, labels = self._full(off, n, start, end)
        return Encoded(ids.tolist(), labels.tolist(), (start, end), bool(truncated))

    def _full(self, off: int, n: int, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        """A row's input_ids and labels (int64), its image placeholder run put back at ``[start, end)``."""
        ids = self.tokens[0, off: off + n].astype(np.int64)
        labels = self.tokens[1, off: off + n].astype(np.int64)
        if end > start:
            ids = np.concatenate([ids[:start], np.full(end - start, self.image_token_id, np.int64), ids[start:]])
            labels = np.concatenate([labels[:start], np.full(end - start, IGNORE_INDEX, np.int64), labels[start:]])
        return ids, labels

    def __getitem__(self, index: int) -> dict[str, Any]:
        off, n, start, end, _, slot = (int(x) for x in self.index[index])
        ids, labels = self._full(off, n, start, end)
        if slot < 0:
            pixel_values = None
        elif self.pixels is not None:
            pixel_values = normalise(np.array(self.pixels[slot]), self.image_mean, self.image_std)
        else:
            pixel_values = preprocess_image(self.image_bytes(index), self.image_size, self.image_mean,
                                            self.image_std, self.image_resample)
        return {
            "sample_id": self.sample_ids[index],
            "input_ids": torch.from_numpy(ids),
            "labels": torch.from_numpy(labels),
            "pixel_values": pixel_values,
        }


class Collator:
    """Right-pad a list of ``VLMDataset`` items into a batch; stack the images of the rows that have one."""

    def __init__(self, pad_token_id: int) -> None:
        if pad_token_id is None:
            raise ValueError("Collator needs a pad_token_id (the tokenizer has no pad token)")
        self.pad_token_id = int(pad_token_id)

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        if not items:
            raise ValueError("Collator got an empty batch")
        longest = max(len(it["input_ids"]) for it in items)
        n = len(items)
        input_ids = torch.full((n, longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((n, longest), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((n, longest), dtype=torch.long)
        for i, it in enumerate(items):
            k = len(it["input_ids"])
            input_ids[i, :k] = it["input_ids"]
            labels[i, :k] = it["labels"]
            attention[i, :k] = 1
        images = [it["pixel_values"] for it in items if it.get("pixel_values") is not None]
        return {
            "input_ids": input_ids,
            "attention_mask": attention,
            "labels": labels,
            # [images in the batch, 3, H, W] in row order; None when every row is text-only
            "pixel_values": torch.stack(images) if images else None,
            "sample_ids": [it["sample_id"] for it in items],
        }


from openmind_core.data.inspection import inspect_samples  # noqa: E402,F401  (re-exported)
