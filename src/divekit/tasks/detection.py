"""14.3-14.8 Object detection: named losses in training, COCO mAP over a split.

A batch is ``(images, targets)`` as :func:`~divekit.data.collate.detection_collate` gives it:
images ``(B, 3, H, W)`` and one dict per image (``boxes`` ``(K, 4)`` xyxy pixels, ``labels``
``(K,)``, optionally ``masks`` ``(K, H, W)``). A detector follows torchvision's protocol:

- ``model(images, targets)`` in training returns a dict of scalar losses; the entries named
  ``loss_*`` sum to the training loss, any others are diagnostics (TinySSD's ``class_err`` and
  ``box_mae``, the book's training figures) logged next to them;
- ``model(images)`` in eval returns one dict per image (``boxes``, ``scores``, ``labels``,
  ``masks`` for Mask R-CNN), and ``model(images, targets)`` in eval returns
  ``(detections, losses)``, so validation reports its loss too.

Validation and test splits are scored with COCO's average precision (pycocotools' COCOeval
through :class:`~divekit.vision.metrics.MeanAveragePrecision`): ``map`` (AP@[.5:.95]),
``map_50`` (the VOC-style AP@0.5 the best checkpoint is picked by), ``map_75``, by size, and
with ``masks`` the same for instance masks (``mask_map``, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from divekit.engine.task import Output, Task, register_task
from divekit.errors import DivekitError
from divekit.vision.metrics import MeanAveragePrecision


@register_task("detection")
@dataclass
class Detection(Task):
    """Detection losses and mAP.

    Args:
        masks: also score instance masks (``mask_map``, ...); default: when the data has
            masks, for models that return them (Mask R-CNN).
        class_metrics: also report AP@[.5:.95] and AP@0.5 per class (``map_<class>``,
            ``map_50_<class>``); ``divekit eval`` turns it on.
    """

    masks: bool | None = None
    class_metrics: bool = False
    monitor = "map_50"

    def setup(self, data: Any) -> None:
        self.class_names = list(getattr(data, "class_names", None) or [])
        if self.masks is None:  # the data's masks are scored when the model returns masks
            test = getattr(data, "test", None)
            first = test[0] if test is not None and len(test) else None
            self.masks = isinstance(first, tuple) and "masks" in first[1]

    def count(self, batch: Any) -> int:
        return len(self.targets(batch))

    def step(self, model: nn.Module, batch: Any) -> Output:
        images, targets = self.inputs(batch), self.targets(batch)
        if model.training:
            detections, losses = None, model(images, targets)
        else:
            detections, losses = model(images, targets)
        if not isinstance(losses, dict) or not any(k.startswith("loss") for k in losses):
            raise DivekitError(f"a detector must return a dict of losses named 'loss_*' when "
                               f"given targets, got {type(losses).__name__}")
        loss = sum(value for name, value in losses.items() if name.startswith("loss"))
        return Output(loss, detections, dict(losses))

    def metrics(self, split: str) -> dict[str, Any]:
        if split == "train":  # mAP needs the eval-mode detections, which training skips
            return {}
        names = getattr(self, "class_names", [])
        metrics = {"map": _ClassNamedAP(names, class_metrics=self.class_metrics)}
        if self.masks:
            metrics["mask"] = _ClassNamedAP(names, iou_type="segm", prefix="mask_",
                                            class_metrics=self.class_metrics)
        return metrics

    def update(self, metrics: dict[str, Any], output: Output, batch: Any) -> None:
        detections, targets = output.outputs, self.targets(batch)
        for name, metric in metrics.items():
            # A box-only model (Faster R-CNN) on data with masks: its mask AP stays unreported.
            if name != "mask" or all("masks" in detection for detection in detections):
                metric.update(detections, targets)

    def predict(self, model: nn.Module, inputs: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        return [{key: value.float().cpu() if value.is_floating_point() else value.cpu()
                 for key, value in detection.items()} for detection in model(inputs)]

    def describe(self, outputs: list[dict[str, torch.Tensor]], data: Any, top: int = 3
                 ) -> list[str]:
        """``name 0.97 [x1, y1, x2, y2]; ...``: the ``top`` highest-scoring detections of each
        image, boxes in the model's input pixels."""
        names = list(getattr(data, "class_names", None) or [])
        lines = []
        for detection in outputs:
            found = [f"{names[label] if label < len(names) else label} {score:.2f} "
                     f"[{', '.join(f'{v:.0f}' for v in box)}]"
                     for box, score, label in zip(detection["boxes"][:top].tolist(),
                                                  detection["scores"][:top].tolist(),
                                                  detection["labels"][:top].tolist(),
                                                  strict=True)]
            lines.append("; ".join(found) or "nothing found")
        return lines


class _ClassNamedAP(MeanAveragePrecision):
    """COCO mAP whose per-class results are scalars named after the classes (``map_50_cat``),
    so that they are logged and printed like the other metrics; nothing when never updated."""

    def __init__(self, class_names: list[str], **options: Any) -> None:
        super().__init__(**options)
        self.class_names = class_names

    def compute(self) -> dict[str, torch.Tensor]:
        if not self.groundtruths and not self.detections:
            return {}
        results = super().compute()
        classes = results.pop(f"{self.prefix}classes", None)
        per_class = {key: results.pop(f"{self.prefix}{key}_per_class", None)
                     for key in ("map", "map_50")}
        if classes is not None:
            for key, values in per_class.items():
                for label, value in zip(classes.tolist(), values, strict=True):
                    name = self.class_names[label] if label < len(self.class_names) else label
                    results[f"{self.prefix}{key}_{name}"] = value
        return results
