"""Tests for the download step: every source, fingerprints, reuse, manifests, clear errors."""

from __future__ import annotations

import base64
import io
import json
import re
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from openmind_core.data import DataError, HubUnreachableError, convert, download, read_rows
from openmind_core.data.synthetic import COLORS, POSITIONS, SHAPES, ZH
from openmind_core.io import sha256_file
from schemas.config import DataConfig


def png(color=(255, 0, 0), size=(16, 12), fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def small_synthetic(**kw) -> DataConfig:
    return DataConfig(synthetic={"num_captions": 40, "num_vqa": 20, "image_size": 32, **kw}, num_workers=1)


# --------------------------------------------------------------------------- synthetic


def test_synthetic_default_sizes_manifest_and_reuse(tmp_path):
    cfg = DataConfig(num_workers=1)
    raw = download(cfg, tmp_path)
    assert (raw.caption_rows, raw.vqa_rows, raw.images) == (1000, 500, 1500)
    assert not raw.reused
    root = Path(raw.root)
    assert root == tmp_path / "raw" / "synthetic" / raw.fingerprint
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["caption_rows"] == 1000 and manifest["vqa_rows"] == 500
    listed = {f["path"]: f for f in manifest["files"]}
    assert len(listed) == 1502
    for name in ("captions.jsonl", "vqa.jsonl", "files/cap_000000.png", "files/vqa_000499.png"):
        assert listed[name]["sha256"] == sha256_file(root / name)
    with Image.open(root / "files" / "cap_000007.png") as im:
        assert im.size == (64, 64)
    again = download(cfg, tmp_path)
    assert again.reused and again.fingerprint == raw.fingerprint
    assert not list((tmp_path / "raw" / "synthetic").glob(".*"))  # no temporary leftovers


def test_synthetic_is_seeded_and_learnable(tmp_path):
    a = download(small_synthetic(), tmp_path / "a")
    b = download(small_synthetic(), tmp_path / "b")
    c = download(small_synthetic(), tmp_path / "a", seed=1)
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert Path(a.caption_jsonl).read_bytes() == Path(b.caption_jsonl).read_bytes()
    assert Path(a.root, "files/cap_000003.png").read_bytes() == Path(b.root, "files/cap_000003.png").read_bytes()

    captions = [json.loads(line) for line in Path(a.caption_jsonl).read_text().splitlines()]
    colors, shapes, places = "|".join(COLORS), "|".join(SHAPES), "|".join(POSITIONS)
    pattern = re.compile(rf"^(a ({colors}) ({shapes}) at the ({places})|(two|three) ({colors}) ({shapes})s)$")
    assert all(pattern.match(r["text"]) for r in captions), captions[:3]
    vqa = [json.loads(line) for line in Path(a.vqa_jsonl).read_text().splitlines()]
    classes = set(COLORS) | set(SHAPES) | set(POSITIONS) | {"1", "2", "3"}
    assert all(r["answer"] in classes for r in vqa)
    assert len(Counter(r["answer"] for r in vqa)) > 3  # not one constant answer


def test_synthetic_image_matches_caption(tmp_path):
    """The colour named in the caption is the dominant non-background colour of the image."""
    raw = download(small_synthetic(), tmp_path)
    for r in [json.loads(line) for line in Path(raw.caption_jsonl).read_text().splitlines()][:10]:
        with Image.open(Path(raw.root, "files", r["image"])) as im:
            pixels = list(im.convert("RGB").getdata())
        named = next(c for c in COLORS if c in r["text"].split())
        target = COLORS[named]
        close = sum(1 for p in pixels if sum(abs(x - y) for x, y in zip(p, target)) < 30)
        assert close > len(pixels) * 0.03, (r, close)


def test_synthetic_chinese(tmp_path):
    raw = download(small_synthetic(language="zh"), tmp_path)
    rows = [json.loads(line) for line in Path(raw.vqa_jsonl).read_text(encoding="utf-8").splitlines()]
    assert all(r["language"] == "zh" for r in rows)
    assert all(r["answer"] in set(ZH.values()) | {"1", "2", "3"} for r in rows)
    assert any("\u4e00" <= ch <= "\u9fff" for ch in rows[0]["question"])


# --------------------------------------------------------------------------- jsonl


def test_jsonl_relative_absolute_and_inline_images(tmp_path):
    user = tmp_path / "user"
    (user / "img").mkdir(parents=True)
    (user / "img" / "a.png").write_bytes(png((255, 0, 0)))
    elsewhere = tmp_path / "elsewhere.jpg"
    elsewhere.write_bytes(png((0, 255, 0), fmt="JPEG"))
    b64 = base64.b64encode(png((0, 0, 255))).decode()
    rows = [
        {"image": "img/a.png", "text": "relative"},
        {"image": str(elsewhere), "text": "absolute"},
        {"image": f"data:image/png;base64,{b64}", "text": "data uri"},
        {"image": {"bytes": base64.b64encode(png((9, 9, 9))).decode()}, "text": "bytes as base64"},
        {"image": {"bytes": list(png((7, 7, 7)))}, "text": "bytes as a list"},
    ]
    cap = write_jsonl(user / "caps.jsonl", rows)
    vqa = write_jsonl(user / "qa.jsonl", [{"image": "img/a.png", "question": "What color?", "answer": "red"}])
    cfg = DataConfig(source="jsonl", jsonl={"captions": str(cap), "vqa": str(vqa)}, num_workers=1)
    raw = download(cfg, tmp_path / "lake")
    assert Path(raw.caption_jsonl).read_bytes() == cap.read_bytes()  # byte for byte
    assert (raw.caption_rows, raw.vqa_rows) == (5, 1)
    assert raw.images == 2  # the relative and the absolute file; inline ones stay in the JSONL
    curated = convert(raw, cfg, tmp_path / "lake")
    assert curated.rows_quarantined == 0, curated.quarantine_by_reason
    got = {r["text"] or r["question"]: r for r in read_rows(curated, with_images=True)}
    assert got["relative"]["image"] == png((255, 0, 0))
    assert got["absolute"]["image_format"] == "JPEG"
    assert got["data uri"]["image"] == png((0, 0, 255))
    assert got["bytes as a list"]["image"] == png((7, 7, 7))
    assert got["relative"]["source_file"] == str(cap.resolve())
    assert got["What color?"]["kind"] == "vqa" and got["What color?"]["answer"] == "red"
    assert download(cfg, tmp_path / "lake").reused


def test_image_refs_scanned_once_each_in_either_path(tmp_path):
    from openmind_core.data.sources.jsonl import scan_image_refs

    inline = "data:image/png;base64," + "A" * 300
    rows = [{"image": "a.png", "text": "x"}, {"image": "b/c.png", "text": "y"}, {"image": "a.png", "text": "z"},
            {"text": "no image"}, {"image": inline, "text": "inline"}, {"image": "d.png", "meta": [1, 2]}]
    fast = tmp_path / "fast.jsonl"
    fast.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert scan_image_refs(fast) == ["a.png", "b/c.png", "d.png"]  # pyarrow.json, one call
    slow = tmp_path / "slow.jsonl"  # an image object and a malformed line: line by line, same answer
    slow.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"image": {"path": "e.png"}}\nnot json\n'
                    + json.dumps({"image": {"bytes": "AAAA", "path": "f.png"}}) + "\n", encoding="utf-8")
    assert scan_image_refs(slow) == ["a.png", "b/c.png", "d.png", "e.png"]


