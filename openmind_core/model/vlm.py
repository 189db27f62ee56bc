"""MultimodalReasoningModel: SigLIP vision tower -> projector -> causal LM, a transformers ``PreTrainedModel``.

Submodules are named ``vision_encoder``, ``projector`` and ``language_model`` (the trainer groups
learning rates by these prefixes; the safetensors keys are ``vision_encoder.siglip.vision_model.*``,
``projector.linear_{1,2}.*`` and ``language_model.*``).  A sample's ids hold ``num_image_tokens``
copies of the image placeholder (``openmind_core.prompting`` puts them there); ``forward`` embeds
the text and replaces the placeholder embeddings with projected image features
(``masked_scatter``, as transformers' LLaVA does) after a hard check that the counts match -- a
mismatch raises instead of silently misaligning.  Labels (-100 where no loss is taken) go to the
LM, whose loss is the standard shifted mean cross-entropy over label tokens.

Hugging Face-native: the config is ``MultimodalReasoningConfig`` (``model_type`` "openmind"),
registered with ``AutoConfig`` and ``AutoModelForImageTextToText`` by ``openmind_core.model``, so
``AutoModelForImageTextToText.from_pretrained(final_dir, dtype=..., device_map=...)`` returns this
class, built on the meta device and loaded straight into place (no random initialisation).
Frozen towers are held in ``model.dtype`` (bf16/fp16) and trainable modules in fp32 (master
weights): ``_keep_in_fp32_modules_strict`` names the trainable ones so a reload keeps that split.

Two ways to build one:

* ``MultimodalReasoningModel.from_config(model_cfg, tokenizer, device=...)`` from a
  ``schemas.config.ModelConfig``: pretrained towers (``model.vision.pretrained``,
  ``model.lm.name_or_path``) are loaded directly in their target dtype on the target device; only
  the projector and any new embedding rows are initialised.  Random towers (the tiny default, the
  full-size shape without checkpoints) are created directly in their target dtype too.
* ``from_pretrained(dir)``: a directory written by ``save_pretrained`` (config.json,
  model.safetensors, generation_config.json, the tokenizer and the image processor).  A directory
  written by OpenMind before format 2 (``openmind_config.json``) is read as well.

LoRA (``model.lm.lora``, stage finetune): ``from_config`` injects PEFT adapters into the LM,
``freeze`` trains them and the projector only, and ``save_pretrained`` / ``from_pretrained`` write
and read PEFT's adapter files plus the non-base weights: see ``openmind_core.model.lora``.

Generation is transformers' own (``GenerationMixin``): every stop id of the LM's
``generation_config``, sampling, beam search, repetition penalty, ``max_new_tokens`` and
streamers.  ``generate(images, prompts)`` is the guide's convenience form (returns the answers as
text, prompts built with the tokenizer's chat template when it has one); ``generate(input_ids=...,
pixel_values=...)`` is transformers' form (returns token ids).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_model
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GenerationMixin,
    PreTrainedModel,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from openmind_core import prompting
from openmind_core.imaging import preprocess_images
from openmind_core.model.configuration import MultimodalReasoningConfig
from openmind_core.model.projector import ImprovedProjector
from openmind_core.model.tokenizer import load_tokenizer
from openmind_core.model.vision import ImprovedVisionEncoder, enable_checkpointing
from openmind_core.progress import hf_bars, weight_bytes

logger = logging.getLogger(__name__)
_TABLES_LOGGED: set[tuple[str, str]] = set()

LEGACY_CONFIG_FILE = "openmind_config.json"  # format 1 (before the model was a PreTrainedModel)
WEIGHTS_FILE = "model.safetensors"
MODULES = ("vision_encoder", "projector", "language_model")
STAGES = {
    "align": ("projector",),
    "finetune": ("projector", "language_model"),
    "full": MODULES,
}


def trainable_modules(stage: str, lora: bool = False) -> tuple[str, ...]:
    """The towers a stage trains in full; with LoRA the LM is not one of them (its adapters train)."""
    if stage not in STAGES:
        raise ValueError(f"stage {stage!r} is not one of {tuple(STAGES)}")
    return tuple(t for t in STAGES[stage] if not (lora and t == "language_model"))


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() \
        and torch.distributed.get_world_size() > 1


def _dtype_of(config: MultimodalReasoningConfig) -> torch.dtype:
    dt = config.dtype
    if isinstance(dt, str):
        dt = getattr(torch, dt)
    return dt or torch.float32


class MultimodalReasoningModel(PreTrainedModel, GenerationMixin):
    """The vision-language model for a ``MultimodalReasoningConfig``."""

    config_class = MultimodalReasoningConfig
    config: MultimodalReasoningConfig
    base_model_prefix = "openmind"  # no separate base model: loading never strips a prefix
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True

    def __init__(
        self,
        config: MultimodalReasoningConfig,
        vision_encoder: ImprovedVisionEncoder | None = None,
        language_model: PreTrainedModel | None = None,
    ) -> None:
        super().__init__(config)
        if config.image_token_id is None:
            raise ValueError("MultimodalReasoningConfig.image_token_id is not set")
        self.image_token_id = int(config.image_token_id)
        self.num_image_tokens = config.num_image_tokens
        self.img_size = config.img_size
        self.tokenizer = None  # attached by from_config / from_pretrained (needed by generate(images, prompts))

        if vision_encoder is None:
            vision_encoder = ImprovedVisionEncoder(
                feature_layer=config.vision_feature_layer, use_flash_attn=config.use_flash_attn,
                _siglip=SiglipVisionModel(config.vision_config),
            )
        self.vision_encoder = vision_encoder
        config.vision_config = self.vision_encoder.siglip.config
        if language_model is None:
            language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.language_model = language_model
        config.text_config = self.language_model.config  # one object: embedding resizes update both
        self.projector = ImprovedProjector(
            self.vision_encoder.embed_dim, self.language_model.config.hidden_size,
            config.projector_type, config.pooling_kernel, config.projector_hidden_dim,
        )
        # keep torch's default init for the projector (LLaVA's); transformers' generic init would redo it
        for m in self.projector.modules():
            m._is_hf_initialized = True
        self.post_init()
        self.freeze(config.stage)  # also names the fp32 modules for from_pretrained (_keep_in_fp32_modules_strict)

    # ------------------------------------------------------------------ building

    @classmethod
    def from_config(cls, model_cfg, tokenizer, device: str | torch.device | None = None) -> "MultimodalReasoningModel":
        """Build from a ``schemas.config.ModelConfig`` and its tokenizer (see the module docstring)."""
        from openmind_core.model.builder import build_parts

        parts = build_parts(model_cfg, tokenizer, device=device)
        model = cls(parts.config, vision_encoder=parts.vision_encoder, language_model=parts.language_model)
        model.projector.to(device=torch.device(device) if device is not None else None)
        if model_cfg.lm.lora is not None or model_cfg.init_from:  # see openmind_core.model.lora
            from openmind_core.model import lora

            if model_cfg.init_from:
                lora.init_projector_from(model, model_cfg.init_from)
            if model_cfg.lm.lora is not None:
                lora.apply_lora(model.language_model, model_cfg.lm.lora, base=model_cfg.lm.name_or_path)
                model.freeze(model.config.stage)
        model.tokenizer = tokenizer
        model.generation_config = parts.generation_config
        if model_cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        return model

    @property
    def model_config(self):
        """The ``schemas.config.ModelConfig`` this model was built from."""
        from schemas.config import ModelConfig

        return ModelConfig.model_validate(self.config.openmind or {})

    # ------------------------------------------------------------------ embeddings (for transformers)

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module | None:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    # ------------------------------------------------------------------ forward

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> projected image tokens ``[B, num_image_tokens, lm_hidden]``."""
        vision_dtype = self.vision_encoder.siglip.embeddings.patch_embedding.weight.dtype
        feats = self.vision_encoder(pixel_values.to(vision_dtype))
        return self.projector(feats.to(self.projector.linear_1.weight.dtype))

    def embed_inputs(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None) -> torch.Tensor:
        """Text embeddings with the image placeholders replaced by image features."""
        embeds = self.language_model.get_input_embeddings()(input_ids)
        image_mask = input_ids == self.image_token_id
        n_images = 0 if pixel_values is None else pixel_values.shape[0]
        if input_ids.device.type != "meta":  # meta tensors have no values to count
            n_placeholders = int(image_mask.sum())
            if n_placeholders != n_images * self.num_image_tokens:
                raise ValueError(
                    f"Image features and image tokens do not match: input_ids hold {n_placeholders} image "
                    f"tokens (id {self.image_token_id}), but {n_images} image(s) x {self.num_image_tokens} "
                    f"tokens per image = {n_images * self.num_image_tokens} features"
                )
        if n_images == 0:  # a batch of text-only rows
            if self.training and torch.is_grad_enabled() and _distributed():
                # every rank must run the towers (DDP's gradient buckets, FSDP's all-gathers): a blank
                # image whose features count zero times
                blank = embeds.new_zeros((1, 3, self.img_size, self.img_size), dtype=torch.float32)
                embeds = embeds + 0.0 * self.encode_images(blank).to(embeds.dtype).sum()
            return embeds
        feats = self.encode_images(pixel_values).to(embeds.dtype)
        return embeds.masked_scatter(image_mask.unsqueeze(-1).expand_as(embeds), feats)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **lm_kwargs,
    ):
        """Returns the LM's ``CausalLMOutputWithPast`` (``.loss``/``["loss"]``, ``.logits``)."""
        if "past_key_values" in lm_kwargs:  # the name before transformers 5.2x
            cache = lm_kwargs.pop("past_key_values")
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("forward needs input_ids or inputs_embeds")
            inputs_embeds = self.embed_inputs(input_ids, pixel_values)
        if use_cache is None:
            use_cache = cache is not None
        if cache is not None:
            lm_kwargs[self._cache_kw()] = cache
        return self.language_model(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids, labels=labels,
            use_cache=use_cache, logits_to_keep=logits_to_keep, **lm_kwargs,
        )

    def _cache_kw(self) -> str:
        """The LM's name for the KV cache (``cache`` since transformers 5.2x), looked up once per LM."""
        lm = self.language_model
        if getattr(self, "_cache_kw_for", (None, None))[0] is not lm:
            params = inspect.signature(lm.forward).parameters
            self._cache_kw_for = (lm, "cache" if "cache" in params else "past_key_values")
        return self._cache_kw_for[1]

    # ------------------------------------------------------------------ generation

    def stop_token_ids(self) -> list[int]:
        eos = self.generation_config.eos_token_id
        if eos is None:
            return []
        return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]

    def _prepare_prompts(self, prompts: str | list[str], batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(prompts, str):
            prompts = [prompts] * batch
        if len(prompts) != batch:
            raise ValueError(f"generate: {batch} images but {len(prompts)} prompts")
        max_length = self.model_config.max_length
        ids = [prompting.encode(self.tokenizer, p, None, self.num_image_tokens, self.image_token_id, max_length).input_ids
               for p in prompts]
        width = max(len(x) for x in ids)
        pad = self.generation_config.pad_token_id
        pad = int(pad) if pad is not None else 0
        input_ids = torch.full((batch, width), pad, dtype=torch.long)
        mask = torch.zeros((batch, width), dtype=torch.long)
        for i, row in enumerate(ids):  # left padding: the last position is every row's last prompt token
            input_ids[i, width - len(row):] = torch.tensor(row)
            mask[i, width - len(row):] = 1
        return input_ids, mask

    def pixel_values_for(self, images) -> torch.Tensor:
        """PIL images / image bytes (or a ready ``[B, 3, H, W]`` tensor) -> normalised pixel values."""
        if isinstance(images, torch.Tensor):
            return images if images.dim() == 4 else images.unsqueeze(0)
        images = list(images) if isinstance(images, (list, tuple)) else [images]
        return preprocess_images(images, self.img_size, self.config.image_mean, self.config.image_std,
                                 self.config.image_resample)

    def generate(self, images=None, prompts=None, *args, seed: int | None = None, ignore_eos: bool = False,
                 **kwargs):
        """Answer ``prompts`` about ``images`` and return the answers as text; or transformers' generate.

        With ``prompts`` (one instruction for all images, or one per image): images are PIL images,
        image bytes or a ``[B, 3, H, W]`` tensor; the prompts go through the tokenizer's chat template
        (or the fixed template for tokenizers without one); every keyword of transformers'
        ``generate`` applies (``max_new_tokens`` (default 32), ``do_sample``, ``temperature``,
        ``top_p``, ``num_beams``, ``repetition_penalty``, ``streamer``, ...).  ``seed`` makes sampling
        reproducible; ``ignore_eos=True`` always decodes ``max_new_tokens`` tokens (benchmarks).

        Without ``prompts`` this is ``GenerationMixin.generate`` (``input_ids``, ``pixel_values``,
        ``attention_mask``, ...), returning token ids.
        """
        if prompts is None:
            if images is not None:
                args = (images, *args)
            return super().generate(*args, **kwargs)
        if self.tokenizer is None:
            raise ValueError("generate(images, prompts) needs model.tokenizer (from_pretrained attaches it)")
        pixel_values = self.pixel_values_for(images)
        batch = pixel_values.shape[0]
        input_ids, mask = self._prepare_prompts(prompts, batch)
        device = self.device
        if "max_new_tokens" not in kwargs and "max_length" not in kwargs:
            kwargs["max_new_tokens"] = 32
        if not kwargs.get("do_sample"):
            for key in ("temperature", "top_p", "top_k"):  # meaningless for greedy/beam search: no warnings
                kwargs.pop(key, None)
        if ignore_eos:
            kwargs["min_new_tokens"] = kwargs.get("max_new_tokens")
        rng = contextlib.nullcontext()
        if kwargs.get("do_sample") and seed is not None:
            rng = torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
        with rng:
            if kwargs.get("do_sample") and seed is not None:
                torch.manual_seed(seed)
            out = super().generate(
                input_ids=input_ids.to(device), attention_mask=mask.to(device),
                pixel_values=pixel_values.to(device), **kwargs,
            )
        new = out[:, input_ids.shape[1]:].tolist()
        stops = set(self.stop_token_ids())
        texts = []
        for row in new:
            cut = next((i for i, t in enumerate(row) if t in stops), len(row))
            texts.append(self.tokenizer.decode(row[:cut], skip_special_tokens=True).strip())
        return texts

    # ------------------------------------------------------------------ training controls

    def parameter_counts(self) -> dict[str, tuple[int, int]]:
        """``{module: (trainable, total)}`` for the three towers and ``"total"``."""
        counts: dict[str, tuple[int, int]] = {}
        for name in MODULES:
            params = list(getattr(self, name).parameters())
            counts[name] = (sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params))
        if self._lora_on():  # PEFT's count: adapters trainable, all = base + adapters
            counts["language_model (LoRA)"] = counts.pop("language_model")
        counts["total"] = (sum(c[0] for c in counts.values()), sum(c[1] for c in counts.values()))
        return counts

    def parameter_table(self) -> str:
        lines = [f"{'module':<22}{'trainable':>16}{'frozen':>16}{'total':>16}"]
        for name, (tr, tot) in self.parameter_counts().items():
            lines.append(f"{name:<22}{tr:>16,}{tot - tr:>16,}{tot:>16,}")
        return "\n".join(lines)

    def freeze(self, stage: str) -> str:
        """Set ``requires_grad`` for a stage; returns (and logs) the trainable/frozen table.

        "align": projector only; "finetune": projector + LM; "full": everything.  Frozen parameters
        are excluded from autograd, but activations still flow, so the projector gets gradients
        through a frozen LM.

        Precision: with ``dtype`` bfloat16/float16, frozen modules are held in that dtype and
        trainable ones in float32 (master weights: AdamW's moments and small late-schedule updates
        would be lost in 16 bits); autocast runs their matmuls in 16 bits on the GPU.
        """
        lora_on = self._lora_on()  # LoRA (openmind_core.model.lora): the LM base frozen, its adapters train
        trainable = trainable_modules(stage, lora_on)
        low = _dtype_of(self.config)
        for name in MODULES:
            module, train = getattr(self, name), name in trainable
            if lora_on and name == "language_model":
                from openmind_core.model.lora import train_adapters

                train_adapters(module, low)
                continue
            module.requires_grad_(train)
            if low != torch.float32:
                module.to(torch.float32 if train else low)
        self.config.stage = stage
        self._keep_in_fp32_modules_strict = list(trainable) if low != torch.float32 else []
        table = self.parameter_table()
        # the same table for every rebuild of one model (smoke, train, reload, inference): say it once
        level = logging.DEBUG if (stage, table) in _TABLES_LOGGED else logging.INFO
        _TABLES_LOGGED.add((stage, table))
        logger.log(level, "stage %r: trainable parameters per module\n%s", stage, table)
        return table

    @property
    def stage(self) -> str:
        """The training stage the model is frozen for (``config.stage``, set by ``freeze``)."""
        return self.config.stage

    def _lora_on(self) -> bool:
        """The config declares LoRA adapters on the LM (``model.lm.lora``); true from construction on, before
        ``from_config`` injects them, so the LM base is never cast to fp32 on the way."""
        return bool(((self.config.openmind or {}).get("lm") or {}).get("lora"))

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None) -> None:
        """Recompute activations in backward in both towers (non-reentrant checkpointing)."""
        self.vision_encoder.gradient_checkpointing_enable()
        enable_checkpointing(self.language_model)

    # ------------------------------------------------------------------ persistence

    def save_pretrained(self, save_directory, *args, **kwargs):
        """transformers' ``save_pretrained`` (config.json, model.safetensors, generation_config.json)
        plus the tokenizer and the image processor, so the directory is complete on its own.
        With LoRA adapters: PEFT's adapter files + the non-base weights (``openmind_core.model.lora``)."""
        if self._lora_on():
            from openmind_core.model.lora import save_lora_dir

            return save_lora_dir(self, save_directory, *args, **kwargs)
        nbytes = sum(p.numel() * p.element_size() for p in self.parameters())
        with hf_bars(nbytes):
            out = super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            self.save_extras(save_directory)
        return out

    def save_extras(self, directory) -> None:
        """The tokenizer and the image processor beside the weights."""
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(directory))
        self.image_processor().save_pretrained(str(directory))

    def image_processor(self):
        """A ``SiglipImageProcessor`` that preprocesses images as this model's data pipeline does."""
        try:  # the PIL backend: the default one needs torchvision
            from transformers import SiglipImageProcessorPil as Processor
        except ImportError:
            from transformers import SiglipImageProcessor as Processor

        return Processor(
            size={"height": self.img_size, "width": self.img_size}, resample=self.config.image_resample,
            image_mean=list(self.config.image_mean), image_std=list(self.config.image_std),
        )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, map_location=None, **kwargs):
        """Load a ``save_pretrained`` directory (any transformers keyword: ``dtype``, ``device_map``, ...).

        ``map_location`` (older OpenMind name) moves the model to that device after loading.
        """
        d = Path(pretrained_model_name_or_path)
        if d.is_dir() and not (d / "config.json").is_file() and not (d / LEGACY_CONFIG_FILE).is_file():
            raise FileNotFoundError(f"{d} is not a saved MultimodalReasoningModel: config.json is missing")
        if (d / LEGACY_CONFIG_FILE).is_file() and not (d / "config.json").is_file():
            model = _load_legacy(cls, d, **kwargs)
        elif d.is_dir() and (d / "adapter_config.json").is_file():  # LoRA (openmind_core.model.lora)
            from openmind_core.model.lora import load_lora_dir

            model = load_lora_dir(cls, d, **kwargs)
        else:
            with hf_bars(weight_bytes(d)):
                model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
            if d.is_dir() and (d / "tokenizer_config.json").is_file():
                model.tokenizer = load_tokenizer(d)
            model.freeze(model.config.stage)  # loaded parameters come back with requires_grad on
        if map_location is not None:
            model.to(map_location)
        return model


