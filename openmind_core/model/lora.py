"""LoRA adapters on the language model (stage ``finetune``), with PEFT; no hand-written LoRA layers.

``model.lm.lora: {r, alpha, dropout, target_modules}`` (schemas.config.LoraConfig) turns it on.
``apply_lora`` injects PEFT's LoRA layers into ``model.language_model``
(``peft.inject_adapter_in_model``): the LM keeps its class and its forward, its target linear
layers become ``peft.tuners.lora.Linear`` (base weight at ``<name>.base_layer.weight``, adapters at
``<name>.lora_A.default.weight`` / ``lora_B``).  ``openmind_core.model.stages.freeze`` then trains
the adapters (fp32, ``train_adapters``) and the projector only; the LM base and the vision tower
stay frozen (in ``model.dtype``).  Parameter names keep the ``language_model.`` prefix, so the
adapters take ``train.lr_lm`` in ``optim.param_groups``; trainer checkpoints hold the trainable
tensors only (adapters + projector).

A LoRA model's saved directory (PEFT's adapter files plus the weights the base pointers cannot
rebuild) is written and read by ``openmind_core.model.saving``.  ``merge_lora`` folds the adapters
into the base weights (PEFT's ``merge``) and removes the LoRA layers; ``openmind export RUN_DIR
--merge OUT`` (``openmind_core.app.export``) writes the merged model as one ordinary,
self-contained directory (``lm.lora`` null) that loads without PEFT.
"""

from __future__ import annotations

import torch


def peft_config(lora_cfg, base: str | None = None):
    """``peft.LoraConfig`` for a ``schemas.config.LoraConfig``."""
    import peft  # start-up cost: peft loads only where LoRA is used

    return peft.LoraConfig(
        r=lora_cfg.r, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
        target_modules=list(lora_cfg.target_modules), bias="none", task_type="CAUSAL_LM",
        base_model_name_or_path=base,
    )


def apply_lora(lm: torch.nn.Module, lora_cfg, base: str | None = None) -> torch.nn.Module:
    """Inject PEFT LoRA layers into ``lm`` in place (adapters in fp32, on the base weights' device)."""
    from peft import inject_adapter_in_model  # start-up cost: peft loads only where LoRA is used

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


def merge_lora(model) -> None:
    """Fold the adapters into the LM's base weights (PEFT's ``merge``) and drop the LoRA layers."""
    from peft.tuners.lora import LoraLayer  # start-up cost: peft loads only where LoRA is used

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
