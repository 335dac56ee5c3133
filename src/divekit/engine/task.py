"""Tasks: how a batch becomes a loss, how many examples it holds, and what evaluates a split.

The Trainer knows no task by name; a :class:`Task` describes one kind of problem:

* ``count(batch)``: the examples in a batch by the task's own rule (images, tokens that are
  not padding, sentence pairs). A batch's loss is a mean over them, so the Trainer weights
  batches by this count when it averages an epoch's loss or accumulates gradients, which makes
  ``accumulate=k`` equal one batch ``k`` times as large.
* ``step(model, batch)``: an :class:`Output` holding that mean loss, optional named parts of it
  (``loss_cls``, ``loss_box``, ``mlm``, ...; each a mean over the same examples, logged per
  epoch) and the outputs the metrics read.
* ``metrics(split)``: fresh metric objects with ``update``/``compute``/``reset`` and
  ``higher_is_better``, exact over a whole split and summed or gathered across processes:
  torchmetrics' where it has the metric.
* ``update(metrics, output, batch)``: feeds one batch to them.
* ``predict(model, inputs)`` and ``describe(outputs, data)``: what ``divekit predict`` prints.

A batch is whatever the loader yields: a tensor, a tuple or list, a dict, or a list of
per-image dicts; :func:`to_device` moves any such structure. The built-in tasks take
``(inputs, targets)`` tuples; a task for dict batches overrides :meth:`Task.inputs` and
:meth:`Task.targets` (or :meth:`Task.step`). Register a task with :func:`register_task` and
name it in a dataset's ``task`` field; see the README's "Engine" section for a whole example.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from divekit.errors import DivekitError
from divekit.registry import Registry


@dataclass
class Output:
    """What :meth:`Task.step` returns for one batch.

    Attributes:
        loss: scalar, the mean loss over the batch's ``Task.count(batch)`` examples.
        outputs: what the metrics read (logits, predictions, detections, ...).
        parts: named scalar parts of the loss, each a mean over the same examples.
    """

    loss: torch.Tensor
    outputs: Any = None
    parts: dict[str, torch.Tensor] = field(default_factory=dict)


class Task:
    """One kind of problem: its loss, its example count and its metrics.

    Subclasses override :meth:`loss` (and usually :meth:`metrics`); everything else has a
    default for ``(inputs, targets)`` batches.

    Attributes:
        monitor: the metric, without its split prefix, that picks the best checkpoint by
            default (``"loss"``, ``"acc"``, ``"ppl"``, ``"map"``, ...).
    """

    monitor = "loss"

    def setup(self, data: Any) -> None:
        """Adapt to the data before training or evaluation (e.g. take its number of classes)."""

    def options(self) -> dict[str, Any]:
        """The task's settings, as recorded in ``config.json`` (a dataclass task's fields)."""
        return dataclasses.asdict(self) if dataclasses.is_dataclass(self) else {}

    def inputs(self, batch: Any) -> Any:
        """What the model is called with: the first element of a tuple batch."""
        return batch[0] if isinstance(batch, list | tuple) else batch

    def targets(self, batch: Any) -> Any:
        """What the loss and metrics compare with: the last element of a tuple batch."""
        if not isinstance(batch, list | tuple) or len(batch) < 2:
            raise DivekitError(f"{type(self).__name__} expects (inputs, targets) batches, got "
                               f"{_describe(batch)}; override inputs()/targets() for this data")
        return batch[-1]

    def count(self, batch: Any) -> int | torch.Tensor:
        """Examples in ``batch`` (the loss is their mean): here the targets' first dimension."""
        return len(self.targets(batch))

    def step(self, model: nn.Module, batch: Any) -> Output:
        """The batch's mean loss and the outputs the metrics read.

        A model with ``returns_loss = True`` (language models, the from-scratch networks)
        computes its own loss: ``model(inputs, targets) -> (outputs, loss)``.
        """
        inputs, targets = self.inputs(batch), self.targets(batch)
        if returns_loss(model):
            outputs, loss = model(inputs, targets)
            return Output(loss, outputs)
        outputs = model(inputs)
        return Output(self.loss(outputs, targets), outputs)

    def loss(self, outputs: Any, targets: Any) -> torch.Tensor:
        """Mean loss of ``outputs`` against ``targets`` over the counted examples."""
        raise NotImplementedError(f"{type(self).__name__} must define loss() or step()")

    def metrics(self, split: str) -> dict[str, Any]:
        """Fresh metric objects for ``split`` (``train``, ``val`` or ``test``), by name.

        The loss and its parts are always reported; name no metric ``loss``.
        """
        return {}

    def update(self, metrics: Mapping[str, Any], output: Output, batch: Any) -> None:
        """Feed one batch to the metrics (called without gradients)."""
        targets = self.targets(batch)
        for metric in metrics.values():
            metric.update(output.outputs, targets)

    def predict(self, model: nn.Module, inputs: Any) -> Any:
        """Outputs for ``inputs`` (a batch of inputs, not a whole batch tuple)."""
        outputs = model(inputs)
        return outputs[0] if isinstance(outputs, tuple) else outputs

    def describe(self, outputs: Any, data: Any, top: int = 3) -> list[str]:
        """One readable line per example of ``outputs`` for ``divekit predict``."""
        return [str(row.tolist()) for row in outputs]


TASKS: Registry[Callable[..., Task]] = Registry("task")


def register_task(name: str):
    """Class decorator: make a :class:`Task` subclass available as ``task=name``."""

    def decorator(cls: type[Task]) -> type[Task]:
        TASKS.add(name, cls)
        cls.name = name
        return cls

    return decorator


def create_task(task: str | Task, **options: Any) -> Task:
    """A :class:`Task` from its registered name and options, or ``task`` itself."""
    if isinstance(task, Task):
        if options:
            raise DivekitError(f"task options {sorted(options)} need a task name, not an "
                               f"already built {type(task).__name__}")
        return task
    cls = TASKS[task]
    accepted = set(inspect.signature(cls).parameters)
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise DivekitError(f"task {task!r} has no option {', '.join(unknown)}; its options "
                           f"are: {', '.join(sorted(accepted)) or 'none'}")
    return cls(**options)


def returns_loss(model: nn.Module) -> bool:
    """Whether ``model(x, targets)`` returns ``(outputs, loss)``; looks through wrappers
    (``DistributedDataParallel``'s ``module``, ``torch.compile``'s ``_orig_mod``)."""
    while True:
        if getattr(model, "returns_loss", False):
            return True
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return False
        model = inner


def to_device(batch: Any, device: torch.device, channels_last: bool = False) -> Any:
    """Move every tensor in a batch structure (tensor, tuple, list, dict, nested) to ``device``.

    Copies are non-blocking; with ``channels_last`` every 4-D floating-point tensor (an image
    batch) is stored NHWC, the layout fast convolution kernels want.
    """
    if isinstance(batch, torch.Tensor):
        batch = batch.to(device, non_blocking=True)
        if channels_last and batch.ndim == 4 and batch.is_floating_point():
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, Mapping):
        return type(batch)((k, to_device(v, device, channels_last)) for k, v in batch.items())
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a NamedTuple
        return type(batch)(*(to_device(v, device, channels_last) for v in batch))
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(v, device, channels_last) for v in batch)
    return batch


def _describe(batch: Any) -> str:
    if isinstance(batch, torch.Tensor):
        return f"a tensor of shape {tuple(batch.shape)}"
    if isinstance(batch, Mapping):
        return f"a dict with keys {sorted(batch)}"
    return f"a {type(batch).__name__}"
