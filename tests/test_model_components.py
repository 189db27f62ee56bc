"""Vision encoder, projector, attention backend and tokenizer of ``openmind_core.model`` (tiny, CPU)."""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import SiglipConfig, SiglipModel, SiglipVisionConfig, SiglipVisionModel

from openmind_core.model import (
    ImprovedProjector,
    ImprovedVisionEncoder,
    build_tokenizer,
    load_tokenizer,
    num_image_tokens,
)
from openmind_core.model.vision import kept_layers
from schemas.config import TokenizerConfig
from schemas.loading import load_config

VISION = dict(image_size=56, patch_size=8, hidden_size=64, num_hidden_layers=3, num_attention_heads=2,
              intermediate_size=128, layer_norm_eps=1e-6)
CORPUS = ["a red circle on a blue background", "What color is the circle?", "Describe the image.",
          "这张图片里有什么？ 一个红色的圆。", "a green square next to a small yellow triangle"] * 10


# --------------------------------------------------------------------------- vision


def test_vision_shape_and_feature_layer_truncates():
    enc = ImprovedVisionEncoder(img_size=56, patch_size=8, embed_dim=64, depth=4, num_heads=2, mlp_dim=128,
                                feature_layer=-2)
    assert len(enc.siglip.encoder.layers) == 3  # hidden_states[-2] needs 3 of 4 layers; none are kept idle
    out = enc(torch.randn(2, 3, 56, 56))
    assert out.shape == (2, 49, 64)
    assert kept_layers(27, -2) == 26 and kept_layers(27, -1) == 27 and kept_layers(27, 5) == 5
    with pytest.raises(ValueError, match="feature_layer"):
        kept_layers(4, 0)


def test_vision_rejects_wrong_image_size():
    enc = ImprovedVisionEncoder.from_config(load_config().model.vision)
    with pytest.raises(ValueError, match="56 x 56"):
        enc(torch.randn(1, 3, 64, 64))


@pytest.mark.parametrize("feature_layer", [-1, -2, 1])
def test_siglip_weight_compatibility_vision_only(tmp_path, feature_layer):
    torch.manual_seed(0)
    ref = SiglipVisionModel(SiglipVisionConfig(**VISION)).eval()
    ref.save_pretrained(tmp_path)
    enc = ImprovedVisionEncoder.from_pretrained(tmp_path, feature_layer=feature_layer, attn_implementation="eager").eval()
    ref.config._attn_implementation = "eager"
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        expected = ref(x, output_hidden_states=True).hidden_states[feature_layer]
        assert torch.equal(enc(x), expected)


def test_siglip_weight_compatibility_full_checkpoint(tmp_path):
    """A google/siglip-* style directory holds the text tower too; only the vision tower loads."""
    torch.manual_seed(0)
    text = dict(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=64, max_position_embeddings=16)
    full = SiglipModel(SiglipConfig(vision_config=VISION, text_config=text)).eval()
    full.save_pretrained(tmp_path)
    enc = ImprovedVisionEncoder.from_pretrained(tmp_path, feature_layer=-2).eval()
    x = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        expected = full.vision_model(x, output_hidden_states=True).hidden_states[-2]
        torch.testing.assert_close(enc(x), expected, rtol=0, atol=0)


def test_from_pretrained_missing_id_is_clear(tmp_path):
    with pytest.raises(OSError, match="cannot load a SigLIP vision tower from"):
        ImprovedVisionEncoder.from_pretrained(tmp_path / "nope")


def test_eager_and_sdpa_agree():
    torch.manual_seed(0)
    sdpa = ImprovedVisionEncoder(img_size=56, patch_size=8, embed_dim=64, depth=2, num_heads=2, mlp_dim=128,
                                 attn_implementation="sdpa").eval()
    eager = ImprovedVisionEncoder(img_size=56, patch_size=8, embed_dim=64, depth=2, num_heads=2, mlp_dim=128,
                                  attn_implementation="eager").eval()
    eager.load_state_dict(sdpa.state_dict())
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(sdpa(x), eager(x), rtol=1e-5, atol=1e-5)
    assert sdpa.backend == "sdpa" and eager.backend == "eager"


