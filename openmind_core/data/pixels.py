"""The decoded-pixel cache: every image of a split decoded and resized once, memory-mapped.

When a split's images, decoded and resized, fit ``pixel_cache_bytes`` (default
``PIXEL_CACHE_BYTES``, 2 GiB), they are written once to a uint8 ``.npy`` ``[images, size, size, 3]``
under ``<lake>/cache/<version>/`` (``cache.mapped_cache``), and the dataset's ``__getitem__`` only
normalises; forked loader workers share its pages.  Images are numbered by their slot: their index
among every image of the split, row after row (a row with k images has k consecutive slots; the
dataset gives it ``[k, 3, H, W]``), so the cache's size counts every image of a row.

A large cache is filled by forked worker processes (``PARALLEL_PIXELS``): each receives the job
(``PixelJob``: the memory-mapped image column, the file, the size and filter) once, through the
pool's initializer, which a fork hands over without pickling, and writes its own chunks of rows
into the file.  A small one, or one where processes cannot be forked, is filled here.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from openmind_core.data.cache import cache_path, mapped_cache
from openmind_core.imaging import BICUBIC, resized_pixels
from openmind_core.progress import progress

PIXEL_CACHE_BYTES = 2 << 30  # decoded images up to this size are cached; above it, decoded per sample
PIXELS_VERSION = 1  # bump when resized_pixels changes: old caches are then ignored
PIXEL_CHUNK = 256  # images a cache-building worker decodes per task
PARALLEL_PIXELS = 20_000_000  # output pixels from which building the cache uses worker processes


def image_slots(images: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(each row's first slot, -1 for a text-only row; each row's number of images) of a column of
    lists of images (``cache.cached_images``)."""
    counts = np.asarray(pc.fill_null(pc.list_value_length(images), 0).to_numpy(), dtype=np.int64)
    slots = np.cumsum(counts) - counts
    slots[counts == 0] = -1
    return slots, counts


@dataclass(frozen=True)
class PixelJob:
    """What filling a pixel cache works on."""

    images: pa.ChunkedArray  # the image column (nullable bytes)
    path: str  # the .npy being filled, already shaped [count, size, size, 3]
    size: int
    resample: int
    image_rows: np.ndarray | None  # the rows of ``images`` that have one, in slot order (None: all)

    @property
    def count(self) -> int:
        return len(self.images) if self.image_rows is None else len(self.image_rows)


def cached_pixels(curated, split: str | None, kinds: Iterable[str] | None, images: pa.ChunkedArray,
                  size: int, limit: int, resample: int = BICUBIC,
                  image_rows: np.ndarray | None = None) -> np.ndarray | None:
    """Every image decoded and resized once, as a memory-mapped uint8 array [images, size, size, 3].

    ``image_rows``: the rows of ``images`` that have one (default: all), in slot order.  None when
    the array does not fit ``limit`` bytes or cannot be written: the dataset then decodes per
    sample.
    """
    rows = len(images) if image_rows is None else len(image_rows)
    shape = (rows, size, size, 3)
    if rows * size * size * 3 > limit:
        return None
    filt = "" if resample == BICUBIC else f"-r{resample}"
    path = cache_path(curated, split, kinds, f"pixels-{{key}}-{size}px{filt}-v{PIXELS_VERSION}.npy")

    def build(tmp: Path) -> None:
        np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape).flush()
        _fill_pixels(PixelJob(images, str(tmp), size, resample, image_rows))

    def mismatch(pixels: np.ndarray) -> str | None:
        return None if pixels.shape == shape and pixels.dtype == np.uint8 else f"has shape {pixels.shape}, not {shape}"

    pixels, _ = mapped_cache([path], build, lambda p: np.load(p, mmap_mode="r"), mismatch, lambda: None,
                             what="pixel", fallback="decoding images per sample",
                             errors=(OSError, ValueError, BrokenProcessPool))
    return pixels


def _fill_pixels(job: PixelJob) -> None:
    """Decode and resize every image of ``job`` into its file: in forked worker processes when the
    work is large (they share the mapped images and write their own rows of the file), else here."""
    chunks = [(start, min(start + PIXEL_CHUNK, job.count)) for start in range(0, job.count, PIXEL_CHUNK)]
    workers = min(os.cpu_count() or 1, 8, len(chunks))
    bar = progress(job.count, f"caching {job.size} px images", unit="img")
    try:
        if workers > 1 and job.count * job.size * job.size >= PARALLEL_PIXELS and "fork" in mp.get_all_start_methods():
            with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork"), initializer=_start_worker,
                                     initargs=(job,)) as pool:
                for n in pool.map(_fill_in_worker, chunks):
                    bar.update(n)
        else:
            for chunk in chunks:
                bar.update(_fill_range(job, chunk))
    finally:
        bar.close()


def _fill_range(job: PixelJob, bounds: tuple[int, int]) -> int:
    """Fill rows ``[start, stop)`` of the job's file; returns how many."""
    out = np.load(job.path, mmap_mode="r+")
    for i in range(*bounds):
        row = i if job.image_rows is None else job.image_rows[i]
        out[i] = resized_pixels(job.images[int(row)].as_py(), job.size, job.resample)
    out.flush()
    return bounds[1] - bounds[0]


# a pool worker's job, set once by the pool's initializer (a fork passes it without pickling)
_worker_job: PixelJob | None = None


def _start_worker(job: PixelJob) -> None:
    global _worker_job
    _worker_job = job


def _fill_in_worker(bounds: tuple[int, int]) -> int:
    assert _worker_job is not None, "a pixel-cache worker started without its job"
    return _fill_range(_worker_job, bounds)
