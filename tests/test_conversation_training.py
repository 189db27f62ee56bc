"""Conversation rows in training: the lake layout of schema version 2, read and trained on.

The lakes here are written with pyarrow directly in the contract's layout (``image`` as the Hugging
Face ``struct<bytes, path>``, null for a text-only row; ``conversation`` as a list of
``{role, content}``; ``answers``), so these tests do not depend on the converter.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from families import llama3_dir, qwen2_dir  # noqa: F401  (fixtures)
from openmind_core import prompting
from openmind_core.app.inspect_data import inspect_samples
from openmind_core.data import Collator, VLMDataset, read_rows
from openmind_core.prompting import IGNORE_INDEX, encode_turns
from schemas.loading import load_config

N_IMG = 4
SIZE = 28

IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
CONV_TYPE = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
HF_FEATURES = {"info": {"features": {"image": {"_type": "Image"}}}}


def png(color, size=32) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


def write_lake(root: Path, rows: list[dict], shards: int = 1) -> Path:
    """A curated version ``root/curated/v2test`` in the contract's layout; returns its directory."""
    version = root / "curated" / "v2test"
    version.mkdir(parents=True)
    cols = {
        "sample_id": pa.string(), "kind": pa.string(), "split": pa.string(), "language": pa.string(),
        "text": pa.string(), "question": pa.string(), "answer": pa.string(), "answers": pa.list_(pa.string()),
        "conversation": CONV_TYPE, "image": IMAGE_TYPE, "image_sha256": pa.string(), "image_width": pa.int32(),
        "image_height": pa.int32(), "image_format": pa.string(), "source_file": pa.string(),
        "source_line": pa.int64(),
    }
    schema = pa.schema(list(cols.items()), metadata={"huggingface": json.dumps(HF_FEATURES),
                                                     "openmind.schema_version": "2"})
    full = []
    for i, r in enumerate(rows):
        img = r.get("image")
        full.append({
            "sample_id": r.get("sample_id", f"s{i:04d}"), "kind": r["kind"], "split": r.get("split", "train"),
            "language": "en", "text": r.get("text"), "question": r.get("question"), "answer": r.get("answer"),
            "answers": r.get("answers"), "conversation": r.get("conversation"),
            "image": {"bytes": img, "path": None} if img is not None else None,
            "image_sha256": "x" if img is not None else None, "image_width": 32 if img is not None else None,
            "image_height": 32 if img is not None else None, "image_format": "PNG" if img is not None else None,
            "source_file": "rows.jsonl", "source_line": i + 1,
        })
    per = -(-len(full) // shards)
    entries = []
    for k in range(shards):
        name = f"shard-{k:05d}.parquet"
        pq.write_table(pa.Table.from_pylist(full[k * per:(k + 1) * per], schema=schema), version / name)
        entries.append({"path": name, "rows": len(full[k * per:(k + 1) * per])})
    (version / "_manifest.json").write_text(json.dumps({"shards": entries}))
    return version


def conv(*turns):
    return [{"role": r, "content": c} for r, c in turns]


MIXED = [
    {"kind": "caption", "text": "a red square", "image": png("red")},
    {"kind": "vqa", "question": "What color is it?", "answer": "blue", "answers": ["blue", "blue", "navy"],
     "image": png("blue")},
    {"kind": "conversation", "image": png("green"), "conversation": conv(
        ("user", "<image>\nWhat color is this?"), ("assistant", "green"),
        ("user", "Is it dark?"), ("assistant", "no it is light"))},
    {"kind": "conversation", "conversation": conv(("user", "Say hello."), ("assistant", "hello there"))},
    {"kind": "conversation", "image": png("red"), "conversation": conv(
        ("system", "Be brief."), ("user", "Look at this <image> and name the color"), ("assistant", "red"))},
    {"kind": "conversation", "conversation": conv(
        ("user", "Count to two."), ("assistant", "one two"), ("user", "And three?"), ("assistant", "three"))},
]
CORPUS = ["a red square", "What color is it?", "blue", "green", "What color is this?", "Is it dark?",
          "no it is light", "Say hello.", "hello there", "Be brief.", "Look at this and name the color", "red",
          "Count to two.", "one two", "And three?", "three", prompting.format_prompt("Describe the image.")]


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    return write_lake(tmp_path_factory.mktemp("lake2"), MIXED * 4, shards=2)


@pytest.fixture(scope="module")
def tok():
    from openmind_core.model import train_bpe_tokenizer

    return train_bpe_tokenizer(CORPUS, vocab_size=300, image_token="<image>")


def spans(labels):
    out, start = [], None
    for i, lab in enumerate(list(labels) + [IGNORE_INDEX]):
        if lab != IGNORE_INDEX and start is None:
            start = i
        elif lab == IGNORE_INDEX and start is not None:
            out.append((start, i))
            start = None
    return out


# --------------------------------------------------------------------------- reading the v2 layout


def test_read_rows_flattens_the_image_struct(lake):
    rows = read_rows(lake, with_images=True)
    assert len(rows) == 24
    by_kind = {r["kind"]: r for r in rows}
    assert by_kind["caption"]["image"] == png("red") and isinstance(by_kind["caption"]["image"], bytes)
    text_only = [r for r in rows if r["kind"] == "conversation" and r["image"] is None]
    assert len(text_only) == 8 and all(r["image_sha256"] is None for r in text_only)
    assert by_kind["vqa"]["answers"] == ["blue", "blue", "navy"]
    assert [t["role"] for t in rows[2]["conversation"]] == ["user", "assistant", "user", "assistant"]


# --------------------------------------------------------------------------- encoding, exactly


def test_fixed_layout_labels_every_assistant_turn_and_places_the_image_at_the_tag(tok):
    image_id = tok.convert_tokens_to_ids("<image>")
    bos, eos = tok.bos_token_id, tok.eos_token_id

    def ids(text):
        return tok(text, add_special_tokens=False)["input_ids"]

    # a leading tag: the image right after bos, as in a caption row; both answers are targets
    enc = encode_turns(tok, [("user", "<image>\nWhat color is this?"), ("assistant", "green"),
                             ("user", "Is it dark?"), ("assistant", "no it is light")], N_IMG, image_id, 128)
    u1, a1 = ids(prompting.format_prompt("What color is this?")), ids(" green")
    u2, a2 = ids(prompting.format_prompt("Is it dark?")), ids(" no it is light")
    want = [bos] + [image_id] * N_IMG + u1 + a1 + [eos] + u2 + a2 + [eos]
    assert enc.input_ids == want and enc.image_positions == (1, 1 + N_IMG)
    I = IGNORE_INDEX
    assert enc.labels == [I] * (1 + N_IMG + len(u1)) + a1 + [eos] + [I] * len(u2) + a2 + [eos]
    # the tag mid-text: the image goes exactly there, the tag itself is gone
    enc = encode_turns(tok, [("user", "Look at this <image> and name the color"), ("assistant", "red")],
                       N_IMG, image_id, 128)
    start, end = enc.image_positions
    assert enc.input_ids[start:end] == [image_id] * N_IMG and enc.input_ids.count(image_id) == N_IMG
    assert tok.decode(enc.input_ids[1:start]) == "\nUSER: Look at this"
    assert tok.decode(enc.input_ids[end:]).startswith(" and name the color\nASSISTANT:")
    # a text-only row: no image tokens at all; a tag-free "<image>" in it stays text
    enc = encode_turns(tok, [("user", "Say <image> hello."), ("assistant", "hello there")], 0, image_id, 128)
    assert image_id not in enc.input_ids and enc.image_positions == (0, 0)
    assert tok.decode([t for t in enc.labels if t != I]) == " hello there</s>"


@pytest.mark.parametrize("family", ["llama3", "qwen2"])
def test_chat_template_conversation(family, request):
    from openmind_core.model import build_tokenizer

    lm_dir = request.getfixturevalue(f"{family}_dir")
    t = build_tokenizer(load_config(overrides=[f"model.lm.name_or_path={lm_dir}"]).model.tokenizer)
    image_id = t.convert_tokens_to_ids("<image>")
    eot = "<|eot_id|>" if family == "llama3" else "<|im_end|>"
    turns = [("system", "Be brief."), ("user", "<image>\nWhat color is this?"), ("assistant", "green"),
             ("user", "Is it dark?"), ("assistant", "no it is light")]
    enc = encode_turns(t, turns, N_IMG, image_id, 256)
    # the whole sequence is the template's own rendering, with the image tokens at the tag
    # (LLaVA's order: the image, "\n", the text; "IMG" keeps a template's trim off that "\n")
    rendered = t.apply_chat_template([{"role": r, "content": c.replace("<image>", "IMG")} for r, c in turns],
                                     tokenize=False).replace("IMG", "")
    start, end = enc.image_positions
    assert enc.input_ids[start:end] == [image_id] * N_IMG and enc.input_ids.count(image_id) == N_IMG
    text = t.decode(enc.input_ids[:start]) + t.decode(enc.input_ids[end:])
    assert text == rendered  # ChatML's "\n" after the last <|im_end|> included, as the template writes it
    assert "Be brief." in t.decode(enc.input_ids[:start])  # the system turn comes before the image
    # labels: each assistant turn and its end-of-turn token, nothing else
    assert [t.decode(enc.input_ids[a:b]) for a, b in spans(enc.labels)] == ["green" + eot, "no it is light" + eot]
    assert all(lab == IGNORE_INDEX or lab == i for lab, i in zip(enc.labels, enc.input_ids))
    # batched = one by one; a text-only row has no image tokens
    many = prompting.encode_conversations(t, [turns, turns[:3]], [N_IMG, 0], image_id, 256)
    assert many[0] == enc and image_id not in many[1].input_ids
    # truncation drops the trailing pair whole, never the image or the template's tokens
    short = encode_turns(t, turns, N_IMG, image_id, len(enc.input_ids) - N_IMG - 3)
    assert short.truncated and short.input_ids.count(image_id) == N_IMG
    assert [t.decode(short.input_ids[a:b]) for a, b in spans(short.labels)] == ["green" + eot]


# --------------------------------------------------------------------------- the dataset and training


def make(lake, tok, **kw):
    return VLMDataset(lake, "train", tok, SIZE, N_IMG, tok.convert_tokens_to_ids("<image>"), 64, **kw)


def test_dataset_items_for_every_kind(lake, tok):
    ds = make(lake, tok)
    image_id = tok.convert_tokens_to_ids("<image>")
    for i in range(len(ds)):
        item, row = ds[i], ds.row(i)
        n_img = int((item["input_ids"] == image_id).sum())
        if ds.has_image(i):
            assert n_img == N_IMG and item["pixel_values"].shape == (3, SIZE, SIZE)
        else:
            assert n_img == 0 and item["pixel_values"] is None and row["kind"] == "conversation"
        want = sum(t["role"] == "assistant" for t in row["conversation"]) if row["kind"] == "conversation" else 1
        assert len(spans(item["labels"].tolist())) == want
    # the same items whether the pixels come from the cache or are decoded
    decoded = make(lake, tok, pixel_cache_bytes=0)
    for i in range(len(ds)):
        a, b = ds[i]["pixel_values"], decoded[i]["pixel_values"]
        assert (a is None and b is None) or torch.equal(a, b)


def test_collator_stacks_only_the_images_present(lake, tok):
    ds = make(lake, tok)
    idx = list(range(6))
    batch = Collator(tok.pad_token_id)([ds[i] for i in idx])
    with_image = [i for i in idx if ds.has_image(i)]
    assert batch["pixel_values"].shape == (len(with_image), 3, SIZE, SIZE)
    text_only = [i for i in idx if not ds.has_image(i)]
    assert Collator(0)([ds[i] for i in text_only])["pixel_values"] is None


def test_a_tiny_model_trains_on_a_mixed_lake(lake, tok):
    from openmind_core.model import build_model

    cfg = load_config(overrides=["model.stage=finetune"]).model
    torch.manual_seed(0)
    model = build_model(cfg, tok)
    ds = VLMDataset(lake, "train", tok, model.img_size, model.num_image_tokens, model.image_token_id, 64)
    loader = DataLoader(ds, batch_size=6, shuffle=False, collate_fn=Collator(tok.pad_token_id))
    batches = list(loader)
    assert any(b["pixel_values"] is not None and len(b["pixel_values"]) < 6 for b in batches)  # mixed
    text_only = Collator(tok.pad_token_id)([ds[i] for i in range(len(ds)) if not ds.has_image(i)][:2])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    losses = []
    for step in range(12):
        batch = dict(batches[step % len(batches)])
        batch.pop("sample_ids")
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-4:]) < sum(losses[:4]), losses
    text_only.pop("sample_ids")
    assert torch.isfinite(model(**text_only).loss)  # a batch without any image


def test_inspect_shows_a_conversation(lake, tok):
    cfg = load_config(overrides=["model.max_length=160"]).model
    text = inspect_samples(lake, tok, cfg, n=3)
    assert text.count("    prompt ") == 3 and "conversation" in text and "turns     4: user assistant user assistant" \
        in text
    assert "<target 1>" in text and "<target 2>" in text  # a multi-turn row's targets in place
