"""LoRA adapters on the language model (stage ``finetune``), with PEFT; no hand-written LoRA layers.

``model.lm.lora: {r, alpha, dropout, target_modules}`` (schemas.config.LoraConfig) turns it on.
``apply_lora`` injects PEFT's LoRA layers into ``model.language_model``
(``peft.inject_adapter_in_model``): the LM keeps its class and its forward, its target linear
layers become ``peft.tuners.lora.Linear`` (base weight at ``<name>.base_layer.weight``, adapters at
``<name>.lora_A.default.weight`` / ``lora_B``).  ``MultimodalReasoningModel.freeze`` then trains
the adapters (fp32) and the projector only; the LM base and the vision tower stay frozen (in
``model.dtype``).  Parameter names keep the ``language_model.`` prefix, so the adapters take
``train.lr_lm`` in ``optim.param_groups``; trainer checkpoints hold the trainable tensors only
(adapters + projector).

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

``MultimodalReasoningModel.from_pretrained(dir)`` sees ``adapter_config.json`` and calls
``load_lora_dir``: it rebuilds the model from the ModelConfig (the pretrained towers from their
pointers, so those checkpoints must still be where the config says), injects the adapters, and
loads ``adapter_model.safetensors`` and ``model.safetensors`` on top.

``merge_lora`` folds the adapters into the base weights (PEFT's ``merge``) and removes the LoRA
layers; ``export_merged`` (``openmind export RUN_DIR --merge OUT``) writes the merged model as one
ordinary, self-contained directory (``lm.lora`` null) that loads without PEFT.

``model.init_from``: the ``final/`` of an earlier (align) run; its projector weights initialise
this model's projector (``init_projector_from``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
WEIGHTS_FILE = "model.safetensors"
PEFT_PREFIX = "base_model.model."  # PeftModel's key prefix in adapter_model.safetensors
LM = "language_model."


def peft_config(lora_cfg, base: str | None = None):
    """``peft.LoraConfig`` for a ``schemas.config.LoraConfig``."""
    import peft

    return peft.LoraConfig(
        r=lora_cfg.r, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
        target_modules=list(lora_cfg.target_modules), bias="none", task_type="CAUSAL_LM",
        base_model_name_or_path=base,
    )


def apply_lora(lm: torch.nn.Module, lora_cfg, base: str | None = None) -> torch.nn.Module:
    """Inject PEFT LoRA layers into ``lm`` in place (adapters in fp32, on the base weights' device)."""
    from peft import inject_adapter_in_model

    cfg = peft_config(lora_cfg, base)
    try:
        inject_adapter_in_model(cfg, lm)
    except ValueError as e:
        raise ValueError(f"model.lm.lora.target_modules {list(lora_cfg.target_modules)}: {e}") from None
    for name, p in lm.named_parameters():  # fp32 adapters here too: memory.meta_modules never calls freeze
        if is_lora_name(name):
            p.data = p.data.float()
    return lm  # PEFT keeps its LoraConfig on the module: lm.peft_config["default"]


def is_lora_name(name: str) -> bool:
    return "lora_" in name


def has_lora(module: torch.nn.Module) -> bool:
    """PEFT adapters are injected in ``module`` (``inject_adapter_in_model`` leaves its config there)."""
    return bool(getattr(module, "peft_config", None))


def train_adapters(lm: torch.nn.Module, low: torch.dtype) -> None:
    """The LM base frozen (in ``low``), its LoRA adapters trainable in fp32."""
    for name, p in lm.named_parameters():
        lora = is_lora_name(name)
        p.requires_grad_(lora)
        want = torch.float32 if lora else low
        if p.dtype != want and p.is_floating_point():
            p.data = p.data.to(want)


# --------------------------------------------------------------------------- init_from


def init_projector_from(model: torch.nn.Module, path: str | Path) -> None:
    """Load the projector weights of a saved model directory (an earlier run's ``final/``)."""
    from safetensors import safe_open

    f = Path(path) / WEIGHTS_FILE
    if not f.is_file():
        raise FileNotFoundError(f"model.init_from {str(path)!r}: {f} does not exist (point it at a run's final/)")
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


# --------------------------------------------------------------------------- saving


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
        if k.startswith(LM) and rebuilt_lm and not (k in params and id(params[k]) in emb):
            continue
        keep.append(k)
    return keep


def adapter_state_dict(model, state_dict: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The adapters with PEFT's key names (``base_model.model.<key in the LM>``, no adapter name)."""
    from peft import get_peft_model_state_dict

    lm_sd = None
    if state_dict is not None:
        lm_sd = {k[len(LM):]: v for k, v in state_dict.items() if k.startswith(LM)}
    sd = get_peft_model_state_dict(model.language_model, state_dict=lm_sd, save_embedding_layers=False)
    return {PEFT_PREFIX + k: v.detach().cpu().contiguous() for k, v in sd.items()}


def save_lora_dir(model, save_directory, state_dict: dict[str, torch.Tensor] | None = None,
                  is_main_process: bool = True, **_ignored) -> None:
    """Write a LoRA model's directory (layout in the module docstring)."""
    from safetensors.torch import save_file

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
    model.save_extras(d)


def load_lora_dir(cls, d: Path, dtype=None, device_map=None, **_ignored):
    """Rebuild a LoRA model from its directory (see the module docstring)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    from openmind_core.model.configuration import MultimodalReasoningConfig
    from openmind_core.model.tokenizer import load_tokenizer
    from schemas.config import ModelConfig

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
    model = cls.from_config(model_cfg, tokenizer, device=device)
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
    return model  # from_config already froze it for the stage, adapters in place


# --------------------------------------------------------------------------- merging


def merge_lora(model) -> None:
    """Fold the adapters into the LM's base weights (PEFT's ``merge``) and drop the LoRA layers."""
    from peft.tuners.lora import LoraLayer

    lm = model.language_model
    with torch.no_grad():
        for name, module in list(lm.named_modules()):
            if isinstance(module, LoraLayer):
                module.merge(safe_merge=True)
                parent_name, _, child = name.rpartition(".")
                parent = lm.get_submodule(parent_name) if parent_name else lm
                setattr(parent, child, module.get_base_layer())
    lm.__dict__.pop("peft_config", None)
    mc = dict(model.config.openmind or {})
    mc["lm"] = {**mc.get("lm", {}), "lora": None}
    mc["init_from"] = None
    model.config.openmind = mc
    # no freeze: the merged LM stays frozen in model.dtype (freeze("finetune") would make it fp32 masters,
    # doubling the exported file); _keep_in_fp32_modules_strict already leaves it out


def export_merged(source: str | Path, out: str | Path) -> Path:
    """A run directory (its ``final/``) or a saved LoRA directory -> one merged, self-contained directory."""
    from openmind_core.model.vlm import MultimodalReasoningModel

    src = Path(source)
    if (src / "final" / "config.json").is_file():
        src = src / "final"
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"{source}: neither a run directory with final/ nor a saved model directory")
    from openmind_core.io import atomic_write_json
    from openmind_core.training.checkpoint import save_model_dir

    model = MultimodalReasoningModel.from_pretrained(src)
    merged = has_lora(model.language_model)
    if merged:
        merge_lora(model)
    else:
        logger.info("%s has no LoRA adapters: written as it is", src)
    out = save_model_dir(model, out)  # atomic: a temporary directory, fsynced, renamed
    atomic_write_json(out / "openmind_export.json", {"source": str(src.resolve()), "merged": merged})
    return out
