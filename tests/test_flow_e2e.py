"""The Week-1 flow end to end under a real (temporary) Prefect server.

One small config (fewer samples than the default, same shapes) runs the five tasks for real:
generated data, Parquet conversion, smoke checks, training whose loss falls, generation.  Then:
the rerun path (download and conversion cached, a finished training resumed and not redone), a
task that fails once and is retried, a permanent error that is not retried, and a run killed with
SIGKILL during training that, rerun with the same name, ends with the same final weights.

Bit-for-bit comparisons are between fresh processes only: the retried run (tests/retry_once.py) and
the killed run each against ``unbroken``, a fresh CLI run of the same config.  A run inside this
pytest process, after hundreds of other tests, twice differed from fresh processes in the last bit
of the loss from step 4 on; fresh processes agree bit for bit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO

pytestmark = pytest.mark.slow

SMALL = [
    "data.synthetic.num_captions=96",
    "data.synthetic.num_vqa=48",
    "train.micro_batch_size=8",
    "train.epochs=3",
    "train.save_steps=4",
    "train.eval_steps=4",
    "train.log_every=2",
    "train.deterministic=true",
    "inference.max_samples=6",
    "inference.max_new_tokens=4",
]

EXPECTED_TASKS = {"download", "convert", "smoke-test", "train", "inference"}
EXPECTED_ARTIFACTS = {"week1-download", "week1-convert", "week1-smoke", "week1-train", "week1-training-metrics",
                      "week1-training-progress", "week1-training-loss", "week1-inference", "week1-checklist"}


def _task_runs(flow_run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {r.name.rsplit("-", 1)[0]: r for r in runs}  # task run names are "<task>-<3 hex>"


def _artifacts(flow_run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return {a.key: a for a in arts if a.key}


def _logs_by_task_run(flow_run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # logs are shipped in batches: send what is queued
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200)
    out: dict = {}
    for log in logs:
        out.setdefault(log.task_run_id, []).append(log.message)
    return out


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "final" / "model.safetensors"))


@pytest.fixture(scope="module")
def first_run(prefect_server, tmp_path_factory):
    from flows.week1 import week1

    lake = tmp_path_factory.mktemp("lake")
    state = week1(overrides=SMALL, run_name="e2e", lake=str(lake), return_state=True)
    assert state.is_completed(), state.message
    return lake, state.result(), state.state_details.flow_run_id


def test_flow_runs_all_five_tasks_and_reports(first_run):
    from openmind_core.model import MultimodalReasoningModel

    lake, report, flow_run_id = first_run
    run_dir = lake / "runs" / "e2e"
    # the run's files
    for name in ("config.yaml", "metrics.jsonl", "report.json"):
        assert (run_dir / name).is_file(), name
    assert any((run_dir / "checkpoints").iterdir())
    assert (lake / "raw").is_dir() and (lake / "curated").is_dir()
    on_disk = json.loads((run_dir / "report.json").read_text())
    assert on_disk["run_name"] == "e2e" and on_disk["passed"] == report.passed
    for d in ("best", "final"):
        model = MultimodalReasoningModel.from_pretrained(run_dir / d)
        assert model.num_image_tokens == report.smoke.image_tokens
    # the artifacts passed between tasks
    assert report.raw.caption_rows == 96 and report.raw.vqa_rows == 48
    assert report.curated.rows_in == report.curated.rows_kept + report.curated.rows_quarantined == 144
    assert report.smoke.passed and len(report.smoke.checks) == 4
    t = report.training
    assert t.steps > 0 and t.epochs_completed == 3 and t.reload_equal
    assert t.last_loss < t.first_loss and t.nan_or_inf_losses == 0
    assert report.inference.vqa_count > 0 and any(p.prediction for p in report.inference.predictions)
    assert any(p.prompt == "这张图片里有什么？" for p in report.inference.predictions)
    # the guide's seven criteria, each with its evidence
    assert len(report.criteria) == 7 and all(c.evidence for c in report.criteria)
    failed = [c for c in report.criteria if c.failed]
    assert not failed, failed
    assert next(c for c in report.criteria if c.name.startswith("Training fits")).status == "not measured"  # CPU
    # what the Prefect UI shows: one flow run, five task runs, the artifacts
    runs = _task_runs(flow_run_id)
    assert EXPECTED_TASKS <= set(runs), runs.keys()
    assert all(runs[n].state.is_completed() for n in EXPECTED_TASKS)
    logs = _logs_by_task_run(flow_run_id)
    for name in EXPECTED_TASKS:
        assert logs.get(runs[name].id), f"no logs from task run {name}"
    assert any("smoke forward_backward" in m for m in logs[runs["smoke-test"].id])  # library logs reach the UI
    arts = _artifacts(flow_run_id)
    assert EXPECTED_ARTIFACTS <= set(arts), set(arts)
    assert arts["week1-training-progress"].data == 100.0
    assert arts["week1-training-metrics"].type == "table"
    loss = arts["week1-training-loss"]  # the chart, drawn to the last step once training ends
    assert loss.type == "markdown" and "data:image/svg+xml;base64," in loss.data
    assert f"**step {t.steps}/{t.steps}**" in loss.data


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]


def test_rerun_reuses_stages_and_resumes_training(first_run):
    """A rerun of a finished run: download and conversion cached; training resumes from its last
    checkpoint, finds nothing left to train, and trains no step (final/ stays the trained model)."""
    from flows.week1 import week1

    lake, report, _ = first_run
    run_dir = lake / "runs" / "e2e"
    before, steps_before = _weights(run_dir), [r for r in _metrics(run_dir) if "event" not in r]
    state = week1(overrides=SMALL, run_name="e2e", lake=str(lake), return_state=True)
    assert state.is_completed(), state.message
    again = state.result()
    runs = _task_runs(state.state_details.flow_run_id)
    assert runs["download"].state.name == "Cached" and runs["convert"].state.name == "Cached"
    assert again.curated.version == report.curated.version
    # training resumed from its last checkpoint instead of starting over, and took no step
    assert again.training.resumed_from_step == again.training.steps == report.training.steps
    after = _metrics(run_dir)
    assert [r for r in after if "event" not in r] == steps_before  # no new step line
    assert [r["step"] for r in after if r.get("event") == "resume"] == [report.training.steps]
    assert again.training.last_loss == report.training.last_loss
    final = _weights(run_dir)  # final/ rewritten from the restored state: the same tensors
    assert before.keys() == final.keys() and all(torch.equal(before[k], final[k]) for k in before)


def test_rerun_after_the_lake_lost_its_data_redoes_those_stages(first_run):
    import shutil

    from flows.week1 import week1

    lake, report, _ = first_run
    shutil.rmtree(lake / "raw")
    shutil.rmtree(lake / "curated")
    state = week1(overrides=SMALL, run_name="e2e", lake=str(lake), return_state=True)
    assert state.is_completed(), state.message
    again = state.result()
    assert Path(again.raw.manifest).exists() and all(Path(s).exists() for s in again.curated.shards)
    assert again.curated.version == report.curated.version  # same input, same lake version
    assert again.training.resumed_from_step == report.training.steps


def test_transient_failure_is_retried_and_permanent_is_not(prefect_server, tmp_path, monkeypatch):
    import tasks.download as dl
    from flows.data import prepare_data
    from openmind_core.data import download as real_download

    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("simulated transient network failure")
        return real_download(*args, **kwargs)

    monkeypatch.setattr(dl, "download", flaky)
    small = ["data.synthetic.num_captions=8", "data.synthetic.num_vqa=4"]
    state = prepare_data(overrides=small, lake=str(tmp_path / "a"), return_state=True)
    assert state.is_completed(), state.message
    assert calls["n"] == 2
    runs = _task_runs(state.state_details.flow_run_id)
    assert runs["download"].run_count == 2

    def broken(*args, **kwargs):
        calls["n"] += 1
        raise ValueError("data.synthetic: simulated permanent error")

    calls["n"] = 0
    monkeypatch.setattr(dl, "download", broken)
    state = prepare_data(overrides=small + ["run.seed=7"], lake=str(tmp_path / "b"), return_state=True)
    assert state.is_failed()
    assert calls["n"] == 1  # a config/data error fails at once


def _cli(args, env, stdout=subprocess.PIPE, script=("-m", "flows.cli")):
    return subprocess.Popen([sys.executable, *script, *args], cwd=REPO, env=env,
                            stdout=stdout, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _run_args(name: str, lake: Path) -> list[str]:
    return ["run", *sum((["--set", s] for s in SMALL), []), "--run-name", name, "--lake", str(lake)]


@pytest.fixture(scope="module")
def unbroken(first_run, prefect_server, tmp_path_factory):
    """The unbroken reference: a fresh CLI run of SMALL, started here and run beside the test that asks
    first (the lake's data is cached by first_run; nothing else is shared).  Yields a function that
    waits for it and returns its final weights."""
    lake = first_run[0]
    env = dict(os.environ, PREFECT_API_URL=prefect_server)
    log = open(tmp_path_factory.mktemp("unbroken") / "unbroken.log", "w+")
    proc = _cli(_run_args("unbroken", lake), env, stdout=log)
    done: dict = {}

    def weights() -> dict[str, torch.Tensor]:
        if not done:
            proc.wait(timeout=900)
            log.seek(0)
            assert proc.returncode == 0, log.read()[-3000:]
            done.update(_weights(lake / "runs" / "unbroken"))
        return done

    try:
        yield weights
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def test_retried_training_task_resumes_from_its_checkpoint(first_run, prefect_server, unbroken, tmp_path):
    """The training task crashes at step 6 (tests/retry_once.py, a fresh process); Prefect retries it
    and it resumes from step 4.  The crash costs only the steps since that checkpoint: the final
    weights are the unbroken run's, bit for bit (both fresh processes)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    lake, report, _ = first_run
    env = dict(os.environ, PREFECT_API_URL=prefect_server, OPENMIND_TEST_CALLS=str(tmp_path / "calls"))
    proc = _cli(_run_args("retried", lake), env, script=(str(Path(__file__).with_name("retry_once.py")),))
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-3000:]
    assert (tmp_path / "calls").read_text() == "2"
    with get_client(sync_client=True) as client:
        [flow_run] = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=["retried"])))
    runs = _task_runs(flow_run.id)
    assert runs["train"].run_count == 2 and runs["train"].state.is_completed()
    result = json.loads((lake / "runs" / "retried" / "report.json").read_text())["training"]
    assert result["resumed_from_step"] == 4  # the newest checkpoint before the crash, not step 0
    assert result["steps"] == report.training.steps
    reference, retried = unbroken(), _weights(lake / "runs" / "retried")
    assert reference.keys() == retried.keys()
    assert all(torch.equal(reference[k], retried[k]) for k in reference)


