"""Reading the curated lake: row helper, the map-style training dataset, its collator, inspection.

``VLMDataset`` reads the text columns once as Python lists, maps the image column from an
uncompressed Arrow copy under ``<lake>/cache/`` (no Python object per image, nothing on the heap,
pages shared with forked loader workers), and tokenises every prompt and target up front in two
batched tokenizer calls (``openmind_core.prompting.encode_many``).  When the decoded, resized
images fit ``pixel_cache_bytes`` (default 2 GiB), they are written once (by worker processes when
there are many) to a memory-mapped uint8 array beside it, and ``__getitem__`` only normalises; otherwise ``__getitem__`` decodes, resizes
and SigLIP-normalises the image, so that work runs in the loader workers.  Both give the same
tensors.
``Collator`` pads to the longest sample on the right (labels with -100).
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing as mp
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch.utils.data import Dataset

from schemas.artifacts import CuratedDataset

from openmind_core.data.lake import CURATED_MANIFEST, read_json
from openmind_core.imaging import BICUBIC, normalise, preprocess_image, resized_pixels
from openmind_core.progress import progress
from openmind_core.prompting import IGNORE_INDEX, encode_many, has_chat_template, instruction_for

log = logging.getLogger(__name__)

TEXT_COLUMNS = ["sample_id", "kind", "split", "language", "text", "question", "answer",
                "image_width", "image_height", "source_file", "source_line"]
SPLITS = ("train", "validation")
PIXEL_CACHE_BYTES = 2 << 30  # decoded images up to this size are cached; above it, decoded per sample
PIXELS_VERSION = 1  # bump when resized_pixels changes: old caches are then ignored
PIXEL_CHUNK = 256  # images a cache-building worker decodes per task
PARALLEL_PIXELS = 20_000_000  # output pixels from which building the cache uses worker processes


def shard_paths(curated: CuratedDataset | str | Path) -> list[Path]:
    """The shards of a curated version (from its manifest, which must be complete)."""
    if isinstance(curated, CuratedDataset):
        return [Path(s) for s in curated.shards]
    root = Path(curated)
    manifest = read_json(root / CURATED_MANIFEST)
    if manifest is None:
        raise FileNotFoundError(f"{root} is not a complete curated lake version (no readable {CURATED_MANIFEST})")
    return [root / s["path"] for s in manifest["shards"]]


def read_table(curated: CuratedDataset | str | Path, split: str | None = None,
               kinds: Iterable[str] | None = None, with_images: bool = False) -> pa.Table:
    """The curated rows as one Arrow table, filtered by split and kind."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
    columns = TEXT_COLUMNS + (["image", "image_sha256", "image_format"] if with_images else [])
    tables = [pq.read_table(p, columns=columns) for p in shard_paths(curated)]
    table = pa.concat_tables(tables) if tables else pa.table({c: [] for c in columns})
    return _filtered(table, split, kinds)


def read_rows(curated: CuratedDataset | str | Path, split: str | None = None,
              kinds: Iterable[str] | None = None, with_images: bool = False) -> list[dict]:
    """Curated rows as dicts (``image`` bytes only with ``with_images=True``)."""
    return read_table(curated, split, kinds, with_images).to_pylist()


def _filtered(table: pa.Table, split: str | None, kinds: Iterable[str] | None) -> pa.Table:
    if split is not None:
        table = table.filter(pc.equal(table["split"], split))
    if kinds is not None:
        table = table.filter(pc.is_in(table["kind"], value_set=pa.array(list(kinds), pa.string())))
    return table


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


def _mapped_images(curated, split: str | None, kinds: Iterable[str] | None, rows: int) -> pa.ChunkedArray:
    """The image column backed by a memory-mapped Arrow file, so image bytes live in the page cache.

    Parquet pages are compressed and cannot be read at random; an uncompressed Arrow IPC copy under
    ``<lake>/cache/<version>/`` can, zero-copy, and forked loader workers share its pages.  It is
    written once per (version, split, kinds), one shard at a time (memory: one shard's images);
    where it cannot be written (a read-only lake) the column is read into memory instead.
    """
    path = _cache_path(curated, split, kinds, "images-{key}.arrow")
    schema = pa.schema([("image", pa.binary())])
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = _staging(path)
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
                for shard in shard_paths(curated):
                    part = _filtered(pq.read_table(shard, columns=["image", "split", "kind"]), split, kinds)
                    writer.write_table(part.select(["image"]).cast(schema), max_chunksize=8192)
            os.replace(tmp, path)
        mapped = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()["image"]
        if len(mapped) == rows:
            return mapped
        log.warning("image cache %s holds %d rows, not %d; rebuilding it next time", path, len(mapped), rows)
        path.unlink(missing_ok=True)
    except OSError as e:
        log.warning("image cache %s not usable (%s); keeping images in memory", path, e)
    return read_table(curated, split, kinds, with_images=True)["image"]


