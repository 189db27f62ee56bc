"""Tests for reading the lake: VLMDataset items, label masking, collation, loader resume, inspect."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from openmind_core.app.inspect_data import inspect_samples
from openmind_core.data import Collator, ResumableSampler, VLMDataset, convert, download, read_rows
from openmind_core.prompting import IGNORE_INDEX, format_prompt, instruction_for
from schemas.config import DataConfig
from schemas.loading import load_config

N_IMG = 4
SIZE = 28


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    lake = tmp_path_factory.mktemp("lake")
    cfg = DataConfig(synthetic={"num_captions": 40, "num_vqa": 24, "image_size": 32}, val_fraction=0.2, num_workers=1)
    return convert(download(cfg, lake), cfg, lake)


@pytest.fixture(scope="module")
def tokenizer(curated):
    """A tiny byte-level BPE with bos/eos/pad/unk and <image>, trained on the lake's text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = []
    for r in read_rows(curated):
        instruction, target = instruction_for(r)
        texts += [format_prompt(instruction), " " + target]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<s>", "</s>", "<unk>", "<image>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def make(curated, tokenizer, split="train", max_length=32):
    return VLMDataset(curated, split, tokenizer, image_size=SIZE, num_image_tokens=N_IMG,
                      image_token_id=tokenizer.convert_tokens_to_ids("<image>"), max_length=max_length)


def test_read_rows_filters(curated):
    rows = read_rows(curated)
    assert len(rows) == 64 and "image" not in rows[0]
    val = read_rows(curated, split="validation", kinds=["vqa"], with_images=True)
    assert val and all(r["split"] == "validation" and r["kind"] == "vqa" and r["image"] for r in val)
    assert len(read_rows(curated.root, split="train")) == curated.splits["train"]
    with pytest.raises(ValueError, match="split"):
        read_rows(curated, split="test")


def test_items_shapes_and_label_masking(curated, tokenizer):
    ds = make(curated, tokenizer)
    assert len(ds) == curated.splits["train"] and len(ds.sample_ids) == len(ds)
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    for i in range(len(ds)):
        item, row = ds[i], ds.row(i)
        ids, labels = item["input_ids"], item["labels"]
        assert item["sample_id"] == ds.sample_ids[i] == row["sample_id"]
        assert ids.dtype == labels.dtype == torch.long and ids.shape == labels.shape and ids.dim() == 1
        assert item["pixel_values"].shape == (3, SIZE, SIZE) and item["pixel_values"].dtype == torch.float32
        assert -1.0 <= item["pixel_values"].min() and item["pixel_values"].max() <= 1.0
        assert ids[0] == tokenizer.bos_token_id and (ids == image_id).sum() == N_IMG
        assert torch.all(ids[1 : 1 + N_IMG] == image_id)
        masked = labels == IGNORE_INDEX
        first_target = int((~masked).nonzero()[0])
        assert masked[: first_target].all() and not masked[first_target:].any()  # prompt masked, target not
        assert torch.equal(labels[first_target:], ids[first_target:]) and ids[-1] == tokenizer.eos_token_id
        _, target = instruction_for(row)
        assert tokenizer.decode(labels[first_target:-1]).strip() == target
    with pytest.raises(ValueError, match="no rows"):
        VLMDataset(curated, "train", tokenizer, SIZE, N_IMG, 4, 32, kinds=["nothing"])


def test_truncation_never_cuts_image_tokens(curated, tokenizer):
    ds = make(curated, tokenizer, max_length=4)
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    for i in range(len(ds)):
        item = ds[i]
        assert (item["input_ids"] == image_id).sum() == N_IMG
        assert (item["labels"] != IGNORE_INDEX).sum() >= 1
        assert len(item["input_ids"]) <= 1 + N_IMG + 4


