"""``openmind run`` on the embedded default: wall time of each task and Prefect's overhead.

Runs the week1 flow in-process (Prefect's ephemeral server unless PREFECT_API_URL is set) on a
temporary lake, then reads each task run's start and end from the Prefect API.  Rows: one per
task (its wall time), and the whole flow against the sum of its task bodies: the ratio is what
orchestration (server calls, result persistence, artifacts, hashing) adds.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("WANDB_MODE", "disabled")

QUICK = ["data.synthetic.num_captions=48", "data.synthetic.num_vqa=24", "train.micro_batch_size=8",
         "train.save_steps=4", "train.eval_steps=4", "inference.max_samples=4", "inference.max_new_tokens=4"]


def run(quick: bool = False) -> list[dict]:
    import tasks  # noqa: F401
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.week1 import week1

    with tempfile.TemporaryDirectory() as lake:
        t0 = time.perf_counter()
        state = week1(overrides=QUICK if quick else [], run_name="bench", lake=lake, return_state=True)
        wall = time.perf_counter() - t0
        if not state.is_completed():
            raise RuntimeError(f"flow failed: {state.message}")
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    rows, body = [], 0.0
    for r in sorted(runs, key=lambda r: r.start_time or r.expected_start_time):
        if r.start_time and r.end_time:
            secs = (r.end_time - r.start_time).total_seconds()
            body += secs
            rows.append({"name": f"task {r.task_key.split('.')[-1].split('-')[0]}", "ours_s": secs, "baseline_s": None,
                         "ratio": None, "goal": "", "unit": "s", "notes": r.state_name})
    rows.append({"name": "flow wall vs sum of task bodies", "ours_s": wall, "baseline_s": body, "ratio": wall / body,
                 "goal": "report", "unit": "s", "notes": "ratio - 1 = Prefect overhead (incl. server start-up)"})
    return rows


if __name__ == "__main__":
    from bench import print_rows

    print_rows(run(quick="--quick" in sys.argv))
