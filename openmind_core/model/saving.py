"""Saving and loading a ``MultimodalReasoningModel``: the directory formats and the ``from_pretrained`` dispatch.

Hugging Face-native: the config is ``MultimodalReasoningConfig`` (``model_type`` "openmind"),
registered with ``AutoConfig`` and ``AutoModelForImageTextToText`` by ``import openmind_core.model``,
so ``AutoModelForImageTextToText.from_pretrained(final_dir, dtype=..., device_map=...)`` returns the
model, built on the meta device and loaded straight into place (no random initialisation).

Three directory formats are read:

* transformers' own (``save_pretrained``): config.json, model.safetensors, generation_config.json,
  plus the tokenizer and the image processor (``save_extras``), so the directory is complete on its own;
* a LoRA model's (``model.lm.lora``), layout below: ``load_lora_dir`` rebuilds the model from the
  ModelConfig with ``openmind_core.model.assembly.assemble`` (the pretrained towers from their
  pointers, so those checkpoints must still be where the config says), then loads
  ``model.safetensors`` and the adapters on top;
* format 1, written by OpenMind before the model was a ``PreTrainedModel`` (``openmind_config.json``).

Saved directory (``final/``, ``best/``, ``save_pretrained``) of a LoRA model::

    config.json                 MultimodalReasoningConfig; ``openmind`` holds the ModelConfig with
                                ``lm.lora`` and the base pointers (``lm.name_or_path``,
                                ``vision.pretrained``)
    adapter_config.json         PEFT's LoraConfig (``base_model_name_or_path`` = ``lm.name_or_path``)
    adapter_model.safetensors   the adapters in PEFT's key format (``base_model.model.<lm key>``):
                                ``PeftModel.from_pretrained(base_lm, final_dir)`` loads them
    model.safetensors           what the base pointers cannot rebuild: the projector; the LM's
                                input/output embeddings when the LM is pretrained (the image and pad
                                rows added to its vocabulary are initialised at random); a whole tower
                                when it has no pointer (the random inline towers of the tiny default:
                                rebuilding them would need the run's seed, so their weights are stored)
    generation_config.json, tokenizer files, preprocessor_config.json

The model class's ``save_pretrained`` / ``from_pretrained`` call these functions and pass
themselves in (the model, or the class to build), so this module sits below the class and never
imports it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from safetensors.torch import load_model as load_safetensors
from transformers import AutoConfig, SiglipVisionConfig
from transformers.utils import SAFE_WEIGHTS_NAME

from openmind_core.model.assembly import assemble
from openmind_core.model.configuration import MultimodalReasoningConfig, config_for, generation_config_for
from openmind_core.model.lora import is_lora_name
from openmind_core.model.stages import declares_lora
from openmind_core.model.tokenizer import load_tokenizer
from openmind_core.progress import hf_bars, weight_bytes
from schemas.config import ModelConfig

logger = logging.getLogger(__name__)

LEGACY_CONFIG_FILE = "openmind_config.json"  # format 1 (before the model was a PreTrainedModel)
WEIGHTS_FILE = SAFE_WEIGHTS_NAME  # model.safetensors
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # PeftModel's key prefix in adapter_model.safetensors
LM_PREFIX = "language_model."  # the LM's keys in the model's state dict


# --------------------------------------------------------------------------- transformers' format


def save_model(model, save_directory, save_base, *args, **kwargs):
    """``model.save_pretrained``: transformers' own (``save_base``: config.json, model.safetensors,
    generation_config.json) plus the tokenizer and the image processor, so the directory is complete
    on its own.  With LoRA adapters: PEFT's adapter files + the non-base weights (``save_lora_dir``)."""
    if declares_lora(model.config):
        return save_lora_dir(model, save_directory, *args, **kwargs)
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    with hf_bars(nbytes):
        out = save_base(save_directory, *args, **kwargs)
    if kwargs.get("is_main_process", True):
        save_extras(model, save_directory)
    return out


def save_extras(model, directory) -> None:
    """The tokenizer and the image processor beside the weights."""
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(str(directory))
    image_processor(model).save_pretrained(str(directory))