def _cache_path(curated, split: str | None, kinds: Iterable[str] | None, name: str) -> Path:
    kinds = sorted(kinds) if kinds is not None else None
    root = Path(getattr(curated, "root", curated))
    key = hashlib.sha256(f"{split}|{kinds}".encode()).hexdigest()[:12]
    return root.parent.parent / "cache" / root.name / name.format(key=key)


def _cached_pixels(curated, split: str | None, kinds: Iterable[str] | None, images: pa.ChunkedArray,
                   size: int, limit: int, resample: int = BICUBIC) -> np.ndarray | None:
    """Every image decoded and resized once, as a memory-mapped uint8 array [rows, size, size, 3].

    Written under ``<lake>/cache/<version>/`` (temporary name, then renamed) when it fits
    ``limit`` bytes; forked loader workers share its pages.  None when it does not fit or cannot
    be written: the dataset then decodes per sample.
    """
    rows = len(images)
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
                _fill_pixels(images, tmp, size, resample)
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


def _fill_pixels(images: pa.ChunkedArray, path: Path, size: int, resample: int = BICUBIC) -> None:
    """Decode and resize every image into the .npy at ``path``: in worker processes when the work
    is large and processes can be forked (they inherit the mapped images and write their own rows
    of the file), else here."""
    rows = len(images)
    chunks = [(start, min(start + PIXEL_CHUNK, rows)) for start in range(0, rows, PIXEL_CHUNK)]
    workers = min(os.cpu_count() or 1, 8, len(chunks))
    bar = progress(rows, f"caching {size} px images", unit="img")
    global _FILLING
    _FILLING = (images, str(path), size, resample)
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


_FILLING: tuple[pa.ChunkedArray, str, int, int] | None = None  # what _fill_range works on (inherited by forked workers)


def _fill_range(bounds: tuple[int, int]) -> int:
    images, path, size, resample = _FILLING
    out = np.load(path, mmap_mode="r+")
    for i in range(*bounds):
        out[i] = resized_pixels(images[i].as_py(), size, resample)
    out.flush()
    return bounds[1] - bounds[0]


class VLMDataset(Dataset):
    """Map-style dataset of ``{sample_id, input_ids, labels, pixel_values}`` over curated shards."""

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
        table = read_table(curated, split, kinds)
        if table.num_rows == 0:
            raise ValueError(f"no rows in split {split!r} of {getattr(curated, 'root', curated)}")
        if image_token_id is None or image_token_id < 0:
            raise ValueError(f"image_token_id must be a token id, got {image_token_id!r}")
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.num_image_tokens = num_image_tokens
        self.image_token_id = image_token_id
        self.max_length = max_length
        self.image_mean, self.image_std, self.image_resample = image_mean, image_std, image_resample
        self.rows: list[dict[str, Any]] = table.to_pylist()
        self.images = _mapped_images(curated, split, kinds, table.num_rows)
        self.pixels = _cached_pixels(curated, split, kinds, self.images, image_size, pixel_cache_bytes, image_resample)
        self.sample_ids: list[str] = [r["sample_id"] for r in self.rows]
        # tokenise every row once, in two batched calls: loader workers then only decode images
        pairs = [instruction_for(r) for r in self.rows]
        self.encoded = encode_many(tokenizer, [i for i, _ in pairs], [t or "" for _, t in pairs],
                                   num_image_tokens, image_token_id, max_length)

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict:
        # a spawned loader worker re-maps the pixel cache instead of receiving a pickled copy
        state = dict(self.__dict__)
        if isinstance(self.pixels, np.memmap):
            state["pixels"] = str(self.pixels.filename)
        return state

    def __setstate__(self, state: dict) -> None:
        if isinstance(state.get("pixels"), str):
            state["pixels"] = np.load(state["pixels"], mmap_mode="r")
        self.__dict__.update(state)

    def row(self, index: int) -> dict[str, Any]:
        return self.rows[index]

    def image_bytes(self, index: int) -> bytes:
        return self.images[index].as_py()

    def encode_row(self, index: int):
        """``openmind_core.prompting.Encoded`` of one row (tokenised at construction; no image decoding)."""
        return self.encoded[index]

    def __getitem__(self, index: int) -> dict[str, Any]:
        enc = self.encode_row(index)
        return {
            "sample_id": self.sample_ids[index],
            "input_ids": torch.tensor(enc.input_ids, dtype=torch.long),
            "labels": torch.tensor(enc.labels, dtype=torch.long),
            "pixel_values": (normalise(np.array(self.pixels[index]), self.image_mean, self.image_std)
                             if self.pixels is not None
                             else preprocess_image(self.image_bytes(index), self.image_size, self.image_mean,
                                                   self.image_std, self.image_resample)),
        }


