"""The ProductionTrainer and its parts: state, RNG, checkpoints and resume, rollback, guards, evaluation,
optimizer and schedule, precision, DDP/FSDP, launcher."""

from openmind_core.training.checkpoint import CheckpointManager, ResumeError, save_model_dir
from openmind_core.training.guard import SpikeDetector
from openmind_core.training.launch import run_torchrun
from openmind_core.training.metrics import read_metrics
from openmind_core.training.optim import build_optimizer, build_scheduler, param_groups
from openmind_core.training.precision import AmpSettings, resolve_amp
from openmind_core.training.resume import check_resume
from openmind_core.training.trainer import ProductionTrainer, TrainingError

__all__ = [
    "AmpSettings", "CheckpointManager", "ProductionTrainer", "ResumeError", "SpikeDetector", "TrainingError",
    "build_optimizer", "build_scheduler", "check_resume", "param_groups", "read_metrics", "resolve_amp", "run_torchrun",
    "save_model_dir",
]
