"""The default spike guard over loss traces of real tiny trainings, replayed as the trainer runs it.

tests/data/spike_traces.json holds the step losses of 10 real trainings of the default tiny VLM on
clean data, recorded once by ``python scripts/record_spike_traces.py`` (the command that wrote the
file, with the versions it ran on, is in its ``meta``): the generated default source (1,358
training rows) and real-shaped digit scans (tests/spike_data.py, 1,797 images), each at micro-batch
1, 2, 4, 8 and 16 (425 to 1,622 steps), the guard recording only.  Replaying the default detector
(``SpikeDetector.from_config(SpikeConfig())`` from the run's LR warm-up on, as
``ProductionTrainer`` builds it) over each trace raises no alarm: an alarm is where a live run would
have rolled back.  The same traces with a poisoned step or a divergence spliced in, mid-run and near
the end, are caught where they start.  The full grid (50 trainings, 1-5 epochs) is
scripts/spike_grid.py, run by hand; this replays real traces in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from openmind_core.training.guard import SpikeDetector, replay
from schemas.config import SpikeConfig

DATA = Path(__file__).with_name("data") / "spike_traces.json"
RECORDED = json.loads(DATA.read_text())
TRACES = {f"{t['data']}-mb{t['micro_batch_size']}-x{t['epochs']}": t for t in RECORDED["traces"]}


def default_detector(trace: dict) -> SpikeDetector:
    return SpikeDetector.from_config(SpikeConfig(), start_step=trace["warmup_steps"])


def test_the_recording_covers_both_data_sets_at_every_micro_batch_size():
    assert RECORDED["meta"]["command"].startswith("python scripts/record_spike_traces.py")
    cells = {(t["data"], t["micro_batch_size"]) for t in RECORDED["traces"]}
    assert cells == {(d, m) for d in ("generated", "digits") for m in (1, 2, 4, 8, 16)}
    for t in RECORDED["traces"]:
        assert len(t["losses"]) == t["steps"] >= 400 and 0 < t["warmup_steps"] < t["steps"] // 10
        assert t["losses"][-1] < t["losses"][0] / 2  # they trained: the loss fell


@pytest.mark.parametrize("name", list(TRACES))
def test_no_false_alarm_on_a_clean_real_training_and_real_spikes_caught(name):
    trace = TRACES[name]
    losses = trace["losses"]
    assert replay(losses, default_detector(trace)) == [], f"false alarm on clean {name}"
    cfg = SpikeConfig()
    for k in (len(losses) // 2, len(losses) - 12):
        # one poisoned step (a bad sample): a spike at once, by the factor rule
        poisoned = losses[:k] + [losses[k] * 100] + losses[k + 1:]
        assert [(s, o) for s, o, _ in replay(poisoned, default_detector(trace))] == [(k + 1, k + 1)], (name, k)
        # a divergence: the loss leaves for chance level and stays there.  Every step of it is bad (far
        # above the rolling mean); the spike comes after `patience` of them, or sooner, once one of them is
        # above `factor` x the window's largest loss; its onset is the first
        diverged = losses[:k] + [losses[k - 1] + 8.0 + i for i in range(12)]
        before = default_detector(trace)
        assert replay(losses[:k], before) == []
        top = max(before.history)  # the window of good losses the detector holds at step k
        first_huge = next((j for j in range(1, 13) if diverged[k + j - 1] > cfg.factor * top), 13)
        spikes = replay(diverged, default_detector(trace))
        assert spikes and spikes[0][:2] == (k + min(cfg.patience, first_huge), k + 1), (name, k, spikes[:2])