def test_kill_9_during_training_then_rerun_gives_the_same_weights(first_run, prefect_server, unbroken):
    lake, report, _ = first_run
    env = dict(os.environ, PREFECT_API_URL=prefect_server)
    _kill_and_rerun(lake, env)
    reference, resumed = unbroken(), _weights(lake / "runs" / "killed")
    assert reference.keys() == resumed.keys()
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)


def _kill_and_rerun(lake: Path, env: dict) -> None:
    args = _run_args("killed", lake)
    proc = _cli(args, env)
    metrics = lake / "runs" / "killed" / "metrics.jsonl"
    deadline = time.time() + 300
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        steps = [json.loads(x).get("step", 0) for x in metrics.read_text().splitlines() if x.strip()] if metrics.exists() else []
        if steps and max(steps) >= 6:  # past the checkpoint at step 4, before the end
            killed_at = max(steps)
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(timeout=30)
    assert killed_at is not None, f"training never reached step 6 (exit {proc.returncode}): {proc.stdout.read()[-2000:]}"
    assert not (lake / "runs" / "killed" / "report.json").exists()
    # checkpoints are renamed into place whole: the newest one left is where the rerun must resume
    newest = max(int(p.name.split("-")[1]) for p in (lake / "runs" / "killed" / "checkpoints").glob("step-*"))
    assert 4 <= newest <= killed_at

    rerun = _cli(args, env)
    out, _ = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, out[-3000:]
    assert "resumed from step" in out
    result = json.loads((lake / "runs" / "killed" / "report.json").read_text())
    assert result["training"]["resumed_from_step"] == newest


