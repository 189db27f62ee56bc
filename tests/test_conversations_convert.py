"""Conversation rows at conversion: LLaVA and messages forms, multi-turn, text-only, every defect
and a literal <image> in caption / VQA text."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from openmind_core.data import REASONS, convert, download, read_rows
from openmind_core.data.conversations import detect_format, parse_conversation
from openmind_core.data.validate import Problem
from schemas.config import DataConfig


def png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 12), color).save(buf, format="PNG")
    return buf.getvalue()


def llava(*turns, image="a.png", **extra) -> dict:
    row = {"id": "x", "conversations": [{"from": f, "value": v} for f, v in turns], **extra}
    if image is not None:
        row["image"] = image
    return row


def write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def _convert(tmp_path: Path, jsonl: Path, **kw):
    cfg = DataConfig(source="jsonl", jsonl={"conversations": str(jsonl), **kw}, num_workers=1)
    lake = tmp_path / "lake"
    curated = convert(download(cfg, lake), cfg, lake)
    bad = {}
    if curated.quarantine_path:
        bad = {b["line"]: b for b in map(json.loads, Path(curated.quarantine_path).read_text(encoding="utf-8").splitlines())}
    return curated, bad


def test_llava_rows_multi_turn_text_only_and_every_defect(tmp_path):
    (tmp_path / "a.png").write_bytes(png((200, 0, 0)))
    (tmp_path / "b.png").write_bytes(png((0, 200, 0)))
    rows = [
        llava(("human", "<image>\nWhat is this?"), ("gpt", "A red square.")),                       # 1 kept
        llava(("system", "Be brief."), ("human", "Colour?\n<image>"), ("gpt", "Red."),
              ("human", "Shape?"), ("gpt", "Square."), image="b.png"),                              # 2 kept, 2 turns
        llava(("human", "Say hi."), ("gpt", "Hi!"), image=None),                                    # 3 kept, text-only
        llava(("gpt", "I start."), ("human", "<image> no")),                                        # 4 roles_out_of_order
        llava(("human", "<image> a"), ("gpt", "b"), ("system", "late")),                            # 5 roles_out_of_order
        llava(("human", "<image> a"), ("gpt", "b"), ("human", "c")),                                # 6 roles_out_of_order
        llava(("human", "<image> q"), ("gpt", "   ")),                                              # 7 empty_turn
        llava(("human", "no tag"), ("gpt", "x")),                                                   # 8 image_tag_mismatch
        llava(("human", "<image> <image> two"), ("gpt", "x")),                                      # 9 image_tag_mismatch
        llava(("human", "<image> tag, no image"), ("gpt", "x"), image=None),                        # 10 image_tag_mismatch
        llava(("human", "<image> q"), ("gpt", "see <image>")),                                      # 11 image_tag_in_answer
        llava(("human", "<image> q"), ("gpt", "x"), image="nope.png"),                              # 12 image_missing
        llava(("human", "<image> q"), ("gpt", "x"), images=["a.png", "b.png"]),                     # 13 wrong_type: both
        llava(("bot", "<image> q"), ("gpt", "x")),                                                  # 14 wrong_type
        {"id": "y", "image": "a.png"},                                                              # 15 missing_field
        llava(("human", "<image>\nWhat is this?"), ("gpt", "A red square.")),                       # 16 duplicate of 1
        llava(("human", "<image> 这是什么"), ("gpt", "红色的方块")),                                 # 17 kept, zh
    ]
    curated, bad = _convert(tmp_path, write(tmp_path / "conv.jsonl", rows))
    assert (curated.rows_in, curated.rows_kept) == (17, 4) and curated.kinds == {"conversation": 4}
    assert {k: b["reason"] for k, b in bad.items()} == {
        4: "roles_out_of_order", 5: "roles_out_of_order", 6: "roles_out_of_order", 7: "empty_turn",
        8: "image_tag_mismatch", 9: "image_tag_mismatch", 10: "image_tag_mismatch", 11: "image_tag_in_answer",
        12: "image_missing", 13: "wrong_type", 14: "wrong_type", 15: "missing_field", 16: "duplicate"}
    assert all(b["detail"] for b in bad.values()) and all(r in REASONS for r in curated.quarantine_by_reason)

    kept = {r["source_line"]: r for r in read_rows(curated, with_images=True)}
    assert kept[1]["conversation"] == [{"role": "user", "content": "<image>\nWhat is this?"},
                                       {"role": "assistant", "content": "A red square."}]
    assert [t["role"] for t in kept[2]["conversation"]] == ["system", "user", "assistant", "user", "assistant"]
    assert kept[2]["image"] == png((0, 200, 0)) and kept[2]["image_width"] == 16
    text_only = kept[3]
    assert text_only["image"] is None and text_only["image_sha256"] is None and text_only["image_width"] is None
    assert text_only["split"] in ("train", "validation") and text_only["kind"] == "conversation"
    assert kept[17]["language"] == "zh" and kept[1]["language"] == "en"
    assert all(r["text"] is None and r["answers"] is None for r in kept.values())
    manifest = json.loads(Path(curated.root, "_manifest.json").read_text())
    assert manifest["inputs"][0]["format"] == "llava"

    # the lake opens in datasets with typed turns and a null image for the text-only row
    import datasets

    ds = datasets.load_dataset("parquet", data_files=curated.shards, split="train")
    by_line = {r["source_line"]: r for r in ds}
    assert by_line[3]["image"] is None and by_line[1]["image"].size == (16, 12)
    assert by_line[2]["conversation"][1] == {"role": "user", "content": "Colour?\n<image>"}


def test_messages_form_is_detected_per_file(tmp_path):
    (tmp_path / "a.png").write_bytes(png((0, 0, 200)))
    rows = [
        {"messages": [{"role": "user", "content": "<image>Describe."}, {"role": "assistant", "content": "Blue."}],
         "images": ["a.png"]},
        {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "text only"},
                      {"role": "assistant", "content": "ok"}]},
        {"messages": [{"role": "user", "content": "<image> q"}, {"role": "assistant", "content": "a"}], "image": "a.png"},
        {"conversations": [{"from": "human", "value": "wrong form"}, {"from": "gpt", "value": "x"}]},  # missing_field
    ]
    curated, bad = _convert(tmp_path, write(tmp_path / "msgs.jsonl", rows))
    assert curated.rows_kept == 3 and {k: b["reason"] for k, b in bad.items()} == {4: "missing_field"}
    assert "messages form" in bad[4]["detail"]
    kept = read_rows(curated, with_images=True)
    assert kept[1]["conversation"][0] == {"role": "system", "content": "s"} and kept[1]["image_sha256"] is None
    assert detect_format(b'\n{"messages": []}\n') == "messages" and detect_format(b'{"conversations": []}') == "llava"


def test_parse_conversation_unit():
    ok = parse_conversation(json.dumps(llava(("Human", " <image> hi "), ("GPT", "yo"))), "llava", 100)
    assert ok["conversation"] == [{"role": "user", "content": "<image> hi"}, {"role": "assistant", "content": "yo"}]
    with pytest.raises(Problem, match="text_too_long"):
        parse_conversation(json.dumps(llava(("human", "<image>" + "x" * 200), ("gpt", "y"))), "llava", 100)
    with pytest.raises(Problem, match="empty_turn"):
        parse_conversation(json.dumps({"conversations": [], "image": "a.png"}), "llava", 100)


def test_image_tag_in_caption_and_vqa_text_is_quarantined(tmp_path):
    (tmp_path / "a.png").write_bytes(png((5, 5, 5)))
    caps = write(tmp_path / "c.jsonl", [{"image": "a.png", "text": "a cat"},
                                        {"image": "a.png", "text": "a <image> token"}])
    vqa = write(tmp_path / "v.jsonl", [{"image": "a.png", "question": "<image> what?", "answer": "x"},
                                       {"image": "a.png", "question": "what?", "answer": "see <image>"},
                                       {"image": "a.png", "question": "q", "answers": ["b", "<image>"]},
                                       {"image": "a.png", "question": "colour?", "answer": "red"}])
    cfg = DataConfig(source="jsonl", jsonl={"captions": str(caps), "vqa": str(vqa)}, num_workers=1)
    curated = convert(download(cfg, tmp_path / "lake"), cfg, tmp_path / "lake")
    assert curated.rows_kept == 2 and curated.quarantine_by_reason == {"image_tag_in_text": 4}


def test_a_trained_tokenizer_learns_conversation_turns(tmp_path):
    from openmind_core.app.tokenizer import tokenizer_corpus

    (tmp_path / "a.png").write_bytes(png((200, 0, 0)))
    jsonl = write(tmp_path / "conv.jsonl", [
        llava(("human", "<image>\nWhat colour is this?"), ("gpt", "Vermilion, quite plainly.")),
        llava(("human", "Say hello."), ("gpt", "Hello there!"), image=None),
    ])
    curated, _ = _convert(tmp_path, jsonl)
    corpus = tokenizer_corpus(curated)
    train_text = " ".join(t["content"] for r in read_rows(curated, split="train") for t in r["conversation"])
    assert train_text and all(w in " ".join(corpus) for w in train_text.replace("<image>", " ").split())
    assert not any("<image>" in t for t in corpus)
