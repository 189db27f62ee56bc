"""The Week-1 baseline evaluation stage ("inference" in the guide): the trained model reloaded from ``final/``, scored on the
lake's held-out rows with the standard metrics of :mod:`openmind_core.evaluation` (the same code as
``openmind eval``): VQAv2 accuracy and CIDEr-D / BLEU-4, each beside its chance baseline.
"""

from __future__ import annotations

from pathlib import Path

from openmind_core.evaluation.run import evaluate_model, held_out_rows, load_model
from schemas import CuratedDataset, InferenceConfig, InferenceReport


def run_inference(
    model_dir: str | Path,
    curated: CuratedDataset,
    cfg: InferenceConfig,
    seed: int = 0,
    device: str | None = None,
) -> InferenceReport:
    rows, train_rows, data = held_out_rows(curated)
    return evaluate_model(load_model(model_dir, device), rows, cfg, chance_rows=train_rows,
                          chance_from="the lake's training split", seed=seed, model_dir=str(model_dir), data=data)
