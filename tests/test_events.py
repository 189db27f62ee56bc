"""Trainer events reach the Prefect server as events (tasks/events.py), related to the flow run.

A real trainer (the toy of trainer_helpers) rolls back a poisoned batch and skips a NaN-gradient
step inside a flow run while ``MetricsEventForwarder`` polls its metrics.jsonl; the events are then
read back from the session's Prefect server with the client's events API.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from types import SimpleNamespace

import pytest

from tasks.events import MetricsEventForwarder, event_for_record
from trainer_helpers import make_cfg, run_toy


def test_records_map_to_event_names():
    assert event_for_record({"step": 3, "loss": 1.0, "skipped": False}) is None
    name, payload = event_for_record({"step": 3, "loss": float("nan"), "grad_norm": float("inf"), "skipped": True})
    assert name == "openmind.train.skipped_step" and payload == {"step": 3, "loss": "nan", "grad_norm": "inf"}
    name, payload = event_for_record({"event": "rollback", "step": 4, "spike_step": 6})
    assert name == "openmind.train.rollback" and payload == {"step": 4, "spike_step": 6}


def _read_events(run_name: str, want: int, timeout: float = 60.0):
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventResourceFilter

    flt = EventFilter(resource=EventResourceFilter(id=[f"openmind.run.{run_name}"]))
    deadline = time.monotonic() + timeout
    while True:
        with get_client(sync_client=True) as client:
            events = client.read_events(filter=flt, limit=50).events
        if len(events) >= want or time.monotonic() > deadline:
            return sorted(events, key=lambda e: e.occurred)
        time.sleep(1.0)


def test_trainer_events_reach_the_server_related_to_the_flow_run(prefect_server, tmp_path):
    from prefect import flow
    from prefect.runtime import flow_run

    from openmind_core.data.sampler import ResumableSampler
    from openmind_core.training.metrics import read_metrics
    from tasks.events import emit_verdict
    from trainer_helpers import ToyDataset

    ds = ToyDataset(48)
    order = ResumableSampler(ds.sample_ids, seed=7).epoch_order(0)
    step_ids = lambda s: [ds.sample_ids[i] for i in order[(s - 1) * 8: s * 8]]  # noqa: E731
    run_name = f"events-{uuid.uuid4().hex[:8]}"
    metrics = tmp_path / "metrics.jsonl"
    # a line from an earlier attempt: already forwarded then, never again
    metrics.write_text(json.dumps({"event": "checkpoint", "step": 0, "path": "earlier-attempt"}) + "\n")

    @flow(name="events-test")
    def train_and_forward() -> str:
        with MetricsEventForwarder(metrics, run_name, interval=0.1) as fwd:
            res = run_toy(tmp_path, make_cfg(), poison={sid: 100.0 for sid in step_ids(6)[:2]},
                          nan_ids={step_ids(3)[0]})
        emit_verdict(SimpleNamespace(passed=False, run_name=run_name, run_dir=str(tmp_path),
                                     criteria=[SimpleNamespace(name="loss fell", status="fail", passed=False, failed=True),
                                               SimpleNamespace(name="fits 40 GB", status="not measured", passed=False,
                                                               failed=False)]))
        assert fwd.emitted >= 3 and len(res.rollbacks) == 1 and res.skipped_steps >= 1
        return str(flow_run.id)

    flow_run_id = train_and_forward()
    written = [event_for_record(r) for r in read_metrics(metrics)]
    written = [w for w in written if w and w[1].get("path") != "earlier-attempt"]
    events = _read_events(run_name, want=len(written) + 1)
    got = [(e.event, e.payload) for e in events]
    # every event line of the file reached the server once (a checkpoint re-saved after the rollback
    # is a second event), the earlier attempt's line never; then the verdict
    key = lambda ev: json.dumps(ev, sort_keys=True)  # noqa: E731
    assert Counter(map(key, got)) == Counter(map(key, written + [got[-1]])), "\n".join(map(str, got))
    assert got[-1][0] == "openmind.run.failed"
    names = [n for n, _ in got]
    assert {"openmind.train.rollback", "openmind.train.skipped_step", "openmind.train.checkpoint",
            "openmind.run.failed"} <= set(names)
    rb = next(p for n, p in got if n == "openmind.train.rollback")
    assert rb["spike_step"] == 6 and rb["restored_step"] == 4
    assert next(p for n, p in got if n == "openmind.train.skipped_step")["step"] == 3
    verdict = next(p for n, p in got if n == "openmind.run.failed")
    assert verdict["failed"] == ["loss fell"] and verdict["passed"] is False
    assert verdict["criteria"] == {"loss fell": "fail", "fits 40 GB": "not measured"}
    for e in events:
        assert e.resource.id == f"openmind.run.{run_name}" and e.resource.name == run_name
        assert f"prefect.flow-run.{flow_run_id}" in {r.id for r in e.related}, e


def test_a_rewritten_file_forwards_only_what_is_new(tmp_path):
    """Resume/rollback rewrite metrics.jsonl: kept lines are not sent again, later ones are (no server)."""
    path = tmp_path / "metrics.jsonl"
    lines = [{"step": 1, "loss": 1.0}, {"event": "checkpoint", "step": 2, "path": "a"}, {"step": 3, "skipped": True}]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    sent = []
    fwd = MetricsEventForwarder(path, "r", skip_existing=False,
                                emitter=lambda name, run, payload, *a, **k: sent.append(
                                    {"event": name.rsplit(".", 1)[1], **payload}))  # recorded, not sent
    fwd._read()
    assert [r["event"] for r in sent] == ["checkpoint", "skipped_step"]
    with open(path, "a") as fh:  # appended, the last line torn
        fh.write(json.dumps({"event": "eval", "step": 4}) + "\n" + '{"event": "chec')
    fwd._read()
    assert sent[-1] == {"event": "eval", "step": 4} and len(sent) == 3
    tmp = tmp_path / "m.tmp"  # rollback to step 2: a new file (new inode) keeping lines up to step 2
    tmp.write_text("".join(json.dumps(r) + "\n" for r in lines[:2]) + json.dumps({"event": "rollback", "step": 2}) + "\n"
                   + json.dumps({"event": "checkpoint", "step": 2, "path": "a"}) + "\n")
    tmp.replace(path)
    fwd._read()
    assert [r["event"] for r in sent[3:]] == ["rollback", "checkpoint"]  # the same text, lived again: new


@pytest.mark.parametrize("interval", [0.05])
def test_a_missing_file_is_not_an_error(tmp_path, interval):
    with MetricsEventForwarder(tmp_path / "none.jsonl", "r", interval=interval) as fwd:
        time.sleep(3 * interval)
    assert fwd.emitted == 0
