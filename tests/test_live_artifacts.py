"""What the UI shows while a stage works: the loss chart (its SVG, its log-interval refresh) and conversion progress.

The browser check against a real server is tests/test_ui_training.py; here the pieces.
"""

from __future__ import annotations

import base64
import json
import xml.etree.ElementTree as ET

import pytest

from openmind_core.charts import data_url, loss_svg


def test_the_loss_svg_is_an_image_the_ui_can_show():
    svg = loss_svg([(1, 6.1), (2, 5.0), (3, float("nan")), (4, 3.2)], [(4, 3.5)], title="run x: loss <so far>")
    root = ET.fromstring(svg)  # well-formed XML (the title is escaped)
    ns = "{http://www.w3.org/2000/svg}"
    [line] = root.iter(f"{ns}polyline")
    assert len(line.get("points").split()) == 3  # the NaN point is left out
    assert len(list(root.iter(f"{ns}circle"))) == 1  # one validation point
    url = data_url(svg)
    assert url.startswith("data:image/svg+xml;base64,")  # what the UI's markdown renderer lets through
    assert base64.b64decode(url.split(",", 1)[1]).decode() == svg
    assert "no step logged yet" in loss_svg([], [])


def test_the_chart_is_redrawn_at_each_log_interval(tmp_path, monkeypatch):
    from tasks import live

    metrics = tmp_path / "metrics.jsonl"
    chart = live.LossChart(metrics, "demo", log_every=5, total_steps=12)
    redrawn = []
    monkeypatch.setattr(chart, "refresh", lambda: redrawn.append(chart.markdown()))

    def write(steps, extra=()):
        lines = [json.dumps({"step": s, "loss": 6.0 - s / 4}) for s in steps] + [json.dumps(e) for e in extra]
        with open(metrics, "a") as fh:
            fh.write("".join(x + "\n" for x in lines))
        chart.observe(lines)

    assert "first point comes with the first logged step" in chart.markdown()
    write([1, 2, 3, 4])
    assert redrawn == []  # no interval reached
    write([5, 6, 7], [{"event": "eval", "step": 5, "val_loss": 5.1}])
    assert len(redrawn) == 1 and "**step 5/12**" in redrawn[-1] and "validation loss 5.1000 at step 5" in redrawn[-1]
    write([8, 9])
    assert len(redrawn) == 1
    write([10, 11, 12])  # interval 10 and the last step in one read: one redraw, up to the end
    assert len(redrawn) == 2 and "**step 12/12**" in redrawn[-1]


@pytest.mark.slow
def test_a_long_conversion_gets_a_progress_artifact_and_a_short_one_none(prefect_server):
    from prefect.client.orchestration import get_client

    from tasks import live

    from prefect import flow

    clock = [100.0]

    @flow
    def converting() -> None:  # as the convert task calls it, inside a run
        short = live.conversion_progress("test-short-progress", clock=lambda: clock[0])
        short(50, 100)
        short(100, 100)  # done within the delay: no artifact at all
        long = live.conversion_progress("test-long-progress", clock=lambda: clock[0])
        long(10, 100)
        clock[0] += 3  # past the 2-s delay: the artifact appears
        long(40, 100)
        clock[0] += 0.2
        long(50, 100)  # within a second of the last update: not sent
        clock[0] += 5
        long(100, 100)

    converting()
    with get_client(sync_client=True) as client:
        arts = {a.key: a for a in client.read_artifacts() if a.key and a.key.startswith("test-")}
    assert "test-short-progress" not in arts
    assert arts["test-long-progress"].type == "progress" and arts["test-long-progress"].data == 100.0


def test_the_conversion_reports_rows_as_it_goes(tmp_path):
    from openmind_core.data import convert, download
    from schemas.config import DataConfig

    cfg = DataConfig(synthetic={"num_captions": 40, "num_vqa": 20}, num_workers=1)
    seen = []
    convert(download(cfg, tmp_path), cfg, tmp_path, report=lambda done, total: seen.append((done, total)))
    assert seen and seen[-1] == (60, 60) and [d for d, _ in seen] == sorted(d for d, _ in seen)