def test_default_run_answers_clearly_better_than_chance(prefect_server, tmp_path):
    """The embedded default, unchanged: the trained tiny model must beat always-the-top-answer."""
    from flows.week1 import week1

    state = week1(run_name="default", lake=str(tmp_path), return_state=True)
    assert state.is_completed(), state.message
    report = state.result()
    inf = report.inference
    assert report.passed, [c for c in report.criteria if c.failed]
    assert report.raw.caption_rows == 1000 and report.raw.vqa_rows == 500
    assert inf.vqa_count >= 40 and inf.vqa_accuracy >= inf.vqa_chance + 0.10, (inf.vqa_accuracy, inf.vqa_chance)
    assert inf.caption_cider > inf.caption_chance_cider


def test_rerun_with_a_changed_model_is_refused_before_anything_runs(first_run, prefect_server):
    from flows.week1 import week1

    lake, _, _ = first_run
    config = (lake / "runs" / "e2e" / "config.yaml").read_text()
    state = week1(overrides=SMALL + ["model.lm.num_layers=3"], run_name="e2e", lake=str(lake), return_state=True)
    assert state.is_failed()
    assert _task_runs(state.state_details.flow_run_id) == {}  # refused before any task ran
    with pytest.raises(Exception, match=r"model.lm.num_layers: 2 -> 3"):
        state.result()
    assert (lake / "runs" / "e2e" / "config.yaml").read_text() == config  # the run's config is untouched
    # the CLI refuses it before Prefect starts: one line, exit code 2
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "run", *sum((["--set", s] for s in SMALL), []),
                           "--set", "model.lm.num_layers=3", "--run-name", "e2e", "--lake", str(lake)],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PREFECT_API_URL=prefect_server))
    assert proc.returncode == 2 and "holds checkpoints of a different model" in proc.stderr