def test_jsonl_changed_image_changes_fingerprint(tmp_path):
    (tmp_path / "a.png").write_bytes(png((1, 2, 3)))
    cap = write_jsonl(tmp_path / "c.jsonl", [{"image": "a.png", "text": "x"}])
    cfg = DataConfig(source="jsonl", jsonl={"captions": str(cap)})
    first = download(cfg, tmp_path / "lake")
    (tmp_path / "a.png").write_bytes(png((3, 2, 1)))
    second = download(cfg, tmp_path / "lake")
    assert first.fingerprint != second.fingerprint and not second.reused
    assert Path(first.root).is_dir() and Path(second.root).is_dir()


def test_missing_input_names_the_path(tmp_path):
    cfg = DataConfig(source="jsonl", jsonl={"captions": str(tmp_path / "nope.jsonl")})
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        download(cfg, tmp_path / "lake")
    cfg = DataConfig(source="coco", coco={"annotations": str(tmp_path / "ann.json"), "images": str(tmp_path)})
    with pytest.raises(FileNotFoundError, match="ann.json"):
        download(cfg, tmp_path / "lake")


# --------------------------------------------------------------------------- coco


def test_coco_captions(tmp_path):
    images = tmp_path / "val2017"
    images.mkdir()
    for i in range(3):
        (images / f"{i:012d}.jpg").write_bytes(png((i * 40, 0, 0), fmt="JPEG"))
    ann = {
        "images": [{"id": i, "file_name": f"{i:012d}.jpg", "width": 16, "height": 12} for i in range(4)],
        "annotations": [{"id": 100 + k, "image_id": k % 4, "caption": f"caption number {k}"} for k in range(8)],
    }
    (tmp_path / "captions_val2017.json").write_text(json.dumps(ann))
    cfg = DataConfig(source="coco", coco={"annotations": str(tmp_path / "captions_val2017.json"),
                                          "images": str(images), "limit": 6}, num_workers=1)
    raw = download(cfg, tmp_path / "lake")
    assert raw.caption_rows == 6 and raw.images == 3
    curated = convert(raw, cfg, tmp_path / "lake")
    # image 3 is listed in the annotations but missing on disk: its caption (k=3) is quarantined
    assert (curated.rows_in, curated.rows_kept, curated.quarantine_by_reason) == (6, 5, {"image_missing": 1})
    assert {r["text"] for r in read_rows(curated)} == {f"caption number {k}" for k in (0, 1, 2, 4, 5)}

    (tmp_path / "bad.json").write_text('{"images": []}')
    bad = DataConfig(source="coco", coco={"annotations": str(tmp_path / "bad.json"), "images": str(images)})
    with pytest.raises(DataError, match="COCO"):
        download(bad, tmp_path / "lake")