def test_collator_pads_right(curated, tokenizer):
    ds = make(curated, tokenizer)
    items = [ds[i] for i in range(5)]
    batch = Collator(tokenizer.pad_token_id)(items)
    longest = max(len(it["input_ids"]) for it in items)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (5, longest)
    assert batch["pixel_values"].shape == (5, 3, SIZE, SIZE) and batch["sample_ids"] == ds.sample_ids[:5]
    for i, it in enumerate(items):
        k = len(it["input_ids"])
        assert torch.equal(batch["input_ids"][i, :k], it["input_ids"])
        assert (batch["input_ids"][i, k:] == tokenizer.pad_token_id).all()
        assert (batch["labels"][i, k:] == IGNORE_INDEX).all()
        assert batch["attention_mask"][i].tolist() == [1] * k + [0] * (longest - k)
    with pytest.raises(ValueError, match="pad_token_id"):
        Collator(None)


def _batches(ds, sampler, workers: int):
    loader = DataLoader(ds, batch_size=4, sampler=sampler, num_workers=workers,
                        collate_fn=Collator(0), persistent_workers=False)
    return list(loader)


def test_loader_resume_matches_unbroken_pass_and_skips(curated, tokenizer):
    ds = make(curated, tokenizer)
    sampler = ResumableSampler(ds.sample_ids, seed=7)
    sampler.set_epoch(1)
    unbroken = _batches(ds, sampler, workers=2)
    assert sum(len(b["sample_ids"]) for b in unbroken) == len(ds)

    resumed_sampler = ResumableSampler(ds.sample_ids, seed=7)
    resumed_sampler.load_state_dict({"epoch": 1, "start": 3 * 4, "seed": 7, "skip": []})
    resumed = _batches(ds, resumed_sampler, workers=2)
    assert len(resumed) == len(unbroken) - 3
    for a, b in zip(unbroken[3:], resumed):
        assert a["sample_ids"] == b["sample_ids"]
        for key in ("input_ids", "labels", "attention_mask", "pixel_values"):
            assert torch.equal(a[key], b[key])

    other_epoch = ResumableSampler(ds.sample_ids, seed=7)
    other_epoch.set_epoch(2)
    assert list(other_epoch) != list(sampler)  # a new permutation each epoch

    skip = set(ds.sample_ids[::5])
    skipping = ResumableSampler(ds.sample_ids, seed=7)
    skipping.set_epoch(1)
    skipping.add_skip(skip)
    seen = [sid for b in _batches(ds, skipping, workers=2) for sid in b["sample_ids"]]
    assert not skip & set(seen) and len(seen) == len(ds) - len(skip)
    assert sorted(seen) == sorted(set(ds.sample_ids) - skip)


def test_inspect_samples(curated, tokenizer):
    model_cfg = load_config().model
    text = inspect_samples(curated, tokenizer, model_cfg, n=3)
    assert text.count("    prompt ") == 3 and text.count("    target ") == 3
    assert "16 image" in text and "pixel_values" in text and "(3, 3, 56, 56)" in text
    assert "caption" in text and "vqa" in text and "collated batch" in text
    bad = model_cfg.model_copy(update={"tokenizer": model_cfg.tokenizer.model_copy(update={"image_token": "<img>"})})
    with pytest.raises(ValueError, match="<img>"):
        inspect_samples(curated, tokenizer, bad)


def test_images_come_from_a_memory_mapped_cache(curated, tokenizer, monkeypatch, caplog):
    from pathlib import Path

    import pyarrow as pa

    ds = make(curated, tokenizer, split="validation")
    cache = list((Path(curated.root).parent.parent / "cache" / Path(curated.root).name).glob("images-*.arrow"))
    assert cache, "no image cache written"
    rows = read_rows(curated, split="validation", with_images=True)
    assert [ds.image_bytes(i) for i in range(len(ds))] == [r["image"] for r in rows]
    # the cache cannot be written (a read-only lake): same data, from memory, with a warning
    monkeypatch.setattr(pa, "OSFile", lambda *a, **k: (_ for _ in ()).throw(OSError("read-only file system")))
    for path in cache:
        path.unlink()
    fallback = make(curated, tokenizer, split="validation")
    assert [fallback.image_bytes(i) for i in range(len(fallback))] == [r["image"] for r in rows]
    assert any("image cache" in r.getMessage() for r in caplog.records)


