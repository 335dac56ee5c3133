"""Length-bucketed batches of padded sequences: similar lengths share a batch, so little of it
is padding, and every batch is trimmed to its longest sequence.

The sequences are stored padded to one length, in memory, as :class:`~divekit.data.loaders.
TensorLoader` stores images; a batch is still one gather. Shuffling follows the shared rule of
:func:`~divekit.data.loaders.epoch_order` (seed and epoch alone), so resume stays exact.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch

from divekit.data.loaders import ShuffledBatches, epoch_order, shuffle_seed
from divekit.errors import DivekitError

POOL_BATCHES = 64  # batches' worth of examples sorted together: wider pools, less padding


class BucketLoader(ShuffledBatches):
    """Batches of examples of similar length, each trimmed to its longest sequence.

    Training (``shuffle=True``): the epoch's permutation is cut into pools of
    ``POOL_BATCHES * batch_size`` examples; each pool is sorted by ``sort_key`` and cut into
    batches, and the batches of all pools are served in a random order. Evaluation: all
    examples sorted by ``sort_key``, then batched.

    Args:
        tensors: aligned tensors, sequences stored padded to a common length in dim 1.
        sort_key: ``(N,)`` integers; examples with close keys share batches.
        trim: for each tensor, ``None`` (served as stored) or an ``(N,)`` tensor of lengths:
            that tensor's columns are cut to the batch's largest length.
        batch_size: examples per batch (the last batch of a pool may be smaller).
        shuffle: a new order every epoch.
        seed: base seed of the shuffle.
        device: move the tensors there once, up front.
        transform: called as ``transform(*batch)`` on every trimmed batch tuple; what it returns
            (a tuple) is served instead, e.g. BERT's masking drawn afresh for every batch.
            Batches skipped on resume are not transformed.
    """

    drop_last = False

    def __init__(self, tensors: Sequence[torch.Tensor], *, sort_key: torch.Tensor,
                 trim: Sequence[torch.Tensor | None], batch_size: int, shuffle: bool = False,
                 seed: int = 0, device: torch.device | str | None = None,
                 transform: Callable[..., tuple[torch.Tensor, ...]] | None = None) -> None:
        if len(trim) != len(tensors):
            raise DivekitError(f"trim needs one entry per tensor ({len(tensors)}), got {len(trim)}")
        if {len(t) for t in tensors} | {len(sort_key)} != {len(sort_key)}:
            raise DivekitError("tensors and sort_key must have the same first dimension")
        if batch_size < 1:
            raise DivekitError(f"batch size must be a positive integer, got {batch_size}")
        self.tensors = tuple(t if device is None else t.to(device) for t in tensors)
        self.sort_key = sort_key.cpu()
        self.trim = tuple(None if lengths is None else lengths.cpu() for lengths in trim)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.transform = transform

    @property
    def num_examples(self) -> int:
        return len(self._order())

    def __len__(self) -> int:
        return len(self.batches())

    def _order(self) -> torch.Tensor:
        return epoch_order(len(self.sort_key), shuffle=self.shuffle, seed=self.seed,
                           epoch=self.epoch, rank=self.rank, world_size=self.world_size)

    def batches(self) -> list[torch.Tensor]:
        """The example indices of every batch of this epoch, in the order they are served."""
        order = self._order()
        pool = POOL_BATCHES * self.batch_size if self.shuffle else max(len(order), 1)
        batches = []
        for start in range(0, len(order), pool):
            chunk = order[start : start + pool]
            chunk = chunk[torch.sort(self.sort_key[chunk], stable=True).indices]
            batches += list(chunk.split(self.batch_size))
        if self.shuffle:
            generator = torch.Generator().manual_seed(shuffle_seed(self.seed, self.epoch) + 1)
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator)]
        return batches

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        device = self.tensors[0].device
        for index in self.batches()[self._take_skipped():]:
            columns = [None if lengths is None else int(lengths[index].max())
                       for lengths in self.trim]
            index = index.to(device)
            batch = tuple(t[index] if width is None else t[index, :width]
                          for t, width in zip(self.tensors, columns, strict=True))
            yield batch if self.transform is None else tuple(self.transform(*batch))

    def padding_fraction(self) -> float:
        """Share of the trimmed sequences' positions that are padding, over this epoch."""
        real = padded = 0
        for index in self.batches():
            for lengths in self.trim:
                if lengths is not None:
                    batch = lengths[index]
                    real += int(batch.sum())
                    padded += int(batch.max()) * len(batch)
        return 1 - real / padded if padded else 0.0
