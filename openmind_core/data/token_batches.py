"""Token-budget micro-batches (``train.max_tokens_per_batch``): a variable number of samples per micro-batch.

For runs that do not pack: a micro-batch takes the next samples of the sampler's order while its
padded size (samples x the longest one's tokens, what ``collate.Collator`` computes) stays within
the budget; a sample longer than the budget alone is a micro-batch of its own.  Short samples
then travel many to a micro-batch and long ones few, so the memory a micro-batch needs stays
about the same.

Every micro-batch is a run of consecutive samples of the order, so the samples a run consumed
are always a prefix of its epoch's order: the trainer's position (samples consumed) stays what it
is, a resume starts grouping at a micro-batch boundary and so groups exactly as the unbroken run
did, and a rollback's skips apply as they do without a budget.  One process only: under several
ranks each rank's micro-batches would hold different numbers of samples (use ``train.packing``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


def budget_batches(order: Iterable[int], lengths: Sequence[int], budget: int) -> Iterator[list[int]]:
    """Group ``order`` (dataset indices) greedily into runs whose ``len(run) * longest <= budget``."""
    if budget < 1:
        raise ValueError(f"train.max_tokens_per_batch must be a positive number of tokens, got {budget}")
    batch: list[int] = []
    longest = 0
    for i in order:
        n = int(lengths[i])
        if batch and (len(batch) + 1) * max(longest, n) > budget:
            yield batch
            batch, longest = [], 0
        batch.append(int(i))
        longest = max(longest, n)
    if batch:
        yield batch


def sample_lengths(dataset) -> np.ndarray:
    """Each sample's tokens: ``dataset.lengths()`` (``VLMDataset``: from its token index, no decoding),
    else ``len(dataset[i]["input_ids"])`` for every row."""
    lengths = getattr(dataset, "lengths", None)
    if callable(lengths):
        return np.asarray(lengths(), dtype=np.int64)
    return np.array([len(dataset[i]["input_ids"]) for i in range(len(dataset))], dtype=np.int64)


class TokenBudgetBatches(Sampler[list[int]]):
    """A batch sampler over a ``ResumableSampler``: its order from its position, in token-budget runs."""

    def __init__(self, sampler, lengths: Sequence[int], budget: int) -> None:
        if getattr(sampler, "world_size", 1) > 1:
            raise ValueError("train.max_tokens_per_batch works in one process: under several, ranks would take "
                             "different numbers of samples per step; use train.packing instead")
        self.sampler, self.lengths, self.budget = sampler, lengths, int(budget)

    def __iter__(self) -> Iterator[list[int]]:
        return budget_batches(iter(self.sampler), self.lengths, self.budget)

    def __len__(self) -> int:
        return sum(1 for _ in budget_batches(iter(self.sampler), self.lengths, self.budget))

    def epoch_batches(self, epoch: int) -> int:
        """Micro-batches in the whole of ``epoch`` (from its start)."""
        return sum(1 for _ in budget_batches(self.sampler.epoch_order(epoch), self.lengths, self.budget))
