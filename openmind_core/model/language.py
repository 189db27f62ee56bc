"""The language model: any ``AutoModelForCausalLM`` (hub id, local path, GGUF file) or an inline Llama config.

``build_language_model`` returns the causal LM (SDPA attention, or flash-attn 2 where the caller
chose it), created or loaded once in its target dtype on its target device, its embedding matrix
sized to hold every token of the tokenizer (the image placeholder and pad token included).  With
``lm.name_or_path`` unset, a Llama-shaped model is built from the ``lm.*`` fields (random init):
the tiny CPU default and the full-size 8 B shape both come from this path.  A GGUF file or a
``pkg:`` name is read through ``openmind_core.model.lm_files`` (converted once, then loaded as a directory).
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch
from openmind_core.hub import hub_access, unreachable_error
from openmind_core.model.lm_files import ModelFilesError, locate
from openmind_core.model.tokenizer import PAD, build_tokenizer
from openmind_core.progress import hf_bars, weight_bytes
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, PretrainedConfig, PreTrainedModel

logger = logging.getLogger(__name__)


def inline_llama_config(lm_cfg, tokenizer) -> LlamaConfig:
    """A ``LlamaConfig`` from a ``schemas.config.LMConfig`` (vocab: the tokenizer's size when unset)."""
    vocab = lm_cfg.vocab_size or len(tokenizer)
    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=lm_cfg.hidden_size,
        intermediate_size=lm_cfg.intermediate_size,
        num_hidden_layers=lm_cfg.num_layers,
        num_attention_heads=lm_cfg.num_heads,
        num_key_value_heads=lm_cfg.num_kv_heads,
        max_position_embeddings=lm_cfg.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": lm_cfg.rope_theta},
        tie_word_embeddings=lm_cfg.tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _hub_error(name: str, what: str, e: Exception, unreachable: str | None = None) -> OSError:
    if unreachable:
        return unreachable_error(f"{what} from lm.name_or_path {name!r}", unreachable, "point it at a local directory")
    where = "local directory" if Path(name).exists() else "hub id (no hub reachable? point it at a local directory)"
    return OSError(f"cannot load {what} from lm.name_or_path {name!r} ({where}): {e}")


def lm_files(lm_cfg) -> str:
    """What ``from_pretrained`` takes for ``lm.name_or_path`` (a GGUF file: its converted directory)."""
    try:
        return locate(lm_cfg.name_or_path, lm_cfg.gguf_file)
    except ModelFilesError as e:
        raise ModelFilesError(f"lm.name_or_path: {e}") from e


def language_model_config(lm_cfg, tokenizer) -> PretrainedConfig:
    """The transformers config of the LM the ``lm`` section describes (reads only config.json)."""
    if lm_cfg.name_or_path is None:
        return inline_llama_config(lm_cfg, tokenizer)
    path = lm_files(lm_cfg)
    unreachable = None
    try:
        with hub_access(path) as unreachable:
            return AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise _hub_error(lm_cfg.name_or_path, "a model config", e, unreachable) from e


def check_tokenizer_fits(tokenizer, lm_config: PretrainedConfig, model_cfg) -> None:
    """Refuse a tokenizer with ids past the LM's embedding table other than the tokens OpenMind adds
    (the image placeholder, a ``<pad>``): those ids would index rows the LM never learned."""
    vocab = getattr(lm_config, "vocab_size", None)
    if vocab is None or len(tokenizer) <= vocab:
        return
    ours = {model_cfg.tokenizer.image_token, PAD}
    foreign = [t for t in tokenizer.convert_ids_to_tokens(list(range(vocab, len(tokenizer)))) if t not in ours]
    if foreign:
        raise ValueError(
            f"the tokenizer {model_cfg.tokenizer.name_or_path or '(a BPE trained here)'} has {len(tokenizer)} ids "
            f"but the language model {model_cfg.lm.name_or_path} has an embedding table of {vocab} "
            f"({len(foreign)} ids past it, e.g. {foreign[:3]}): use the LM's own tokenizer "
            f"(leave model.tokenizer.name_or_path unset to get it)"
        )


def fit_embeddings(lm: PreTrainedModel, tokenizer) -> None:
    """Grow the LM's vocabulary to the tokenizer's size (added image / pad tokens); new rows only are initialised."""
    have = lm.get_input_embeddings().weight.shape[0]
    if have < len(tokenizer):
        logger.info("resizing the LM embeddings from %d to %d tokens to fit the tokenizer", have, len(tokenizer))
        lm.resize_token_embeddings(len(tokenizer), mean_resizing=False)


def build_language_model(
    lm_cfg,
    tokenizer,
    dtype: torch.dtype = torch.float32,
    device: torch.device | None = None,
    attn_implementation: str = "sdpa",
) -> PreTrainedModel:
    """The causal LM for an ``lm`` section, created or loaded once in ``dtype`` on ``device``.

    Pretrained weights load through
    ``from_pretrained(dtype=..., device_map=...)``: meta device first, the checkpoint's tensors
    straight into place.
    """
    kw = {"attn_implementation": attn_implementation, "dtype": dtype}
    place = torch.device(device) if device is not None else contextlib.nullcontext()
    if lm_cfg.name_or_path is not None and lm_cfg.pretrained_weights:
        if device is not None and torch.device(device).type != "cpu":
            kw["device_map"] = str(device)
        path = lm_files(lm_cfg)
        unreachable = None
        try:
            with hub_access(path) as unreachable, hf_bars(weight_bytes(path)):
                lm = AutoModelForCausalLM.from_pretrained(path, **kw)
        except (OSError, ValueError) as e:
            raise _hub_error(lm_cfg.name_or_path, "a causal LM", e, unreachable) from e
    else:
        with place:
            lm = AutoModelForCausalLM.from_config(language_model_config(lm_cfg, tokenizer), **kw)
    fit_embeddings(lm, tokenizer)
    return lm


def preflight(model_cfg) -> None:
    """Before anything runs: the tokenizer loads and fits the LM's embedding table (reads only small files).

    Raises OSError (unloadable) or ValueError (does not fit) with the config keys named.
    """
    if not model_cfg.lm.name_or_path:  # the tokenizer then defaults to the LM's own (schemas.config)
        return
    tokenizer = build_tokenizer(model_cfg.tokenizer)
    check_tokenizer_fits(tokenizer, language_model_config(model_cfg.lm, tokenizer), model_cfg)