def test_flash_fallback_is_quiet_on_cpu(caplog):
    """On a CPU falling back to SDPA is expected: one DEBUG line, nothing at INFO or above."""
    import openmind_core.model.vision as vision

    vision._FALLBACKS_LOGGED.clear()  # once per process: forget earlier tests' encoders
    enc = ImprovedVisionEncoder(img_size=56, patch_size=8, embed_dim=64, depth=1, num_heads=2, mlp_dim=128,
                                feature_layer=-1, use_flash_attn=True)
    with caplog.at_level(logging.DEBUG, logger="openmind_core.model.vision"):
        with torch.no_grad():
            enc(torch.randn(1, 3, 56, 56))
            enc(torch.randn(1, 3, 56, 56))
    lines = [r for r in caplog.records if "use_flash_attn=True" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.DEBUG and enc.backend == "sdpa"


# --------------------------------------------------------------------------- projector


@pytest.mark.parametrize("ptype", ["token_pooling", "mlp", "pixel_shuffle"])
@pytest.mark.parametrize("grid", [7, 8, 27])
def test_projector_shapes(ptype, grid):
    proj = ImprovedProjector(16, 24, ptype, pooling_kernel=2, hidden_dim=32)
    out = proj(torch.randn(2, grid * grid, 16))
    assert out.shape == (2, num_image_tokens(grid, ptype, 2), 24)


def test_projector_token_counts_full_size():
    assert num_image_tokens(27, "token_pooling", 2) == 196  # 27 -> 28 -> 14 x 14, not the guide's 182
    assert num_image_tokens(27, "pixel_shuffle", 2) == 196
    assert num_image_tokens(27, "mlp", 2) == 729
    with torch.device("meta"):
        proj = ImprovedProjector(1152, 4096, "token_pooling", 2)
        assert proj(torch.empty(2, 729, 1152)).shape == (2, 196, 4096)


def test_token_pooling_is_2d_average():
    proj = ImprovedProjector(1, 1, "token_pooling", pooling_kernel=2)
    grid = torch.arange(16.0).reshape(1, 16, 1)  # 4 x 4 grid, values = flat index
    pooled = proj._reduce(grid, 4).flatten()
    assert pooled.tolist() == [2.5, 4.5, 10.5, 12.5]  # mean of [0,1,4,5], [2,3,6,7], ...


def test_projector_rejects_bad_input():
    proj = ImprovedProjector(16, 24)
    with pytest.raises(ValueError, match="square patch grid"):
        proj(torch.randn(1, 10, 16))
    with pytest.raises(ValueError, match="projector_type"):
        ImprovedProjector(16, 24, "qformer")


# --------------------------------------------------------------------------- tokenizer


def test_bpe_tokenizer_specials_chinese_deterministic(tmp_path):
    cfg = TokenizerConfig(vocab_size=320)
    tok = build_tokenizer(cfg, CORPUS)
    again = build_tokenizer(cfg, CORPUS)
    assert tok.get_vocab() == again.get_vocab()
    assert (tok.pad_token, tok.bos_token, tok.eos_token, tok.unk_token) == ("<pad>", "<s>", "</s>", "<unk>")
    image_id = tok.convert_tokens_to_ids("<image>")
    text = "这张图片里有什么？<image> a red circle"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids.count(image_id) == 1  # never split
    assert tok.decode(ids, skip_special_tokens=True) == "这张图片里有什么？ a red circle"
    tok.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert loaded(text, add_special_tokens=False)["input_ids"] == ids
    assert loaded.convert_tokens_to_ids("<image>") == image_id


def test_tokenizer_errors(tmp_path):
    with pytest.raises(ValueError, match="corpus"):
        build_tokenizer(TokenizerConfig())
    with pytest.raises(ValueError, match="too small"):
        build_tokenizer(TokenizerConfig(vocab_size=100), CORPUS)
    with pytest.raises(OSError, match="tokenizer.name_or_path"):
        build_tokenizer(TokenizerConfig(name_or_path=str(tmp_path / "missing")))
