"""Memory a checkpoint write adds: streamed to disk (``CheckpointManager.save``) against serialised in RAM first.

A checkpoint of 200 MB of weights and 40 MB of optimizer state (``--quick``: a tenth), written in a
fresh interpreter each time: the peak RSS (Linux ``VmHWM``) the write adds above the process once its
tensors exist.  Ours streams each tensor into the file (safetensors ``save_file``, ``torch.save`` into
the open file); the baseline is what the checkpoints did before, ``safetensors.torch.save`` and
``torch.save`` into bytes, then the bytes written, which costs the file's size again.  Goal: the write
adds at most a sixth of the file (40 MB of 240).  tests/test_checkpoint.py checks the behaviour (the
files are streamed, nothing is serialised in memory), not this figure.

    python bench/bench_checkpoint.py [--quick]
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_CHILD = r"""
import io, json, sys, tempfile
from pathlib import Path

import torch


def hwm():
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmHWM"))


how, scale = sys.argv[1], float(sys.argv[2])
n = int(5_000_000 * scale)
weights = {f"w{i}": torch.full((n,), float(i)) for i in range(10)}  # written: resident
optim = {"state": {0: {"exp_avg": torch.full((2 * n,), 2.0), "step": torch.tensor(1.0)}},
         "param_groups": [{"params": [0]}]}
if how == "ours":
    from openmind_core.training import CheckpointManager
else:
    import safetensors.torch
with tempfile.TemporaryDirectory() as d:
    before = hwm()
    if how == "ours":
        CheckpointManager(d).save(1, weights, {"optimizer.pt": optim}, {"trainer_state.json": {}})
    else:
        blob = safetensors.torch.save(weights)
        buf = io.BytesIO()
        torch.save(optim, buf)
        (Path(d) / "model.safetensors").write_bytes(blob)
        (Path(d) / "optimizer.pt").write_bytes(buf.getvalue())
    added = hwm() - before
    size = sum(p.stat().st_size for p in Path(d).rglob("*") if p.is_file())
print(json.dumps({"added": added, "file": size}))
"""


def measure_one(how: str, quick: bool) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD, how, "0.1" if quick else "1"], cwd=ROOT, capture_output=True,
                         text=True, timeout=600, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(quick: bool = False) -> list[dict]:
    ours, base = measure_one("ours", quick), measure_one("in-RAM", quick)
    mb = 1e6
    return [{"name": f"checkpoint write of {ours['file'] / mb:.0f} MB: peak RSS added (streamed vs serialised in RAM)",
             "ours_s": ours["added"] / mb, "baseline_s": base["added"] / mb,
             "ratio": ours["added"] / max(base["added"], 1), "goal": "ours <= file / 6", "unit": "MB",
             "notes": f"file {ours['file'] / mb:.0f} MB; ours / file = {ours['added'] / ours['file']:.3f}"}]


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    from bench import print_rows

    print_rows(run(quick="--quick" in sys.argv))
