"""prefect.yaml: both deployments register on a process pool, and a worker runs a triggered run.

This is the README's path (create the pool, ``prefect deploy --all``, start a worker,
``prefect deployment run``) against the session's temporary Prefect server.  The nightly schedule
arrives inactive (no run scheduled) and README's command turns it on; both deployments are
self-healing (tag, heartbeats) and take the task runner as a parameter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow
PREFECT = [sys.executable, "-m", "prefect"]


def _prefect(args, env, timeout=300):
    proc = subprocess.run([*PREFECT, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"prefect {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_deploy_all_then_worker_runs_a_triggered_run(prefect_server, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId

    env = dict(os.environ, PREFECT_API_URL=prefect_server, PWD=str(REPO))
    _prefect(["work-pool", "create", "openmind-local", "--type", "process"], env)
    _prefect(["--no-prompt", "deploy", "--all"], env)
    with get_client(sync_client=True) as client:
        manual = client.read_deployment_by_name("week1/week1-manual")
        nightly = client.read_deployment_by_name("week1/week1-nightly")
        nightly_runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            deployment_id=FlowRunFilterDeploymentId(any_=[nightly.id])))
    assert manual.work_pool_name == nightly.work_pool_name == "openmind-local"
    assert [s.schedule.cron for s in nightly.schedules] == ["0 3 * * *"] and not manual.schedules
    assert not nightly.schedules[0].active and nightly_runs == []  # deployed inactive: nothing scheduled
    assert manual.pull_steps[0]["prefect.deployments.steps.set_working_directory"]["directory"] == str(REPO)
    for d in (manual, nightly):  # self-healing: watched by automations/zombie-crashed.yaml and resume-crashed.yaml
        assert "self-healing" in d.tags and d.job_variables["env"]["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == "30"
        assert {"task_runner", "dask_address", "auto_resume_of"} <= set(d.parameter_openapi_schema["properties"])

    # README's command that turns the nightly schedule on
    text = (REPO / "README.md").read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("prefect deployment schedule resume week1/week1-nightly"))
    venv = dict(env, PATH=os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")]))  # activated
    proc = subprocess.run(line, shell=True, cwd=REPO, env=venv, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with get_client(sync_client=True) as client:
        assert client.read_deployment_by_name("week1/week1-nightly").schedules[0].active

    lake = tmp_path / "lake"
    overrides = json.dumps(["data.synthetic.num_captions=24", "data.synthetic.num_vqa=12", "train.micro_batch_size=8",
                            "inference.max_samples=2", "inference.max_new_tokens=2"])
    out = _prefect(["deployment", "run", "week1/week1-manual", "--param", "run_name=deployed",
                    "--param", f"lake={lake}", "--param", f"overrides={overrides}"], env)
    assert "week1-manual" in out
    _prefect(["worker", "start", "--pool", "openmind-local", "--run-once"], env, timeout=600)
    report = json.loads((Path(lake) / "runs" / "deployed" / "report.json").read_text())
    assert report["run_name"] == "deployed" and report["training"]["steps"] > 0