def _load_legacy(cls, d: Path, **kwargs) -> MultimodalReasoningModel:
    """Read a format-1 directory (``openmind_config.json`` + ``model.safetensors`` + tokenizer)."""
    from openmind_core.model.builder import generation_config_for
    from schemas.config import ModelConfig

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
    model = cls(config)
    load_model(model, str(d / WEIGHTS_FILE), strict=True)
    model.freeze(config.stage)
    model.tokenizer = tokenizer
    model.generation_config = generation_config_for(tokenizer, lm_cfg, None)
    logger.info("%s is an OpenMind format-1 directory: loaded; save_pretrained writes the current format", d)
    return model


def config_for(model_cfg, tokenizer, vision_config, text_config, image_mean=None, image_std=None,
               image_resample: int = 3) -> MultimodalReasoningConfig:
    """The ``MultimodalReasoningConfig`` for a ``ModelConfig``, its tokenizer and the towers' configs."""
    image_token = model_cfg.tokenizer.image_token
    image_token_id = tokenizer.convert_tokens_to_ids(image_token)
    if image_token_id is None or image_token_id == tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer has no image token {image_token!r}; build it with build_tokenizer")
    # copies: building the composite config resets its sub-configs' attention implementation, and the
    # towers' own configs (which the model then adopts) must keep theirs
    return MultimodalReasoningConfig(
        vision_config=copy.deepcopy(vision_config),
        text_config=copy.deepcopy(text_config),
        image_token_id=int(image_token_id),
        projector_type=model_cfg.projector.type,
        pooling_kernel=model_cfg.projector.pooling_kernel,
        projector_hidden_dim=model_cfg.projector.hidden_dim,
        vision_feature_layer=model_cfg.vision.feature_layer,
        use_flash_attn=model_cfg.vision.use_flash_attn,
        stage=model_cfg.stage,
        image_mean=list(image_mean) if image_mean is not None else None,
        image_std=list(image_std) if image_std is not None else None,
        image_resample=image_resample,
        openmind=model_cfg.model_dump(mode="json"),
        dtype=model_cfg.dtype,
    )
