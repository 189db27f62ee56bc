"""Automatic resumes counted in the run directory, the cap that stops a crash loop, and the run directory's lock.

The end-to-end path (a killed machine, the automations, the resumed run) is tests/test_self_healing.py;
here the bookkeeping it relies on, and the flow refusing a resume past ``run.max_auto_resumes``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
import pytest

from openmind_core.app.auto_resume import (AutoResumeRefused, RunDirBusy, admit, auto_resumes, check_free, hold,
                                           read_ledger, record_start)
from openmind_core.training.metrics import MetricsWriter


def test_resumes_are_counted_since_the_last_start_by_hand_and_capped(tmp_path):
    run = tmp_path / "run"
    record_start(run, "fr-0")
    (run / "checkpoints" / "step-00000020").mkdir(parents=True)
    first = admit(run, "crashed-1", "fr-1", limit=2)
    assert (first["attempt"], first["max"], first["from_step"]) == (1, 2, 20)
    assert admit(run, "crashed-1", "fr-1b", limit=2) == first  # the same crash, admitted again: counted once
    assert admit(run, "crashed-2", "fr-2", limit=2)["attempt"] == 2
    with pytest.raises(AutoResumeRefused, match=r"resumed automatically 2 time\(s\) \(run.max_auto_resumes 2\)"):
        admit(run, "crashed-3", "fr-3", limit=2)
    assert [r["crashed_flow_run"] for r in auto_resumes(run)] == ["crashed-1", "crashed-2"]
    events = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(e["event"], e["step"], e["attempt"]) for e in events] == [("auto_resume", 20, 1), ("auto_resume", 20, 2)]
    record_start(run, "fr-4")  # a start by hand: the count begins again
    assert auto_resumes(run) == [] and admit(run, "crashed-5", "fr-5", limit=2)["attempt"] == 1
    assert [r["kind"] for r in read_ledger(run)] == ["start", "auto_resume", "auto_resume", "start", "auto_resume"]


def test_a_fresh_start_keeps_the_auto_resume_line(tmp_path):
    """A crash before the first checkpoint: the trainer starts afresh, dropping old lines but not the resume's."""
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 1, "loss": 2.0}) + "\n" + json.dumps({"event": "auto_resume", "step": 0}) + "\n")
    MetricsWriter(path).start_fresh()
    assert [json.loads(x) for x in path.read_text().splitlines()] == [{"event": "auto_resume", "step": 0}]


HOLD = "import sys, time\nfrom openmind_core.app.auto_resume import hold\nwith hold(sys.argv[1]):\n" \
       "    print('held', flush=True)\n    time.sleep(60)\n"


def test_one_process_per_run_directory(tmp_path):
    run = tmp_path / "run"
    check_free(run)  # nobody there
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirBusy, match=rf"in use by pid {holder.pid} on "):
            check_free(run)
    finally:
        holder.kill()  # SIGKILL: the kernel drops the lock with the process
        holder.wait()
    with hold(run):
        with pytest.raises(RunDirBusy):
            check_free(run)  # another open file description: refused even within one process
    check_free(run)


def test_the_flow_refuses_a_resume_past_the_cap(prefect_server, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    from flows.week1 import week1

    lake = tmp_path / "lake"
    run = lake / "runs" / "looping"
    record_start(run)
    for i in range(3):
        admit(run, f"crash-{i}", f"resume-{i}", limit=3)
    state = week1(run_name="looping", lake=str(lake), auto_resume_of="crash-3", return_state=True)
    assert state.is_failed()
    with pytest.raises(AutoResumeRefused, match="max_auto_resumes 3"):
        state.result()
    assert not (run / "tokenizer").exists()  # refused before any stage ran
    with get_client(sync_client=True) as client:
        [fr] = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=["looping"])))
    assert fr.state.is_failed() and fr.parameters["auto_resume_of"] == "crash-3"
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all(timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the server persists events a moment after it receives them
        r = httpx.post(f"{prefect_server}/events/filter", timeout=10,
                       json={"filter": {"event": {"name": ["openmind.run.auto_resume_refused"]}}})
        events = [e for e in r.json()["events"] if e["resource"]["prefect.resource.id"] == "openmind.run.looping"]
        if events:
            break
        time.sleep(0.5)
    assert events and events[0]["payload"]["crashed_flow_run"] == "crash-3", r.json()