# --------------------------------------------------------------------------- hf


def _hf_dataset():
    import datasets

    return datasets.Dataset.from_dict(
        {"img": [{"bytes": png((i * 50, 10, 10)), "path": None} for i in range(5)],
         "sentence": [f"picture {i}" for i in range(5)]},
        features=datasets.Features({"img": datasets.Image(), "sentence": datasets.Value("string")}),
    )


def test_hf_local_parquet_and_save_to_disk(tmp_path):
    ds = _hf_dataset()
    ds.to_parquet(str(tmp_path / "data.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    for name, split, n in ((tmp_path / "data.parquet", "train[:4]", 4), (tmp_path / "saved", "train[1:3]", 2)):
        cfg = DataConfig(source="hf", hf={"name": str(name), "split": split,
                                          "columns": {"image": "img", "text": "sentence"}}, num_workers=1)
        raw = download(cfg, tmp_path / "lake")
        assert raw.caption_rows == n and raw.images == n
        curated = convert(raw, cfg, tmp_path / "lake")
        rows = read_rows(curated, with_images=True)
        assert curated.rows_kept == n and all(r["image_format"] == "PNG" for r in rows)
        assert download(cfg, tmp_path / "lake").reused
    first = read_rows(curated, with_images=True)
    assert sorted(r["text"] for r in first) == ["picture 1", "picture 2"]


def test_hf_vqa_columns_and_bad_mapping(tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict({"image": [{"bytes": png(), "path": None}], "q": ["What?"], "a": ["red"]},
                                    features=datasets.Features({"image": datasets.Image(), "q": datasets.Value("string"),
                                                                "a": datasets.Value("string")}))
    ds.to_parquet(str(tmp_path / "vqa.parquet"))
    cfg = DataConfig(source="hf", hf={"name": str(tmp_path / "vqa.parquet"), "split": "train", "kind": "vqa",
                                      "columns": {"question": "q", "answer": "a"}}, num_workers=1)
    raw = download(cfg, tmp_path / "lake")
    assert raw.vqa_rows == 1
    bad = DataConfig(source="hf", hf={"name": str(tmp_path / "vqa.parquet"), "split": "train", "kind": "vqa"})
    with pytest.raises(DataError, match="question -> 'question'"):
        download(bad, tmp_path / "lake2")


def test_hf_hub_unreachable_is_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = DataConfig(source="hf", hf={"name": "someone/not-a-cached-dataset", "split": "train[:10]"})
    with pytest.raises(HubUnreachableError, match="hub is unreachable.*someone/not-a-cached-dataset|someone/not-a-cached-dataset.*hub is unreachable"):
        download(cfg, tmp_path / "lake")
    with pytest.raises(FileNotFoundError, match="missing-dir"):
        download(DataConfig(source="hf", hf={"name": str(tmp_path / "missing-dir")}), tmp_path / "lake")
