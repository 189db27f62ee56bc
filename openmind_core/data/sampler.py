"""A sampler whose position can be saved and restored exactly, and that can skip sample ids.

The order of an epoch is a seeded permutation of ALL sample ids (``torch.Generator`` seeded with
``seed + epoch``) from which the skipped ids are then filtered out, padded to a multiple of the
world size and sharded by rank like ``DistributedSampler``.  Permuting first and filtering second
means that skipping an id never moves the ids before it: a position saved before a skip stays
valid after it.  The trainer owns the position (epoch, samples this rank already consumed in it):
prefetching loader workers run ahead of the training loop, so the sampler's own iteration count
is not the position.  Resume = ``set_epoch(epoch, start=consumed)``.

``offset`` (normally 0): samples at the head of the epoch's global order that were consumed before
the current world size took over (a resume with a different number of ranks); the ranks shard the
rest of the epoch, and ``start`` counts this rank's samples from there.  A job that consumed
``c`` samples per rank on ``W`` ranks after ``offset`` ``o`` has consumed the global prefix
``o + c * W`` (``global_position``); resuming that with any number of ranks at that offset sees
every remaining sample of the epoch once (padded to a multiple of the world size at the end, like
``DistributedSampler``).

Skipping: each skipped id carries the first epoch it applies to.  ``add_skip(ids, epoch, start)``
(what a rollback calls) makes an id skipped from ``epoch`` on when it still lies at or after the
restored position in that epoch's order, and from ``epoch + 1`` on when it was already consumed
before the position (it was seen again after an epoch boundary).  So the prefix of the restored
epoch never changes and a skipped id is never drawn again.  The same (seed, epoch, skip set)
always gives the same order.

Memory: the ids are kept as one Arrow string column (a ``VLMDataset``'s memory-mapped column is
used as it is), orders are numpy arrays, skips are applied with Arrow's ``is_in``, and iteration
yields from the array: nothing per sample on the Python heap at a million rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch.utils.data import Sampler


def _id_column(sample_ids) -> pa.ChunkedArray:
    column = getattr(sample_ids, "column", None)  # VLMDataset.sample_ids: its mapped Arrow column
    if isinstance(column, pa.ChunkedArray):
        return column
    if isinstance(sample_ids, pa.ChunkedArray):
        return sample_ids
    if isinstance(sample_ids, pa.Array):
        return pa.chunked_array([sample_ids])
    return pa.chunked_array([pa.array([str(s) for s in sample_ids], pa.string())], pa.string())


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
        self.sample_ids = _id_column(sample_ids)
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start = 0
        self.offset = 0
        self.skip: dict[str, int] = {}  # sample id -> first epoch it is skipped in

    # -- position ------------------------------------------------------------------------

    def set_epoch(self, epoch: int, start: int = 0, offset: int = 0) -> None:
        self.epoch = int(epoch)
        self.start = int(start)
        self.offset = int(offset)

    def global_position(self, start: int | None = None, offset: int | None = None,
                        world_size: int | None = None, epoch: int | None = None) -> int:
        """Samples of the epoch's global order the whole job consumed when each of its ``world_size``
        ranks (default: this sampler's) had consumed ``start`` after ``offset``; capped at the epoch's
        length (its last batch may be padded)."""
        start = self.start if start is None else int(start)
        offset = self.offset if offset is None else int(offset)
        world = self.world_size if world_size is None else int(world_size)
        return min(offset + start * world, len(self._order(epoch)))

    def add_skip(self, ids: Iterable[str], epoch: int | None = None, start: int | None = None,
                 offset: int | None = None) -> None:
        """Skip ``ids`` from now on; see the module docstring for ``epoch``/``start``/``offset`` (default: here)."""
        epoch = self.epoch if epoch is None else int(epoch)
        start = self.start if start is None else int(start)
        offset = self.offset if offset is None else int(offset)
        new = [str(sid) for sid in dict.fromkeys(ids) if str(sid) not in self.skip]
        if not new:
            return
        order = self._order(epoch)
        position = np.full(len(self.sample_ids), np.iinfo(np.int64).max, np.int64)
        position[order] = np.arange(len(order))  # each index's place in the epoch (max: not in it)
        which = pc.index_in(self.sample_ids, value_set=pa.array(new, pa.string()))
        hit = np.asarray(which.is_valid().to_numpy(zero_copy_only=False), bool)
        first = np.full(len(new), np.iinfo(np.int64).max, np.int64)
        np.minimum.at(first, np.asarray(which.fill_null(0).to_numpy(zero_copy_only=False))[hit], position[hit])
        boundary = offset + start * self.world_size
        for sid, pos in zip(new, first.tolist()):
            self.skip[sid] = epoch if pos >= boundary else epoch + 1  # max (not in the epoch): from now on

    def skipped_ids(self) -> list[str]:
        return sorted(self.skip)

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "start": self.start,
            "offset": self.offset,
            "seed": self.seed,
            "skip": [[sid, ep] for sid, ep in sorted(self.skip.items())],
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"sampler seed changed: checkpoint {state['seed']}, now {self.seed}")
        self.epoch = int(state["epoch"])
        self.start = int(state["start"])
        self.offset = int(state.get("offset", 0))
        skip: dict[str, int] = {}
        for item in state.get("skip", []):
            if isinstance(item, str):
                skip[item] = 0
            else:
                skip[str(item[0])] = int(item[1])
        self.skip = skip

    # -- order ---------------------------------------------------------------------------

    def _order(self, epoch: int | None = None) -> np.ndarray:
        epoch = self.epoch if epoch is None else epoch
        n = len(self.sample_ids)
        order = np.arange(n, dtype=np.int64)
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + epoch)
            order = torch.randperm(n, generator=g).numpy()
        skipped = [sid for sid, first in self.skip.items() if first <= epoch]
        if skipped:
            drop = pc.is_in(self.sample_ids, value_set=pa.array(skipped, pa.string()))
            order = order[~np.asarray(drop.to_numpy(zero_copy_only=False), bool)[order]]
        return order

    def _epoch_order(self, epoch: int | None = None) -> np.ndarray:
        keep = self._order(epoch)[self.offset:]
        if self.world_size > 1 and len(keep):
            pad = (-len(keep)) % self.world_size
            keep = np.concatenate([keep, keep[:pad]])[self.rank:: self.world_size]
        return keep

    def global_order(self, epoch: int | None = None) -> list[int]:
        """All ranks' dataset indices for the epoch (permuted, skips removed, not padded)."""
        return self._order(epoch).tolist()

    def epoch_order(self, epoch: int | None = None) -> list[int]:
        """This rank's dataset indices for the epoch, from its beginning (after ``offset``)."""
        return self._epoch_order(epoch).tolist()

    def epoch_length(self, epoch: int | None = None) -> int:
        return len(self._epoch_order(epoch))

    def __iter__(self) -> Iterator[int]:
        for i in self._epoch_order()[self.start:]:
            yield int(i)

    def __len__(self) -> int:
        return max(self.epoch_length() - self.start, 0)
