"""DDP under torchrun (gloo, 2 CPU ranks) against one process with the same global batch; resume
after a SIGKILL under DDP; FSDP2 ``fully_shard`` of the LM against an unsharded replica."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from openmind_core.training import run_torchrun
from openmind_core.training.metrics import read_metrics
from trainer_helpers import make_cfg, run_toy

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def _torchrun(run_dir: Path, extra: list[str], env: dict[str, str] | None = None) -> tuple[int, list[str]]:
    lines: list[str] = []
    pp = os.pathsep.join([str(TESTS), str(ROOT), os.environ.get("PYTHONPATH", "")])
    rc = run_torchrun("trainer_helpers", ["--run-dir", str(run_dir), "--dropout", "0", "--set",
                                          "micro_batch_size=4", "--set", "grad_accum=1", *extra],
                      nproc=2, on_line=lines.append, timeout_s=240,
                      env={"PYTHONPATH": pp, "OMP_NUM_THREADS": "1", **(env or {})})
    return rc, lines


def _losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "event" not in r]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    d = tmp_path_factory.mktemp("single")
    run_toy(d, make_cfg(micro_batch_size=4, grad_accum=2), dropout=0.0)  # global batch 8 in one process
    return d


def test_ddp_two_ranks_matches_one_process_and_fsdp2(tmp_path, single):
    rc, lines = _torchrun(tmp_path, ["--fsdp-check"])
    assert rc == 0, "\n".join(lines[-40:])
    ref, got = _losses(single), _losses(tmp_path)
    assert len(got) == len(ref) == 12
    assert got == pytest.approx(ref, rel=1e-5, abs=1e-6)
    ck = sorted((tmp_path / "checkpoints").glob("step-*"))[-1]
    assert (ck / "rank-0.pt").exists() and (ck / "rank-1.pt").exists()  # per-rank RNG + sample log
    assert sum(ln.count("FSDP_OK") for ln in lines) == 2, "\n".join(lines[-20:])  # ranks may share a line


def test_ddp_resume_after_sigkill(tmp_path, single):
    env = {"OPENMIND_TEST_KILL_AT": "step:6", "OPENMIND_TEST_KILL_MARKERS": str(tmp_path / "_kills")}
    rc, lines = _torchrun(tmp_path, [], env)
    assert rc != 0 and (tmp_path / "_kills" / "step-6").exists()
    rc, lines = _torchrun(tmp_path, [], env)
    assert rc == 0, "\n".join(lines[-40:])
    got = _losses(tmp_path)
    assert got == pytest.approx(_losses(single), rel=1e-5, abs=1e-6)  # same trajectory, no duplicate lines

    events = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r.get("event") == "resume"]
    assert events and events[0]["step"] == 4
