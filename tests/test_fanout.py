"""Fan-out conversion: one job per raw file, merged into the same bytes a serial conversion writes.

Three local ``data.hf`` entries whose rows overlap (a row of the first repeated in the second, and
repeated again inside the second), with a bad image and a within-file duplicate, are converted
serially (``convert``) and fanned out (in this process, then as Prefect tasks on a 2-worker Dask
``LocalCluster``): the curated shards, manifest and quarantine must be byte-identical.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from openmind_core.data import convert, download
from openmind_core.data import parallel_convert as fanout
from schemas import DataConfig


def _png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (12, 10), color).save(buf, format="PNG")
    return buf.getvalue()


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def overlapping(tmp_path_factory):
    import datasets

    src = tmp_path_factory.mktemp("hf")
    feats = datasets.Features({"img": datasets.Image(), "sentence": datasets.Value("string")})

    def table(name, rows):
        ds = datasets.Dataset.from_dict({"img": [{"bytes": b, "path": None} for b, _ in rows],
                                         "sentence": [t for _, t in rows]}, features=feats)
        ds.to_parquet(str(src / f"{name}.parquet"))
        return {"name": str(src / f"{name}.parquet"), "split": "train", "columns": {"image": "img", "text": "sentence"}}

    red, green, blue = _png((200, 0, 0)), _png((0, 200, 0)), _png((0, 0, 200))
    entries = [
        table("a", [(red, "a red square"), (green, "a green square"), (red, "a red square")]),  # dup in a
        # b: a's first row again (a cross-file duplicate), then again inside b, a bad image, a new row
        table("b", [(blue, "a blue square"), (red, "a red square"), (b"not an image", "broken"),
                    (red, "a red square"), (green, "green again")]),
        table("c", [(_png((9, 9, 9)), f"grey {i}") for i in range(4)] + [(blue, "a blue square")]),
    ]
    cfg = DataConfig(source="hf", hf=entries, num_workers=1, val_fraction=0.3)
    lake = tmp_path_factory.mktemp("lake")
    raw = download(cfg, lake)
    serial = tmp_path_factory.mktemp("serial")
    cur = convert(raw, cfg, serial)
    return cfg, raw, serial, cur


def test_fanned_out_conversion_has_the_serial_bytes(overlapping, tmp_path):
    cfg, raw, serial, cur = overlapping
    _, n, _ = fanout.plan(raw, cfg, tmp_path)
    assert n == 3 and cur.quarantine_by_reason["duplicate"] == 4 and cur.rows_quarantined == 5
    out = fanout.convert_serially(raw, cfg, tmp_path)
    assert out.version == cur.version and out.rows_kept == cur.rows_kept and not out.reused
    assert files_of(tmp_path / "curated") == files_of(serial / "curated")
    assert files_of(tmp_path / "quarantine") == files_of(serial / "quarantine")
    q = (tmp_path / out.quarantine_path.split(str(tmp_path) + "/")[-1]).read_text()
    assert "same content as" in q and "broken" in q
    assert not list((tmp_path / "curated").glob(".fanout-*"))  # the parts are cleaned up
    assert fanout.convert_serially(raw, cfg, tmp_path).reused


@pytest.mark.slow
def test_a_parameter_not_the_decorator_chooses_dask(overlapping, tmp_path, prefect_server):
    """What ``--task-runner dask`` and a deployment's ``task_runner: dask`` do: the flow keeps its thread pool,
    the per-file tasks run in a Dask cluster's worker processes all the same, and the result (shards and
    quarantine) is the serial one, byte for byte."""
    import os

    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    from tasks.fanout import fan_out_convert

    cfg, raw, serial, cur = overlapping

    @flow
    def fan() -> object:
        return fan_out_convert(raw, cfg, str(tmp_path), runner="dask")

    state = fan(return_state=True)
    out = state.result()
    assert out is not None and out.version == cur.version
    assert files_of(tmp_path / "curated") == files_of(serial / "curated")
    assert files_of(tmp_path / "quarantine") == files_of(serial / "quarantine")
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    pids = {int(m.message.split("(process ")[1].split()[0]) for m in logs if "rows read" in m.message}
    assert len(pids) >= 1 and os.getpid() not in pids, [m.message for m in logs]


def test_cli_task_runner_options():
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    from flows.commands import task_runner_from_args
    from flows.parser import build_parser

    parse = lambda *a: build_parser().parse_args(["run", *a])  # noqa: E731
    assert task_runner_from_args(parse()) is None  # the flow's own thread pool
    local = task_runner_from_args(parse("--task-runner", "dask"))
    assert isinstance(local, DaskTaskRunner) and local.cluster_kwargs["n_workers"] >= 1
    remote = task_runner_from_args(parse("--dask-address", "tcp://10.0.0.5:8786"))
    assert isinstance(remote, DaskTaskRunner) and remote.address == "tcp://10.0.0.5:8786"
    from tasks.runners import task_runner

    assert isinstance(task_runner("thread"), ThreadPoolTaskRunner)
    with pytest.raises(ValueError, match="choose one of"):
        task_runner("ray")
