"""Metrics the Trainer keeps itself, and the set of meters that evaluates one split.

Every other metric comes from its task, as an object with torchmetrics' interface (``update``,
``compute``, ``reset``, ``to``, ``higher_is_better``). These two are means of a number the loop
already has (each batch's mean loss), weighted by the batch's example count, so they cost one
multiply-add per batch, stay on the device until ``compute`` and are summed over processes.
:class:`SplitMeters` holds one split's loss, the named parts of the loss and the task's metrics.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from divekit.engine import distributed
from divekit.engine.task import Output, Task
from divekit.errors import DivekitError


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

    @property
    def metric_state(self) -> dict[str, torch.Tensor]:
        """The running sums (torchmetrics' name for a metric's state)."""
        return {"total": self.total, "count": self.count}

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


class Sums:
    """Base of a metric whose state is running sums, one scalar tensor per name in ``_names``
    (kept as attributes named as in ``metric_state``, which the Trainer saves and restores),
    on one device; :meth:`totals` sums them over processes under ``torchrun``. Subclasses set
    ``_names`` (and ``_dtype``), add with :meth:`add` in ``update`` and read :meth:`totals` in
    ``compute``."""

    higher_is_better = True
    _names: tuple[str, ...] = ()
    _dtype = torch.float64

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = torch.device(device or "cpu")
        self.reset()

    def reset(self) -> None:
        """Forget everything seen."""
        for name in self._names:
            setattr(self, name, torch.zeros((), dtype=self._dtype, device=self.device))

    def to(self, device: torch.device | str) -> Sums:
        """Move the sums to ``device``."""
        self.device = torch.device(device)
        for name in self._names:
            setattr(self, name, getattr(self, name).to(self.device))
        return self

    @property
    def metric_state(self) -> dict[str, torch.Tensor]:
        """The running sums (torchmetrics' name for a metric's state)."""
        return {name: getattr(self, name) for name in self._names}

    def add(self, **values: float | torch.Tensor) -> None:
        for name, value in values.items():
            setattr(self, name, getattr(self, name) + value)

    def totals(self) -> list[float]:
        """The sums over all processes, in ``_names`` order."""
        stacked = torch.stack([getattr(self, name) for name in self._names])  # a copy
        return distributed.all_reduce_sum(stacked).tolist()


class SplitMeters:
    """One split's example-weighted loss, the named parts of the loss, and the task's metrics."""

    def __init__(self, task: Task, split: str, device: torch.device) -> None:
        self.task, self.device = task, device
        self.loss = Mean(device)
        self.parts: dict[str, Mean] = {}
        self.metrics = {name: metric.to(device) for name, metric in task.metrics(split).items()}
        if "loss" in self.metrics:
            raise DivekitError(f"{type(task).__name__}.metrics() names a metric 'loss'; the "
                               "Trainer reports the loss itself: rename the metric")

    def add(self, output: Output, batch: Any, count: int | torch.Tensor) -> None:
        self.loss.update(output.loss, count)
        for name, value in output.parts.items():
            self.parts.setdefault(name, Mean(self.device)).update(value, count)
        if self.metrics:
            with torch.no_grad():
                self.task.update(self.metrics, output, batch)

    def state_dict(self) -> dict[str, Any]:
        """The running sums, for a checkpoint taken inside an epoch."""
        return {"loss": self.loss.metric_state,
                "parts": {name: part.metric_state for name, part in self.parts.items()},
                "metrics": {name: dict(metric.metric_state)
                            for name, metric in self.metrics.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _set_state(self.loss, state["loss"])
        for name, saved in state["parts"].items():
            _set_state(self.parts.setdefault(name, Mean(self.device)), saved)
        for name, saved in state["metrics"].items():
            _set_state(self.metrics[name], saved)

    def compute(self, prefix: str) -> tuple[dict[str, float], dict[str, bool | None]]:
        """``{prefix_name: value}`` and, for each, whether larger is better."""
        values: dict[str, float] = {}
        directions: dict[str, bool | None] = {}
        meters = {"loss": self.loss, **self.parts, **self.metrics}
        for name, meter in meters.items():
            higher = getattr(meter, "higher_is_better", None)
            for key, value in _scalars(name, meter.compute()):
                values[f"{prefix}_{key}"] = value
                directions[f"{prefix}_{key}"] = higher
        return values, directions


def _set_state(meter: Any, state: dict[str, Any]) -> None:
    for attribute, value in state.items():  # torchmetrics keeps its state as attributes
        setattr(meter, attribute, value)


def _scalars(name: str, value: Any) -> list[tuple[str, float]]:
    """A metric's result as named numbers: a dict result (e.g. mAP's) gives one per scalar key."""
    if isinstance(value, Mapping):
        return [(key, float(v)) for key, v in value.items()
                if not isinstance(v, torch.Tensor) or v.numel() == 1]
    return [(name, float(value))]