class Collator:
    """Right-pad a list of ``VLMDataset`` items into a batch."""

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
        return {
            "input_ids": input_ids,
            "attention_mask": attention,
            "labels": labels,
            "pixel_values": torch.stack([it["pixel_values"] for it in items]),
            "sample_ids": [it["sample_id"] for it in items],
        }


def inspect_samples(curated: CuratedDataset | str | Path, tokenizer, model_cfg, n: int = 3) -> str:
    """The ``openmind data inspect`` text: ``n`` decoded samples and one collated batch's shapes."""
    from openmind_core.model.tokens import tokens_for_config

    image_token = model_cfg.tokenizer.image_token
    image_token_id = tokenizer.convert_tokens_to_ids(image_token)
    if image_token_id is None or image_token_id == tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer has no {image_token!r} token (model.tokenizer.image_token)")
    n_img = tokens_for_config(model_cfg)
    split = "train"
    args = (tokenizer, model_cfg.vision.img_size, n_img, image_token_id, model_cfg.max_length)
    from openmind_core.model.builder import image_processor_settings

    mean, std, resample, _ = image_processor_settings(model_cfg.vision.pretrained)
    kw = dict(pixel_cache_bytes=0, image_mean=mean, image_std=std, image_resample=resample)
    try:  # a few samples: decode them, build no pixel cache
        ds = VLMDataset(curated, split, *args, **kw)
    except ValueError:
        split = None
        ds = VLMDataset(curated, None, *args, **kw)
    # a mix of kinds when there are several
    picks: list[int] = []
    by_kind: dict[str, list[int]] = {}
    for i, r in enumerate(ds.rows):
        by_kind.setdefault(r["kind"], []).append(i)
    while len(picks) < min(n, len(ds)):
        for idx in by_kind.values():
            if idx and len(picks) < n:
                picks.append(idx.pop(0))
    template = "the tokenizer's chat template" if has_chat_template(tokenizer) else "the fixed USER/ASSISTANT template"
    lines = [f"curated lake: {getattr(curated, 'root', curated)}  split: {split or 'all'}  rows: {len(ds)}",
             f"prompts: {template}",
             f"image: {model_cfg.vision.img_size} px -> {n_img} image tokens ({image_token!r} id {image_token_id}); "
             f"max_length {model_cfg.max_length} text tokens", ""]
    items = []
    for k, i in enumerate(picks, 1):
        row, enc, item = ds.row(i), ds.encode_row(i), ds[i]
        items.append(item)
        start, end = enc.image_positions
        prompt_ids = [t for t, lab in zip(enc.input_ids[end:], enc.labels[end:]) if lab == IGNORE_INDEX]
        target_ids = [t for t in enc.labels if t != IGNORE_INDEX]
        # the whole prompt as the model sees it (chat template included), image tokens shown once
        before = [t for t, lab in zip(enc.input_ids[:start], enc.labels[:start]) if lab == IGNORE_INDEX]
        shown = tokenizer.decode(before) + f"<image x{end - start}>" + tokenizer.decode(prompt_ids)
        lines += [
            f"[{k}] {row['kind']} {row['sample_id']} ({row['source_file']}:{row['source_line']}, {row['language']})",
            f"    image     {row['image_width']}x{row['image_height']} -> pixel_values {tuple(item['pixel_values'].shape)} "
            f"range [{item['pixel_values'].min():.2f}, {item['pixel_values'].max():.2f}]",
            f"    prompt    {shown!r}",
            f"    target    {tokenizer.decode(target_ids)!r}",
            f"    tokens    {len(enc.input_ids)} total = {start} before the image + {end - start} image + "
            f"{len(enc.input_ids) - end - len(target_ids)} prompt "
            f"+ {len(target_ids)} target{' (truncated)' if enc.truncated else ''}",
        ]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    batch = Collator(pad)(items)
    lines += ["", "collated batch:"]
    for key, value in batch.items():
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else f"list[{len(value)}]"
        dtype = str(value.dtype).replace("torch.", "") if isinstance(value, torch.Tensor) else "str"
        lines.append(f"    {key:15s} {shape} {dtype}")
    lines.append(f"    label tokens   {int((batch['labels'] != IGNORE_INDEX).sum())} of "
                 f"{int(batch['attention_mask'].sum())} attended")
    return "\n".join(lines)
