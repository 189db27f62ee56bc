"""Pydantic-only schemas: the config tree and the artifacts passed between tasks (no torch)."""

from schemas.artifacts import (
    Check,
    Criterion,
    CuratedDataset,
    InferenceReport,
    Prediction,
    RawDataset,
    RawFile,
    RollbackEvent,
    SmokeReport,
    TokenizerReport,
    TrainingResult,
    Week1Report,
)
from schemas.config import (
    DEFAULT_CONFIG,
    FULL_CONFIG,
    DataConfig,
    InferenceConfig,
    ModelConfig,
    OpenMindConfig,
    TrainConfig,
)
from schemas.loading import ConfigError, apply_overrides, dotted_keys, load_config

__all__ = [
    "Check", "Criterion", "CuratedDataset", "InferenceReport", "Prediction", "RawDataset", "RawFile",
    "RollbackEvent", "SmokeReport", "TokenizerReport", "TrainingResult", "Week1Report", "DEFAULT_CONFIG", "FULL_CONFIG",
    "ConfigError", "DataConfig", "InferenceConfig", "ModelConfig", "OpenMindConfig", "TrainConfig",
    "apply_overrides", "dotted_keys", "load_config",
]
