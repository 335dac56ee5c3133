"""Segmentation's per-class IoU, each class's value named after it (``divekit eval`` reports
them); a module of its own so that torchmetrics is imported only when the metrics are built."""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics.classification import MulticlassJaccardIndex


class ClassNamedIoU(MulticlassJaccardIndex):
    """Every class's IoU as a scalar named after it (``iou_cat``), so that it is logged and
    printed like the other metrics; a class absent from labels and predictions is left out."""

    def __init__(self, num_classes: int, class_names: list[str], **options: Any) -> None:
        super().__init__(num_classes, average="none", zero_division=float("nan"), **options)
        self.class_names = class_names

    def compute(self) -> dict[str, torch.Tensor]:
        values = super().compute()
        names = self.class_names if len(self.class_names) == len(values) else \
            [str(i) for i in range(len(values))]
        return {f"iou_{name}": value for name, value in zip(names, values, strict=True)
                if not torch.isnan(value)}
