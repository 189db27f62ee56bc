"""A sampler whose position can be saved and restored exactly, and that can skip sample ids.

The order of an epoch is a seeded permutation of the sample ids that are not in the skip set
(``torch.Generator`` seeded with ``seed + epoch``), padded to a multiple of the world size and
sharded by rank like ``DistributedSampler``.  The trainer owns the position (epoch, samples this
rank already consumed in it): prefetching loader workers run ahead of the training loop, so the
sampler's own iteration count is not the position.  Resume = ``set_epoch(epoch, start=consumed)``.

Skipping: ids added to the skip set after a rollback were seen after the restored checkpoint, so
they lie at or after the restored position, and filtering them out leaves every earlier position
unchanged; the same (seed, epoch, skip set) always gives the same order.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
    def __init__(
        self,
        sample_ids: Sequence[str],
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        self.sample_ids = list(sample_ids)
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start = 0
        self.skip: set[str] = set()

    # -- position ------------------------------------------------------------------------

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch = int(epoch)
        self.start = int(start)

    def add_skip(self, ids: Iterable[str]) -> None:
        self.skip.update(ids)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "start": self.start, "seed": self.seed, "skip": sorted(self.skip)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"sampler seed changed: checkpoint {state['seed']}, now {self.seed}")
        self.epoch = int(state["epoch"])
        self.start = int(state["start"])
        self.skip = set(state.get("skip", []))

    # -- order ---------------------------------------------------------------------------

    def epoch_order(self, epoch: int | None = None) -> list[int]:
        """This rank's dataset indices for the epoch, from its beginning."""
        epoch = self.epoch if epoch is None else epoch
        keep = [i for i, sid in enumerate(self.sample_ids) if sid not in self.skip]
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + epoch)
            perm = torch.randperm(len(keep), generator=g).tolist()
            keep = [keep[j] for j in perm]
        if self.world_size > 1 and keep:
            pad = (-len(keep)) % self.world_size
            keep = keep + keep[:pad]
            keep = keep[self.rank :: self.world_size]
        return keep

    def epoch_length(self, epoch: int | None = None) -> int:
        return len(self.epoch_order(epoch))

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_order()[self.start :])

    def __len__(self) -> int:
        return max(self.epoch_length() - self.start, 0)
