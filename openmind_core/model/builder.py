"""Building the towers of a ``MultimodalReasoningModel`` from a ``schemas.config.ModelConfig``, without waste.

Each tower is created once, in the dtype it will train or stay frozen in, on the device it will
run on:

* a pretrained tower (``model.vision.pretrained``, ``model.lm.name_or_path``) is loaded with
  transformers' ``from_pretrained(dtype=..., device_map=...)``, which builds on the meta device
  and puts the checkpoint's tensors straight in place: no random initialisation, no fp32 copy;
* a random tower (the tiny default, the full-size shape without checkpoints) is created directly in
  its target dtype (``_from_config(dtype=...)``) on the target device.

The target dtype is fp32 for what the stage trains (master weights) and ``model.dtype`` for the
rest.  Only the projector and any embedding rows added for new tokens (the image placeholder, a
pad token) are initialised.  The tokenizer must fit the LM: a tokenizer with more ids than the
LM's embedding table (before the added tokens) is refused with both named.

Image normalisation comes from the vision checkpoint's image processor (``AutoImageProcessor``,
``preprocessor_config.json``) when it has one; otherwise SigLIP's mean/std 0.5.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import GenerationConfig, PreTrainedModel, SiglipVisionConfig, SiglipVisionModel

from openmind_core.model.attention import select_backend
from openmind_core.model.language import build_language_model, check_tokenizer_fits, language_model_config
from openmind_core.model.vision import ImprovedVisionEncoder

logger = logging.getLogger(__name__)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Parts:
    config: object
    vision_encoder: ImprovedVisionEncoder
    language_model: PreTrainedModel
    generation_config: GenerationConfig


def tower_dtype(model_cfg, tower: str) -> torch.dtype:
    from openmind_core.model.vlm import trainable_modules

    trained = trainable_modules(model_cfg.stage, lora=model_cfg.lm.lora is not None)
    return torch.float32 if tower in trained else DTYPES[model_cfg.dtype]


def _on(device: torch.device | None):
    return torch.device(device) if device is not None else contextlib.nullcontext()


def image_processor_settings(path: str | None) -> tuple[list[float] | None, list[float] | None, int, int | None]:
    """(mean, std, resample, size) from a vision checkpoint's image processor; Nones when it has none."""
    if not path or not (Path(path) / "preprocessor_config.json").is_file():
        return None, None, 3, None
    from transformers import AutoImageProcessor

    proc = AutoImageProcessor.from_pretrained(path)
    size = getattr(proc, "size", None) or {}
    side = size.get("height") or size.get("shortest_edge") if isinstance(size, dict) else None
    resample = getattr(proc, "resample", 3)
    resample = int(getattr(resample, "value", resample) if resample is not None else 3)
    mean = getattr(proc, "image_mean", None)
    std = getattr(proc, "image_std", None)
    return (list(map(float, mean)) if mean is not None else None,
            list(map(float, std)) if std is not None else None, resample, side)


def build_vision(model_cfg, device: torch.device | None = None) -> tuple[ImprovedVisionEncoder, tuple]:
    """The vision tower (pretrained or random) in its target dtype; plus the image processor settings."""
    v = model_cfg.vision
    dtype = tower_dtype(model_cfg, "vision_encoder")
    if v.pretrained:
        enc = ImprovedVisionEncoder.from_pretrained(v.pretrained, v.feature_layer, v.use_flash_attn, dtype=dtype,
                                                    device=device)
        got = (enc.img_size, enc.patch_size, enc.embed_dim)
        if got != (v.img_size, v.patch_size, v.embed_dim):
            raise ValueError(
                f"model.vision.pretrained {v.pretrained!r} has img_size/patch_size/embed_dim {got}, but "
                f"model.vision says {(v.img_size, v.patch_size, v.embed_dim)}: make the config match the checkpoint"
            )
        settings = image_processor_settings(v.pretrained)
        if settings[3] is not None and settings[3] != v.img_size:
            raise ValueError(f"model.vision.pretrained {v.pretrained!r}: its image processor resizes to "
                             f"{settings[3]} px, but model.vision.img_size is {v.img_size}")
        return enc, settings
    cfg = SiglipVisionConfig(
        image_size=v.img_size, patch_size=v.patch_size, hidden_size=v.embed_dim, num_hidden_layers=v.depth,
        num_attention_heads=v.num_heads, intermediate_size=v.mlp_dim, layer_norm_eps=v.layer_norm_eps,
        hidden_act="gelu_pytorch_tanh", vision_use_head=False,
    )
    with _on(device):
        siglip = SiglipVisionModel._from_config(cfg, dtype=dtype, attn_implementation="sdpa")
    enc = ImprovedVisionEncoder(feature_layer=v.feature_layer, use_flash_attn=v.use_flash_attn, _siglip=siglip)
    return enc, (None, None, 3, None)


def lm_attention(model_cfg, device: torch.device | None) -> str:
    """flash_attention_2 when flash-attn is installed and the LM runs on CUDA in fp16/bf16, else SDPA."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    low = DTYPES[model_cfg.dtype]
    if dev.type == "cuda" and low == torch.float32:
        low = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16  # autocast's dtype
    wanted = model_cfg.lm.attn_implementation
    if wanted in ("sdpa", "eager"):
        return wanted
    name, reason = select_backend(True, dev, low)
    if reason and dev.type == "cuda":
        logger.info("language model: flash-attn unavailable (%s); using PyTorch SDPA", reason)
    return name


def generation_config_for(tokenizer, lm_config, lm_generation: GenerationConfig | None) -> GenerationConfig:
    """The LM's generation settings, stopping on every stop id: the LM's own list, the tokenizer's eos
    and the chat template's end-of-turn token; a pad id always set (left-padded batches)."""
    from openmind_core.prompting import turn_end_ids

    gen = GenerationConfig.from_dict(lm_generation.to_dict()) if lm_generation is not None else GenerationConfig()
    stops: list[int] = []

    def add(x):
        for e in (x if isinstance(x, (list, tuple)) else [x]):
            if e is not None and int(e) not in stops:
                stops.append(int(e))

    add(gen.eos_token_id)
    add(getattr(lm_config, "eos_token_id", None))
    add(tokenizer.eos_token_id)
    add(turn_end_ids(tokenizer))
    gen.eos_token_id = stops or None
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else gen.pad_token_id
    gen.pad_token_id = pad if pad is not None else (stops[0] if stops else 0)
    if gen.bos_token_id is None:
        gen.bos_token_id = tokenizer.bos_token_id
    return gen


def build_parts(model_cfg, tokenizer, device: str | torch.device | None = None) -> Parts:
    """Both towers in place and the composite config (the projector is built by the model)."""
    from openmind_core.model.vlm import config_for

    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cpu":
        device = None  # the default: no device context, no device_map
    if model_cfg.lm.name_or_path:
        check_tokenizer_fits(tokenizer, language_model_config(model_cfg.lm, tokenizer), model_cfg)
    vision, (mean, std, resample, _) = build_vision(model_cfg, device)
    lm = build_language_model(model_cfg.lm, tokenizer, dtype=tower_dtype(model_cfg, "language_model"),
                              device=device, attn_implementation=lm_attention(model_cfg, device))
    config = config_for(model_cfg, tokenizer, vision.siglip.config, lm.config, mean, std, resample)
    gen = generation_config_for(tokenizer, lm.config, lm.generation_config)  # from_pretrained read the LM's own
    return Parts(config, vision, lm, gen)
