"""The default spike guard over loss traces of real tiny trainings.

Real trainings of the default tiny VLM on clean data, generated in the test: the default synthetic
source at micro-batch 1 (the noisiest), and real-shaped digit scans (tests/spike_data.py) at 16
(the default) over 5 epochs (where an earlier, stricter rule rolled back three times).  The default detector, replayed over each trace as the trainer runs it,
raises no alarm (an alarm is where a live run would roll back).  The same traces with a poisoned step or a divergence spliced in are caught.  The full grid
(micro-batch 1, 2, 4, 8, 16 x 1-5 epochs on 1,500 / 1,797 rows) is scripts/spike_grid.py.
"""

from __future__ import annotations

import pytest

from openmind_core.training.guard import SpikeDetector, replay
from schemas.config import SpikeConfig
from spike_data import digits_jsonl, prepared, train_trace


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("spike_traces")
    cap, vqa = digits_jsonl(root / "digits_src", n=200)
    return root, {
        "generated": prepared(root / "gen", ["data.synthetic.num_captions=110", "data.synthetic.num_vqa=50"]),
        "digits": prepared(root / "dig", ["data.source=jsonl", f"data.jsonl.captions={cap}", f"data.jsonl.vqa={vqa}"]),
    }


def default_detector(warm: int) -> SpikeDetector:
    return SpikeDetector.from_config(SpikeConfig(), start_step=warm)


@pytest.mark.parametrize("data,micro,epochs", [("generated", 1, 1), ("digits", 16, 5)])
def test_no_false_alarm_on_clean_real_trainings_and_real_spikes_caught(sources, data, micro, epochs):
    root, prep = sources
    cfg, curated, tok = prep[data]
    losses, warm, res = train_trace(cfg, curated, tok, root / f"run-{data}-{micro}-{epochs}",
                                    [f"train.micro_batch_size={micro}", f"train.epochs={epochs}"])
    assert res.rollbacks == [] and len(losses) == res.steps > 30
    assert replay(losses, default_detector(warm)) == [], f"false alarm on clean {data} data at micro-batch {micro}"
    k = len(losses) - 12
    poisoned = losses[:k] + [losses[k] * 100] + losses[k + 1:]
    assert [(s, o) for s, o, _ in replay(poisoned, default_detector(warm))] == [(k + 1, k + 1)]
    if len(losses) > 100:  # a short run's window still holds the early fall: its deviation is wide
        diverged = losses[:k] + [losses[k - 1] + 8.0 + i for i in range(12)]  # the loss leaves for chance level
        spikes = replay(diverged, default_detector(warm))
        assert spikes and spikes[0][1] == k + 1 and spikes[0][0] == k + SpikeConfig().patience
