"""The tiny model-family stand-ins in ``families.py`` follow their real families' conventions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from families import (  # noqa: F401  (fixtures)
    LLAMA3_CHAT_TEMPLATE,
    LLAMA3_SPECIALS,
    QWEN2_SPECIALS,
    QWEN2_VOCAB_PADDING,
    QWEN25_CHAT_TEMPLATE,
    full_siglip_dir,
    llama3_dir,
    make_llama3_lm,
    make_siglip_vision,
    qwen2_dir,
    siglip_dir,
)
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoImageProcessor, AutoModelForCausalLM, AutoTokenizer, GenerationConfig, SiglipVisionModel

HI = [{"role": "user", "content": "hi"}]
MIXED = "A cat on the sofa. 一只猫在沙发上！ 😀 naïve 12345"


def test_llama3_tokenizer(llama3_dir):
    tok = AutoTokenizer.from_pretrained(llama3_dir)
    assert json.loads((llama3_dir / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert tok.pad_token is None and tok.pad_token_id is None
    assert tok.bos_token == "<|begin_of_text|>" and tok.eos_token == "<|end_of_text|>"
    assert tok.chat_template == LLAMA3_CHAT_TEMPLATE
    text = tok.apply_chat_template(HI, add_generation_prompt=True, tokenize=False)
    assert text == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    # The special tokens follow the BPE vocab in Meta's order; the embedding table is exactly len(tok).
    assert tok.convert_tokens_to_ids(list(LLAMA3_SPECIALS)) == list(range(len(tok) - 10, len(tok)))
    bos = tok.bos_token_id
    # The post-processor prepends BOS to every encoding, so a rendered template gets two unless told not to.
    assert tok("hi").input_ids[0] == bos
    assert tok(text).input_ids[:2] == [bos, bos]
    assert tok(text, add_special_tokens=False).input_ids.count(bos) == 1
    ids = tok.apply_chat_template(HI, add_generation_prompt=True, return_dict=False)
    assert ids == tok(text, add_special_tokens=False).input_ids
    # Byte-level: any text round-trips.
    assert tok.decode(tok(MIXED, add_special_tokens=False).input_ids) == MIXED


def test_llama3_model_and_generation_config(llama3_dir):
    tok = AutoTokenizer.from_pretrained(llama3_dir)
    model = AutoModelForCausalLM.from_pretrained(llama3_dir)
    gen = GenerationConfig.from_pretrained(llama3_dir)
    eos_ids = tok.convert_tokens_to_ids(["<|end_of_text|>", "<|eot_id|>"])
    assert type(model).__name__ == "LlamaForCausalLM"
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (64, 2, 4, 2)
    assert cfg.vocab_size == len(tok) == model.get_input_embeddings().weight.shape[0]
    assert not cfg.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
    assert cfg.bos_token_id == tok.bos_token_id and cfg.eos_token_id == eos_ids and cfg.pad_token_id is None
    assert gen.eos_token_id == eos_ids and gen.bos_token_id == tok.bos_token_id and gen.pad_token_id is None
    assert model.generation_config.eos_token_id == eos_ids
    with torch.no_grad():
        logits = model(torch.tensor([tok(MIXED).input_ids])).logits
    assert logits.shape[-1] == len(tok)


def test_llama3_builder_is_deterministic_and_takes_vocab_words(tmp_path):
    a, b = make_llama3_lm(tmp_path / "a"), make_llama3_lm(tmp_path / "b")
    c = make_llama3_lm(tmp_path / "c", vocab_words=["xylophone"] * 50, seed=1)
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()
    wa, wb, wc = (load_file(d / "model.safetensors") for d in (a, b, c))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not torch.equal(wa["model.embed_tokens.weight"], wc["model.embed_tokens.weight"])
    ta, tc = AutoTokenizer.from_pretrained(a), AutoTokenizer.from_pretrained(c)
    assert len(tc.tokenize(" xylophone")) < len(ta.tokenize(" xylophone"))
    assert len(tc) == load_file(c / "model.safetensors")["model.embed_tokens.weight"].shape[0]


def test_qwen2(qwen2_dir):
    tok = AutoTokenizer.from_pretrained(qwen2_dir)
    model = AutoModelForCausalLM.from_pretrained(qwen2_dir)
    gen = GenerationConfig.from_pretrained(qwen2_dir)
    assert type(tok).__name__ == "Qwen2Tokenizer" and type(model).__name__ == "Qwen2ForCausalLM"
    assert tok.bos_token is None and tok.bos_token_id is None
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    endoftext, im_start, im_end = tok.convert_tokens_to_ids(list(QWEN2_SPECIALS))
    assert [endoftext, im_start, im_end] == list(range(len(tok) - 3, len(tok)))
    assert tok.chat_template == QWEN25_CHAT_TEMPLATE
    assert tok.apply_chat_template(HI, add_generation_prompt=True, tokenize=False) == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    convo = [{"role": "system", "content": "Be brief."}, *HI, {"role": "assistant", "content": "Hello!"}]
    assert tok.apply_chat_template(convo, tokenize=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
    )
    assert im_start not in tok("hi").input_ids and endoftext not in tok("hi").input_ids  # nothing added
    assert tok.decode(tok(MIXED).input_ids) == MIXED
    cfg = model.config
    assert cfg.tie_word_embeddings and model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert cfg.vocab_size == len(tok) + QWEN2_VOCAB_PADDING > len(tok)
    assert cfg.eos_token_id == im_end
    assert gen.eos_token_id == [im_end, endoftext] and gen.pad_token_id == endoftext and gen.bos_token_id is None


def test_siglip_vision_and_image_processor(siglip_dir, tmp_path):
    proc = AutoImageProcessor.from_pretrained(siglip_dir)
    assert list(proc.image_mean) == list(proc.image_std) == [0.5, 0.5, 0.5]
    assert (proc.size["height"], proc.size["width"], proc.resample) == (56, 56, 3)
    cfg = json.loads((siglip_dir / "preprocessor_config.json").read_text())
    assert cfg["image_processor_type"] == "SiglipImageProcessor"

    mean, std = [0.4815, 0.4578, 0.4082], [0.2686, 0.2613, 0.2758]
    clip = make_siglip_vision(tmp_path / "clip_norm", image_mean=mean, image_std=std)
    proc = AutoImageProcessor.from_pretrained(clip)
    assert list(proc.image_mean) == mean and list(proc.image_std) == std
    pixels = proc(images=Image.new("RGB", (80, 40), (100, 150, 200)), return_tensors="pt").pixel_values
    assert pixels.shape == (1, 3, 56, 56)
    want = (np.array([100, 150, 200]) / 255 - mean) / std
    assert np.allclose(pixels[0, :, 28, 28].numpy(), want, atol=1e-4)

    model = SiglipVisionModel.from_pretrained(siglip_dir)
    with torch.no_grad():
        out = model(pixel_values=pixels)
    assert out.last_hidden_state.shape == (1, 49, 64)


def test_full_siglip_gives_its_vision_tower(full_siglip_dir, siglip_dir):
    cfg = json.loads((full_siglip_dir / "config.json").read_text())
    assert cfg["model_type"] == "siglip" and cfg["architectures"] == ["SiglipModel"]
    weights = load_file(full_siglip_dir / "model.safetensors")
    assert any(k.startswith("text_model.") for k in weights) and "logit_scale" in weights
    vision = SiglipVisionModel.from_pretrained(full_siglip_dir)
    # v5's SiglipVisionModel holds its layers at top level; the checkpoint's "vision_model." prefix is stripped.
    for name, p in vision.state_dict().items():
        assert torch.equal(p, weights["vision_model." + name]), name
    proc = AutoImageProcessor.from_pretrained(full_siglip_dir)
    assert list(proc.image_mean) == [0.5, 0.5, 0.5]
    assert vision.config.to_dict()["hidden_size"] == SiglipVisionModel.from_pretrained(siglip_dir).config.hidden_size


@pytest.mark.parametrize("name", ["llama3_dir", "qwen2_dir"])
def test_lm_dirs_have_the_hub_files(name, request):
    d = request.getfixturevalue(name)
    names = {p.name for p in d.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
