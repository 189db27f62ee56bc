"""The language model: any ``AutoModelForCausalLM`` (hub id or local path) or an inline Llama config.

``build_language_model`` returns the causal LM with SDPA attention, its embedding matrix sized to
hold every token of the tokenizer (the image placeholder and pad token included).  With
``lm.name_or_path`` unset, a Llama-shaped model is built from the ``lm.*`` fields (random init):
the tiny CPU default and the full-size 8 B shape both come from this path.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
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


def _hub_error(name: str, what: str, e: Exception) -> OSError:
    where = "local directory" if Path(name).exists() else "hub id (no hub reachable? point it at a local directory)"
    return OSError(f"cannot load {what} from lm.name_or_path {name!r} ({where}): {e}")


def language_model_config(lm_cfg, tokenizer) -> PretrainedConfig:
    """The transformers config of the LM the ``lm`` section describes (reads only config.json)."""
    if lm_cfg.name_or_path is None:
        return inline_llama_config(lm_cfg, tokenizer)
    try:
        return AutoConfig.from_pretrained(lm_cfg.name_or_path)
    except (OSError, ValueError) as e:
        raise _hub_error(lm_cfg.name_or_path, "a model config", e) from e


def fit_embeddings(lm: PreTrainedModel, tokenizer) -> None:
    """Grow the LM's vocabulary to the tokenizer's size (added image / pad tokens)."""
    have = lm.get_input_embeddings().weight.shape[0]
    if have < len(tokenizer):
        logger.info("resizing the LM embeddings from %d to %d tokens to fit the tokenizer", have, len(tokenizer))
        lm.resize_token_embeddings(len(tokenizer), mean_resizing=False)


def build_language_model(
    lm_cfg,
    tokenizer,
    hf_config: PretrainedConfig | None = None,
    load_weights: bool = True,
) -> PreTrainedModel:
    """The causal LM for an ``lm`` section; ``hf_config`` (a saved config) skips every download."""
    if hf_config is not None:
        hf_config._attn_implementation = "sdpa"
        lm = AutoModelForCausalLM.from_config(hf_config, attn_implementation="sdpa")
    elif lm_cfg.name_or_path is None:
        lm = AutoModelForCausalLM.from_config(inline_llama_config(lm_cfg, tokenizer), attn_implementation="sdpa")
    elif lm_cfg.pretrained_weights and load_weights:
        try:
            lm = AutoModelForCausalLM.from_pretrained(lm_cfg.name_or_path, attn_implementation="sdpa", dtype=torch.float32)
        except (OSError, ValueError) as e:
            raise _hub_error(lm_cfg.name_or_path, "a causal LM", e) from e
    else:
        cfg = language_model_config(lm_cfg, tokenizer)
        lm = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")
    fit_embeddings(lm, tokenizer)
    return lm
