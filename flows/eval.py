"""``openmind eval``: score a run's final/ or best/ (or any saved model) as a Prefect flow.

The flow writes ``eval.json`` (an ``InferenceReport``) and a markdown artifact ``openmind-eval``;
the scoring itself is :func:`openmind_core.evaluation.evaluate_path`.
"""

from __future__ import annotations

from pathlib import Path

import tasks  # noqa: F401  (sets Prefect environment defaults before prefect loads)
from prefect import flow
from prefect.runtime import flow_run

from schemas import InferenceReport, load_config
from tasks.infer import eval_task


def _flow_run_name() -> str:
    """``eval-<run>-<final|best>`` (or ``eval-<model dir>``), with the data when it is not the lake's."""
    params = flow_run.parameters
    path = Path(str(params.get("path") or "model")).expanduser().resolve()
    parts = [path.parent.name, path.name] if path.name in ("final", "best") else [path.name]
    if (path / "final").is_dir() and path.name not in ("final", "best"):
        parts.append("final")  # a run directory: its final/
    data = params.get("hf") or (Path(params["jsonl"]).stem if params.get("jsonl") else None)
    name = "-".join(["eval", *parts] + ([str(data).replace("/", "-")] if data else []))
    return name[:120]


@flow(name="eval", flow_run_name=_flow_run_name, log_prints=True, validate_parameters=True)
def evaluate(
    path: str,
    config_path: str | None = None,
    overrides: list[str] | None = None,
    lake: str | None = None,
    jsonl: str | None = None,
    hf: str | None = None,
    kind: str | None = None,
    split: str = "validation",
    columns: dict[str, str] | None = None,
    out: str | None = None,
) -> InferenceReport:
    """Evaluate ``path`` on its lake's validation split, or on ``jsonl`` / ``hf`` data.

    Args:
        path: a run directory (its final/), a final/ or best/ directory, or a saved model directory.
        config_path: YAML whose ``inference`` section applies (default: the run's config.yaml).
        overrides: ``dotted.key=value`` strings, e.g. ``["inference.max_samples=500"]``.
        lake: where --jsonl / --hf data is converted (default: the run's lake, else ./data_lake).
        jsonl, hf: evaluate this data instead; ``kind`` vqa or caption (JSONL: detected), ``split`` for hf.
        out: where to write the report (default ``PATH/eval.json``).
    """
    cfg = load_config(config_path, overrides)
    return eval_task(path, cfg.inference, lake=lake, jsonl=jsonl, hf=hf, kind=kind, split=split, columns=columns,
                     out=out, seed=cfg.run.seed)
