"""Real use: the LM, its tokenizer and the SigLIP tower loaded from local pretrained directories.

No hub here, so the "pretrained" parts are tiny models saved with ``save_pretrained`` by the test;
the code path (``model.lm.name_or_path``, ``model.tokenizer.name_or_path``,
``model.vision.pretrained``) is the one a hub id or a downloaded checkpoint takes.
"""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM, SiglipVisionConfig, SiglipVisionModel

from openmind_core.model import MultimodalReasoningModel, build_tokenizer, train_bpe_tokenizer
from openmind_core.app.train import build_model
from schemas import load_config

CORPUS = ["a red circle at the top left", "What color is the circle?", "blue", "two green squares",
          "\nUSER: Describe the image.\nASSISTANT:"]


def test_local_pretrained_lm_tokenizer_and_siglip(tmp_path):
    # a "pretrained" tokenizer without our image token, and an LM sized to it
    base_tok = train_bpe_tokenizer(CORPUS, vocab_size=300, image_token="<img_placeholder>")
    torch.manual_seed(1)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=len(base_tok), hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      bos_token_id=base_tok.bos_token_id, eos_token_id=base_tok.eos_token_id,
                                      pad_token_id=base_tok.pad_token_id))
    lm.save_pretrained(tmp_path / "lm")
    base_tok.save_pretrained(tmp_path / "lm")
    siglip = SiglipVisionModel(SiglipVisionConfig(image_size=56, patch_size=8, hidden_size=64, intermediate_size=128,
                                                  num_hidden_layers=2, num_attention_heads=2))
    siglip.save_pretrained(tmp_path / "siglip")

    cfg = load_config(overrides=[f"model.lm.name_or_path={tmp_path / 'lm'}",
                                 f"model.tokenizer.name_or_path={tmp_path / 'lm'}",
                                 f"model.vision.pretrained={tmp_path / 'siglip'}", "model.stage=align"])
    tok = build_tokenizer(cfg.model.tokenizer)
    assert "<image>" in tok.get_vocab() and len(tok) == len(base_tok) + 1
    model = build_model(cfg, tok)

    # the pretrained weights arrived; the embedding grew by the image token
    assert torch.equal(model.language_model.model.layers[0].mlp.up_proj.weight, lm.model.layers[0].mlp.up_proj.weight)
    assert torch.equal(model.vision_encoder.siglip.embeddings.patch_embedding.weight,
                       siglip.embeddings.patch_embedding.weight)
    assert model.language_model.get_input_embeddings().weight.shape[0] == len(tok)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {n for n, _ in model.named_parameters()
                                                                           if n.startswith("projector.")}
    # it runs, generates, and round-trips without touching the original directories
    out = model.generate(torch.randn(2, 3, 56, 56), "What color is the circle?", max_new_tokens=3)
    assert len(out) == 2
    model.save_pretrained(tmp_path / "saved")
    back = MultimodalReasoningModel.from_pretrained(tmp_path / "saved")
    ids = torch.full((1, 1 + model.num_image_tokens + 3), 9)
    ids[0, 1:1 + model.num_image_tokens] = model.image_token_id
    pix = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        assert torch.equal(model.eval()(ids, pixel_values=pix).logits, back.eval()(ids, pixel_values=pix).logits)


def test_unreachable_hub_ids_fail_with_a_clear_message(monkeypatch):
    """Offline, each hub id names itself, its config key and what to do instead."""
    import pytest

    from openmind_core.model import ImprovedVisionEncoder
    from openmind_core.model.language import build_language_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = load_config(overrides=["model.lm.name_or_path=meta-llama/Meta-Llama-3-8B",
                                 "model.tokenizer.name_or_path=meta-llama/Meta-Llama-3-8B"])
    with pytest.raises(OSError, match=r"tokenizer.name_or_path 'meta-llama/Meta-Llama-3-8B': the Hugging Face hub is unreachable \(HF_HUB_OFFLINE is set\)"):
        build_tokenizer(cfg.model.tokenizer)
    tok = train_bpe_tokenizer(CORPUS, vocab_size=300, image_token="<image>")
    with pytest.raises(OSError, match=r"lm.name_or_path 'meta-llama/Meta-Llama-3-8B': the Hugging Face hub is unreachable .*local directory"):
        build_language_model(cfg.model.lm, tok)
    with pytest.raises(OSError, match="'google/siglip-so400m-patch14-384': the Hugging Face hub is unreachable"):
        ImprovedVisionEncoder.from_pretrained("google/siglip-so400m-patch14-384")
