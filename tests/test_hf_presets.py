"""Several hub data sets in one run, nested column paths and answer lists, the COCO and VQAv2
presets on local copies with the hub data sets' own features."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from openmind_core.data import DataError, HubUnreachableError, convert, download, read_rows
from openmind_core.data.sources.hf import _get
from openmind_core.data.sources.hf_presets import resolve
from schemas.config import DataConfig
from schemas.loading import load_config


def png(i: int) -> dict:
    buf = io.BytesIO()
    Image.new("RGB", (20, 16), (40 * i % 256, 90, 160)).save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": f"COCO_train2014_{i:012d}.jpg"}


def coco_2014(root: Path, images: int = 4, per_image: int = 5):
    """HuggingFaceM4/COCO, config 2014 (COCO.py ``_FEATURES``): one row per caption, the caption
    in the struct ``sentences`` {tokens, raw, imgid, sentid}."""
    import datasets

    features = datasets.Features({
        "image": datasets.Image(), "filepath": datasets.Value("string"), "sentids": [datasets.Value("int32")],
        "filename": datasets.Value("string"), "imgid": datasets.Value("int32"), "split": datasets.Value("string"),
        "sentences": {"tokens": [datasets.Value("string")], "raw": datasets.Value("string"),
                      "imgid": datasets.Value("int32"), "sentid": datasets.Value("int32")},
        "cocoid": datasets.Value("int32")})
    rows = []
    for i in range(images):
        for j in range(per_image):
            raw = f"image {i} caption {j}"
            rows.append({"image": png(i), "filepath": "train2014", "sentids": list(range(5 * i, 5 * i + 5)),
                         "filename": f"COCO_train2014_{i:012d}.jpg", "imgid": i, "split": "train",
                         "sentences": {"tokens": raw.split(), "raw": raw, "imgid": i, "sentid": 5 * i + j},
                         "cocoid": 1000 + i})
    ds = datasets.Dataset.from_list(rows, features=features)
    ds.save_to_disk(str(root))
    return root


def vqav2(root: Path, questions: int = 3):
    """HuggingFaceM4/VQAv2 (VQAv2.py features): ten answers as a list of {answer, answer_confidence,
    answer_id} and a multiple_choice_answer."""
    import datasets

    features = datasets.Features({
        "question_type": datasets.Value("string"), "multiple_choice_answer": datasets.Value("string"),
        "answers": [{"answer": datasets.Value("string"), "answer_confidence": datasets.Value("string"),
                     "answer_id": datasets.Value("int64")}],
        "image_id": datasets.Value("int64"), "answer_type": datasets.Value("string"),
        "question_id": datasets.Value("int64"), "question": datasets.Value("string"), "image": datasets.Image()})
    rows = []
    for q in range(questions):
        given = ["red"] * 6 + ["dark red"] * 3 + ["maroon"]
        rows.append({"question_type": "what color", "multiple_choice_answer": "red" if q else "dark red",
                     "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1} for k, a in enumerate(given)],
                     "image_id": q, "answer_type": "other", "question_id": 10 * q, "question": f"What color is {q}?",
                     "image": png(q)})
    root.mkdir(parents=True)
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(root / "train.parquet"))
    return root


def test_guide_download_in_one_config_on_local_copies(tmp_path):
    coco = coco_2014(tmp_path / "HuggingFaceM4" / "COCO")
    vqa = vqav2(tmp_path / "HuggingFaceM4" / "VQAv2")
    cfg = DataConfig(source="hf", hf=[{"name": str(coco), "split": "train[:15]"},  # 3 images x 5 captions
                                      {"name": str(vqa), "split": "train"}], num_workers=1, val_fraction=0.5)
    raw = download(cfg, tmp_path / "lake")
    assert (raw.caption_rows, raw.vqa_rows) == (15, 3)
    curated = convert(raw, cfg, tmp_path / "lake")
    assert curated.kinds == {"caption": 15, "vqa": 3} and curated.rows_quarantined == 0
    rows = read_rows(curated, with_images=True)
    caps = [r for r in rows if r["kind"] == "caption"]
    assert sorted(r["text"] for r in caps)[:2] == ["image 0 caption 0", "image 0 caption 1"]
    by_image = {}
    for r in caps:
        by_image.setdefault(r["image_sha256"], set()).add(r["split"])
    assert len(by_image) == 3 and all(len(s) == 1 for s in by_image.values())  # an image's captions share a split
    vq = sorted((r for r in rows if r["kind"] == "vqa"), key=lambda r: r["question"])
    assert [r["answer"] for r in vq] == ["dark red", "red", "red"]  # multiple_choice_answer is the target
    assert all(len(r["answers"]) == 10 and Counter(r["answers"])["red"] == 6 for r in vq)
    assert download(cfg, tmp_path / "lake").reused

    guide = load_config("configs/guide-data.yaml").data
    assert [(s.name, s.split) for _, s in guide.hf_sources()] == [("HuggingFaceM4/COCO", "train[:1000]"),
                                                                  ("HuggingFaceM4/VQAv2", "train[:500]")]


def test_coco_captions_config_list_column_gives_a_row_per_caption(tmp_path):
    import datasets

    ds = datasets.Dataset.from_list(
        [{"image": png(i), "sentences_raw": [f"img {i} cap {j}" for j in range(5)], "cocoid": i} for i in range(2)],
        features=datasets.Features({"image": datasets.Image(), "sentences_raw": [datasets.Value("string")],
                                    "cocoid": datasets.Value("int32")}))
    ds.save_to_disk(str(tmp_path / "HuggingFaceM4" / "COCO"))
    cfg = DataConfig(source="hf", hf={"name": str(tmp_path / "HuggingFaceM4" / "COCO"), "config_name": "2014_captions",
                                      "split": "train"}, num_workers=1)
    raw = download(cfg, tmp_path / "lake")
    assert raw.caption_rows == 10 and raw.images == 2  # each image written once


def test_presets_nested_paths_and_errors(tmp_path):
    spec = resolve("HuggingFaceM4/VQAv2", None, "train", None, {})
    assert spec.kind == "vqa" and spec.columns["answers"] == "answers.answer"
    assert resolve("HuggingFaceM4/COCO", None, "train", None, {"text": "caption"}).columns["text"] == "caption"
    assert resolve("someone/else", None, "train", None, {}).columns == {"image": "image", "text": "text"}
    with pytest.raises(DataError, match=r"data.hf\[1\].columns: unknown field\(s\) \['answers'\]"):
        resolve("x", None, "train", "caption", {"answers": "a"}, "data.hf[1]")
    row = {"sentences": {"raw": "a cat"}, "answers": [{"answer": "2"}, {"answer": "3"}], "a.b": 1}
    assert (_get(row, "sentences.raw"), _get(row, "answers.answer"), _get(row, "a.b"), _get(row, "x.y")) == (
        "a cat", ["2", "3"], 1, None)
    vqa = vqav2(tmp_path / "v")
    bad = DataConfig(source="hf", hf=[{"name": str(vqa), "kind": "vqa", "columns": {"answer": "nope"}}])
    with pytest.raises(DataError, match=r"data.hf\[0\].columns: column\(s\) not in .*answer -> 'nope'"):
        download(bad, tmp_path / "lake")


def test_an_unreachable_hub_id_in_a_list_is_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = DataConfig(source="hf", hf=[{"name": "HuggingFaceM4/VQAv2-not-cached", "split": "train[:5]"}])
    with pytest.raises(HubUnreachableError, match="VQAv2-not-cached.*unreachable|unreachable.*VQAv2-not-cached"):
        download(cfg, tmp_path / "lake")
