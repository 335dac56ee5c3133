"""4.2 Reading minibatches with worker processes: datasets streamed from disk, not preloaded.

The in-memory path (:class:`~divekit.data.loaders.TensorLoader`) suits small datasets. Datasets
too large for memory, or whose examples vary in size (detection boxes, sentences), are read one
example at a time through ``torch.utils.data.DataLoader`` worker processes and collated per task
(see :mod:`divekit.data.collate`). :class:`DatasetLoader` is a drop-in for ``TensorLoader``:

- the example order of an epoch, and each process's shard under ``torchrun``, follow exactly
  TensorLoader's rule, so the same data streamed or preloaded gives identical batches and a
  resumed run sees the batches of an uninterrupted one;
- iterating never draws from (or changes) the global random generators, which the Trainer
  checkpoints;
- randomness inside ``__getitem__`` (per-sample augmentation) comes from generators seeded by
  ``(seed, epoch, worker id)``: reproducible for a fixed ``num_workers``. ``num_workers=0``
  reads as a single worker 0 would, with the main process's generators set aside meanwhile.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, IterableDataset, Sampler

from divekit.data.collate import stack_collate
from divekit.data.loaders import ShuffledBatches, epoch_order, shard_length, shuffle_seed
from divekit.errors import DivekitError


def worker_seed(seed: int, epoch: int, worker_id: int) -> int:
    """64-bit seed of one worker's random generators in one epoch."""
    # SeedSequence hashes the triple, so nearby (seed, epoch, worker) give unrelated streams.
    entropy = [seed % 2**64, epoch, worker_id]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])


class EpochSampler(Sampler[int]):
    """The example indices one process reads in one epoch (``DistributedSampler``'s role),
    by :func:`~divekit.data.loaders.epoch_order`, the rule TensorLoader follows too."""

    def __init__(self, size: int, *, shuffle: bool = False, seed: int = 0, epoch: int = 0,
                 rank: int = 0, world_size: int = 1, batch_size: int | None = None,
                 drop_last: bool = False) -> None:
        self.size, self.shuffle, self.seed, self.epoch = size, shuffle, seed, epoch
        self.rank, self.world_size = rank, world_size
        self.batch_size, self.drop_last = batch_size, drop_last

    def __len__(self) -> int:
        return shard_length(self.size, self.shuffle, self.rank, self.world_size,
                            self.batch_size, self.drop_last)

    def __iter__(self) -> Iterator[int]:
        return iter(epoch_order(self.size, shuffle=self.shuffle, seed=self.seed,
                                epoch=self.epoch, rank=self.rank, world_size=self.world_size,
                                batch_size=self.batch_size, drop_last=self.drop_last).tolist())


def _seed_globals(seed: int) -> None:
    random.seed(seed)
    np.random.seed([seed & 0xFFFF_FFFF, seed >> 32])
    torch.manual_seed(seed)


class _SeedWorker:
    """``worker_init_fn``: seed a worker from ``(seed, epoch, worker id)``.

    A class rather than a closure so that it pickles under the 'spawn' start method.
    """

    def __init__(self, seed: int, epoch: int) -> None:
        self.seed, self.epoch = seed, epoch

    def __call__(self, worker_id: int) -> None:
        _seed_globals(worker_seed(self.seed, self.epoch, worker_id))


class _AsideRandomState:
    """Python, NumPy and torch global generator states kept apart from the main process's."""

    def __init__(self, seed: int) -> None:
        outside = self._capture()
        _seed_globals(seed)
        self.state = self._capture()
        self._restore(outside)

    @staticmethod
    def _capture() -> tuple[Any, Any, torch.Tensor]:
        return random.getstate(), np.random.get_state(), torch.get_rng_state()

    @staticmethod
    def _restore(state: tuple[Any, Any, torch.Tensor]) -> None:
        random.setstate(state[0])
        np.random.set_state(state[1])
        torch.set_rng_state(state[2])

    @contextmanager
    def active(self) -> Iterator[None]:
        outside = self._capture()
        self._restore(self.state)
        try:
            yield
        finally:
            self.state = self._capture()
            self._restore(outside)


