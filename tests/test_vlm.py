"""MultimodalReasoningModel end to end on the tiny default config (CPU, no network)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from openmind_core import prompting
from openmind_core.model import MultimodalReasoningModel, build_model, build_tokenizer
from schemas.config import FULL_CONFIG
from schemas.loading import load_config

CORPUS = ["a red circle on a blue background", "What color is the circle?", "Describe the image.",
          "这张图片里有什么？ 一个红色的圆。", "a green square next to a small yellow triangle",
          "red", "blue", "green"] * 10


@pytest.fixture(scope="module")
def tok():
    cfg = load_config().model.tokenizer.model_copy(update={"vocab_size": 320})
    return build_tokenizer(cfg, CORPUS)


def make_model(tok, stage="full", seed=0, **overrides):
    cfg = load_config(overrides=[f"model.stage={stage}"] + [f"model.{k}={v}" for k, v in overrides.items()]).model
    torch.manual_seed(seed)
    return build_model(cfg, tok)


def make_batch(model, pairs):
    """Right-padded batch of (instruction, target) pairs, as the collator builds it."""
    encs = [prompting.encode(model.tokenizer, q, a, model.num_image_tokens, model.image_token_id,
                             model.model_config.max_length) for q, a in pairs]
    width = max(len(e.input_ids) for e in encs)
    pad = model.tokenizer.pad_token_id
    ids = torch.tensor([e.input_ids + [pad] * (width - len(e.input_ids)) for e in encs])
    labels = torch.tensor([e.labels + [-100] * (width - len(e.labels)) for e in encs])
    mask = torch.tensor([[1] * len(e.input_ids) + [0] * (width - len(e.input_ids)) for e in encs])
    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(len(pairs), 3, model.img_size, model.img_size, generator=g)
    return dict(input_ids=ids, attention_mask=mask, pixel_values=pixels, labels=labels)


PAIRS = [("What color is the circle?", "red"), ("Describe the image.", "a green square next to a small yellow triangle")]


def test_contract_attributes(tok):
    m = make_model(tok)
    assert m.num_image_tokens == 16 and m.img_size == 56
    assert m.image_token_id == tok.convert_tokens_to_ids("<image>")
    assert {n for n, _ in m.named_children()} == {"vision_encoder", "projector", "language_model"}
    assert m.language_model.config._attn_implementation == "sdpa"
    counts = m.parameter_counts()
    assert counts["total"][1] == sum(p.numel() for p in m.parameters())


def test_forward_loss_and_dict_access(tok):
    m = make_model(tok)
    batch = make_batch(m, PAIRS)
    out = m(**batch)
    assert out.loss is out["loss"] and out.loss.ndim == 0
    assert out.logits.shape == (*batch["input_ids"].shape, len(tok))
    # HF convention: mean CE over shifted label tokens
    logits, labels = out.logits[:, :-1], batch["labels"][:, 1:]
    ref = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, ref)


def test_placeholder_feature_mismatch_raises(tok):
    m = make_model(tok)
    batch = make_batch(m, PAIRS)
    with pytest.raises(ValueError, match=r"hold 32 image tokens.*1 image\(s\) x 16"):
        m(batch["input_ids"], batch["attention_mask"], batch["pixel_values"][:1])
    ids = batch["input_ids"].clone()
    ids[0, 1] = tok.pad_token_id  # one placeholder lost
    with pytest.raises(ValueError, match="31 image tokens"):
        m(ids, batch["attention_mask"], batch["pixel_values"])
    with pytest.raises(ValueError, match="0 image"):
        m(batch["input_ids"], batch["attention_mask"], None)


def test_loss_falls_overfitting_one_batch(tok):
    m = make_model(tok)
    batch = make_batch(m, PAIRS)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss = m(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses


@pytest.mark.parametrize("stage", ["align", "finetune", "full"])
def test_only_trainable_parameters_get_gradients(tok, stage):
    m = make_model(tok, stage="full")
    table = m.freeze(stage)
    assert "projector" in table
    m(**make_batch(m, PAIRS)).loss.backward()
    trainable = {"align": ("projector",), "finetune": ("projector", "language_model"),
                 "full": ("vision_encoder", "projector", "language_model")}[stage]
    for name, p in m.named_parameters():
        if name.split(".")[0] in trainable:
            assert p.requires_grad and p.grad is not None, name
        else:
            assert not p.requires_grad and p.grad is None, name
    # the projector learns through the (possibly frozen) LM
    assert all(p.grad.abs().sum() > 0 for p in m.projector.parameters())
    tr, tot = m.parameter_counts()["language_model"]
    assert tr == (tot if "language_model" in trainable else 0)


def test_gradient_checkpointing_same_gradients(tok):
    a, b = make_model(tok), make_model(tok)
    b.gradient_checkpointing_enable()
    batch = make_batch(a, PAIRS)
    la, lb = a(**batch).loss, b(**batch).loss
    la.backward()
    lb.backward()
    torch.testing.assert_close(la, lb)
    torch.testing.assert_close(a.projector.linear_1.weight.grad, b.projector.linear_1.weight.grad)
    for tower in (b.language_model, b.vision_encoder.siglip):
        assert getattr(tower, "is_activation_checkpointing", None) or tower.is_gradient_checkpointing


def test_save_load_bit_exact(tok, tmp_path):
    m = make_model(tok, stage="align").eval()
    m.save_pretrained(tmp_path)
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "preprocessor_config.json"} <= {p.name for p in tmp_path.iterdir()}
    r = MultimodalReasoningModel.from_pretrained(tmp_path).eval()
    assert r.model_config == m.model_config and r.stage == "align" and r.image_token_id == m.image_token_id
    assert r.config.model_type == "openmind"
    assert r.config.to_diff_dict() == m.config.to_diff_dict()  # every saved setting read back
    sd, rsd = m.state_dict(), r.state_dict()
    assert sd.keys() == rsd.keys() and all(torch.equal(sd[k], rsd[k]) for k in sd)
    batch = make_batch(m, PAIRS)
    with torch.no_grad():
        assert torch.equal(m(**batch).logits, r(**batch).logits)
    # tied embeddings stay tied after reload
    lm = r.language_model
    assert lm.get_output_embeddings().weight.data_ptr() == lm.get_input_embeddings().weight.data_ptr()


def test_the_parameter_table_counts_tied_embeddings_once_also_while_loading(tok, tmp_path, caplog):
    """from_pretrained builds the model before it ties the LM head to the embeddings: the table it logs
    then counts the head once, as the smoke report's parameter count does."""
    import logging

    m = make_model(tok, stage="align")
    unique = sum(p.numel() for p in m.parameters())
    m.save_pretrained(tmp_path)
    with caplog.at_level(logging.DEBUG, logger="openmind_core.model.stages"):
        MultimodalReasoningModel.from_pretrained(tmp_path)
    tables = [r.getMessage() for r in caplog.records if "trainable parameters per module" in r.getMessage()]
    assert tables and all(f"{unique:>16,}" in t.splitlines()[-1] for t in tables), tables


