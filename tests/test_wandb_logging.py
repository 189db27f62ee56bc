"""wandb: offline by default (a run directory under the run), disabled by config or $WANDB_MODE.

tests/conftest.py sets ``WANDB_MODE=disabled`` for the session; the tests here take it away where
wandb must run.  A real training run with ``train.wandb.mode=offline`` writes its wandb run under
``<run>/wandb/``: the ``.wandb`` file (read here record by record with wandb's own protobuf
messages) holds every ``train/*`` line the trainer logged, each ``val/loss``, and a summary equal
to the run's last values in metrics.jsonl.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from openmind_core.training.metrics import WandbLogger, read_metrics
from schemas import load_config


def wandb_records(path: Path) -> list:
    """The records of a ``.wandb`` file (a LevelDB-style log: a 7-byte file header, 32 KiB blocks,
    each record a 7-byte header (crc32, length, type: full / first / middle / last) and its bytes)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:8]
    block, pos, frag, out = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:  # zero padding to the end of the block
            pos += left
            continue
        frag += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last fragment of one
            rec = pb.Record()
            rec.ParseFromString(frag)
            out.append(rec)
            frag = b""
    return out


def _items(items) -> dict:
    return {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items}


def test_offline_run_is_written_under_the_run_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbLogger("offline", "openmind-test", "unit", tmp_path, config={"lr": 0.1})
    assert logger.run is not None
    logger.log({"loss": 1.0}, step=1)
    logger.finish()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].rglob("*.wandb"))


def test_disabled_never_starts_wandb(tmp_path, monkeypatch):
    assert WandbLogger("disabled", "p", None, tmp_path).run is None
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert WandbLogger("offline", "p", None, tmp_path).run is None
    assert not (tmp_path / "wandb").exists()


def test_a_real_training_run_logs_to_an_offline_wandb_run(tmp_path, monkeypatch):
    """The trainer's wandb callback in a real run of the default tiny VLM, as `openmind run` starts it
    (the CLI sets WANDB_SILENT and WANDB_CONSOLE=off): train/* every log_every steps, val/loss per evaluation."""
    from openmind_core.app.tokenizer import prepare_tokenizer
    from openmind_core.app.train import train_from_config
    from openmind_core.data import convert, download

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    cfg = load_config(overrides=["data.synthetic.num_captions=24", "data.synthetic.num_vqa=12",
                                 "train.micro_batch_size=8", "train.epochs=3", "train.max_steps=6", "train.log_every=2",
                                 "train.eval_steps=3", "train.save_steps=100", "train.wandb.mode=offline",
                                 "train.wandb.name=wandb-test"])
    assert cfg.train.wandb.project == "openmind"
    lake, run_dir = tmp_path / "lake", tmp_path / "lake" / "runs" / "wb"
    curated = convert(download(cfg.data, lake), cfg.data, lake)
    tok = prepare_tokenizer(cfg, curated, run_dir)
    result = train_from_config(cfg, curated, run_dir, tok.path)
    assert result.steps == 6

    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((run_dir / "wandb").iterdir())
    [log] = runs[0].glob("run-*.wandb")
    records = wandb_records(log)
    by_kind: dict[str, list] = {}
    for r in records:
        by_kind.setdefault(r.WhichOneof("record_type"), []).append(r)
    [run] = by_kind["run"]
    assert run.run.project == "openmind" and run.run.display_name == "wandb-test" and not run.run.entity
    assert "exit" in by_kind and by_kind["exit"][0].exit.exit_code == 0  # finished, not left open

    steps = {r["step"]: r for r in read_metrics(run_dir / "metrics.jsonl") if "event" not in r}
    evals = [r for r in read_metrics(run_dir / "metrics.jsonl") if r.get("event") == "eval"]
    history = [_items(r.history.item) for r in by_kind["history"]]
    train = {h["_step"]: h for h in history if "train/loss" in h}
    assert sorted(train) == [2, 4, 6]  # every log_every steps
    for step, h in train.items():
        assert h["train/loss"] == steps[step]["loss"] and h["train/lr"] == steps[step]["lr"]
        assert h["train/grad_norm"] == steps[step]["grad_norm"] and h["train/epoch"] == steps[step]["epoch"]
    vals = {h["_step"]: h["val/loss"] for h in history if "val/loss" in h}
    assert [e["step"] for e in evals] == sorted(vals) == [3, 6]  # every eval_steps
    assert all(vals[e["step"]] == e["val_loss"] for e in evals)
    # the run's summary: the last value of each key
    summary: dict = {}
    for r in by_kind["summary"]:
        summary.update(_items(r.summary.update))
    assert summary["train/loss"] == steps[6]["loss"] and summary["val/loss"] == evals[-1]["val_loss"]
    assert summary["_step"] == 6
