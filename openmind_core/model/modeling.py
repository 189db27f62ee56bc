"""MultimodalReasoningModel: SigLIP vision tower -> projector -> causal LM, a transformers ``PreTrainedModel``.

Submodules are named ``vision_encoder``, ``projector`` and ``language_model`` (the trainer groups
learning rates by these prefixes; the safetensors keys are ``vision_encoder.siglip.vision_model.*``,
``projector.linear_{1,2}.*`` and ``language_model.*``).  A sample's ids hold ``num_image_tokens``
copies of the image placeholder (``openmind_core.prompting`` puts them there); ``forward`` embeds
the text and replaces the placeholder embeddings with projected image features
(``masked_scatter``, as transformers' LLaVA does) after a hard check that the counts match -- a
mismatch raises instead of silently misaligning.  Labels (-100 where no loss is taken) go to the
LM, whose loss is the standard shifted mean cross-entropy over label tokens.

The class holds the model only.  Around it: what trains and in which dtype is
``openmind_core.model.stages`` (``freeze``); ``generate(images, prompts)`` is
``openmind_core.model.generation``'s; ``openmind_core.model.builder.build_model`` assembles one from
a ``ModelConfig``; ``save_pretrained`` / ``from_pretrained`` (LoRA directories, the format-1
directory) go through ``openmind_core.model.saving``, passing the model or this class in (reading a
LoRA directory reassembles the model: ``openmind_core.model.assembly`` builds whatever class it is
given, so neither module imports this one).
"""

from __future__ import annotations

import inspect

import torch
from torch import nn
from transformers import AutoModelForCausalLM, GenerationMixin, PreTrainedModel

from openmind_core.model import saving, stages
from openmind_core.model.configuration import MultimodalReasoningConfig
from openmind_core.model.generation import ImagePromptGeneration
from openmind_core.model.packed import packed_lm_inputs
from openmind_core.model.projector import ImprovedProjector
from openmind_core.model.vision import ImprovedVisionEncoder, enable_checkpointing, random_siglip
from schemas.config import ModelConfig


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() \
        and torch.distributed.get_world_size() > 1


class MultimodalReasoningModel(ImagePromptGeneration, PreTrainedModel, GenerationMixin):
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
        self.tokenizer = None  # attached by build_model / from_pretrained (needed by generate(images, prompts))

        if vision_encoder is None:  # from a config alone: from_pretrained then loads the weights
            vision_encoder = ImprovedVisionEncoder(
                feature_layer=config.vision_feature_layer, use_flash_attn=config.use_flash_attn,
                _siglip=random_siglip(config.vision_config),
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

    @property
    def model_config(self) -> ModelConfig:
        """The ``schemas.config.ModelConfig`` this model was built from."""
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
        packed: bool = False,
        **lm_kwargs,
    ):
        """Returns the LM's ``CausalLMOutputWithPast`` (``.loss``/``["loss"]``, ``.logits``).

        ``packed``: a batch of ``openmind_core.data.packing.PackingCollator`` (several samples per row,
        ``position_ids`` restarting per sample): samples are isolated (``openmind_core.model.packed``);
        with flash-attn the logits come back as one flattened row of the real tokens."""
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
        if packed:
            if cache is not None or use_cache:
                raise ValueError("a packed batch is for training and scoring: it takes no KV cache")
            lm_kwargs.update(packed_lm_inputs(self.language_model.config._attn_implementation, inputs_embeds,
                                              attention_mask, position_ids, labels))
            return self.language_model(use_cache=False, logits_to_keep=logits_to_keep, **lm_kwargs)
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

    # ------------------------------------------------------------------ training controls

    def parameter_counts(self) -> dict[str, tuple[int, int]]:
        """``{module: (trainable, total)}`` for the three towers and ``"total"``."""
        counts: dict[str, tuple[int, int]] = {}
        for name in stages.MODULES:
            params = list(getattr(self, name).parameters())
            if name == "language_model":
                params = [p for p in params if id(p) not in self._head_to_tie()]
            counts[name] = (sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params))
        if stages.declares_lora(self.config):  # PEFT's count: adapters trainable, all = base + adapters
            counts["language_model (LoRA)"] = counts.pop("language_model")
        counts["total"] = (sum(c[0] for c in counts.values()), sum(c[1] for c in counts.values()))
        return counts

    def _head_to_tie(self) -> set[int]:
        """The LM head's weight when the config ties it to the input embeddings but it is not tied yet
        (``from_pretrained`` ties after loading): counted once, as it will be."""
        lm = self.language_model
        out = lm.get_output_embeddings()
        tied = getattr(lm.config, "tie_word_embeddings", False)
        if not tied or out is None or out.weight is lm.get_input_embeddings().weight:
            return set()
        return {id(out.weight)}

    def parameter_table(self) -> str:
        lines = [f"{'module':<22}{'trainable':>16}{'frozen':>16}{'total':>16}"]
        for name, (tr, tot) in self.parameter_counts().items():
            lines.append(f"{name:<22}{tr:>16,}{tot - tr:>16,}{tot:>16,}")
        return "\n".join(lines)

    def freeze(self, stage: str) -> str:
        """Set what trains for ``stage`` and the dtypes that go with it (``openmind_core.model.stages.freeze``);
        returns (and logs) the trainable/frozen table."""
        return stages.freeze(self, stage)

    @property
    def stage(self) -> str:
        """The training stage the model is frozen for (``config.stage``, set by ``freeze``)."""
        return self.config.stage

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None) -> None:
        """Recompute activations in backward in both towers (non-reentrant checkpointing)."""
        self.vision_encoder.gradient_checkpointing_enable()
        enable_checkpointing(self.language_model)

    # ------------------------------------------------------------------ saving and loading

    def save_pretrained(self, save_directory, *args, **kwargs):
        """transformers' ``save_pretrained`` plus the tokenizer and the image processor; a LoRA model
        writes PEFT's adapter files and its non-base weights (``openmind_core.model.saving``)."""
        return saving.save_model(self, save_directory, super().save_pretrained, *args, **kwargs)

    def save_extras(self, directory) -> None:
        """The tokenizer and the image processor beside the weights."""
        saving.save_extras(self, directory)

    def image_processor(self):
        """A ``SiglipImageProcessor`` that preprocesses images as this model's data pipeline does."""
        return saving.image_processor(self)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, map_location=None, **kwargs):
        """Load a saved directory of any format (``openmind_core.model.saving``); every transformers
        keyword (``dtype``, ``device_map``, ...) applies; ``map_location`` moves the model after loading."""
        load_base = super().from_pretrained
        return saving.load_model(cls, pretrained_model_name_or_path, load_base, *args, map_location=map_location,
                                 **kwargs)
