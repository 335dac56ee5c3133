"""Non-maximum suppression (d2l 14.4.4 "Predicting Bounding Boxes with Non-Maximum Suppression";
Neubeck & Van Gool 2006, "Efficient Non-Maximum Suppression"), with torchvision.ops' semantics.

Greedy NMS is sequential by definition (whether box i survives depends on the survivors before
it). The boxes, sorted by score, are taken in blocks of ``BLOCK``: the block's boxes that no
earlier box removed are compared with each other (a small boolean overlap matrix, scanned
sequentially, visiting only the kept boxes), then the block's kept boxes remove, in one
vectorised comparison, every later box not removed yet that they overlap. The work is
``kept x remaining`` IoUs instead of the full ``N x N`` matrix, with a few tensor calls per
block instead of per kept box (the course's loop).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from divekit.errors import DivekitError
from divekit.vision.boxes import check_boxes, check_iou_threshold

# Boxes per block: larger blocks mean fewer tensor calls but more IoUs against boxes that an
# earlier box of the same block removes (measured in benchmarks/detection_ops.py).
BLOCK = 256


def _check_scores(boxes: Tensor, scores: Tensor, name: str = "scores") -> None:
    if not isinstance(scores, Tensor) or scores.shape != boxes.shape[:1]:
        shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise DivekitError(f"{name} must be a 1-D tensor with one entry per box "
                           f"({boxes.shape[0]}), got {shape}")


def _overlaps(corners: Tensor, area: Tensor, rows: Tensor, cols: Tensor,
              iou_threshold: float) -> Tensor:
    """``(len(rows), len(cols))`` bool: IoU(row box, column box) > iou_threshold.

    The IoU is :func:`~divekit.vision.boxes.pairwise_iou`'s expression (same rounding), in
    place; an empty union (0 / 0) counts as IoU 0.
    """
    a, b = corners[:, rows, None], corners[:, None, cols]  # x1, y1, x2, y2 along dim 0
    width = torch.minimum(a[2], b[2]).sub_(torch.maximum(a[0], b[0])).clamp_(min=0)
    height = torch.minimum(a[3], b[3]).sub_(torch.maximum(a[1], b[1])).clamp_(min=0)
    inter = width.mul_(height)
    union = (area[rows, None] + area[None, cols]).sub_(inter)
    return (inter.div_(union) > iou_threshold) & (union > 0)


def _scan(overlap: np.ndarray) -> np.ndarray:
    """Positions kept by greedy suppression, given the overlap matrix of boxes sorted by score
    (only entries (i, j) with j > i are read)."""
    n = overlap.shape[0]
    removed = np.zeros(n, dtype=bool)
    kept = []
    i = 0
    while True:
        kept.append(i)
        tail = removed[i + 1:]
        tail |= overlap[i, i + 1:]  # in place: tail is a view of removed
        if tail.all():  # also true when the tail is empty
            break
        i += 1 + int(tail.argmin())  # first box after i that nothing has removed
    return np.asarray(kept, dtype=np.int64)


def nms_sorted(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """:func:`nms` without input checks (for callers that made the boxes themselves)."""
    n, device = boxes.shape[0], boxes.device
    if n == 0:
        return torch.zeros(0, dtype=torch.int64, device=device)
    # Stable sort: equal scores keep their input order (lower index first).
    order = torch.sort(scores, descending=True, stable=True).indices
    sorted_boxes = boxes[order] if boxes.is_floating_point() else boxes[order].float()
    corners = sorted_boxes.T.contiguous()  # (4, N): x1, y1, x2, y2 rows
    area = (corners[2] - corners[0]) * (corners[3] - corners[1])
    removed = torch.zeros(n, dtype=torch.bool, device=device)
    kept = []
    for start in range(0, n, BLOCK):
        end = min(start + BLOCK, n)
        alive = torch.nonzero(~removed[start:end]).squeeze(1) + start
        if alive.numel() == 0:
            continue
        inside = _overlaps(corners, area, alive, alive, iou_threshold)
        block_kept = alive[torch.from_numpy(_scan(inside.cpu().numpy())).to(device)]
        kept.append(block_kept)
        later = torch.nonzero(~removed[end:]).squeeze(1) + end
        if later.numel():
            hit = _overlaps(corners, area, block_kept, later, iou_threshold).any(dim=0)
            removed[later[hit]] = True
    return order[torch.cat(kept)]


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression: keep the best box, drop those overlapping it, repeat.

    A box is dropped when its IoU with a kept, higher-scored box is ``> iou_threshold``.

    Args:
        boxes: ``(N, 4)`` xyxy boxes.
        scores: ``(N,)`` scores; ties are broken by position (the earlier box comes first).
        iou_threshold: IoU in ``[0, 1]`` above which the lower-scored box is suppressed.

    Returns:
        int64 indices of the kept boxes, by decreasing score; empty for ``N = 0``.
    """
    check_boxes(boxes)
    _check_scores(boxes, scores)
    return nms_sorted(boxes, scores, check_iou_threshold(iou_threshold))


def class_offset_boxes(boxes: Tensor, idxs: Tensor) -> Tensor:
    """Shift each category's boxes to its own region so that boxes of different categories
    never overlap (torchvision's batched_nms trick); no input checks."""
    if boxes.shape[0] == 0:
        return boxes
    # The span (not torchvision's max + 1) keeps the regions apart for negative coordinates too.
    span = boxes.max() - boxes.min() + 1
    return boxes + (idxs.to(boxes.dtype) * span)[:, None]


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Class-aware NMS: suppression only between boxes of the same category ``idxs``.

    One :func:`nms` call over boxes shifted apart per category (no loop over categories).

    Args:
        boxes: ``(N, 4)`` xyxy boxes.
        scores: ``(N,)`` scores.
        idxs: ``(N,)`` integer category (or image) of each box.
        iou_threshold: IoU in ``[0, 1]`` above which the lower-scored box is suppressed.

    Returns:
        int64 indices of the kept boxes, by decreasing score.
    """
    check_boxes(boxes)
    _check_scores(boxes, scores)
    _check_scores(boxes, idxs, "idxs")
    if idxs.is_floating_point():
        raise DivekitError("idxs must be an integer tensor of categories; cast it with .long()")
    threshold = check_iou_threshold(iou_threshold)
    return nms_sorted(class_offset_boxes(boxes, idxs), scores, threshold)
