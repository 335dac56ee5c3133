"""Average precision of a detector (d2l 14.3-14.8; PASCAL VOC, Everingham et al. 2010; COCO,
Lin et al. 2014), written to be read.

A detector's output is a ranked list: every detection has a score. Walking down the list from
the most confident detection, each one is a true positive if it overlaps a not yet matched
ground-truth box of its class by at least the IoU threshold, else a false positive. After each
step we know the precision (how many of the detections so far were right) and the recall (how
many of the ground-truth boxes were found). Average precision summarises that curve:

1. the *precision envelope* replaces each precision with the best precision at any larger
   recall (so the curve only goes down);
2. COCO reads the envelope at 101 recalls 0, 0.01, ..., 1 (the first point of the list that
   reaches each recall; 0 past the last recall reached) and averages them.

COCO's headline number, AP@[.5:.95], averages AP over the IoU thresholds 0.5, 0.55, ..., 0.95
and over the classes; the VOC-style AP@0.5 uses the threshold 0.5 only. These functions equal
pycocotools' ``COCOeval`` (tested); :class:`divekit.vision.metrics.MeanAveragePrecision` calls
pycocotools itself, which is faster and also reports the COCO size ranges.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

COCO_IOU_THRESHOLDS = tuple(0.5 + 0.05 * i for i in range(10))
# 0, 0.01, ..., 1 computed as k * 0.01, bit for bit COCOeval's recall points (np.linspace), so a
# recall of exactly k / 100 compares with them as it does in pycocotools.
RECALL_POINTS = torch.arange(101, dtype=torch.float64) * 0.01


def iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Intersection over union of every pair of xyxy boxes (14.3); 0 where the union is empty.

    Shape: (N, 4), (M, 4) -> (N, M).
    """
    top_left = torch.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = torch.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    intersection = (bottom_right - top_left).clamp(min=0).prod(-1)
    area1 = (boxes1[:, 2:] - boxes1[:, :2]).prod(-1)
    area2 = (boxes2[:, 2:] - boxes2[:, :2]).prod(-1)
    union = area1[:, None] + area2[None, :] - intersection
    return torch.where(union > 0, intersection / union.clamp(min=1e-12), 0.0)


def match_detections(boxes: torch.Tensor, scores: torch.Tensor, truth: torch.Tensor,
                     iou_threshold: float) -> torch.Tensor:
    """Which detections of one image and one class are true positives (COCO's greedy matching).

    Detections are visited by decreasing score; each takes the unmatched ground-truth box it
    overlaps most, if that overlap is at least ``iou_threshold``; otherwise it is a false
    positive (a second detection of an object already found is one too).

    Args:
        boxes: detections (D, 4) xyxy.
        scores: (D,) confidences.
        truth: ground-truth boxes (G, 4) xyxy.
        iou_threshold: least IoU of a true positive.

    Returns:
        (D,) bool, in the order of ``boxes``.
    """
    hit = torch.zeros(len(boxes), dtype=torch.bool)
    if len(boxes) == 0 or len(truth) == 0:
        return hit
    overlaps = iou(boxes.double(), truth.double())
    taken = torch.zeros(len(truth), dtype=torch.bool)
    for d in torch.argsort(scores, descending=True, stable=True).tolist():
        best, best_iou = -1, iou_threshold
        for g in range(len(truth)):
            # ">=" and "later wins a tie" as pycocotools: it only skips strictly smaller IoUs.
            if not taken[g] and overlaps[d, g] >= best_iou:
                best, best_iou = g, overlaps[d, g].item()
        if best >= 0:
            taken[best], hit[d] = True, True
    return hit


def precision_recall(scores: torch.Tensor, hits: torch.Tensor, num_truth: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Precision and recall after each detection, detections ranked by decreasing score.

    Args:
        scores: (N,) scores of every detection of one class over all images.
        hits: (N,) whether each one is a true positive.
        num_truth: ground-truth boxes of the class over all images (> 0).

    Returns:
        ``(precision, recall)``, each (N,), in rank order.
    """
    order = torch.argsort(scores, descending=True, stable=True)
    true_positives = hits[order].double().cumsum(0)
    ranks = torch.arange(1, len(order) + 1, dtype=torch.float64)
    return true_positives / ranks, true_positives / num_truth


def interpolated_average_precision(precision: torch.Tensor, recall: torch.Tensor) -> float:
    """COCO's 101-point interpolated AP of a precision/recall curve (in rank order)."""
    # The envelope: the best precision at this recall or any larger one (a running max from
    # the end of the list).
    envelope = precision.flip(0).cummax(0).values.flip(0)
    total = 0.0
    for r in RECALL_POINTS:
        reached = (recall >= r).nonzero()
        if len(reached):  # the first rank whose recall reaches r; beyond the last recall: 0
            total += envelope[reached[0, 0]].item()
    return total / len(RECALL_POINTS)


def average_precision(detections: Sequence[tuple[torch.Tensor, torch.Tensor]],
                      truths: Sequence[torch.Tensor], iou_threshold: float = 0.5,
                      max_detections: int = 100) -> float | None:
    """AP of one class at one IoU threshold over a set of images.

    Args:
        detections: per image, ``(boxes (D, 4), scores (D,))`` of this class.
        truths: per image, ground-truth boxes (G, 4) of this class.
        iou_threshold: least IoU of a true positive.
        max_detections: per image, only the highest-scoring ones count (COCO's 100).

    Returns:
        AP in [0, 1]; ``None`` when no image has a ground-truth box of the class (COCO leaves
        such a class out of the mean).
    """
    num_truth = sum(len(t) for t in truths)
    if num_truth == 0:
        return None
    all_scores, all_hits = [], []
    for (boxes, scores), truth in zip(detections, truths, strict=True):
        keep = torch.argsort(scores, descending=True, stable=True)[:max_detections]
        all_scores.append(scores[keep].double())
        all_hits.append(match_detections(boxes[keep], scores[keep], truth, iou_threshold))
    scores, hits = torch.cat(all_scores), torch.cat(all_hits)
    if len(scores) == 0:
        return 0.0
    precision, recall = precision_recall(scores, hits, num_truth)
    return interpolated_average_precision(precision, recall)


def mean_average_precision(preds: Sequence[dict[str, torch.Tensor]],
                           targets: Sequence[dict[str, torch.Tensor]],
                           iou_thresholds: Sequence[float] = COCO_IOU_THRESHOLDS,
                           max_detections: int = 100) -> float:
    """mAP: AP averaged over the classes with ground truth and over the IoU thresholds.

    Args:
        preds: per image, a dict with ``boxes`` (D, 4) xyxy, ``scores`` (D,), ``labels`` (D,).
        targets: per image, a dict with ``boxes`` (G, 4) and ``labels`` (G,).
        iou_thresholds: COCO's 0.5:0.05:0.95 by default (AP@[.5:.95]); ``(0.5,)`` gives the
            VOC-style AP@0.5.
        max_detections: per image and class, only the highest-scoring ones count.

    Returns:
        mAP in [0, 1]; -1 when there is no ground truth at all (COCO's "nothing to score").
    """
    classes = sorted({int(c) for t in targets for c in t["labels"]})
    values = []
    for c in classes:
        detections = [(p["boxes"][p["labels"] == c], p["scores"][p["labels"] == c])
                      for p in preds]
        truths = [t["boxes"][t["labels"] == c] for t in targets]
        for threshold in iou_thresholds:
            ap = average_precision(detections, truths, threshold, max_detections)
            if ap is not None:
                values.append(ap)
    return sum(values) / len(values) if values else -1.0