def test_pixel_cache_gives_the_same_tensors_as_decoding(curated, tokenizer, monkeypatch, caplog):
    import numpy as np

    from openmind_core.data import cache as cache_mod
    from openmind_core.data import pixels as pixels_mod

    image_id = tokenizer.convert_tokens_to_ids("<image>")
    cached = make(curated, tokenizer)
    path = cache_mod.cache_path(curated, "train", None, f"pixels-{{key}}-{SIZE}px-v{pixels_mod.PIXELS_VERSION}.npy")
    assert cached.pixels is not None and path.is_file() and isinstance(cached.pixels, np.memmap)
    built = path.stat().st_mtime_ns
    decoded = VLMDataset(curated, "train", tokenizer, SIZE, N_IMG, image_id, 32, pixel_cache_bytes=0)
    assert decoded.pixels is None
    for i in range(len(cached)):
        assert torch.equal(cached[i]["pixel_values"], decoded[i]["pixel_values"])
    again = make(curated, tokenizer)  # reuses the file
    assert path.stat().st_mtime_ns == built and torch.equal(again[0]["pixel_values"], decoded[0]["pixel_values"])
    # a cache that cannot be written: decoded per sample, with a warning
    monkeypatch.setattr(pixels_mod.np.lib.format, "open_memmap",
                        lambda *a, **k: (_ for _ in ()).throw(OSError("read-only file system")))
    path.unlink()
    fallback = make(curated, tokenizer)
    assert fallback.pixels is None and torch.equal(fallback[0]["pixel_values"], decoded[0]["pixel_values"])
    assert any("pixel cache" in r.getMessage() for r in caplog.records)
    assert not list(path.parent.glob(".pixels-*.tmp"))  # nothing half-built is left


def test_dataset_pickles_its_pixel_cache_by_path(curated, tokenizer):
    import pickle

    ds = make(curated, tokenizer)
    blob = pickle.dumps(ds)
    assert len(blob) < ds.pixels.nbytes  # the mapped array is not copied into the pickle
    back = pickle.loads(blob)
    assert torch.equal(back[3]["pixel_values"], ds[3]["pixel_values"])


def test_cache_builds_left_by_dead_processes_are_removed(tmp_path):
    import subprocess

    from openmind_core.io import _staging_name as _staging

    path = tmp_path / "pixels.npy"
    proc = subprocess.Popen(["true"])
    proc.wait()
    left = tmp_path / f".pixels.npy.{proc.pid}.tmp"
    left.write_bytes(b"partial")
    alive = tmp_path / f".pixels.npy.{os.getppid()}.tmp"  # a live builder's file is kept
    alive.write_bytes(b"in progress")
    mine = _staging(path)
    assert not left.exists() and alive.exists() and mine.name == f".pixels.npy.{os.getpid()}.tmp"


def test_pixel_cache_built_by_worker_processes_is_the_same(curated, tokenizer, monkeypatch):
    from openmind_core.data import pixels as pixels_mod

    monkeypatch.setattr(pixels_mod, "PARALLEL_PIXELS", 0)  # always the worker processes
    monkeypatch.setattr(pixels_mod, "PIXEL_CHUNK", 8)
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    size = SIZE + 4  # a cache of its own
    parallel = VLMDataset(curated, "train", tokenizer, size, N_IMG, image_id, 32)
    decoded = VLMDataset(curated, "train", tokenizer, size, N_IMG, image_id, 32, pixel_cache_bytes=0)
    assert parallel.pixels is not None and len(parallel) > 2 * pixels_mod.PIXEL_CHUNK
    for i in range(len(parallel)):
        assert torch.equal(parallel[i]["pixel_values"], decoded[i]["pixel_values"])


def test_a_failed_pixel_cache_build_leaves_nothing_and_falls_back(curated, tokenizer, monkeypatch):
    from openmind_core.data import pixels as pixels_mod

    def broken(job, bounds):
        raise OSError("disk full")

    monkeypatch.setattr(pixels_mod, "_fill_range", broken)
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    ds = VLMDataset(curated, "validation", tokenizer, SIZE + 8, N_IMG, image_id, 32)
    assert ds.pixels is None and ds[0]["pixel_values"].shape == (3, SIZE + 8, SIZE + 8)
    cache = Path(curated.root).parent.parent / "cache" / Path(curated.root).name
    assert not list(cache.glob(f"*{SIZE + 8}px*")) and not list(cache.glob(".*.tmp"))
