"""Task results and cache records live in the lake they describe: deleting the lake's data
makes the next run redo those stages, never report a cached result whose files are gone."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _states(flow_run_id) -> dict[str, str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {r.name.rsplit("-", 1)[0]: r.state.name for r in runs}


def test_cache_lives_in_the_lake_and_never_outlives_its_files(prefect_server, tmp_path):
    from flows.data import prepare_data

    lake = tmp_path / "lake"
    small = ["data.synthetic.num_captions=8", "data.synthetic.num_vqa=4", "run.seed=11"]
    first = prepare_data(overrides=small, lake=str(lake), return_state=True)
    assert first.is_completed(), first.message
    assert any((lake / ".prefect-results").iterdir())  # results and cache records: in the lake

    again = prepare_data(overrides=small, lake=str(lake), return_state=True)
    assert _states(again.state_details.flow_run_id) == {"download": "Cached", "convert": "Cached"}

    for d in ("raw", "curated", "cache"):
        shutil.rmtree(lake / d, ignore_errors=True)
    third = prepare_data(overrides=small, lake=str(lake), return_state=True)
    states = _states(third.state_details.flow_run_id)
    # data prepare fans out (two raw files): the files converted, merged, and the stage recorded anew
    assert states == {"download": "Completed", "convert-file": "Completed", "convert-merge": "Completed",
                      "convert": "Completed"}, states
    cur = third.result()
    assert Path(cur.root).is_dir() and all(Path(s).is_file() for s in cur.shards)

    # another lake: nothing of the first one's cache applies
    other = prepare_data(overrides=small, lake=str(tmp_path / "other"), return_state=True)
    assert set(_states(other.state_details.flow_run_id).values()) == {"Completed"}
