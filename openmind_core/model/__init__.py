"""The OpenMind vision-language model: SigLIP encoder, projector, causal LM, tokenizer, memory estimate.

``import openmind_core.model`` registers the model with transformers' Auto classes
(``model_type: openmind``).
"""

from transformers import AutoConfig, AutoModelForImageTextToText

from openmind_core.model.attention import flash_attn_available, select_backend
from openmind_core.model.builder import build_model
from openmind_core.model.configuration import MultimodalReasoningConfig
from openmind_core.model.image_tokens import num_image_tokens, tokens_for_config
from openmind_core.model.language import build_language_model, inline_llama_config
from openmind_core.model.memory import MemoryEstimate, estimate_memory
from openmind_core.model.modeling import MultimodalReasoningModel
from openmind_core.model.projector import ImprovedProjector
from openmind_core.model.tokenizer import build_tokenizer, load_tokenizer, train_bpe_tokenizer
from openmind_core.model.vision import ImprovedVisionEncoder


def _register_auto_classes() -> None:
    """``AutoConfig`` / ``AutoModelForImageTextToText`` know ``model_type: openmind`` after this import."""
    AutoConfig.register(MultimodalReasoningConfig.model_type, MultimodalReasoningConfig, exist_ok=True)
    AutoModelForImageTextToText.register(MultimodalReasoningConfig, MultimodalReasoningModel, exist_ok=True)


_register_auto_classes()

__all__ = [
    "ImprovedProjector",
    "ImprovedVisionEncoder",
    "MemoryEstimate",
    "MultimodalReasoningConfig",
    "MultimodalReasoningModel",
    "build_language_model",
    "build_model",
    "build_tokenizer",
    "estimate_memory",
    "flash_attn_available",
    "inline_llama_config",
    "load_tokenizer",
    "num_image_tokens",
    "select_backend",
    "tokens_for_config",
    "train_bpe_tokenizer",
]
