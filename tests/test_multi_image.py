"""Rows with several images, end to end: the two JSONL forms (LLaVA-OneVision ``"image": [...]`` and
``messages`` + ``"images"``), their quarantine reasons, the lake's list of images as datasets, pandas
and DuckDB read it, each image's tokens at its tag, the dataset's items, training packed and padded,
a lake of the previous schema, the memory estimate and ``data inspect``."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from families import qwen2_dir  # noqa: F401  (fixture)
from openmind_core.data import convert, download, read_rows
from schemas.config import DataConfig

COLORS = {"a.png": (200, 0, 0), "b.png": (0, 200, 0), "c.png": (0, 0, 200), "d.png": (200, 200, 0)}
SIZES = {"a.png": (16, 12), "b.png": (20, 10), "c.png": (12, 12), "d.png": (8, 8)}


def png(name: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", SIZES[name], COLORS[name]).save(buf, format="PNG")
    return buf.getvalue()


def human(*turns, image=None) -> dict:
    row = {"conversations": [{"from": f, "value": v} for f, v in turns]}
    return row | ({"image": image} if image is not None else {})


def jsonl(path: Path, rows: list[dict], crlf: bool = False) -> str:
    end = "\r\n" if crlf else "\n"
    path.write_bytes("".join(json.dumps(r) + end for r in rows).encode())
    return str(path)


def inputs(tmp: Path) -> dict[str, str]:
    """Captions (a Windows CRLF file), VQA and LLaVA conversations with 0 to 3 images a row, and bad rows."""
    for name in COLORS:
        (tmp / name).write_bytes(png(name))
    caps = jsonl(tmp / "caps.jsonl", [
        {"image": ["a.png", "b.png"], "text": "a red and a green square"},                      # 1: two images
        {"image": "c.png", "text": "a blue square"},                                            # 2: one
        {"image": ["a.png", "b.png", "c.png", "d.png"], "text": "four"},                        # 3: over the max
        {"image": ["a.png", "nope.png"], "text": "the second is missing"},                      # 4: image 2 missing
    ], crlf=True)
    vqa = jsonl(tmp / "vqa.jsonl", [
        {"image": ["c.png", "a.png", "b.png"], "question": "Which is red?", "answer": "the second"},  # 1: three
    ])
    conv = jsonl(tmp / "conv.jsonl", [
        human(("human", "<image>\nand <image>: which is green?"), ("gpt", "the second"), image=["a.png", "b.png"]),
        human(("human", "First <image>"), ("gpt", "red"), ("human", "now <image> and <image>?"),
              ("gpt", "green, blue"), image=["a.png", "b.png", "c.png"]),                        # 2: tags in 2 turns
        human(("human", "Say hi."), ("gpt", "hi")),                                             # 3: text-only
        human(("human", "<image> only one tag"), ("gpt", "x"), image=["a.png", "b.png"]),        # 4: tag mismatch
        human(("human", "<image> q"), ("gpt", "a"), image="d.png"),                             # 5: one image
    ])
    return {"captions": caps, "vqa": vqa, "conversations": conv}


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multi")
    cfg = DataConfig(source="jsonl", jsonl=inputs(tmp), num_workers=1, max_images_per_row=3, val_fraction=0.0)
    return convert(download(cfg, tmp / "lake"), cfg, tmp / "lake")


def quarantined(curated) -> dict[tuple[str, int], dict]:
    rows = map(json.loads, Path(curated.quarantine_path).read_text(encoding="utf-8").splitlines())
    return {(Path(r["file"]).name, r["line"]): r for r in rows}


def test_rows_with_several_images_convert_and_bad_ones_are_quarantined_by_name(lake):
    assert lake.rows_in == 10 and lake.rows_kept == 7
    bad = quarantined(lake)
    assert {k: b["reason"] for k, b in bad.items()} == {
        ("caps.jsonl", 3): "too_many_images", ("caps.jsonl", 4): "image_missing",
        ("conv.jsonl", 4): "image_tag_mismatch"}
    assert bad["caps.jsonl", 3]["detail"] == "4 images > data.max_images_per_row=3"
    assert bad["caps.jsonl", 4]["detail"].startswith("image 2 of 2:") and "nope.png" in bad["caps.jsonl", 4]["detail"]
    assert bad["conv.jsonl", 4]["detail"].startswith("1 <image> tag(s) for 2 image(s)")
    manifest = json.loads(Path(lake.root, "_manifest.json").read_text())
    assert manifest["schema_version"] == 3 and manifest["converter_version"] == 6
    assert manifest["settings"]["max_images_per_row"] == 3 and manifest["inputs"][0]["crlf_lines"] == 4

    rows = {(r["kind"], r["source_line"]): r for r in read_rows(lake, with_images=True)}
    assert rows["caption", 1]["image"] == png("a.png") and rows["caption", 1]["extra_images"] == [png("b.png")]
    assert rows["caption", 2]["image"] == png("c.png") and rows["caption", 2]["extra_images"] is None
    assert rows["vqa", 1]["image"] == png("c.png") and rows["vqa", 1]["extra_images"] == [png("a.png"), png("b.png")]
    assert rows["conversation", 2]["extra_images"] == [png("b.png"), png("c.png")]
    assert rows["conversation", 3]["image"] is None and rows["conversation", 3]["extra_images"] is None
    # the same texts with the images in another order are another row (the hash covers every image)
    assert len({r["sample_id"] for r in rows.values()}) == 7


def test_datasets_pandas_and_duckdb_read_the_list_of_images(lake):
    import datasets
    import duckdb
    import pandas as pd

    ds = datasets.load_dataset("parquet", data_dir=lake.root, split="train")
    assert isinstance(ds.features["image"], datasets.Image)
    extra = ds.features["extra_images"]
    assert isinstance(extra, datasets.List) and isinstance(extra.feature, datasets.Image)
    by = {(r["kind"], r["source_line"]): r for r in ds}
    assert [im.size for im in by["vqa", 1]["extra_images"]] == [SIZES["a.png"], SIZES["b.png"]]
    assert by["vqa", 1]["image"].size == SIZES["c.png"] and by["caption", 2]["extra_images"] is None

    files = [str(Path(lake.root, s["path"])) for s in json.loads(Path(lake.root, "_manifest.json").read_text())["shards"]]
    df = pd.concat([pd.read_parquet(f) for f in files])
    two = df[(df.kind == "caption") & (df.source_line == 1)].iloc[0]
    assert [e["bytes"] for e in two.extra_images] == [png("b.png")] and list(two.extra_image_sha256) != []
    assert str(df.image_width.dtype) == "Int32"

    con = duckdb.connect()
    got = con.execute(
        "select kind, source_line, 1 + coalesce(len(extra_images), 0) - (image is null)::int as n, "
        "extra_images[1].bytes as second from read_parquet($f) order by kind, source_line", {"f": files}).fetchall()
    counts = {(k, line): n for k, line, n, _ in got}
    assert {(k, line): second for k, line, _, second in got}["vqa", 1] == png("a.png")
    assert counts == {("caption", 1): 2, ("caption", 2): 1, ("conversation", 1): 2, ("conversation", 2): 3,
                      ("conversation", 3): 0, ("conversation", 5): 1, ("vqa", 1): 3}


def test_the_messages_form_with_an_images_list(tmp_path):
    for name in COLORS:
        (tmp_path / name).write_bytes(png(name))
    msgs = jsonl(tmp_path / "m.jsonl", [
        {"messages": [{"role": "user", "content": "<image><image>Compare"}, {"role": "assistant", "content": "same"}],
         "images": ["a.png", "b.png"]},
        {"messages": [{"role": "user", "content": "<image>one"}, {"role": "assistant", "content": "x"}],
         "images": ["a.png", "b.png", "c.png"]},                                               # 2: 1 tag, 3 images
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
    ], crlf=True)
    cfg = DataConfig(source="jsonl", jsonl={"conversations": msgs}, num_workers=1)
    cur = convert(download(cfg, tmp_path / "lake"), cfg, tmp_path / "lake")
    assert cur.rows_kept == 2 and cur.quarantine_by_reason == {"image_tag_mismatch": 1}
    assert quarantined(cur)["m.jsonl", 2]["detail"].startswith("1 <image> tag(s) for 3 image(s)")
    rows = read_rows(cur, with_images=True)
    two = [r for r in rows if r["image"] is not None][0]
    assert two["image"] == png("a.png") and two["extra_images"] == [png("b.png")]
    assert two["conversation"][0]["content"] == "<image><image>Compare"


# --------------------------------------------------------------------------- each image's tokens at its tag

N = 4


@pytest.fixture(scope="module")
def tok():
    from openmind_core.model import train_bpe_tokenizer
    from openmind_core.prompting import format_prompt

    corpus = ["First", "red", "now", "and", "green, blue", "which is green?", "the second", "Say hi.", "hi",
              "a red and a green square", "a blue square", "Which is red?", format_prompt("Describe the image.")]
    return train_bpe_tokenizer(corpus, vocab_size=300, image_token="<image>")


def test_each_image_s_tokens_go_at_its_tag_in_order(tok):
    from openmind_core.prompting import IGNORE_INDEX as I, encode_conversations, encode_many

    img, bos, eos = tok.convert_tokens_to_ids("<image>"), tok.bos_token_id, tok.eos_token_id

    def ids(text):
        return tok(text, add_special_tokens=False)["input_ids"]

    turns = [("user", "First <image>"), ("assistant", "red"), ("user", "now <image> and <image>?"),
             ("assistant", "green, blue")]
    enc, text_only = encode_conversations(tok, [turns, turns], [N, 0], img, 128, num_images=[3, 0])
    # by hand, the fixed layout: the text around each tag as written, an image's N placeholders at each tag
    run = [img] * N
    parts = [[bos], ids("\nUSER: First"), run, ids("\nASSISTANT:"), ids(" red"), [eos], ids("\nUSER: now"), run,
             ids(" and "), run, ids("?\nASSISTANT:"), ids(" green, blue"), [eos]]
    want = [t for p in parts for t in p]
    assert enc.input_ids == want
    target = {4, 5, 11, 12}  # the answers and their eos
    assert enc.labels == [t for k, p in enumerate(parts) for t in (p if k in target else [I] * len(p))]
    starts = [sum(len(p) for p in parts[:k]) for k in (2, 7, 9)]
    assert enc.runs == tuple((s, s + N) for s in starts) and enc.image_positions == (starts[0], starts[0] + N)
    assert img not in text_only.input_ids and text_only.runs == ()
    # untagged (caption / VQA rows): the k images first, one after another
    cap = encode_many(tok, ["Which is red?"], ["the second"], 3 * N, img, 128)[0]
    assert cap.input_ids[:1 + 3 * N] == [bos] + [img] * (3 * N)
    assert cap.input_ids[1 + 3 * N:] == ids("\nUSER: Which is red?\nASSISTANT:") + ids(" the second") + [eos]
    # truncation cuts text, never an image run
    short = encode_conversations(tok, [turns], [N], img, 10, num_images=[3])[0]
    assert short.truncated and short.input_ids.count(img) == 3 * N and len(short.runs) == 3
    with pytest.raises(ValueError, match="3 images but only 1 <image> tag"):
        encode_conversations(tok, [[("user", "one <image>"), ("assistant", "x")]], [N], img, 128, num_images=[3])


def test_a_chat_template_renders_the_text_around_every_image(request):
    from openmind_core.model import build_tokenizer
    from openmind_core.prompting import encode_turns
    from schemas.loading import load_config

    lm_dir = request.getfixturevalue("qwen2_dir")
    t = build_tokenizer(load_config(overrides=[f"model.lm.name_or_path={lm_dir}"]).model.tokenizer)
    img = t.convert_tokens_to_ids("<image>")
    turns = [("user", "<image>\n<image>\nCompare them."), ("assistant", "same"), ("user", "And <image>?"),
             ("assistant", "different")]
    enc = encode_turns(t, turns, N, img, 256, num_images=3)
    rendered = t.apply_chat_template([{"role": r, "content": c.replace("<image>", "IMG")} for r, c in turns],
                                     tokenize=False)
    bounds = [0, *[x for r in enc.runs for x in r], len(enc.input_ids)]
    pieces = [t.decode(enc.input_ids[a:b]) for a, b in zip(bounds[::2], bounds[1::2])]
    assert len(enc.runs) == 3 and all(enc.input_ids[a:b] == [img] * N for a, b in enc.runs)
    assert "IMG".join(pieces) == rendered  # the template's own text, an image's run at each tag
    assert t.decode(enc.input_ids[enc.runs[0][1]:enc.runs[1][0]]) == "\n"  # between the first two, as written




# --------------------------------------------------------------------------- the dataset, training, old lakes


def make(lake, tok, **kw):
    from openmind_core.data import VLMDataset

    return VLMDataset(lake, "train", tok, 28, N, tok.convert_tokens_to_ids("<image>"), 64, **kw)


def test_dataset_items_hold_every_image_of_a_row_in_order(lake, tok):
    from openmind_core.imaging import preprocess_image
    from openmind_core.prompting import encode_turns

    ds, decoded = make(lake, tok), make(lake, tok, pixel_cache_bytes=0)
    assert ds.pixels is not None and len(ds.pixels) == 2 + 1 + 3 + 2 + 3 + 1  # every image of the split
    img = tok.convert_tokens_to_ids("<image>")
    rows = {(ds.row(i)["kind"], ds.row(i)["source_line"]): i for i in range(len(ds))}
    want = {("caption", 1): ["a.png", "b.png"], ("caption", 2): ["c.png"], ("vqa", 1): ["c.png", "a.png", "b.png"],
            ("conversation", 1): ["a.png", "b.png"], ("conversation", 2): ["a.png", "b.png", "c.png"],
            ("conversation", 3): [], ("conversation", 5): ["d.png"]}
    for key, names in want.items():
        i = rows[key]
        item = ds[i]
        assert ds.image_count(i) == len(names) and int((item["input_ids"] == img).sum()) == N * len(names)
        px = item["pixel_values"]
        expect = [preprocess_image(png(n), 28) for n in names]
        if not names:
            assert px is None and decoded[i]["pixel_values"] is None
        elif len(names) == 1:
            assert torch.equal(px, expect[0]) and torch.equal(decoded[i]["pixel_values"], px)
        else:
            assert px.shape == (len(names), 3, 28, 28) and torch.equal(px, torch.stack(expect))
            assert torch.equal(decoded[i]["pixel_values"], px)
        assert len(ds.encode_row(i).runs) == len(names)
    # a conversation's item is exactly its encoding: an image's tokens at each tag
    conv = ds.row(rows["conversation", 2])["conversation"]
    enc = encode_turns(tok, [(t["role"], t["content"]) for t in conv], N, img, 64, num_images=3)
    assert ds[rows["conversation", 2]]["input_ids"].tolist() == enc.input_ids


def test_the_app_trains_on_a_mixed_lake_padded_and_packed(lake, tmp_path):
    """Text-only, one-image and multi-image rows through the smoke test and two epochs, padded and packed:
    the same real tokens either way, fewer computed positions packed."""
    from openmind_core.app.smoke import run_smoke
    from openmind_core.app.tokenizer import prepare_tokenizer
    from openmind_core.app.train import train_from_config
    from schemas import load_config

    results = {}
    for packing in (False, True):
        cfg = load_config(overrides=["train.micro_batch_size=7", "train.epochs=2", "train.wandb.mode=disabled",
                                     f"train.packing={str(packing).lower()}", "data.max_images_per_row=3"])
        run = tmp_path / f"run-{packing}"
        prepared = prepare_tokenizer(cfg, lake, run)
        assert run_smoke(cfg, lake, prepared).passed
        result = results[packing] = train_from_config(cfg, lake, run, prepared.path)
        assert result.steps == 2 and result.reload_equal and np.isfinite(result.last_loss)
        assert result.samples_seen == 14  # every row, twice
    padded, packed = results[False], results[True]
    assert packed.tokens == padded.tokens > 14 * N and packed.slots < padded.slots


def test_a_lake_of_the_previous_schema_is_still_read(lake, tok, tmp_path):
    """Schema 2 (one image a row, no extra_images): rows read with no extra images, the dataset trains on it."""
    import shutil

    old = tmp_path / "lake" / "curated" / "v2"
    shutil.copytree(lake.root, old)
    manifest = json.loads((old / "_manifest.json").read_text())
    for shard in manifest["shards"]:
        t = pq.read_table(old / shard["path"])
        t = t.drop_columns(["extra_images", "extra_image_sha256"])
        t = t.replace_schema_metadata({**t.schema.metadata, b"openmind.schema_version": b"2"})
        pq.write_table(t, old / shard["path"])
    manifest.update(schema_version=2, converter_version=5)
    (old / "_manifest.json").write_text(json.dumps(manifest))
    rows = read_rows(old, with_images=True)
    assert len(rows) == 7 and all(r["extra_images"] is None for r in rows)
    ds = make(old, tok)
    counts = {(ds.row(i)["kind"], ds.row(i)["source_line"]): ds.image_count(i) for i in range(len(ds))}
    assert counts[("vqa", 1)] == 1 and counts[("conversation", 3)] == 0
    assert ds[0]["input_ids"].numel() > 0


def test_the_memory_estimate_counts_images_per_row():
    from openmind_core.model import estimate_memory
    from schemas.config import FULL_CONFIG
    from schemas.loading import load_config

    cfg = load_config(FULL_CONFIG)
    one, three = estimate_memory(cfg), estimate_memory(cfg, images_per_row=3)
    assert three.seq_len == one.seq_len + 2 * one.image_tokens and three.logits > one.logits
    assert three.activations > one.activations and three.weights == one.weights
    assert "x 3 images per row" in three.format_table() and "images per row" not in one.format_table()
    with pytest.raises(ValueError, match="data.max_images_per_row=8"):
        estimate_memory(cfg, images_per_row=9)


def test_estimate_memory_cli_takes_images_per_row(capsys):
    from flows.cli import main

    assert main(["estimate-memory", "--images-per-row", "max", "--budget-gb", "10000"]) == 0
    assert "x 8 images per row" in capsys.readouterr().out
    assert main(["estimate-memory", "--images-per-row", "0"]) != 0
    assert "--images-per-row 0" in capsys.readouterr().err


def test_inspect_shows_every_image_of_a_row(lake, tok):
    from openmind_core.app.inspect_data import inspect_samples
    from schemas.loading import load_config

    text = inspect_samples(lake, tok, load_config(overrides=["model.max_length=64"]).model, n=6)
    assert "3 images, the first" in text and "<image 1 x16>" in text and "<image 3 x16>" in text
    assert "none (a text-only row)" in text


def test_evaluation_leaves_out_rows_with_several_images(lake):
    from openmind_core.evaluation.run import held_out_rows

    rows, train, _ = held_out_rows(lake)  # no validation split here: the training rows
    assert len(train) == 7 and sorted((r["kind"], r["source_line"]) for r in rows) == [
        ("caption", 2), ("conversation", 3), ("conversation", 5)]


def test_small_image_batches_give_the_same_lake(lake, tmp_path, monkeypatch):
    """Batches cut by image bytes (every image of a row counted) give the same rows as one batch."""
    from openmind_core.data import rows as rows_mod
    from openmind_core.data.curated import read_table

    monkeypatch.setattr(rows_mod, "IMAGE_BATCH_BYTES", 1)  # every row a batch of its own
    cfg = DataConfig(source="jsonl", jsonl=inputs(tmp_path), num_workers=1, max_images_per_row=3, val_fraction=0.0)
    small = convert(download(cfg, tmp_path / "lake"), cfg, tmp_path / "lake")
    assert small.version == lake.version
    drop = ["source_file"]
    a, b = read_table(small, with_images=True), read_table(lake, with_images=True)
    assert a.drop_columns(drop).to_pylist() == b.drop_columns(drop).to_pylist()


def test_packed_lake_items_with_several_images_equal_the_padded_batch(lake):
    """The lake's own items (text-only, one-image, two- and three-image rows; conversations with images
    at tags in two turns): packed, each sample's loss, the loss and every gradient equal the padded batch's."""
    from packing_helpers import tiny_tokenizer, tiny_vlm
    from test_packing import _assert_grads_equal, _loss_and_grads, _per_sample_losses

    from openmind_core.data import Collator, PackingCollator, VLMDataset

    tk = tiny_tokenizer()
    model = tiny_vlm("full", tok=tk).eval()
    ds = VLMDataset(lake, "train", tk, model.img_size, model.num_image_tokens, model.image_token_id, 48)
    items = [ds[i] for i in range(len(ds))]
    assert sorted(ds.image_counts().tolist()) == [0, 1, 1, 2, 2, 3, 3]
    collate = PackingCollator(0, max(len(it["input_ids"]) for it in items) + 8)
    rows = collate.rows(items)
    assert len(rows) < len(items)
    padded, packed = Collator(0)(items), collate(items)
    assert packed["pixel_values"].shape[0] == padded["pixel_values"].shape[0] == 12
    ref, ref_grads = _loss_and_grads(model, padded)
    got, got_grads = _loss_and_grads(model, packed)
    where = {}
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            where[i] = (r, at, len(items[i]["input_ids"]))
            at += len(items[i]["input_ids"])
    want = _per_sample_losses(ref.logits.detach(), padded["labels"], [(i, 0, len(it["input_ids"]))
                                                                       for i, it in enumerate(items)])
    have = _per_sample_losses(got.logits.detach(), packed["labels"], [where[i] for i in range(len(items))])
    assert have == pytest.approx(want, rel=1e-5)
    assert got.loss.item() == pytest.approx(ref.loss.item(), rel=1e-5)
    _assert_grads_equal(got_grads, ref_grads)