def test_generate_takes_image_paths_and_conversations(tok, tmp_path):
    m = make_model(tok).eval()
    img = _images(1)[0]
    img.save(tmp_path / "red.png")
    by_path = m.generate([str(tmp_path / "red.png")], "Describe the image.", max_new_tokens=6)
    assert by_path == m.generate([img], "Describe the image.", max_new_tokens=6)
    assert m.generate([tmp_path / "red.png"], "Describe the image.", max_new_tokens=6) == by_path  # a Path too
    with pytest.raises(FileNotFoundError, match="no-such.png"):
        m.generate([str(tmp_path / "no-such.png")], "Describe the image.")
    # a conversation so far is answered with its next assistant turn; images=None: text only
    turns = [("user", "<image>\nWhat color is the circle?"), ("assistant", "red"), ("user", "Describe the image.")]
    assert len(m.generate([img], [turns], max_new_tokens=4)) == 1
    assert len(m.generate(None, [[("user", "Describe the image.")]], max_new_tokens=4)) == 1


def test_from_pretrained_missing_dir(tmp_path):
    with pytest.raises(OSError, match="config.json"):
        MultimodalReasoningModel.from_pretrained(tmp_path)


def _images(n):
    colors = ["red", "blue", "green", "yellow"]
    return [Image.new("RGB", (40 + 8 * i, 64), colors[i % 4]) for i in range(n)]


def test_greedy_generate_deterministic_and_batched_equals_unbatched(tok):
    m = make_model(tok).eval()
    imgs = _images(3)
    prompts = ["What color is the circle?", "Describe the image.", "What?"]  # different lengths: left padding
    batched = m.generate(imgs, prompts, max_new_tokens=8)
    assert batched == m.generate(imgs, prompts, max_new_tokens=8)
    single = [m.generate([img], p, max_new_tokens=8)[0] for img, p in zip(imgs, prompts)]
    assert batched == single
    assert len(batched) == 3 and all(isinstance(t, str) for t in batched)


def test_sampling_seeded_and_chinese_prompt(tok):
    m = make_model(tok).eval()
    img = _images(1)
    a = m.generate(img, "这张图片里有什么？", max_new_tokens=6, do_sample=True, temperature=0.8, top_p=0.9, seed=3)
    b = m.generate(img, "这张图片里有什么？", max_new_tokens=6, do_sample=True, temperature=0.8, top_p=0.9, seed=3)
    assert a == b and isinstance(a[0], str)
    pixels = torch.randn(2, 3, 56, 56)
    assert len(m.generate(pixels, "这张图片里有什么？", max_new_tokens=4)) == 2


