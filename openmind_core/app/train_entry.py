"""``python -m openmind_core.app.train_entry``: one training process, as torchrun starts it.

The training task writes the resolved config and the curated artifact to the run directory and
launches ``torchrun --nproc_per_node N -m openmind_core.app.train_entry ...``; each rank builds the
same model and data, the trainer wraps the model in DDP, and rank 0 writes the TrainingResult JSON.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
from pathlib import Path

import torch
import torch.distributed as dist

from openmind_core import interrupt
from openmind_core.io import atomic_write_text
from openmind_core.app.train import train_from_config
from schemas import CuratedDataset, load_config


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="openmind_core.app.train_entry")
    p.add_argument("--config", required=True)
    p.add_argument("--curated", required=True, help="CuratedDataset JSON")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--tokenizer-dir", required=True)
    p.add_argument("--result", required=True, help="where rank 0 writes the TrainingResult JSON")
    a = p.parse_args(argv)
    interrupt.install()  # torchrun forwards a stop as SIGTERM: stop at a step boundary, as one process does
    logging.basicConfig(level=logging.INFO, format="%(asctime)s rank%(rank)s %(name)s %(message)s")
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    old_factory = logging.getLogRecordFactory()

    def factory(*args, **kwargs):
        rec = old_factory(*args, **kwargs)
        rec.rank = rank
        return rec

    logging.setLogRecordFactory(factory)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend)
    try:
        cfg = load_config(a.config)
        curated = CuratedDataset.model_validate_json(Path(a.curated).read_text())
        result = train_from_config(cfg, curated, a.run_dir, a.tokenizer_dir, rank=rank, world_size=world)
        if rank == 0:
            atomic_write_text(a.result, result.model_dump_json(indent=2))
    except KeyboardInterrupt:  # the forwarded stop: every rank ended at the same step boundary
        logging.getLogger("openmind_core.app.train_entry").warning(
            "stopped by %s at a step boundary", signal.Signals(interrupt.requested() or signal.SIGINT).name)
        return interrupt.exit_code()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