class DatasetLoader(ShuffledBatches):
    """Iterate over a map-style dataset in minibatches, read lazily by worker processes.

    Same interface and example order as :class:`~divekit.data.loaders.TensorLoader`
    (``set_epoch``, ``shard``, ``num_examples``, ``len``, ``transform``). Each epoch builds a
    fresh ``DataLoader`` whose workers are seeded from ``(seed, epoch, worker id)``: results,
    random augmentation included, are reproducible for a fixed ``num_workers``.

    Args:
        dataset: a map-style ``torch.utils.data.Dataset`` (``__getitem__`` and ``__len__``);
            it must pickle when the start method is 'spawn' (the default is 'fork' on Linux).
        batch_size: examples per batch.
        shuffle: draw a new permutation every epoch.
        drop_last: skip the final incomplete batch.
        seed: base seed of the shuffle and of the workers' generators.
        collate_fn: turns a list of examples into a batch; default :func:`stack_collate`
            (torch's ``default_collate``, with a batch of tuples given as a tuple). Use a
            module-level function (or ``functools.partial``) so that it pickles.
        num_workers: worker processes; 0 reads in the main process.
        pin_memory: page-locked batches for faster copies to the GPU; default: when CUDA is
            available.
        transform: applied to each collated batch in the main process, ``transform(*batch)``
            for a tuple and ``transform(batch)`` otherwise (e.g. batched GPU augmentation).
        prefetch_factor: batches each worker reads ahead (needs ``num_workers > 0``).
        multiprocessing_context: start method of the workers, e.g. ``"spawn"``; default the
            platform's.
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        batch_size: int,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        num_workers: int = 0,
        pin_memory: bool | None = None,
        transform: Callable[..., Any] | None = None,
        prefetch_factor: int | None = None,
        multiprocessing_context: str | None = None,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise DivekitError(f"batch size must be a positive integer, got {batch_size!r}")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise DivekitError(f"num_workers must be an integer >= 0, got {num_workers!r}")
        if prefetch_factor is not None and num_workers == 0:
            raise DivekitError("prefetch_factor needs worker processes; set num_workers > 0")
        if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
            raise DivekitError(f"DatasetLoader needs a map-style dataset with __len__; "
                               f"{type(dataset).__name__} has no length")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.collate_fn = stack_collate if collate_fn is None else collate_fn
        self.num_workers = num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.transform = transform
        self.prefetch_factor = prefetch_factor
        self.multiprocessing_context = multiprocessing_context

    def sampler(self) -> EpochSampler:
        """The indices this process reads in the current epoch."""
        return EpochSampler(len(self.dataset), shuffle=self.shuffle, seed=self.seed,
                            epoch=self.epoch, rank=self.rank, world_size=self.world_size,
                            batch_size=self.batch_size, drop_last=self.drop_last)

    @property
    def num_examples(self) -> int:
        """Examples this process iterates per epoch."""
        return len(self.sampler())

    def dataloader(self) -> DataLoader:
        """The ``DataLoader`` of the current epoch (without ``transform``)."""
        workers = self.num_workers > 0
        indices = self.sampler()
        if skipped := self._take_skipped():
            # Exact for deterministic examples; randomness inside __getitem__ comes from
            # worker generators that have not made the skipped draws.
            indices = list(indices)[skipped * self.batch_size:]
        return DataLoader(
            self.dataset,
            batch_sampler=BatchSampler(indices, self.batch_size, self.drop_last),
            collate_fn=self.collate_fn,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            # Creating an iterator draws a base seed; this keeps it off the global generator.
            generator=torch.Generator().manual_seed(shuffle_seed(self.seed, self.epoch)),
            worker_init_fn=_SeedWorker(self.seed, self.epoch) if workers else None,
            prefetch_factor=self.prefetch_factor,
            multiprocessing_context=self.multiprocessing_context if workers else None,
        )

    def __iter__(self) -> Iterator[Any]:
        loader = self.dataloader()
        batches = iter(loader) if self.num_workers > 0 else self._in_main_process(loader)
        for batch in batches:
            if self.transform is None:
                yield batch
            elif isinstance(batch, tuple):
                yield self.transform(*batch)
            else:
                yield self.transform(batch)

    def _in_main_process(self, loader: DataLoader) -> Iterator[Any]:
        # Read as worker 0 would, so the dataset's random draws neither depend on nor change
        # the generators the model and the Trainer's checkpoints use.
        generators = _AsideRandomState(worker_seed(self.seed, self.epoch, 0))
        iterator = iter(loader)
        while True:
            with generators.active():
                batch = next(iterator, _END)
            if batch is _END:
                return
            yield batch

    def __repr__(self) -> str:
        return (f"DatasetLoader({type(self.dataset).__name__}, examples={self.num_examples}, "
                f"batch_size={self.batch_size}, shuffle={self.shuffle}, "
                f"num_workers={self.num_workers})")


_END = object()
