"""The names inside a run directory (``<lake>/runs/<run>/``), for the layers that read one another's files.

The app writes ``config.yaml``, ``inputs.json`` and ``tokenizer/``; the trainer writes
``checkpoints/step-NNNNNNNN/``; the resume check before a run reads them all.  A leaf module (no
torch), so that check stays light.
"""

from __future__ import annotations

import re
from pathlib import Path

CONFIG_FILE = "config.yaml"  # the resolved config of the run's last start
INPUTS_FILE = "inputs.json"  # the local inputs' stamps (size, mtime) when the run first started
TOKENIZER_DIR = "tokenizer"  # the tokenizer every stage uses
TEMPLATE_DATE_FILE = "template_date.txt"  # in tokenizer/: the date its chat template was pinned to (if it reads one)
CHECKPOINTS_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"  # the trainer's step lines and events
AUTO_RESUMES_FILE = "auto_resumes.jsonl"  # the run's starts: by hand, or automatic resumes of a crash
LOCK_FILE = ".lock"  # held (flock) by the process working in the run directory
FINGERPRINT_FILE = "fingerprint.json"  # in every checkpoint: what must not change across a resume
STEP_RE = re.compile(r"^step-(\d{8})$")


def step_dirname(step: int) -> str:
    return f"step-{step:08d}"


def checkpoint_dirs(run_dir: str | Path) -> list[Path]:
    """The run's committed checkpoint directories, newest first (not validated: the trainer does that)."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if STEP_RE.match(p.name) and p.is_dir()), reverse=True)
