"""4.1-4.4 Classification: cross-entropy loss on logits, accuracy over a split.

Works for one label per example (logits ``(N, C)``, labels ``(N,)``) and for one label per
position (logits ``(N, C, H, W)`` against labels ``(N, H, W)``, as in segmentation); soft labels
(probabilities ``(N, C)``, e.g. after mixup) train with the soft cross-entropy and are scored by
their dominant class.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from divekit.engine.task import Output, Task, register_task, returns_loss
from divekit.errors import DivekitError


@register_task("classification")
@dataclass
class Classification(Task):
    """Class labels against logits.

    Args:
        num_classes: classes ``C``; default: the data's ``num_classes``.
        label_smoothing: mix the one-hot targets with the uniform distribution by this
            weight (Szegedy et al. 2016).
        flip_test: test-time augmentation: in evaluation and prediction (the model in eval
            mode), the logits of each image and of its left-right mirror are averaged (label
            maps mirrored back first). Worth it where a mirror image has the same class
            (clothes, animals, street scenes; not digits or text).

    Metrics: ``acc`` (torchmetrics' micro-averaged ``MulticlassAccuracy``).
    """

    num_classes: int | None = None
    label_smoothing: float = 0.0
    flip_test: bool = False
    monitor = "acc"

    def __post_init__(self) -> None:
        if not 0 <= self.label_smoothing < 1:
            raise DivekitError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not isinstance(self.flip_test, bool):
            raise DivekitError(f"flip_test must be true or false, got {self.flip_test!r}")

    def setup(self, data) -> None:
        if self.num_classes is None:
            self.num_classes = getattr(data, "num_classes", None)

    def step(self, model, batch) -> Output:
        if returns_loss(model):
            return super().step(model, batch)
        outputs = self._logits(model, self.inputs(batch))
        return Output(self.loss(outputs, self.targets(batch)), outputs)

    def predict(self, model, inputs: torch.Tensor) -> torch.Tensor:
        if returns_loss(model):
            return super().predict(model, inputs)
        return self._logits(model, inputs)

    def _logits(self, model, inputs: torch.Tensor) -> torch.Tensor:
        outputs = model(inputs)
        if self.flip_test and not model.training and isinstance(inputs, torch.Tensor) \
                and inputs.ndim == 4:
            mirrored = model(inputs.flip(-1))
            if mirrored.ndim == 4:  # a label map (segmentation): mirrored back first
                mirrored = mirrored.flip(-1)
            outputs = (outputs + mirrored) / 2
        return outputs

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs.float(), targets, label_smoothing=self.label_smoothing)

    def metrics(self, split: str) -> dict:
        from torchmetrics.classification import MulticlassAccuracy

        if self.num_classes is None:
            raise DivekitError("classification metrics need the number of classes: pass data "
                               "with class names, or task=Classification(num_classes=C)")
        return {"acc": MulticlassAccuracy(self.num_classes, average="micro",
                                          validate_args=False)}

    def update(self, metrics: dict, output: Output, batch) -> None:
        targets = self.targets(batch)
        if targets.is_floating_point():  # soft labels: score the dominant class
            targets = targets.argmax(1)
        # Class indices, not logits: torchmetrics' update then costs ~50 us instead of ~80.
        metrics["acc"].update(output.outputs.argmax(1), targets)

    def describe(self, outputs: torch.Tensor, data, top: int = 3) -> list[str]:
        """``name 0.91, name 0.05, ...``: the ``top`` most probable classes of each example."""
        names = list(getattr(data, "class_names", None) or [])
        probabilities = outputs.float().softmax(-1)
        values, indices = probabilities.topk(min(top, probabilities.shape[-1]), dim=-1)
        return [", ".join(f"{names[i] if i < len(names) else i} {p:.3f}"
                          for p, i in zip(row_p.tolist(), row_i.tolist(), strict=True))
                for row_p, row_i in zip(values, indices, strict=True)]
