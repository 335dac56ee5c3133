"""14.9-14.11 Semantic segmentation: per-pixel cross-entropy, pixel accuracy and (mean) IoU.

Batches are ``(images (N, 3, H, W), label maps (N, H, W))`` with one class index per pixel and
:data:`~divekit.data.targets.IGNORE` (255) where no class counts (VOC's object boundaries, pixels
a crop moved in from outside the image); the model returns logits ``(N, C, H, W)``. Ignored
pixels count nowhere: not in the loss, not in the example count, not in any metric.

Metrics (torchmetrics', exact over a split and across processes): ``pixel_acc``, the fraction
of counted pixels classified right (the book's "pixel accuracy"), and ``miou``, the IoU
``TP / (TP + FP + FN)`` of each class averaged over the classes that occur in the labels or the
predictions of the split (Long et al., 2015). With ``class_metrics`` (``divekit eval`` turns it
on) the IoU of every class is reported too, named after it (``iou_<class>``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from divekit.data.targets import IGNORE
from divekit.engine.task import Output, register_task
from divekit.errors import DivekitError
from divekit.tasks.classification import Classification


@register_task("segmentation")
@dataclass
class Segmentation(Classification):
    """Per-pixel class labels against per-pixel logits.

    Args:
        num_classes: classes ``C`` including background; default: the data's.
        label_smoothing: as for classification.
        class_metrics: also report the IoU of every class (``iou_<class>``).
    """

    class_metrics: bool = False
    monitor = "miou"

    def setup(self, data: Any) -> None:
        super().setup(data)
        self.class_names = list(getattr(data, "class_names", None) or [])

    def count(self, batch: Any) -> torch.Tensor:
        return (self.targets(batch) != IGNORE).sum()

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if outputs.ndim != 4 or targets.ndim != 3 or outputs.shape[-2:] != targets.shape[-2:]:
            raise DivekitError(f"segmentation needs logits (N, C, H, W) and label maps (N, H, W) "
                               f"of the same size, got {tuple(outputs.shape)} and "
                               f"{tuple(targets.shape)}")
        return F.cross_entropy(outputs.float(), targets.long(), ignore_index=IGNORE,
                               label_smoothing=self.label_smoothing)

    def metrics(self, split: str) -> dict[str, Any]:
        if self.num_classes is None:
            raise DivekitError("segmentation metrics need the number of classes: pass data "
                               "with class names, or task=Segmentation(num_classes=C)")
        options = {"ignore_index": IGNORE, "validate_args": False}
        # Imported here: torchmetrics takes ~2 s to import, which every command would pay.
        from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

        from divekit.tasks.iou import ClassNamedIoU

        metrics = {"pixel_acc": MulticlassAccuracy(self.num_classes, average="micro", **options),
                   "miou": MulticlassJaccardIndex(self.num_classes, average="macro", **options)}
        if self.class_metrics:
            metrics["iou"] = ClassNamedIoU(self.num_classes, getattr(self, "class_names", []),
                                           **options)
        return metrics

    def update(self, metrics: dict[str, Any], output: Output, batch: Any) -> None:
        predictions, targets = output.outputs.argmax(1), self.targets(batch).long()
        for metric in metrics.values():
            metric.update(predictions, targets)

    def predict(self, model: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        """Class maps ``(N, H, W)`` (int64)."""
        return super().predict(model, inputs).argmax(1)

    def describe(self, outputs: torch.Tensor, data: Any, top: int = 3) -> list[str]:
        """``name 61.2%, name 30.1%, ...``: the ``top`` classes covering most of each map."""
        names = list(getattr(data, "class_names", None) or [])
        lines = []
        for labels in outputs:
            counts = torch.bincount(labels.flatten(), minlength=len(names))
            fractions = counts.double() / labels.numel()
            order = fractions.argsort(descending=True)[:top]
            lines.append(", ".join(f"{names[i] if i < len(names) else i} {fractions[i]:.1%}"
                                   for i in order.tolist() if counts[i] > 0))
        return lines