def test_generate_learns_answer(tok):
    """After overfitting one (image, question) -> answer, greedy generation returns the answer."""
    m = make_model(tok)
    img = _images(1)
    from openmind_core.imaging import preprocess_images

    batch = make_batch(m, [("What color is the circle?", "red")])
    batch["pixel_values"] = preprocess_images(img, m.img_size)
    opt = torch.optim.AdamW(m.parameters(), lr=5e-3)
    for _ in range(30):
        loss = m(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    assert m.generate(img, "What color is the circle?", max_new_tokens=4) == ["red"]


def test_full_size_on_meta_device(tok):
    cfg = load_config(FULL_CONFIG).model
    with torch.device("meta"):
        m = build_model(cfg, tok)
    counts = m.parameter_counts()
    total = counts["total"][1]
    assert 8.4e9 < total < 8.5e9, total
    assert 0.39e9 < counts["vision_encoder"][1] < 0.43e9  # SigLIP-So400M minus its unused last layer and head
    assert 8.0e9 < counts["language_model"][1] < 8.06e9  # Llama-3-8B shape
    assert counts["total"][0] == counts["projector"][1]  # stage align
    assert m.num_image_tokens == 196 and len(m.vision_encoder.siglip.encoder.layers) == 26
    b, s = 2, 1 + 196 + 20
    ids = torch.empty(b, s, dtype=torch.long, device="meta")
    pixels = torch.empty(b, 3, 384, 384, device="meta")
    feats = m.vision_encoder(pixels)
    assert feats.shape == (2, 729, 1152)
    assert m.projector(feats).shape == (2, 196, 4096)
    out = m(ids, torch.empty(b, 1, s, s, dtype=torch.bfloat16, device="meta"), pixels)  # a 4-D mask: no value checks
    assert out.logits.shape == (b, s, 128256) and out.logits.device.type == "meta"
    assert next(m.language_model.parameters()).dtype == torch.bfloat16


def test_bench_quick_contract():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "bench" / "bench_model.py"
    spec = importlib.util.spec_from_file_location("bench_model", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = mod.run(quick=True)
    assert len(rows) == 2
    for r in rows:
        assert {"name", "ours_s", "baseline_s", "ratio", "goal", "unit", "notes"} <= r.keys()
        assert r["ours_s"] > 0 and r["baseline_s"] > 0


def test_save_pretrained_from_a_given_state_dict_round_trips(tmp_path):
    """The FSDP path: weights gathered into a full state dict are written in save_pretrained's format."""
    from openmind_core.model import MultimodalReasoningModel as M

    cfg = load_config().model
    from openmind_core.model import train_bpe_tokenizer

    tok = train_bpe_tokenizer(["a red circle", "What color is it?", "blue square"], vocab_size=300, image_token="<image>")
    torch.manual_seed(0)
    model = build_model(cfg, tok)
    full = {k: v.clone() for k, v in model.state_dict().items()}
    model.save_pretrained(tmp_path / "own")
    model.save_pretrained(tmp_path / "given", state_dict=full)
    a, b = M.from_pretrained(tmp_path / "own"), M.from_pretrained(tmp_path / "given")
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_bf16_model_keeps_fp32_master_weights_for_what_it_trains(tmp_path):
    from openmind_core.model import MultimodalReasoningModel as M
    from openmind_core.model import train_bpe_tokenizer

    tok = train_bpe_tokenizer(["a red circle", "What color is it?", "blue square"], vocab_size=300, image_token="<image>")
    cfg = load_config(overrides=["model.dtype=bfloat16", "model.stage=align"]).model
    model = build_model(cfg, tok)
    dtypes = {name: {p.dtype for p in getattr(model, name).parameters()} for name in ("vision_encoder", "projector", "language_model")}
    assert dtypes == {"vision_encoder": {torch.bfloat16}, "projector": {torch.float32}, "language_model": {torch.bfloat16}}
    ids = torch.full((2, 1 + model.num_image_tokens + 4), 7)
    ids[:, 1:1 + model.num_image_tokens] = model.image_token_id
    model(ids, torch.ones_like(ids), torch.randn(2, 3, 56, 56), labels=ids).loss.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.projector.parameters())
    model.freeze("finetune")  # the LM becomes trainable: its masters go to fp32 too
    assert {p.dtype for p in model.language_model.parameters()} == {torch.float32}
    model.save_pretrained(tmp_path / "m")
    back = M.from_pretrained(tmp_path / "m")
    assert {p.dtype for p in back.projector.parameters()} == {torch.float32}
