"""In-memory loading: whole datasets as tensors, batched by shuffled index.

On a small CPU a ``DataLoader`` that calls ``__getitem__`` per sample and collates is many
times slower than slicing a preloaded tensor, so small datasets live in memory (optionally on
the accelerator) and a batch is one gather.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from divekit.errors import DivekitError


def shuffle_seed(seed: int, epoch: int) -> int:
    """Seed of epoch ``epoch``'s permutation."""
    return seed * 1_000_003 + epoch


def _shared_examples(size: int, world_size: int, batch_size: int | None,
                     drop_last: bool) -> int:
    """How many of a shuffled epoch's first examples the processes share out.

    With ``batch_size`` (per process), every global batch of ``batch_size * world_size`` is
    kept whole, so each step sees the examples one process with the global batch would see.
    The last, smaller global batch is dropped with ``drop_last``, and also when it holds fewer
    examples than there are processes (a process would have none, and every process must
    step). Without ``batch_size`` (loaders whose batches are not cut from the order, e.g.
    buckets) the epoch is cut to a multiple of ``world_size``.
    """
    if batch_size is None:
        return size - size % world_size
    last = size % (batch_size * world_size)
    return size - last if drop_last or last < world_size else size


def shard_length(size: int, shuffle: bool, rank: int, world_size: int,
                 batch_size: int | None = None, drop_last: bool = False) -> int:
    """Examples process ``rank`` of ``world_size`` reads per epoch (see :func:`epoch_order`)."""
    if world_size == 1:
        return size
    if shuffle:
        size = _shared_examples(size, world_size, batch_size, drop_last)
    return len(range(rank, size, world_size))


def epoch_order(size: int, *, shuffle: bool, seed: int, epoch: int, rank: int = 0,
                world_size: int = 1, batch_size: int | None = None,
                drop_last: bool = False) -> torch.Tensor:
    """The example indices one process reads in one epoch, in order: the one rule of both
    loaders (so the same data streamed or preloaded gives the same batches).

    The permutation of epoch ``e`` is ``torch.randperm(size)`` from a generator seeded
    ``seed * 1_000_003 + e`` (``0..size-1`` without shuffling); process ``rank`` takes every
    ``world_size``-th index from ``rank``. Batch ``k`` of every process (``batch_size`` each)
    then holds the examples of global batch ``k`` of one process with ``batch_size *
    world_size``, the last global batch split unevenly when it must be (lower ranks get one
    more). Shuffled (training) epochs keep only the examples of :func:`_shared_examples`, so
    that every process takes the same number of steps; evaluation (unshuffled) reads all.
    """
    if shuffle:
        generator = torch.Generator().manual_seed(shuffle_seed(seed, epoch))
        order = torch.randperm(size, generator=generator)
        if world_size > 1:
            order = order[: _shared_examples(size, world_size, batch_size, drop_last)]
    else:
        order = torch.arange(size)
    return order[rank::world_size]


class ShuffledBatches:
    """What both loaders share: batches of a per-epoch order, sharded under ``torchrun``.

    Subclasses set ``batch_size``, ``shuffle``, ``drop_last``, ``seed`` and define
    ``num_examples`` and ``__iter__``.
    """

    epoch, rank, world_size, skipped = 0, 0, 1, 0

    def shard(self, rank: int, world_size: int):
        """Iterate only this process's share: every ``world_size``-th example from ``rank``.

        The shards of one epoch are disjoint and together form each global batch of
        ``batch_size * world_size`` examples, the last one included (split unevenly). In
        training every process takes the same number of steps; see :func:`epoch_order`.
        """
        if not 0 <= rank < world_size:
            raise DivekitError(f"rank must be in [0, {world_size}), got {rank}")
        self.rank, self.world_size = rank, world_size
        return self

    def set_epoch(self, epoch: int) -> None:
        """Select the order of ``epoch`` (like ``DistributedSampler.set_epoch``)."""
        self.epoch = epoch

    def skip_batches(self, count: int) -> None:
        """Start the next iteration at batch ``count`` of the epoch, without reading (or
        transforming) the batches before it: a run resumed inside an epoch."""
        self.skipped = count

    def _take_skipped(self) -> int:
        count, self.skipped = self.skipped, 0
        return count

    def __len__(self) -> int:
        n, b = self.num_examples, self.batch_size
        return n // b if self.drop_last else -(-n // b)


class TensorLoader(ShuffledBatches):
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

    @property
    def num_examples(self) -> int:
        """Examples this process iterates per epoch."""
        return shard_length(len(self.tensors[0]), self.shuffle, self.rank, self.world_size,
                            self.batch_size, self.drop_last)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        order = None  # in order and unsharded: contiguous slices, no gather
        if self.shuffle or self.world_size > 1:
            order = epoch_order(len(self.tensors[0]), shuffle=self.shuffle, seed=self.seed,
                                epoch=self.epoch, rank=self.rank, world_size=self.world_size,
                                batch_size=self.batch_size, drop_last=self.drop_last)
            order = order.to(self.tensors[0].device)
        first = self._take_skipped() * self.batch_size
        for start in range(first, len(self) * self.batch_size, self.batch_size):
            if order is None:
                batch = tuple(t[start : start + self.batch_size] for t in self.tensors)
            else:
                index = order[start : start + self.batch_size]
                batch = tuple(t[index] for t in self.tensors)
            yield self.transform(*batch) if self.transform is not None else batch
