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
