"""Metrics the Trainer keeps itself: the example-weighted mean loss and perplexity.

Every other metric comes from its task, as an object with torchmetrics' interface (``update``,
``compute``, ``reset``, ``to``, ``higher_is_better``). These two are means of a number the loop
already has (each batch's mean loss), weighted by the batch's example count, so they cost one
multiply-add per batch, stay on the device until ``compute`` and are summed over processes.
"""

from __future__ import annotations

import math

import torch

from divekit.engine import distributed


class Mean:
    """The mean of per-batch means weighted by example counts: ``sum(v_i n_i) / sum(n_i)``.

    It equals the mean over every example of the split (never a mean of batch means, which
    over-weights a short last batch). ``compute`` sums over processes under ``torchrun``.
    """

    higher_is_better = False

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = torch.device(device or "cpu")
        self.reset()

    def reset(self) -> None:
        self.total = torch.zeros((), dtype=torch.float64, device=self.device)
        self.count = torch.zeros((), dtype=torch.float64, device=self.device)

    def to(self, device: torch.device | str) -> Mean:
        self.device = torch.device(device)
        self.total, self.count = self.total.to(self.device), self.count.to(self.device)
        return self

    def update(self, value: torch.Tensor, count: int | torch.Tensor) -> None:
        """Add a batch whose mean is ``value`` over ``count`` examples."""
        self.total += value.detach().double() * count
        self.count += count

    def local(self) -> float:
        """This process's mean so far (synchronises the device, not the processes)."""
        return (self.total / self.count.clamp(min=1)).item()

    def examples(self) -> float:
        """Examples counted over all processes."""
        return distributed.all_reduce_sum(self.count.clone()).item()

    def compute(self) -> torch.Tensor:
        totals = distributed.all_reduce_sum(torch.stack([self.total, self.count]))
        return totals[0] / totals[1].clamp(min=1)


class Perplexity(Mean):
    """``exp`` of the example-weighted mean cross-entropy (natural log): a language model's
    perplexity per token when the count is tokens. Capped at ``exp(50)`` so an untrained or
    diverged model still reports a finite number.

    Fed the loss the task already computed, it equals torchmetrics' ``Perplexity`` over the
    logits (tested) without a second softmax over the vocabulary.
    """

    def compute(self) -> torch.Tensor:
        return super().compute().clamp(max=50.0).exp()


def finite(value: float) -> bool:
    return math.isfinite(value)
