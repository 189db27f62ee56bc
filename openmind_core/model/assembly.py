"""Assembling a ``MultimodalReasoningModel`` from a ``schemas.config.ModelConfig``, without waste.

Each tower is created once, in the dtype it will train or stay frozen in
(``openmind_core.model.stages.tower_dtype``), on the device it will run on:

* a pretrained tower (``model.vision.pretrained``, ``model.lm.name_or_path``) is loaded with
  transformers' ``from_pretrained(dtype=..., device_map=...)``, which builds on the meta device
  and puts the checkpoint's tensors straight in place: no random initialisation, no fp32 copy;
* a random tower (the tiny default, the full-size shape without checkpoints) is created directly in
  its target dtype on the target device (``openmind_core.model.vision.random_siglip``).

The target dtype is fp32 for what the stage trains (master weights) and ``model.dtype`` for the
rest.  Only the projector and any embedding rows added for new tokens (the image placeholder, a
pad token) are initialised.  The tokenizer must fit the LM: a tokenizer with more ids than the
LM's embedding table (before the added tokens) is refused with both named.

Then ``assemble`` puts the model together: the composite config and the generation config
(``openmind_core.model.configuration``), the projector initialised from an earlier run's
``final/`` (``model.init_from``), LoRA adapters injected (``model.lm.lora``,
``openmind_core.model.lora``) and frozen for the stage, the tokenizer attached, activation
checkpointing on when configured.  It takes the model class as an argument, so this module sits
below the class: ``openmind_core.model.builder.build_model`` (on top) and the LoRA directory loader
(``openmind_core.model.saving``, which the class's ``from_pretrained`` calls) both use it.

Image normalisation comes from the vision checkpoint's image processor (``AutoImageProcessor``,
``preprocessor_config.json``) when it has one; otherwise SigLIP's mean/std 0.5.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors import safe_open
from transformers.utils import SAFE_WEIGHTS_NAME

from openmind_core.model.attention import select_backend
from openmind_core.model.configuration import config_for, generation_config_for
from openmind_core.model.language import build_language_model, check_tokenizer_fits, language_model_config
from openmind_core.model.lora import apply_lora
from openmind_core.model.stages import DTYPES, tower_dtype
from openmind_core.model.vision import ImprovedVisionEncoder, random_siglip, siglip_config

logger = logging.getLogger(__name__)


def image_processor_settings(path: str | None) -> tuple[list[float] | None, list[float] | None, int, int | None]:
    """(mean, std, resample, size) from a vision checkpoint's image processor; Nones when it has none."""
    if not path or not (Path(path) / "preprocessor_config.json").is_file():
        return None, None, 3, None
    from transformers import AutoImageProcessor  # start-up cost: image-processing modules load only when needed

    proc = AutoImageProcessor.from_pretrained(path)
    size = getattr(proc, "size", None)  # a dict before transformers 5, a SizeDict (``.get``, not a dict) since
    side = (size.get("height") or size.get("shortest_edge")) if hasattr(size, "get") else None
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
    cfg = siglip_config(v.img_size, v.patch_size, v.embed_dim, v.depth, v.num_heads, v.mlp_dim, v.layer_norm_eps)
    siglip = random_siglip(cfg, dtype=dtype, device=device)
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


def init_projector_from(model, path: str | Path) -> None:
    """Load the projector weights of a saved model directory (an earlier run's ``final/``, ``model.init_from``)."""
    f = Path(path) / SAFE_WEIGHTS_NAME
    if not Path(path).is_dir():
        raise FileNotFoundError(f"model.init_from {str(path)!r}: the directory does not exist (run the earlier "
                                "stage first, or point it at a run's final/)")
    if not f.is_file():
        raise FileNotFoundError(f"model.init_from {str(path)!r}: it holds no {SAFE_WEIGHTS_NAME} (point it at a "
                                "run's final/)")
    own = model.projector.state_dict()
    got = {}
    with safe_open(str(f), framework="pt") as sf:
        for key in sf.keys():
            if key.startswith("projector."):
                got[key[len("projector."):]] = sf.get_tensor(key)
    if set(got) != set(own):
        raise ValueError(f"model.init_from {str(path)!r}: its projector tensors {sorted(got)} do not match this "
                         f"model's {sorted(own)}")
    for k, v in got.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise ValueError(f"model.init_from {str(path)!r}: projector.{k} has shape {tuple(v.shape)}, this model "
                             f"needs {tuple(own[k].shape)} (same vision/LM widths and projector settings?)")
    model.projector.load_state_dict({k: v.to(own[k].dtype) for k, v in got.items()})
    logger.info("projector initialised from %s", f)


def assemble(model_class, model_cfg, tokenizer, device: str | torch.device | None = None):
    """A ``model_class`` (``MultimodalReasoningModel``) for a ``ModelConfig`` and its tokenizer, its towers
    created or loaded on ``device`` (see the module docstring): frozen for ``model.stage``, in
    ``model.dtype``, checkpointing as configured."""
    place = torch.device(device) if device is not None else None
    if place is not None and place.type == "cpu":
        place = None  # the default: no device context, no device_map
    if model_cfg.lm.name_or_path:
        check_tokenizer_fits(tokenizer, language_model_config(model_cfg.lm, tokenizer), model_cfg)
    vision, (mean, std, resample, _) = build_vision(model_cfg, place)
    lm = build_language_model(model_cfg.lm, tokenizer, dtype=tower_dtype(model_cfg, "language_model"),
                              device=place, attn_implementation=lm_attention(model_cfg, place))
    config = config_for(model_cfg, tokenizer, vision.siglip.config, lm.config, mean, std, resample)
    generation = generation_config_for(tokenizer, lm.config, lm.generation_config)  # from_pretrained read the LM's own

    model = model_class(config, vision_encoder=vision, language_model=lm)
    model.projector.to(device=torch.device(device) if device is not None else None)
    if model_cfg.init_from:
        init_projector_from(model, model_cfg.init_from)
    if model_cfg.lm.lora is not None:
        apply_lora(model.language_model, model_cfg.lm.lora, base=model_cfg.lm.name_or_path)
        model.freeze(model.config.stage)
    model.tokenizer = tokenizer
    model.generation_config = generation
    if model_cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model
