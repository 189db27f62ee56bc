"""The spike guard's false-alarm grid, run once by hand and reported in README.

Trains the default tiny VLM for real on clean data (the generated default source, and the
real-shaped digit scans of tests/spike_data.py) at each micro-batch size and epoch count, with the
guard recording only, then replays the default detector (``SpikeConfig()``) over each loss trace:
the first alarm a replay finds is where a live run would have rolled back, so "0 alarms" is "0
rollbacks".  Too slow for the test suite (tests/test_spike_traces.py replays 10 real traces that
scripts/record_spike_traces.py recorded); the last full grid (50 cells, about 70 min on one core) is
in scripts/spike_grid.json.

    python scripts/spike_grid.py [--data generated,digits] [--micro 1,2,4,8,16] [--epochs 1,2,3,4,5]
                                 [--out spike_grid.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="generated,digits")
    ap.add_argument("--micro", default="1,2,4,8,16")
    ap.add_argument("--epochs", default="1,2,3,4,5")
    ap.add_argument("--cells", default=None, help="data:micro:epochs,... instead of the full grid, in this order")
    ap.add_argument("--out", default=None)
    ap.add_argument("--lake", default=None, help="reuse a lake directory (default: a temporary one)")
    a = ap.parse_args(argv)
    import torch

    from spike_data import cell_trace

    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(a.lake or tmp)
        if a.cells:
            cells = [(d, int(m), int(e)) for d, m, e in (c.split(":") for c in a.cells.split(","))]
        else:
            cells = [(d, int(m), int(e)) for d in a.data.split(",") for m in a.micro.split(",")
                     for e in a.epochs.split(",")]
        prep = {}
        for data, micro, epochs in cells:
            t0 = time.time()
            _, _, losses, warm, alarms = cell_trace(base, prep, data, micro, epochs)
            old = sum(losses[i] > 2 * sum(losses[i - 10:i]) / 10 for i in range(10, len(losses)))
            row = {"data": data, "micro_batch_size": micro, "epochs": epochs, "steps": len(losses),
                   "alarms": len(alarms), "first": alarms[0] if alarms else None, "old_rule_alarms": old,
                   "loss_first": losses[0], "loss_last": losses[-1], "seconds": round(time.time() - t0, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
            import shutil

            shutil.rmtree(base / f"run-{data}-{micro}-{epochs}", ignore_errors=True)
    total = sum(r["alarms"] for r in rows)
    print(f"{len(rows)} trainings, {sum(r['steps'] for r in rows)} steps, {total} alarms (rollbacks)", flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=1))
    return 0 if total == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
