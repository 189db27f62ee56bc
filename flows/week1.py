"""The Week-1 flow: download -> convert -> tokenizer -> smoke tests -> train -> baseline inference.

Each stage is a retriable Prefect task returning a typed artifact from ``schemas``; the flow
returns a ``Week1Report`` (also written to ``<lake>/runs/<run>/report.json``) with the guide's
seven success criteria.  Rerunning with the same run name reuses the cached download and
conversion and resumes training from the newest checkpoint; one process at a time works in a run
directory.  A self-healing deployment's crashed run is rerun by an automation with
``auto_resume_of`` set (``tasks/heal.py``), which the run directory counts.

Deployments (``prefect.yaml``) and the CLI (``openmind run``) both call ``week1``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import tasks  # noqa: F401  (sets Prefect environment defaults before prefect loads)
from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger
from prefect.runtime import flow_run

from flows.lake import default_run_name, resolve_lake
from openmind_core.app.auto_resume import hold as hold_run_dir
from openmind_core.app.report import auto_resume_lines, build_report, checklist_markdown
from openmind_core.app.run_dir import prepare_run_dir, with_lake_paths
from openmind_core.io import atomic_write_text
from openmind_core.model.memory import estimate_memory
from schemas import OpenMindConfig, Week1Report, load_config
from tasks.convert import curate
from tasks.common import in_lake
from openmind_core.data.inputs import input_stamp
from tasks.download import download_task
from tasks.events import emit_verdict
from tasks.fanout import fan_out_convert
from tasks.heal import start_run
from tasks.infer import inference_task
from tasks.smoke import smoke_task
from tasks.tokenizer import tokenizer_task
from tasks.train import train_task

def _flow_run_name() -> str:
    """The flow run is named after the run directory (``--run-name``, ``run.name``, else a timestamp)."""
    params = flow_run.parameters
    if params.get("run_name"):
        return params["run_name"]
    try:
        return load_config(params.get("config_path"), params.get("overrides")).run.name or default_run_name()
    except Exception:  # a bad config fails in the flow body, with its message
        return default_run_name()


def _run_name(run_name: str | None, cfg: OpenMindConfig) -> str:
    if run_name or cfg.run.name:
        return run_name or cfg.run.name
    name = flow_run.name  # the timestamp _flow_run_name chose, so the flow run and the run directory agree
    return name if name and name.startswith("run-") else default_run_name()


@flow(name="week1", flow_run_name=_flow_run_name, log_prints=True, validate_parameters=True)
def week1(
    config_path: str | None = None,
    overrides: list[str] | None = None,
    run_name: str | None = None,
    lake: str | None = None,
    task_runner: Literal["thread", "dask"] = "thread",
    dask_address: str | None = None,
    auto_resume_of: str | None = None,
) -> Week1Report:
    """Run the Week-1 pipeline.

    Args:
        config_path: YAML config; default the embedded tiny one (``configs/default.yaml``).
        overrides: ``dotted.key=value`` strings applied on top, e.g. ``["train.epochs=2"]``.
        run_name: the run directory name; reuse it to resume. Default: ``run.name`` or a timestamp.
        lake: the data lake directory; default ``$OPENMIND_LAKE`` or ``./data_lake``.
        task_runner: where the per-file conversion tasks run: ``thread`` (this process) or ``dask``.
        dask_address: an existing Dask scheduler (``tcp://host:8786``) for ``task_runner: dask``.
        auto_resume_of: set by ``automations/resume-crashed.yaml`` only: the crashed flow run this one
            resumes (counted against ``run.max_auto_resumes``).
    """
    log = get_run_logger()
    lake_dir = resolve_lake(lake)
    cfg = with_lake_paths(load_config(config_path, overrides), lake_dir)  # ConfigError: nothing written yet
    name = _run_name(run_name, cfg)
    with hold_run_dir(lake_dir / "runs" / name):  # one process per run directory (RunDirBusy otherwise)
        run_dir = prepare_run_dir(cfg, lake_dir, name)
        log.info("run %s in %s", name, run_dir)
        resumes = start_run(cfg, run_dir, auto_resume_of)  # AutoResumeRefused past run.max_auto_resumes
        return _stages(cfg, lake_dir, name, run_dir, task_runner, dask_address, resumes)


def _stages(cfg: OpenMindConfig, lake_dir: Path, name: str, run_dir: Path, runner: str, address: str | None,
            resumes: list[dict]) -> Week1Report:
    log = get_run_logger()
    # results and cache records in <lake>/.prefect-results; a cache hit needs the stage's files in the lake
    raw = in_lake(download_task, lake_dir)(cfg.data, str(lake_dir), cfg.run.seed, input_stamp(cfg.data))
    merged = fan_out_convert(raw, cfg.data, lake_dir, runner, address)  # several raw files: one task each, merged
    curated = curate(raw, cfg.data, lake_dir, merged)
    tokenizer = tokenizer_task(cfg, curated, str(run_dir))
    smoke = smoke_task(cfg, curated, tokenizer)
    training = train_task(cfg, curated, tokenizer, str(run_dir))
    inference = inference_task(cfg, curated, training)

    report = build_report(cfg, name, str(run_dir), str(run_dir / "config.yaml"), raw, curated, smoke, training,
                          inference, memory_estimate=estimate_memory(cfg), tokenizer=tokenizer, auto_resumes=resumes)
    atomic_write_text(run_dir / "report.json", report.model_dump_json(indent=2))
    emit_verdict(report)  # openmind.run.passed / openmind.run.failed (tasks/events.py)
    create_markdown_artifact(key="week1-checklist", markdown=checklist_markdown(report),
                             description="the guide's Week-1 success criteria")
    for c in report.criteria:
        log.info("%s %s: %s", c.status.upper(), c.name, c.evidence)
    for line in auto_resume_lines(report):
        log.info("%s", line)
    return report
