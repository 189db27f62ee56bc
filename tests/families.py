"""Tiny random stand-ins for real Hugging Face model families, saved as local "pretrained" dirs.

Each builder writes a directory that loads through the same calls (and the same OpenMind config
keys) as a hub id: ``model.lm.name_or_path=<dir>``, ``model.vision.pretrained=<dir>``. The weights
are random and tiny, but the family's *conventions* are copied from what the hub ships:

- ``make_llama3_lm``: Llama-3-Instruct. Byte-level BPE, the special tokens after the BPE vocab in
  Meta's order (``<|begin_of_text|>``, ``<|end_of_text|>``, reserved 0-3, ``<|start_header_id|>``,
  ``<|end_header_id|>``, reserved 4, ``<|eot_id|>``), no pad token, a post-processor that prepends
  ``<|begin_of_text|>`` to every encoding (so tokenizing a rendered chat template with
  ``add_special_tokens=True`` doubles the BOS, as the real one does), Meta's chat template,
  untied embeddings, ``vocab_size == len(tokenizer)``, and a generation config that stops on
  ``<|end_of_text|>`` and ``<|eot_id|>`` and samples by default (temperature 0.6, top-p 0.9).
- ``make_qwen2_lm``: Qwen2.5-Instruct. ``Qwen2Tokenizer`` (NFC + Qwen's split regex + byte-level),
  ``<|endoftext|>`` (pad), ``<|im_start|>``, ``<|im_end|>`` (eos) after the BPE vocab, no BOS token
  (though ``config.bos_token_id`` is set, as in the real config.json), Qwen2.5's ChatML template
  with its default system message, tied embeddings, and an embedding table 7 rows larger than the
  tokenizer (the real one is padded too), and a sampling generation config.
- ``make_siglip_vision`` / ``make_full_siglip``: a ``SiglipVisionModel`` or a full two-tower
  ``SiglipModel`` (as google/siglip-so400m-patch14-384 ships), each with a ``SiglipImageProcessor``
  config (bicubic resize to a square, rescale 1/255, normalize with the given mean/std).

Pytest fixtures at the bottom (session scope) build each once: ``llama3_dir``, ``qwen2_dir``,
``siglip_dir``, ``full_siglip_dir``. Import them into a test module with
``from families import llama3_dir  # noqa: F401``.

Over 400 lines: every family stand-in (Llama-3, Qwen2, SigLIP) in one place, built the same way.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

# Small English + Chinese corpus the BPE merges are learnt from (every byte stays encodable anyway).
CORPUS = (
    "A photo of a cat sitting on a red sofa.",
    "Two dogs are running across a green field in the sun.",
    "The quick brown fox jumps over the lazy dog.",
    "What is in this image? Describe it in one sentence.",
    "A man rides a bicycle down a busy city street at night.",
    "There is a small boat on the lake, and mountains behind it.",
    "The assistant answers the user's question about the picture.",
    "I can't see any people here; it's an empty kitchen with white walls.",
    "Count the apples: there are 3 red apples and 12 green ones.",
    "这是一张猫坐在红色沙发上的照片。",
    "两只狗在阳光下穿过绿色的草地。",
    "图片里有什么？请用一句话描述。",
    "一个男人晚上骑着自行车穿过繁忙的城市街道。",
    "湖上有一条小船，后面是高山。",
    "助手回答用户关于这张图片的问题。",
)

# Llama-3's pre-tokenizer split (tiktoken cl100k-style; digits in groups of up to 3).
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Qwen2's split: the same but single digits.
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Meta-Llama-3-8B-Instruct's tokenizer_config.json chat_template, verbatim.
LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# Qwen2.5-*-Instruct's chat_template, verbatim (tools branches included).
QWEN25_CHAT_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

# Special tokens in the order (relative to the end of the BPE vocab) the real tokenizers use.
LLAMA3_SPECIALS = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|reserved_special_token_2|>",
    "<|reserved_special_token_3|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|reserved_special_token_4|>",
    "<|eot_id|>",
)
QWEN2_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
QWEN2_VOCAB_PADDING = 7

TINY_LM = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    max_position_embeddings=512,
)


def _train_bpe(tok: Tokenizer, extra: Iterable[str], vocab_size: int) -> Tokenizer:
    """Learn byte-level BPE merges on ``CORPUS`` + ``extra``; the full byte alphabet is always in."""
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    tok.train_from_iterator([*CORPUS, *extra], trainer)
    return tok


def _bpe_json(tok: Tokenizer) -> tuple[dict[str, int], list[tuple[str, str]]]:
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return model["vocab"], merges


def _save_lm(model, tokenizer, gen, out: Path) -> Path:
    model.generation_config = gen
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    gen.save_pretrained(out)
    return out


def make_llama3_lm(dir: str | Path, vocab_words: Iterable[str] = (), seed: int = 0, vocab_size: int = 400) -> Path:
    """A tiny random Llama-3-Instruct: ``LlamaForCausalLM`` + Llama-3 tokenizer/template/generation config.

    ``vocab_words``: extra text (words, captions) the BPE merges are also learnt from.
    ``vocab_size``: the BPE target before the 10 special tokens are appended (a small corpus may
    stop short of it); the embedding table always equals ``len(tokenizer)``.
    """
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(dir)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    _train_bpe(tok, vocab_words, vocab_size - len(LLAMA3_SPECIALS))
    tok.add_special_tokens(list(LLAMA3_SPECIALS))
    bos_id = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
        processors.TemplateProcessing(
            single="<|begin_of_text|> $A",
            pair="<|begin_of_text|> $A <|begin_of_text|>:1 $B:1",
            special_tokens=[("<|begin_of_text|>", bos_id)],
        ),
    ])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|begin_of_text|>",
        eos_token="<|end_of_text|>",
        clean_up_tokenization_spaces=False,  # Meta says True; v5 ignores it for BPE (and warns)
        model_input_names=["input_ids", "attention_mask"],
        model_max_length=1000000000000000019884624838656,
    )
    tokenizer.chat_template = LLAMA3_CHAT_TEMPLATE
    eos_ids = [tok.token_to_id("<|end_of_text|>"), tok.token_to_id("<|eot_id|>")]

    config = LlamaConfig(
        **TINY_LM,
        vocab_size=len(tokenizer),
        bos_token_id=bos_id,
        eos_token_id=eos_ids,
        pad_token_id=None,
        tie_word_embeddings=False,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    gen = GenerationConfig(bos_token_id=bos_id, eos_token_id=eos_ids, do_sample=True, temperature=0.6, top_p=0.9)
    _save_lm(model, tokenizer, gen, out)
    # Meta's tokenizer_config.json names the generic class (v5 writes "TokenizersBackend"; same class on load).
    cfg = out / "tokenizer_config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "tokenizer_class": "PreTrainedTokenizerFast"}, indent=2))
    return out


def make_qwen2_lm(dir: str | Path, vocab_words: Iterable[str] = (), seed: int = 0, vocab_size: int = 400) -> Path:
    """A tiny random Qwen2.5-Instruct: ``Qwen2ForCausalLM`` (tied) + ``Qwen2Tokenizer`` + ChatML template.

    ``config.vocab_size`` is ``len(tokenizer) + QWEN2_VOCAB_PADDING``: rows no token maps to.
    """
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM, Qwen2Tokenizer

    out = Path(dir)
    # Train with exactly the pipeline Qwen2Tokenizer rebuilds on load, so merges fit it.
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    _train_bpe(tok, vocab_words, vocab_size - len(QWEN2_SPECIALS))
    vocab, merges = _bpe_json(tok)
    vocab = {**vocab, **{t: len(vocab) + i for i, t in enumerate(QWEN2_SPECIALS)}}
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=["<|im_start|>", "<|im_end|>"],
        errors="replace",
        split_special_tokens=False,
        clean_up_tokenization_spaces=False,
        model_max_length=131072,
    )
    tokenizer.chat_template = QWEN25_CHAT_TEMPLATE
    endoftext, im_end = vocab["<|endoftext|>"], vocab["<|im_end|>"]
    assert len(tokenizer) == len(vocab), "Qwen2Tokenizer added tokens of its own"

    config = Qwen2Config(
        **TINY_LM,
        vocab_size=len(tokenizer) + QWEN2_VOCAB_PADDING,
        bos_token_id=endoftext,  # as Qwen2.5's config.json, though the tokenizer has no BOS
        eos_token_id=im_end,
        tie_word_embeddings=True,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        use_sliding_window=False,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    gen = GenerationConfig(
        eos_token_id=[im_end, endoftext],
        pad_token_id=endoftext,
        do_sample=True,
        temperature=0.7,
        top_p=0.8,
        top_k=20,
        repetition_penalty=1.05,
    )
    return _save_lm(model, tokenizer, gen, out)


SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)


def _save_image_processor(out: Path, image_size: int, image_mean: Sequence[float], image_std: Sequence[float]) -> None:
    # The PIL backend needs no torchvision and writes the same preprocessor_config.json
    # ("image_processor_type": "SiglipImageProcessor") as the hub's.
    from transformers import SiglipImageProcessorPil

    SiglipImageProcessorPil(
        do_resize=True,
        size={"height": image_size, "width": image_size},
        resample=3,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(image_mean),
        image_std=list(image_std),
    ).save_pretrained(out)


def _vision_config(image_size, patch_size, hidden, layers, heads, mlp):
    from transformers import SiglipVisionConfig

    return SiglipVisionConfig(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=mlp,
    )


def make_siglip_vision(
    dir: str | Path,
    image_size: int = 56,
    patch_size: int = 8,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 2,
    mlp: int = 128,
    seed: int = 0,
    image_mean: Sequence[float] = SIGLIP_MEAN,
    image_std: Sequence[float] = SIGLIP_STD,
) -> Path:
    """A tiny random ``SiglipVisionModel`` + its image processor config, in ``dir``."""
    from transformers import SiglipVisionModel

    out = Path(dir)
    torch.manual_seed(seed)
    SiglipVisionModel(_vision_config(image_size, patch_size, hidden, layers, heads, mlp)).save_pretrained(out)
    _save_image_processor(out, image_size, image_mean, image_std)
    return out


def make_full_siglip(
    dir: str | Path,
    image_size: int = 56,
    patch_size: int = 8,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 2,
    mlp: int = 128,
    seed: int = 0,
    image_mean: Sequence[float] = SIGLIP_MEAN,
    image_std: Sequence[float] = SIGLIP_STD,
    text_vocab: int = 256,
) -> Path:
    """A tiny random two-tower ``SiglipModel`` (``config.json`` model_type "siglip", weights
    ``vision_model.*`` + ``text_model.*`` + logit scale/bias) + the image processor config."""
    from transformers import SiglipConfig, SiglipModel, SiglipTextConfig
    from transformers.utils import logging as hf_logging

    out = Path(dir)
    text = SiglipTextConfig(
        vocab_size=text_vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=mlp,
        max_position_embeddings=16,
        pad_token_id=1,
        bos_token_id=text_vocab - 2,
        eos_token_id=text_vocab - 1,
    )
    vision = _vision_config(image_size, patch_size, hidden, layers, heads, mlp)
    torch.manual_seed(seed)
    model = SiglipModel(SiglipConfig(text_config=text.to_dict(), vision_config=vision.to_dict()))
    # Saving diffs against a default SiglipConfig(), whose own text defaults fail the bos/eos check: mute that.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model.save_pretrained(out)
    finally:
        hf_logging.set_verbosity(verbosity)
    _save_image_processor(out, image_size, image_mean, image_std)
    return out


@pytest.fixture(scope="session")
def llama3_dir(tmp_path_factory) -> Path:
    """A Llama-3-Instruct stand-in directory (see ``make_llama3_lm``)."""
    return make_llama3_lm(tmp_path_factory.mktemp("llama3"))


@pytest.fixture(scope="session")
def qwen2_dir(tmp_path_factory) -> Path:
    """A Qwen2.5-Instruct stand-in directory (see ``make_qwen2_lm``)."""
    return make_qwen2_lm(tmp_path_factory.mktemp("qwen2"))


@pytest.fixture(scope="session")
def siglip_dir(tmp_path_factory) -> Path:
    """A SigLIP vision-tower stand-in directory (see ``make_siglip_vision``)."""
    return make_siglip_vision(tmp_path_factory.mktemp("siglip"))


@pytest.fixture(scope="session")
def full_siglip_dir(tmp_path_factory) -> Path:
    """A full two-tower SigLIP stand-in directory (see ``make_full_siglip``)."""
    return make_full_siglip(tmp_path_factory.mktemp("siglip_full"))
