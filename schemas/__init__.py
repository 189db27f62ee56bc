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
    TrainingResult,
    Week1Report,
)
from schemas.config import (
    DEFAULT_CONFIG,
    FULL_CONFIG,
    ConfigError,
    DataConfig,
    InferenceConfig,
    ModelConfig,
    OpenMindConfig,
    TrainConfig,
    apply_overrides,
    load_config,
)

__all__ = [
    "Check", "Criterion", "CuratedDataset", "InferenceReport", "Prediction", "RawDataset", "RawFile",
    "RollbackEvent", "SmokeReport", "TrainingResult", "Week1Report", "DEFAULT_CONFIG", "FULL_CONFIG",
    "ConfigError", "DataConfig", "InferenceConfig", "ModelConfig", "OpenMindConfig", "TrainConfig",
    "apply_overrides", "load_config",
]
