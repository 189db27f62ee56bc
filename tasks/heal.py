"""A run's start as Prefect sees it: by hand, or an automatic resume after a crash (self-healing deployments).

``automations/zombie-crashed.yaml`` marks a self-healing flow run Crashed once its heartbeats
stop; ``automations/resume-crashed.yaml`` then runs its deployment again with the same parameters
and ``auto_resume_of`` set to the crashed flow run's id.  ``start_run`` records the start in the
run directory (``openmind_core.app.auto_resume``: the count, the cap, the ``metrics.jsonl`` line)
and emits the Prefect event:

    openmind.run.auto_resumed          an automatic resume was admitted (attempt, max, from_step, ...)
    openmind.run.auto_resume_refused   the cap ``run.max_auto_resumes`` was reached: the flow run fails
"""

from __future__ import annotations

from pathlib import Path

from prefect.logging import get_run_logger
from prefect.runtime import flow_run

from openmind_core.app.auto_resume import AutoResumeRefused, admit, auto_resumes, record_start
from schemas import OpenMindConfig
from tasks.events import RUN_PREFIX, emit


def start_run(cfg: OpenMindConfig, run_dir: Path, auto_resume_of: str | None) -> list[dict]:
    """Record this start (by hand, or the automatic resume of flow run ``auto_resume_of``); the automatic
    resumes since the last start by hand.  ``AutoResumeRefused`` past ``run.max_auto_resumes``."""
    log = get_run_logger()
    me = flow_run.id
    if not auto_resume_of:
        record_start(run_dir, me)
        return []
    try:
        rec = admit(run_dir, auto_resume_of, me, cfg.run.max_auto_resumes)
    except AutoResumeRefused as e:
        emit(RUN_PREFIX + "auto_resume_refused", run_dir.name,
             {"crashed_flow_run": auto_resume_of, "max": cfg.run.max_auto_resumes, "reason": str(e)}, run_dir)
        raise
    emit(RUN_PREFIX + "auto_resumed", run_dir.name, {k: v for k, v in rec.items() if k != "kind"}, run_dir)
    log.warning("resuming run %s automatically after flow run %s crashed (%d/%d), from step %d",
                run_dir.name, auto_resume_of, rec["attempt"], rec["max"], rec["from_step"])
    return auto_resumes(run_dir)
