"""Training with ``train.nproc > 1``: the task launches torchrun, streams its output, maps its exit."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from schemas import load_config

pytestmark = pytest.mark.slow

TINY = ["data.synthetic.num_captions=32", "data.synthetic.num_vqa=16", "train.micro_batch_size=4",
        "train.max_steps=4", "train.save_steps=2", "train.eval_steps=2", "train.nproc=2"]


def _assert_final_holds_the_last_step(result) -> None:
    """final/ loads through from_pretrained and holds the newest checkpoint's (the last step's) weights."""
    from safetensors.torch import load_file

    from openmind_core.model import MultimodalReasoningModel

    newest = max(result.checkpoints)
    assert newest.endswith(f"step-{result.steps:08d}"), result.checkpoints
    trained = load_file(str(Path(newest) / "model.safetensors"))
    loaded = MultimodalReasoningModel.from_pretrained(result.final_dir).state_dict()
    assert trained and set(trained) <= set(loaded)
    for k, v in trained.items():
        assert torch.equal(loaded[k], v), k


class _Lines(logging.Logger):
    def __init__(self):
        super().__init__("collect")
        self.lines: list[str] = []

    def _log(self, level, msg, args, *a, **k):  # noqa: D401 - a logger that keeps what it is given
        self.lines.append(msg % args if args else str(msg))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from openmind_core.data import convert, download
    from openmind_core.app.tokenizer import prepare_tokenizer

    cfg = load_config(overrides=TINY)
    lake = tmp_path_factory.mktemp("lake")
    curated = convert(download(cfg.data, lake), cfg.data, lake)
    run_dir = lake / "runs" / "ddp"
    tokenizer = prepare_tokenizer(cfg, curated, run_dir)
    return cfg, curated, tokenizer, run_dir


def test_two_processes_train_and_stream_their_output(prepared):
    from tasks.distributed import train_with_torchrun

    cfg, curated, tokenizer, run_dir = prepared
    log = _Lines()
    result = train_with_torchrun(cfg, curated, tokenizer, str(run_dir), log)
    assert result.steps == 4 and result.last_loss is not None
    assert any("rank1" in line for line in log.lines), log.lines[-20:]  # both ranks' output reached the log
    _assert_final_holds_the_last_step(result)
    # a rerun resumes from the final checkpoint instead of training again
    again = train_with_torchrun(cfg, curated, tokenizer, str(run_dir), _Lines())
    assert again.resumed_from_step == 4 and again.steps == 4


def test_a_failing_torchrun_fails_the_task_with_its_exit_code(prepared, tmp_path):
    from tasks.distributed import train_with_torchrun

    cfg, curated, tokenizer, _ = prepared
    broken = tokenizer.model_copy(update={"path": str(tmp_path / "no-tokenizer")})
    log = _Lines()
    with pytest.raises(RuntimeError, match="torchrun exited with code"):
        train_with_torchrun(cfg, curated, broken, str(tmp_path / "run"), log)
    assert any("no-tokenizer" in line or "Error" in line for line in log.lines)


def test_fsdp_trains_the_real_model_and_saves_a_loadable_final(prepared, tmp_path):
    """train.strategy=fsdp on the VLM itself: it embeds tokens outside the LM's forward and ties weights."""
    from tasks.distributed import train_with_torchrun

    cfg, curated, tokenizer, _ = prepared
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"strategy": "fsdp"})})
    result = train_with_torchrun(cfg, curated, tokenizer, str(tmp_path / "fsdp"), _Lines())
    assert result.steps == 4 and result.reload_equal
    _assert_final_holds_the_last_step(result)


def test_a_sigterm_to_the_caller_stops_every_rank_at_one_step_boundary(prepared, tmp_path, caplog):
    """The CLI's SIGTERM is forwarded to torchrun, which passes it to its workers; they agree on one step
    boundary, stop there and exit; the caller raises KeyboardInterrupt (exit 143 under the CLI)."""
    import json
    import os
    import signal
    import threading
    import time

    from openmind_core import interrupt
    from openmind_core.training.launch import _descendants
    from tasks.distributed import train_with_torchrun

    cfg, curated, tokenizer, _ = prepared
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_steps": 2000, "epochs": 400, "save_steps": 2})})
    run_dir = tmp_path / "stopped"
    run_dir.mkdir()

    def steps() -> list[int]:
        try:
            return [r["step"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
                    if "event" not in r]
        except (OSError, ValueError):
            return []

    def send() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and len(steps()) < 3:
            time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGTERM)

    interrupt.install()
    log = _Lines()
    caplog.set_level(logging.INFO, logger="openmind_core.training.launch")
    threading.Thread(target=send, daemon=True).start()
    try:
        with pytest.raises(KeyboardInterrupt):
            train_with_torchrun(cfg, curated, tokenizer, str(run_dir), log)
        assert interrupt.requested() == signal.SIGTERM
    finally:
        interrupt.reset()
        interrupt._state.installed = False
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    assert "forwarding SIGTERM to torchrun" in caplog.text
    stopped = [line for line in log.lines if "stopped by SIGTERM at a step boundary" in line]
    assert {"rank0", "rank1"} <= {w for line in stopped for w in line.split()}, "\n".join(log.lines[-80:])
    done = steps()
    assert 3 <= len(done) < 2000 and done == list(range(1, len(done) + 1))  # stopped early, no step twice
    assert not [p for p in _descendants(os.getpid()) if "train_entry" in open(f"/proc/{p}/cmdline").read()]
