"""Mean average precision (d2l 14.3-14.8; COCO's AP@[.5:.95], Lin et al. 2014) via pycocotools.

:class:`MeanAveragePrecision` has torchmetrics' interface and result names, so a user can swap
``torchmetrics.detection.MeanAveragePrecision`` in: ``update(preds, targets)`` with one dict per
image (``boxes`` xyxy pixels, ``scores``, ``labels``; ``masks`` for ``iou_type="segm"``),
``compute()``, ``reset()``. The scoring itself is pycocotools' ``COCOeval``, the reference every
detection paper reports; :mod:`divekit.scratch.detection` is the same computation written to be
read, and is tested equal to it.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from divekit.errors import DivekitError

_AREAS = ("all", "small", "medium", "large")  # COCOeval's area ranges, in its order


class MeanAveragePrecision:
    """COCO mAP of detections (boxes or instance masks) over every image seen.

    Args:
        iou_type: ``"bbox"`` scores boxes, ``"segm"`` scores instance masks (``masks`` (D, H, W)
            in predictions, binarised at 0.5, and (K, H, W) in targets).
        class_metrics: also return ``map_per_class`` and ``map_50_per_class`` (one per class
            in ``classes``, every label seen in predictions or targets, ascending).
        max_detections: detections per image and class kept (the highest-scoring ones).
        prefix: put before every result name (e.g. ``"mask_"``).

    ``compute()`` returns float tensors: ``map`` (AP@[.5:.95]), ``map_50``, ``map_75``,
    ``map_small``/``map_medium``/``map_large`` (COCO's area ranges), ``mar_1``, ``mar_10``,
    ``mar_<max_detections>`` (average recall) and ``mar_small``/``mar_medium``/``mar_large``;
    ``-1`` where nothing can be scored (no ground truth in that range). Labels are object
    classes (any ints; 0-based in divekit). Under ``torchrun`` every process keeps its own
    images and ``compute`` gathers them (every process gets the same result).
    """

    higher_is_better = True

    def __init__(self, iou_type: str = "bbox", class_metrics: bool = False,
                 max_detections: int = 100, prefix: str = "") -> None:
        if iou_type not in ("bbox", "segm"):
            raise DivekitError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
        if not isinstance(max_detections, int) or max_detections < 1:
            raise DivekitError(f"max_detections must be a positive int, got {max_detections!r}")
        self.iou_type, self.class_metrics = iou_type, class_metrics
        self.max_detections, self.prefix = max_detections, prefix
        self.reset()

    def reset(self) -> None:
        """Forget every image seen."""
        # Plain lists of per-image records (CPU tensors, masks as RLE strings): cheap to keep,
        # picklable for all_gather_object and for a checkpoint loaded with weights_only.
        self.detections: list[dict[str, Any]] = []
        self.groundtruths: list[dict[str, Any]] = []

    def to(self, device: torch.device | str) -> MeanAveragePrecision:
        """The records stay on the CPU, where pycocotools reads them."""
        return self

    @property
    def metric_state(self) -> dict[str, list]:
        """The per-image records (torchmetrics' name for a metric's state)."""
        return {"detections": self.detections, "groundtruths": self.groundtruths}

    def update(self, preds: list[dict[str, torch.Tensor]],
               targets: list[dict[str, torch.Tensor]]) -> None:
        """Add a batch: one prediction dict and one target dict per image."""
        if len(preds) != len(targets):
            raise DivekitError(f"MeanAveragePrecision.update got {len(preds)} predictions for "
                               f"{len(targets)} targets; pass one dict per image in each")
        for i, (pred, target) in enumerate(zip(preds, targets, strict=True)):
            self.detections.append(self._record(pred, i, "preds", ("boxes", "scores", "labels")))
            self.groundtruths.append(self._record(target, i, "targets", ("boxes", "labels")))

    def _record(self, item: dict[str, torch.Tensor], i: int, name: str,
                keys: tuple[str, ...]) -> dict[str, Any]:
        needed = keys + (("masks",) if self.iou_type == "segm" else ())
        missing = [key for key in needed if key not in item]
        if missing:
            raise DivekitError(f"MeanAveragePrecision: {name}[{i}] lacks {missing}; each dict "
                               f"needs {list(needed)}")
        record = {key: torch.as_tensor(item[key]).detach().cpu() for key in keys}
        record["boxes"] = record["boxes"].double().reshape(-1, 4)
        record["labels"] = record["labels"].long().reshape(-1)
        count = len(record["labels"])
        if "scores" in record:
            record["scores"] = record["scores"].double().reshape(-1)
        if "iscrowd" in item:
            record["iscrowd"] = torch.as_tensor(item["iscrowd"]).detach().cpu().long()
        if self.iou_type == "segm":
            masks = torch.as_tensor(item["masks"]).detach()
            if masks.dim() != 3 or len(masks) != count:
                raise DivekitError(f"MeanAveragePrecision: {name}[{i}]['masks'] must be "
                                   f"(N, H, W) with one mask per label, got "
                                   f"{tuple(masks.shape)} for {count} labels")
            record["masks"] = _encode(masks)
        if any(len(value) != count for value in record.values()):
            raise DivekitError(f"MeanAveragePrecision: {name}[{i}] has entries of different "
                               f"lengths {({k: len(v) for k, v in record.items()})}")
        return record

    def compute(self) -> dict[str, torch.Tensor]:
        """COCO's AP and AR over every image seen (by every process)."""
        # Imported here: the engine imports the detection task, which imports this module.
        from divekit.engine import distributed

        detections = [r for part in distributed.gather(self.detections) for r in part]
        groundtruths = [r for part in distributed.gather(self.groundtruths) for r in part]
        classes = sorted({int(label) for record in detections + groundtruths
                          for label in record["labels"]})
        precision, recall = self._evaluate(groundtruths, detections, classes)
        # Axes: IoU threshold (.5, .55, ..., .95), recall point, class, area range, max dets.
        results = {"map": _mean(precision[:, :, :, 0, -1]),
                   "map_50": _mean(precision[0, :, :, 0, -1]),
                   "map_75": _mean(precision[5, :, :, 0, -1])}
        for a, area in enumerate(_AREAS[1:], 1):
            results[f"map_{area}"] = _mean(precision[:, :, :, a, -1])
        for m, limit in enumerate((1, 10, self.max_detections)):
            results[f"mar_{limit}"] = _mean(recall[:, :, 0, m])
        for a, area in enumerate(_AREAS[1:], 1):
            results[f"mar_{area}"] = _mean(recall[:, :, a, -1])
        if self.class_metrics:
            results["map_per_class"] = torch.tensor(
                [_mean(precision[:, :, k, 0, -1]) for k in range(len(classes))])
            results["map_50_per_class"] = torch.tensor(
                [_mean(precision[0, :, k, 0, -1]) for k in range(len(classes))])
            results["classes"] = torch.tensor(classes, dtype=torch.long)
        return {f"{self.prefix}{name}": value if isinstance(value, torch.Tensor)
                else torch.tensor(value, dtype=torch.float32) for name, value in results.items()}

    def _evaluate(self, groundtruths: list[dict], detections: list[dict],
                  classes: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """COCOeval's precision (T, R, K, A, M) and recall (T, K, A, M) arrays."""
        thresholds, recall_points = 10, 101
        if not classes or not groundtruths:
            return (-np.ones((thresholds, recall_points, len(classes), 4, 3)),
                    -np.ones((thresholds, len(classes), 4, 3)))
        images = [{"id": i, "height": _height(g, d), "width": _width(g, d)}
                  for i, (g, d) in enumerate(zip(groundtruths, detections, strict=True))]
        categories = [{"id": c} for c in classes]
        truth = _coco(images, self._annotations(groundtruths, False), categories)
        found = _coco(images, self._annotations(detections, True), categories)
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            evaluation = COCOeval(truth, found, self.iou_type)
            evaluation.params.maxDets = [1, 10, self.max_detections]
            evaluation.evaluate()
            evaluation.accumulate()
        return evaluation.eval["precision"], evaluation.eval["recall"]

    def _annotations(self, records: list[dict], scored: bool) -> list[dict[str, Any]]:
        """COCO annotation dicts (``bbox`` as x, y, w, h) of every image's boxes or masks."""
        annotations: list[dict[str, Any]] = []
        for image, record in enumerate(records):
            boxes = record["boxes"].clone()
            boxes[:, 2:] -= boxes[:, :2]
            crowd = record.get("iscrowd", torch.zeros(len(boxes), dtype=torch.long)).tolist()
            scores = record["scores"].tolist() if scored else [None] * len(boxes)
            masks = record.get("masks")
            if masks is not None:  # COCO's mask areas and, for detections, boxes of the masks
                areas = mask_utils.area(masks).tolist() if masks else []
                if scored and masks:
                    boxes = torch.as_tensor(mask_utils.toBbox(masks)).reshape(-1, 4)
            else:
                areas = (boxes[:, 2] * boxes[:, 3]).tolist()
            for j, (box, label) in enumerate(zip(boxes.tolist(), record["labels"].tolist(),
                                                 strict=True)):
                annotation = {"id": len(annotations) + 1, "image_id": image,
                              "category_id": label, "bbox": box, "area": areas[j],
                              "iscrowd": int(crowd[j])}
                if masks is not None:
                    annotation["segmentation"] = masks[j]
                if scored:
                    annotation["score"] = scores[j]
                annotations.append(annotation)
        return annotations


def _encode(masks: torch.Tensor) -> list[dict[str, Any]]:
    """Masks (N, H, W) binarised at 0.5 as COCO run-length encodings (counts as text)."""
    binary = (masks.float() > 0.5).cpu().numpy().astype(np.uint8)
    rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0))) if len(binary) else []
    return [{"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")} for rle in rles]


def _coco(images: list[dict], annotations: list[dict], categories: list[dict]) -> COCO:
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations, "categories": categories}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _height(*records: dict) -> int:
    return next((r["masks"][0]["size"][0] for r in records if r.get("masks")), 0)


def _width(*records: dict) -> int:
    return next((r["masks"][0]["size"][1] for r in records if r.get("masks")), 0)


def _mean(values: np.ndarray) -> float:
    """COCOeval.summarize's mean: over the entries that exist (-1 marks none), else -1."""
    kept = values[values > -1]
    return float(kept.mean()) if kept.size else -1.0
