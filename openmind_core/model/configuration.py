"""``MultimodalReasoningConfig``: the transformers config of a saved OpenMind model (``model_type`` "openmind").

A composite config, as LLaVA's: ``vision_config`` (a ``SiglipVisionConfig``) and ``text_config``
(the language model's own config, any family ``AutoConfig`` knows), plus what joins them: the
image placeholder's token id, the projector's type / kernel / width, the vision layer it reads,
the training stage (which decides what is kept in fp32 when the rest is bf16/fp16) and the image
normalisation (from the vision checkpoint's image processor).  ``openmind`` keeps the
``schemas.config.ModelConfig`` the model was built from, so a run can rebuild its data pipeline
(max length, image token) from a saved directory alone.

``config.json`` written by ``save_pretrained`` is what ``AutoConfig`` reads back after
``import openmind_core`` (``openmind_core.model`` registers the type with the Auto classes).
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.models.auto.configuration_auto import AutoConfig

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
        from openmind_core.model.image_tokens import num_image_tokens

        return num_image_tokens(self.grid, self.projector_type, self.pooling_kernel)


__all__ = ["MultimodalReasoningConfig", "MODEL_TYPE"]
