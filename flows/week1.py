"""The Week-1 flow: download -> convert -> smoke tests -> train -> baseline inference.

Each stage is a retriable Prefect task returning a typed artifact from ``schemas``; the flow
returns a ``Week1Report`` (also written to ``<lake>/runs/<run>/report.json``) with the guide's
seven success criteria.  Rerunning with the same run name reuses the cached download and
conversion and resumes training from the newest checkpoint.

Deployments (``prefect.yaml``) and the CLI (``openmind run``) both call ``week1``.
"""

from __future__ import annotations

from pathlib import Path

import tasks  # noqa: F401  (sets Prefect environment defaults before prefect loads)
from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger

from flows.lake import check_resumable, default_run_name, resolve_lake
from openmind_core.io import atomic_write_text
from openmind_core.report import build_report, checklist_markdown
from schemas import OpenMindConfig, Week1Report, load_config
from tasks.convert import convert_task
from tasks.download import download_task, input_stamp
from tasks.events import emit_verdict
from tasks.fanout import fan_out_convert
from tasks.infer import inference_task
from tasks.smoke import smoke_task
from tasks.train import train_task

def prepare_run_dir(cfg: OpenMindConfig, lake: Path, run_name: str) -> Path:
    """Create ``<lake>/runs/<run>/`` and write the resolved config, unless it would resume another model."""
    run_dir = lake / "runs" / run_name
    check_resumable(cfg, run_dir)  # before anything is written
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", cfg.to_yaml())
    return run_dir


@flow(name="week1", log_prints=True, validate_parameters=True)
def week1(
    config_path: str | None = None,
    overrides: list[str] | None = None,
    run_name: str | None = None,
    lake: str | None = None,
) -> Week1Report:
    """Run the Week-1 pipeline.

    Args:
        config_path: YAML config; default the embedded tiny one (``configs/default.yaml``).
        overrides: ``dotted.key=value`` strings applied on top, e.g. ``["train.epochs=2"]``.
        run_name: the run directory name; reuse it to resume. Default: ``run.name`` or a timestamp.
        lake: the data lake directory; default ``$OPENMIND_LAKE`` or ``./data_lake``.
    """
    log = get_run_logger()
    cfg = load_config(config_path, overrides)  # ConfigError: nothing written yet
    lake_dir = resolve_lake(lake)
    name = run_name or cfg.run.name or default_run_name()
    run_dir = prepare_run_dir(cfg, lake_dir, name)
    log.info("run %s in %s", name, run_dir)

    raw = download_task(cfg.data, str(lake_dir), cfg.run.seed, input_stamp(cfg.data))
    if not Path(raw.manifest).exists():  # the cached result outlived the lake: fetch again
        raw = download_task.with_options(refresh_cache=True)(cfg.data, str(lake_dir), cfg.run.seed, input_stamp(cfg.data))
    fan_out_convert(raw, cfg.data, lake_dir)  # several raw files: one task each on the task runner, merged
    curated = convert_task(raw, cfg.data, str(lake_dir))
    if not all(Path(s).exists() for s in curated.shards):
        curated = convert_task.with_options(refresh_cache=True)(raw, cfg.data, str(lake_dir))
    smoke = smoke_task(cfg, curated, str(run_dir))
    training = train_task(cfg, curated, smoke, str(run_dir))
    inference = inference_task(cfg, curated, training)

    from openmind_core.model import estimate_memory

    report = build_report(cfg, name, str(run_dir), str(run_dir / "config.yaml"), raw, curated, smoke, training,
                          inference, memory_estimate=estimate_memory(cfg))
    atomic_write_text(run_dir / "report.json", report.model_dump_json(indent=2))
    emit_verdict(report)  # openmind.run.passed / openmind.run.failed (tasks/events.py)
    create_markdown_artifact(key="week1-checklist", markdown=checklist_markdown(report),
                             description="the guide's Week-1 success criteria")
    for c in report.criteria:
        log.info("%s %s: %s", "PASS" if c.passed else "FAIL", c.name, c.evidence)
    return report
