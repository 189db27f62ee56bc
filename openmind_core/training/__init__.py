"""The ProductionTrainer and its parts.

``trainer`` (the loop and the step), ``state`` / ``rng`` / ``resume.RunSettings`` (Stateful state),
``checkpoint`` (the manager of crash-safe checkpoints), ``fingerprint`` and ``resume`` (what may
change across a resume), ``callbacks/`` (logging, evaluation and ``best/``, spike rollback,
periodic checkpoints, ``final/``, test-only kill points), ``strategies/`` (one process, DDP,
FSDP2), ``distributed`` (the process group), ``guard``, ``optim``, ``precision``, ``batches``,
``validation_loss``, ``metrics``, ``model_dir``, ``summary``, ``errors``, ``launch`` (torchrun).
"""

from openmind_core.training.checkpoint import CheckpointManager
from openmind_core.training.errors import ResumeError, TrainingError
from openmind_core.training.guard import SpikeDetector
from openmind_core.training.launch import run_torchrun
from openmind_core.training.metrics import read_metrics
from openmind_core.training.model_dir import save_model_dir
from openmind_core.training.optim import build_optimizer, build_scheduler, param_groups
from openmind_core.training.precision import AmpSettings, resolve_amp
from openmind_core.training.rng import seed_everything
from openmind_core.training.summary import summary_line
from openmind_core.training.trainer import ProductionTrainer

__all__ = [
    "AmpSettings", "CheckpointManager", "ProductionTrainer", "ResumeError", "SpikeDetector", "TrainingError",
    "build_optimizer", "build_scheduler", "param_groups", "read_metrics", "resolve_amp", "run_torchrun",
    "save_model_dir", "seed_everything", "summary_line",
]
