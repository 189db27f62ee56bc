"""The configs of a saved model: the composite ``MultimodalReasoningConfig`` (``model_type`` "openmind"), its generation config.

A composite config, as LLaVA's: ``vision_config`` (a ``SiglipVisionConfig``) and ``text_config``
(the language model's own config, any family ``AutoConfig`` knows), plus what joins them: the
image placeholder's token id, the projector's type / kernel / width, the vision layer it reads,
the training stage (which decides what is kept in fp32 when the rest is bf16/fp16) and the image
normalisation (from the vision checkpoint's image processor).  ``openmind`` keeps the
``schemas.config.ModelConfig`` the model was built from, so a run can rebuild its data pipeline
(max length, image token) from a saved directory alone.

``config.json`` written by ``save_pretrained`` is what ``AutoConfig`` reads back after
``import openmind_core.model`` (which registers the type with the Auto classes).

``config_for`` makes the composite config from a ``ModelConfig``, its tokenizer and the towers'
own configs; ``generation_config_for`` makes the generation settings that go with it (every stop
id of the LM, the tokenizer and the chat template; a pad id for left-padded batches; no total
``max_length``, as answers are bounded by ``max_new_tokens``).
"""

from __future__ import annotations

import copy

from huggingface_hub.dataclasses import strict
from transformers import GenerationConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.models.auto.configuration_auto import AutoConfig

from openmind_core.model.image_tokens import num_image_tokens
from openmind_core.chat_template import turn_end_ids

MODEL_TYPE = "openmind"
DEFAULT_MEAN = [0.5, 0.5, 0.5]  # SigLIP's
DEFAULT_STD = [0.5, 0.5, 0.5]


@strict
class MultimodalReasoningConfig(PreTrainedConfig):
    """SigLIP vision tower -> projector -> causal LM."""

    model_type = MODEL_TYPE
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="siglip_vision_model"),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    image_token_id: int | None = None
    projector_type: str = "token_pooling"
    pooling_kernel: int = 2
    projector_hidden_dim: int | None = None
    vision_feature_layer: int = -2
    use_flash_attn: bool = True
    stage: str = "align"
    image_mean: list[float] | None = None
    image_std: list[float] | None = None
    image_resample: int = 3  # PIL bicubic, as SigLIP
    openmind: dict | None = None
    format_version: int = 2
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.image_mean is None:
            self.image_mean = list(DEFAULT_MEAN)
        if self.image_std is None:
            self.image_std = list(DEFAULT_STD)
        # transformers ties the LM head when the *top* config says so (see LlavaConfig)
        if getattr(self.text_config, "tie_word_embeddings", False):
            self.tie_word_embeddings = True

    @property
    def img_size(self) -> int:
        return int(self.vision_config.image_size)

    @property
    def grid(self) -> int:
        return self.vision_config.image_size // self.vision_config.patch_size

    @property
    def num_image_tokens(self) -> int:
        return num_image_tokens(self.grid, self.projector_type, self.pooling_kernel)


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


def generation_config_for(tokenizer, lm_config, lm_generation: GenerationConfig | None) -> GenerationConfig:
    """The LM's generation settings, stopping on every stop id: the LM's own list, the tokenizer's eos
    and the chat template's end-of-turn token; a pad id always set (left-padded batches)."""
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
    # the answer length is max_new_tokens (generate(images, prompts) always sets it); an LM's own total
    # max_length (Llama-3: 4096) would only make transformers warn "Both max_new_tokens and max_length"
    gen.max_length = None
    return gen


__all__ = ["MultimodalReasoningConfig", "MODEL_TYPE", "config_for", "generation_config_for"]
