"""What is not the step: the trainer's callbacks, in the order it runs them (after OLMo-core's ``train/callbacks``).

``ProductionTrainer`` builds this list; each hook calls the callbacks that override it, in order
(``base`` lists the hooks):

1. ``MetricsLog``       metrics.jsonl's step line
2. ``ConsoleProgress``  the tqdm bar
   ``EveryStep``        the caller's ``at_step`` callback (when given, every rank, every step)
3. ``ProgressReport``   the caller's ``progress`` callback (when given, rank 0)
4. ``WandbLog``         wandb: train/* every ``log_every`` steps (and val/loss for the evaluator)
5. ``Evaluator``        the validation loss every ``eval_steps`` and at the end; ``best/``
6. ``Checkpointer``     a checkpoint every ``save_steps`` and at the end
7. ``SpikeRollback``    handles a ``Rollback`` from the step
8. ``FinalModel``       ``final/``, the state-restore check, the loss curve
9. ``KillPoints``       test-only crashes (only with ``OPENMIND_TEST_KILL_AT`` set)

So after a step: its metrics line, the bar, progress, wandb, then evaluation, then the checkpoint;
at the end: the last evaluation, the last checkpoint, then ``final/``, then the final progress call.
"""

from openmind_core.training.callbacks.base import Callback, CallbackList
from openmind_core.training.callbacks.checkpointer import Checkpointer
from openmind_core.training.callbacks.console import ConsoleProgress, EveryStep, ProgressReport
from openmind_core.training.callbacks.evaluator import Evaluator
from openmind_core.training.callbacks.final_model import FinalModel
from openmind_core.training.callbacks.kill_points import KillPoints, kill_point
from openmind_core.training.callbacks.metrics_log import MetricsLog
from openmind_core.training.callbacks.rollback import SpikeRollback
from openmind_core.training.callbacks.wandb_log import WandbLog

__all__ = ["Callback", "CallbackList", "Checkpointer", "ConsoleProgress", "EveryStep", "Evaluator", "FinalModel", "KillPoints",
           "MetricsLog", "ProgressReport", "SpikeRollback", "WandbLog", "kill_point"]
