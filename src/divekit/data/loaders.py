"""In-memory loading: whole datasets as tensors, batched by shuffled index.

On a small CPU a ``DataLoader`` that calls ``__getitem__`` per sample and collates is many
times slower than slicing a preloaded tensor, so small datasets live in memory (optionally on
the accelerator) and a batch is one gather.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from divekit.errors import DivekitError


class TensorLoader:
    """Iterate over aligned tensors in minibatches.

    The shuffle order of epoch ``e`` depends only on ``(seed, e)``, so a run resumed at any
    epoch sees exactly the batches an uninterrupted run would (see ``set_epoch``).

    Args:
        tensors: tensors sharing their first dimension, e.g. images ``(N, C, H, W)`` and
            labels ``(N,)``.
        batch_size: examples per batch.
        shuffle: draw a new permutation every epoch.
        drop_last: skip the final incomplete batch.
        seed: base seed of the shuffle.
        device: move the tensors there once, up front.
        transform: applied to each batch's tuple of tensors (e.g. batched augmentation).
    """

    def __init__(
        self,
        *tensors: torch.Tensor,
        batch_size: int,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        device: torch.device | str | None = None,
        transform: Callable[..., tuple[torch.Tensor, ...]] | None = None,
    ) -> None:
        if not tensors:
            raise DivekitError("TensorLoader needs at least one tensor")
        sizes = {len(t) for t in tensors}
        if len(sizes) != 1:
            raise DivekitError(f"tensors have different lengths {sorted(sizes)}; they must align")
        if batch_size < 1:
            raise DivekitError(f"batch size must be a positive integer, got {batch_size}")
        self.tensors = tuple(t.to(device) for t in tensors) if device is not None else tensors
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.transform = transform
        self.epoch = 0
        self.rank, self.world_size = 0, 1

    def shard(self, rank: int, world_size: int) -> TensorLoader:
        """Iterate only this process's share: every ``world_size``-th example from ``rank``.

        The shards of one epoch are disjoint and together form each global batch of
        ``batch_size * world_size`` examples. Shuffled (training) shards are cut to one
        length so that every process takes the same number of steps.
        """
        self.rank, self.world_size = rank, world_size
        return self

    @property
    def num_examples(self) -> int:
        """Examples this process iterates per epoch."""
        total = len(self.tensors[0])
        if self.world_size == 1:
            return total
        if self.shuffle:
            return total // self.world_size
        return len(range(self.rank, total, self.world_size))

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch`` (like ``DistributedSampler.set_epoch``)."""
        self.epoch = epoch

    def __len__(self) -> int:
        n, b = self.num_examples, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        total = len(self.tensors[0])
        order = None
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(total, generator=generator).to(self.tensors[0].device)
        if self.world_size > 1:
            if order is None:
                order = torch.arange(total, device=self.tensors[0].device)
            order = order[self.rank :: self.world_size][: self.num_examples]
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            if order is None:
                batch = tuple(t[start : start + self.batch_size] for t in self.tensors)
            else:
                index = order[start : start + self.batch_size]
                batch = tuple(t[index] for t in self.tensors)
            yield self.transform(*batch) if self.transform is not None else batch
