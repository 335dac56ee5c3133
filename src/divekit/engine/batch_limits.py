"""Debugging runs on a few batches: ``limit_batches`` (a quick smoke run of the whole
pipeline) and ``overfit_batches`` (a model that cannot drive the loss of a handful of batches
towards zero has a bug; Karpathy's "overfit one batch" check, Lightning's ``overfit_batches``)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any


class LimitedLoader:
    """The first ``limit`` batches of every epoch of ``loader`` (shuffled as the loader is)."""

    def __init__(self, loader: Iterable, limit: int) -> None:
        self.loader, self.limit = loader, limit
        self.skip = 0

    def __len__(self) -> int:
        return min(len(self.loader), self.limit)

    def __iter__(self) -> Iterator:
        start, self.skip = self.skip, 0
        if start and hasattr(self.loader, "skip_batches"):  # skipped without being read
            self.loader.skip_batches(start)
            return islice(iter(self.loader), len(self) - start)
        return islice(iter(self.loader), start, len(self))

    def set_epoch(self, epoch: int) -> None:
        set_epoch(self.loader, epoch)

    def skip_batches(self, count: int) -> None:
        """Start the next pass at batch ``count`` (a run resumed inside an epoch)."""
        self.skip = count


class FixedBatches:
    """The same ``count`` batches every epoch: the first ones of the loader's epoch 0,
    augmented once and then kept, so nothing but the weights changes between epochs."""

    def __init__(self, loader: Iterable, count: int) -> None:
        self.loader, self.count = loader, count
        self.batches: list | None = None
        self.skip = 0

    def __len__(self) -> int:
        return min(len(self.loader), self.count)

    def __iter__(self) -> Iterator:
        if self.batches is None:
            set_epoch(self.loader, 0)
            self.batches = list(islice(iter(self.loader), self.count))
        start, self.skip = self.skip, 0
        return iter(self.batches[start:])

    def set_epoch(self, epoch: int) -> None:
        """Every epoch is the same batches."""

    def skip_batches(self, count: int) -> None:
        """Start the next pass at batch ``count`` (a run resumed inside an epoch)."""
        self.skip = count


def set_epoch(loader: Any, epoch: int) -> None:
    """Select the shuffle of ``epoch`` on a divekit loader or a DataLoader's sampler."""
    for target in (loader, getattr(loader, "sampler", None),
                   getattr(loader, "batch_sampler", None)):
        if hasattr(target, "set_epoch"):
            target.set_epoch(epoch)
            return


def limited(loader: Iterable, limit_batches: int | None = None,
            overfit_batches: int | None = None) -> Iterable:
    """``loader`` as a run with these debug settings trains on it (the loader itself when
    neither is set)."""
    if overfit_batches:
        return FixedBatches(loader, overfit_batches)
    if limit_batches:
        return LimitedLoader(loader, limit_batches)
    return loader
