"""Record the loss traces that tests/test_spike_traces.py replays the spike guard over.

Trains the default tiny VLM for real on clean data, as scripts/spike_grid.py does (the generated
default source, 1,358 training rows, and the real-shaped digit scans of tests/spike_data.py, 1,797
images), at micro-batch 1, 2, 4, 8 and 16, with the guard recording only (tests/spike_data.py's
``train_trace``: rollbacks off), and writes each run's step losses, exactly as metrics.jsonl holds
them, with the run's LR warm-up steps, to tests/data/spike_traces.json.  About 20 minutes on one
core; rerun it when the default model, data or trainer changes what a clean loss trace looks like:

    python scripts/record_spike_traces.py [--out tests/data/spike_traces.json] [--cells data:micro:epochs,...]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

OUT = ROOT / "tests" / "data" / "spike_traces.json"
# (data, micro-batch, epochs): every micro-batch size on both data sets, each run long enough (>= 400
# steps) that a rolling window has left the first fall of the loss behind
CELLS = [("generated", 1, 1), ("generated", 2, 2), ("generated", 4, 3), ("generated", 8, 5), ("generated", 16, 5),
         ("digits", 1, 1), ("digits", 2, 2), ("digits", 4, 3), ("digits", 8, 5), ("digits", 16, 5)]


def _write(out: Path, meta: dict, traces: list[dict]) -> None:
    """One trace a line: small diffs when a trace is re-recorded."""
    lines = ",\n".join("  " + json.dumps(t, separators=(",", ":")) for t in traces)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text('{"meta": ' + json.dumps(meta) + ',\n "traces": [\n' + lines + "\n]}\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--cells", default=None, help="data:micro:epochs,... instead of the default cells")
    ap.add_argument("--lake", default=None, help="work directory (default: a temporary one)")
    a = ap.parse_args(argv)
    import torch
    import transformers

    from spike_data import cell_trace

    torch.set_num_threads(1)
    cells = ([(d, int(m), int(e)) for d, m, e in (c.split(":") for c in a.cells.split(","))] if a.cells else CELLS)
    meta = {"script": "scripts/record_spike_traces.py",
            "command": "python scripts/record_spike_traces.py" + (f" --cells {a.cells}" if a.cells else ""),
            "created": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "note": "step losses of metrics.jsonl (guard recording only); warmup_steps as the trainer computes them"}
    traces: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(a.lake or tmp)
        prep = {}
        for data, micro, epochs in cells:
            t0 = time.time()
            _, curated, losses, warm, alarms = cell_trace(base, prep, data, micro, epochs)
            traces.append({"data": data, "micro_batch_size": micro, "epochs": epochs, "warmup_steps": warm,
                           "steps": len(losses), "rows": curated.splits.get("train"), "losses": losses})
            print(f"{data} micro {micro} x{epochs}: {len(losses)} steps, {len(alarms)} alarm(s) with the default "
                  f"guard, {time.time() - t0:.0f} s", flush=True)
            _write(a.out, meta, traces)  # as it goes: a stopped recording keeps what it has
    print(f"wrote {a.out} ({a.out.stat().st_size / 1024:.0f} KiB, {len(traces)} traces)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
