"""``openmind export RUN_DIR --merge OUT``: a LoRA run's model merged into one ordinary, self-contained directory.

The adapters are folded into the LM's base weights (``openmind_core.model.lora.merge_lora``) and
the model is written as a plain ``save_pretrained`` directory (``lm.lora`` null) that loads without
PEFT; a model without adapters is written as it is.  ``openmind_export.json`` beside it names the
source.  The write is atomic (``openmind_core.training.checkpoint.save_model_dir``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from openmind_core.io import atomic_write_json
from openmind_core.model import MultimodalReasoningModel
from openmind_core.model.lora import has_lora, merge_lora
from openmind_core.training.model_dir import save_model_dir

logger = logging.getLogger(__name__)


def export_merged(source: str | Path, out: str | Path) -> Path:
    """A run directory (its ``final/``) or a saved LoRA directory -> one merged, self-contained directory."""
    src = Path(source)
    if (src / "final" / "config.json").is_file():
        src = src / "final"
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"{source}: neither a run directory with final/ nor a saved model directory")
    model = MultimodalReasoningModel.from_pretrained(src)
    merged = has_lora(model.language_model)
    if merged:
        merge_lora(model)
    else:
        logger.info("%s has no LoRA adapters: written as it is", src)
    out = save_model_dir(model, out)  # atomic: a temporary directory, fsynced, renamed
    atomic_write_json(out / "openmind_export.json", {"source": str(src.resolve()), "merged": merged})
    return out
