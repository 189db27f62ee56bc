"""The training dataset and sampler keep nothing per row on the Python heap."""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from openmind_core.data import ResumableSampler, VLMDataset
from openmind_core.data import token_cache as tokens_mod
from test_conversation_training import MIXED, N_IMG, SIZE, tok, write_lake  # noqa: F401  (tok: fixture)


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    return write_lake(tmp_path_factory.mktemp("offheap"), MIXED * 5, shards=3)


def make(lake, tok, **kw):
    return VLMDataset(lake, "train", tok, SIZE, N_IMG, tok.convert_tokens_to_ids("<image>"), 64, **kw)


def test_rows_and_tokens_are_memory_mapped_and_pickled_by_path(lake, tok):
    ds = make(lake, tok)
    assert isinstance(ds.tokens, np.memmap) and isinstance(ds.index, np.memmap)
    assert ds.tokens.dtype == np.int32 and ds.tokens.shape[0] == 2 and ds.index.shape == (len(ds), 7)
    assert ds._table_path and ds._images_path and not hasattr(ds, "rows") and not hasattr(ds, "encoded")
    # the stored tokens hold no image placeholder runs; the items have them back in place
    image_id = tok.convert_tokens_to_ids("<image>")
    assert image_id not in np.asarray(ds.tokens[0])
    blob = pickle.dumps(ds)
    assert len(blob) - len(pickle.dumps(tok)) < 4096  # paths and settings, not rows
    back = pickle.loads(blob)
    for i in range(len(ds)):
        a, b = ds[i], back[i]
        assert a["sample_id"] == b["sample_id"] and torch.equal(a["input_ids"], b["input_ids"])
        assert torch.equal(a["labels"], b["labels"])
        assert (a["pixel_values"] is None) == (b["pixel_values"] is None)
        assert int((a["input_ids"] == image_id).sum()) == (N_IMG if ds.has_image(i) else 0)
    assert ds.sample_ids[:3] == [ds[i]["sample_id"] for i in range(3)] and list(ds.sample_ids)[5] == ds[5]["sample_id"]


def test_token_cache_is_reused_keyed_and_has_a_read_only_fallback(lake, tok, monkeypatch, caplog):
    ds = make(lake, tok)
    path = ds.tokens.filename
    built = os.stat(path).st_mtime_ns
    assert os.stat(make(lake, tok).tokens.filename).st_mtime_ns == built  # reused
    other = VLMDataset(lake, "train", tok, SIZE, N_IMG, tok.convert_tokens_to_ids("<image>"), 8)
    assert other.tokens.filename != path  # another text budget: its own file
    # the lake cannot be written: the same arrays, in memory, with a warning
    monkeypatch.setattr(tokens_mod, "CHUNK", 7)  # several chunks
    monkeypatch.setattr(tokens_mod.np.lib.format, "open_memmap",
                        lambda *a, **k: (_ for _ in ()).throw(OSError("read-only file system")))
    monkeypatch.setattr(tokens_mod, "TOKENS_VERSION", 99)  # a new key: nothing cached yet
    fallback = make(lake, tok)
    assert not isinstance(fallback.tokens, np.memmap) and any("token cache" in r.getMessage() for r in caplog.records)
    for i in range(len(ds)):
        assert torch.equal(fallback[i]["input_ids"], ds[i]["input_ids"])
        assert torch.equal(fallback[i]["labels"], ds[i]["labels"])
    assert not [p for p in Path(path).parent.iterdir() if p.name.startswith(".")]  # nothing half-built is left


def _old_order(ids, seed, epoch, skip):
    g = torch.Generator()
    g.manual_seed(seed + epoch)
    order = torch.randperm(len(ids), generator=g).tolist()
    return [i for i in order if skip.get(ids[i], epoch + 1) > epoch]


def _old_add_skip(ids, seed, skip, new, epoch, boundary):
    first_pos = {}
    for pos, idx in enumerate(_old_order(ids, seed, epoch, skip)):
        first_pos.setdefault(ids[idx], pos)
    for sid in new:
        if sid not in skip:
            pos = first_pos.get(sid)
            skip[sid] = epoch if pos is None or pos >= boundary else epoch + 1


def test_sampler_on_arrow_ids_matches_the_list_version():
    rng = random.Random(3)
    ids = [f"id{rng.randrange(60)}" for _ in range(80)]  # repeats included
    sampler = ResumableSampler(ids, seed=5, world_size=2, rank=1)
    skip: dict[str, int] = {}
    for epoch in range(4):
        new = rng.sample(ids, 6) + ["not-there"]
        start = rng.randrange(0, 30)
        _old_add_skip(ids, 5, skip, new, epoch, start * 2)
        sampler.add_skip(new, epoch=epoch, start=start)
        assert sampler.skip == skip
        assert sampler.global_order(epoch) == _old_order(ids, 5, epoch, skip)
        sampler.set_epoch(epoch, start=start)
        keep = _old_order(ids, 5, epoch, skip)
        keep = (keep + keep[: (-len(keep)) % 2])[1::2]
        assert list(sampler) == keep[start:] and len(sampler) == len(keep) - start
        assert all(type(i) is int for i in sampler)