def image_processor(model):
    """A ``SiglipImageProcessor`` that preprocesses images as the model's data pipeline does."""
    # start-up cost: transformers' image-processing modules load only when a directory is written
    try:  # the PIL backend: the default one needs torchvision
        from transformers import SiglipImageProcessorPil as Processor
    except ImportError:
        from transformers import SiglipImageProcessor as Processor

    return Processor(
        size={"height": model.img_size, "width": model.img_size}, resample=model.config.image_resample,
        image_mean=list(model.config.image_mean), image_std=list(model.config.image_std),
    )


def load_model(model_class, path, load_base, *args, map_location=None, **kwargs):
    """``model_class.from_pretrained``: a ``save_pretrained`` directory of any format (any transformers
    keyword: ``dtype``, ``device_map``, ...); ``load_base`` is transformers' own loader.

    ``map_location`` (older OpenMind name) moves the model to that device after loading.
    """
    d = Path(path)
    if d.is_dir() and not (d / "config.json").is_file() and not (d / LEGACY_CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{d} is not a saved MultimodalReasoningModel: config.json is missing")
    if (d / LEGACY_CONFIG_FILE).is_file() and not (d / "config.json").is_file():
        model = load_legacy(model_class, d, **kwargs)
    elif d.is_dir() and (d / ADAPTER_CONFIG).is_file():
        model = load_lora_dir(model_class, d, **kwargs)
    else:
        with hf_bars(weight_bytes(d)):
            model = load_base(path, *args, **kwargs)
        if d.is_dir() and (d / "tokenizer_config.json").is_file():
            model.tokenizer = load_tokenizer(d)
        model.freeze(model.config.stage)  # loaded parameters come back with requires_grad on
    if map_location is not None:
        model.to(map_location)
    return model


# --------------------------------------------------------------------------- LoRA directory


def _stored_keys(model, sd: dict[str, torch.Tensor]) -> list[str]:
    """Keys of model.safetensors in a LoRA directory (see the module docstring); a tied weight once (the
    model's own tying decides, so a gathered or copied state dict gives the same keys)."""
    mc = model.model_config
    lm = model.language_model
    emb = {id(lm.get_input_embeddings().weight)}
    out_emb = lm.get_output_embeddings()
    if out_emb is not None:
        emb.add(id(out_emb.weight))
    params, tied, seen = {}, set(), set()
    for name, p in model.named_parameters(remove_duplicate=False):
        params[name] = p
        if id(p) in seen:
            tied.add(name)  # a second name of one parameter (the LM head of tied embeddings)
        seen.add(id(p))
    keep = []
    for k in sd:
        if k in tied or is_lora_name(k):
            continue
        if k.startswith("vision_encoder.") and mc.vision.pretrained:
            continue
        rebuilt_lm = mc.lm.name_or_path and mc.lm.pretrained_weights  # the pointer brings the LM's weights back
        if k.startswith(LM_PREFIX) and rebuilt_lm and not (k in params and id(params[k]) in emb):
            continue
        keep.append(k)
    return keep


def adapter_state_dict(model, state_dict: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The adapters with PEFT's key names (``base_model.model.<key in the LM>``, no adapter name)."""
    from peft import get_peft_model_state_dict  # start-up cost: peft loads only where LoRA is used

    lm_sd = None
    if state_dict is not None:
        lm_sd = {k[len(LM_PREFIX):]: v for k, v in state_dict.items() if k.startswith(LM_PREFIX)}
    sd = get_peft_model_state_dict(model.language_model, state_dict=lm_sd, save_embedding_layers=False)
    return {PEFT_PREFIX + k: v.detach().cpu().contiguous() for k, v in sd.items()}


def save_lora_dir(model, save_directory, state_dict: dict[str, torch.Tensor] | None = None,
                  is_main_process: bool = True, **_ignored) -> None:
    """Write a LoRA model's directory (layout in the module docstring)."""
    if not is_main_process:
        return
    d = Path(save_directory)
    d.mkdir(parents=True, exist_ok=True)
    full = state_dict if state_dict is not None else model.state_dict()
    keys = _stored_keys(model, full)
    rest = {k: full[k].detach().cpu().contiguous() for k in keys}
    save_file(rest, str(d / WEIGHTS_FILE), metadata={"format": "pt", "openmind": "lora-non-base"})
    save_file(adapter_state_dict(model, state_dict), str(d / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    model.language_model.peft_config["default"].save_pretrained(str(d))
    model.config.save_pretrained(str(d))
    model.generation_config.save_pretrained(str(d))
    save_extras(model, d)


def load_lora_dir(model_class, d: Path, dtype=None, device_map=None, **_ignored):
    """Rebuild a LoRA model from its directory (see the module docstring)."""
    from peft import set_peft_model_state_dict  # start-up cost: peft loads only where LoRA is used

    d = Path(d)
    config = MultimodalReasoningConfig.from_pretrained(str(d))
    model_cfg = ModelConfig.model_validate(config.openmind or {})
    updates = {"init_from": None}  # model.safetensors holds the trained projector
    if dtype is not None and dtype != "auto":
        updates["dtype"] = str(dtype).removeprefix("torch.")
    model_cfg = model_cfg.model_copy(update=updates)
    if model_cfg.lm.lora is None:
        raise ValueError(f"{d} has {ADAPTER_CONFIG} but its config.json has no model.lm.lora")
    tokenizer = load_tokenizer(d)
    device = device_map if isinstance(device_map, (str, torch.device)) and device_map != "auto" else None
    model = assemble(model_class, model_cfg, tokenizer, device=device)
    rest = load_file(str(d / WEIGHTS_FILE))
    own = model.state_dict()
    expected = set(_stored_keys(model, own))
    if set(rest) != expected:
        missing, extra = sorted(expected - set(rest))[:5], sorted(set(rest) - expected)[:5]
        raise ValueError(f"{d / WEIGHTS_FILE}: tensors do not match the model (missing {missing}, unexpected {extra})")
    with torch.no_grad():
        for k, v in rest.items():
            own[k].copy_(v)
    adapters = load_file(str(d / ADAPTER_WEIGHTS))
    lm_sd = {k[len(PEFT_PREFIX):] if k.startswith(PEFT_PREFIX) else k: v for k, v in adapters.items()}
    result = set_peft_model_state_dict(model.language_model, lm_sd)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    missing = [k for k in getattr(result, "missing_keys", []) or [] if is_lora_name(k)]
    if unexpected or missing:
        raise ValueError(f"{d / ADAPTER_WEIGHTS}: adapters do not match (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]})")
    model.generation_config = type(model.generation_config).from_pretrained(str(d))
    return model  # assemble already froze it for the stage, adapters in place


# --------------------------------------------------------------------------- format 1


def load_legacy(model_class, d: Path, **kwargs):
    """Read a format-1 directory (``openmind_config.json`` + ``model.safetensors`` + tokenizer)."""
    meta = json.loads((d / LEGACY_CONFIG_FILE).read_text(encoding="utf-8"))
    if meta.get("format_version") != 1:
        raise ValueError(f"{d / LEGACY_CONFIG_FILE}: format_version {meta.get('format_version')!r} is not one "
                         f"this code reads (1, or a config.json directory)")
    model_cfg = ModelConfig.model_validate(meta["model"])
    tokenizer = load_tokenizer(d)
    vision_cfg = SiglipVisionConfig.from_dict(meta["vision_config"])
    lm_cfg = AutoConfig.for_model(**meta["lm_config"])
    config = config_for(model_cfg, tokenizer, vision_cfg, lm_cfg)
    config.stage = meta.get("stage") or model_cfg.stage
    dtype = kwargs.get("dtype")
    if dtype is not None and dtype != "auto":
        config.dtype = dtype
    model = model_class(config)
    load_safetensors(model, str(d / WEIGHTS_FILE), strict=True)
    model.freeze(config.stage)
    model.tokenizer = tokenizer
    model.generation_config = generation_config_for(tokenizer, lm_cfg, None)
    logger.info("%s is an OpenMind format-1 directory: loaded; save_pretrained writes the current format", d)
    return model
