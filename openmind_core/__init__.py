"""OpenMind's library: model, data lake, trainer, inference and memory estimate.

Never imports prefect: everything here runs from a notebook, a script or torchrun on its own.
Importing it registers the model with transformers' Auto classes (``model_type: openmind``), so
``AutoModelForImageTextToText.from_pretrained(run_dir / "final")`` returns a
``MultimodalReasoningModel``.
"""

__version__ = "0.1.0"

from openmind_core import model as _model  # noqa: E402,F401  (registers the Auto classes)
