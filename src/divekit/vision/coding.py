"""Anchor labelling and box coding (d2l 14.4.3 "Labeling Anchor Boxes in Training Data",
14.4.4 prediction with NMS; the offset parametrisation of Girshick et al. 2014, "Rich feature
hierarchies", as used by SSD, Liu et al. 2016).

The course's functions map onto these: ``offset_boxes`` is :func:`encode_boxes` and
``offset_inverse`` is :func:`decode_boxes` with the default weights (10, 10, 5, 5), the RPN uses
weights (1, 1, 1, 1). :func:`multibox_target` and :func:`multibox_detection` keep the course's
tensors (normalised xyxy boxes, class 0 = background); the first is vectorised over the batch
(its only loop is the greedy assignment's, once per ground-truth box), the second decodes the
batch at once and runs one NMS per image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from divekit.errors import DivekitError
from divekit.vision.boxes import box_convert, check_boxes, check_iou_threshold, pairwise_iou
from divekit.vision.nms import nms_sorted

WEIGHTS = (10.0, 10.0, 5.0, 5.0)
CLAMP = math.log(1000.0 / 16)


def _check_last4(tensor: Tensor, name: str) -> None:
    if not isinstance(tensor, Tensor) or tensor.ndim == 0 or tensor.shape[-1] != 4:
        shape = tuple(tensor.shape) if isinstance(tensor, Tensor) else type(tensor).__name__
        raise DivekitError(f"{name} must be a (..., 4) tensor, got {shape}")


def encode_boxes(reference: Tensor, boxes: Tensor, weights: Sequence[float] = WEIGHTS,
                 eps: float = 1e-6) -> Tensor:
    """Offsets of ``boxes`` relative to ``reference`` boxes (the course's ``offset_boxes``).

    ``(wx (cx - cx_a) / w_a, wy (cy - cy_a) / h_a, ww log(eps + w / w_a), wh log(eps + h / h_a))``
    with ``(wx, wy, ww, wh) = weights``; the course's eps keeps a zero-size box finite.

    Args:
        reference: ``(..., 4)`` xyxy anchors or proposals, positive width and height.
        boxes: ``(..., 4)`` xyxy boxes (broadcast against ``reference``).

    Returns:
        ``(..., 4)`` offsets.
    """
    _check_last4(reference, "reference")
    _check_last4(boxes, "boxes")
    ref = box_convert(reference, "xyxy", "cxcywh")
    if ref.numel() and bool((ref[..., 2:] <= 0).any()):
        raise DivekitError("reference boxes must have positive width and height to encode "
                           "against; drop or fix the degenerate anchors/proposals")
    box = box_convert(boxes, "xyxy", "cxcywh")
    w = torch.as_tensor(weights, dtype=ref.dtype, device=ref.device)
    xy = w[:2] * (box[..., :2] - ref[..., :2]) / ref[..., 2:]
    wh = w[2:] * torch.log(eps + box[..., 2:] / ref[..., 2:])
    return torch.cat((xy, wh), dim=-1)


def decode_boxes(reference: Tensor, offsets: Tensor, weights: Sequence[float] = WEIGHTS,
                 clamp: float | None = CLAMP) -> Tensor:
    """Boxes from offsets relative to ``reference`` (the course's ``offset_inverse``).

    Inverse of :func:`encode_boxes` (up to its eps). The log-size offsets, once divided by their
    weights, are clamped at ``clamp`` (torchvision's ``log(1000 / 16)``; ``None``: no clamp) so
    that an untrained head cannot overflow ``exp`` into infinite boxes.

    Args:
        reference: ``(..., 4)`` xyxy anchors or proposals.
        offsets: ``(..., 4)`` offsets (broadcast against ``reference``).

    Returns:
        ``(..., 4)`` xyxy boxes.
    """
    _check_last4(reference, "reference")
    _check_last4(offsets, "offsets")
    ref = box_convert(reference, "xyxy", "cxcywh")
    w = torch.as_tensor(weights, dtype=offsets.dtype, device=offsets.device)
    xy = offsets[..., :2] / w[:2] * ref[..., 2:] + ref[..., :2]
    log_wh = offsets[..., 2:] / w[2:]
    if clamp is not None:
        log_wh = log_wh.clamp(max=clamp)
    wh = torch.exp(log_wh) * ref[..., 2:]
    return box_convert(torch.cat((xy, wh), dim=-1), "cxcywh", "xyxy")


def greedy_assign(iou: Tensor, iou_threshold: float, valid: Tensor | None = None) -> Tensor:
    """The course's assignment on a batch of IoU matrices; no input checks.

    First every anchor whose best IoU is ``>= iou_threshold`` takes that ground truth; then,
    ``min(A, M)`` times, the largest remaining IoU (the first in row-major order on ties) assigns
    its anchor to its ground truth, overriding, and that row and column are discarded. The
    greedy step is sequential by definition; each step is vectorised over the batch.

    Shape:
        iou ``(B, A, M)``, valid ``(B, M)`` bool (False: padding column) -> ``(B, A)`` int64,
        -1 for anchors left unassigned.
    """
    batch, num_anchors, num_gt = iou.shape
    assigned = torch.full((batch, num_anchors), -1, dtype=torch.long, device=iou.device)
    if num_anchors == 0 or num_gt == 0:
        return assigned
    # -1 marks discarded entries (IoUs are >= 0), as the course's col/row_discard does.
    work = iou if valid is None else iou.masked_fill(~valid[:, None, :], -1)
    best, best_gt = work.max(dim=2)
    assigned = torch.where(best >= iou_threshold, best_gt, assigned)
    work = work.clone()
    rows = torch.arange(batch, device=iou.device)
    for _ in range(min(num_anchors, num_gt)):
        value, flat = work.flatten(1).max(dim=1)
        anchor, gt = flat // num_gt, flat % num_gt
        # An image whose IoUs are all discarded (fewer real boxes than steps) does nothing.
        found = value >= 0
        assigned[rows, anchor] = torch.where(found, gt, assigned[rows, anchor])
        work[rows, anchor, :] = -1
        work[rows, :, gt] = -1
    return assigned


def assign_anchor_to_bbox(ground_truth: Tensor, anchors: Tensor,
                          iou_threshold: float = 0.5) -> Tensor:
    """Assign ground-truth boxes to anchors, the course's way (d2l 14.4.3).

    Greedy: take the largest IoU of the anchors x ground-truth matrix, assign that anchor to
    that box, discard its row and column, repeat until every box (or anchor) is used; every
    other anchor takes its best box when their IoU is ``>= iou_threshold``. As in the course, a
    box overlapping no anchor still takes the first anchor not used yet.

    Args:
        ground_truth: ``(M, 4)`` xyxy boxes.
        anchors: ``(A, 4)`` xyxy anchors (same coordinates, e.g. both normalised).
        iou_threshold: IoU in ``[0, 1]``.

    Returns:
        ``(A,)`` int64: index of the assigned ground-truth box, -1 for none (all -1 if M = 0).
    """
    check_boxes(ground_truth, "ground_truth")
    check_boxes(anchors, "anchors")
    threshold = check_iou_threshold(iou_threshold)
    return greedy_assign(pairwise_iou(anchors, ground_truth)[None], threshold)[0]


def multibox_target(anchors: Tensor, labels: Tensor,
                    iou_threshold: float = 0.5) -> tuple[Tensor, Tensor, Tensor]:
    """Training targets of every anchor: class label and masked box offsets (d2l 14.4.3).

    Args:
        anchors: ``(1, A, 4)`` or ``(A, 4)`` normalised xyxy anchors.
        labels: ``(B, M, 5)`` rows ``(class, x1, y1, x2, y2)``, normalised; class -1 marks a
            padding row (images with fewer than M objects).
        iou_threshold: the assignment threshold of :func:`assign_anchor_to_bbox`.

    Returns:
        ``bbox_offset`` ``(B, A*4)`` (:func:`encode_boxes` offsets, 0 for background anchors),
        ``bbox_mask`` ``(B, A*4)`` (1 for anchors with an object, else 0) and ``class_labels``
        ``(B, A)`` int64 (0 background, else class + 1).
    """
    anchors = anchors[0] if anchors.ndim == 3 and anchors.shape[0] == 1 else anchors
    check_boxes(anchors, "anchors (1, A, 4)")
    if not isinstance(labels, Tensor) or labels.ndim != 3 or labels.shape[-1] != 5:
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise DivekitError(f"labels must be (B, M, 5) rows (class, x1, y1, x2, y2) with class "
                           f"-1 for padding, got {shape}")
    threshold = check_iou_threshold(iou_threshold)
    valid = labels[..., 0] >= 0
    gt = labels[..., 1:].to(anchors.dtype)
    bad = valid & ((gt[..., 2] < gt[..., 0]) | (gt[..., 3] < gt[..., 1]))
    if bool(bad.any()):
        image, row = (int(i) for i in bad.nonzero()[0])
        raise DivekitError(f"labels[{image}, {row}] has x2 < x1 or y2 < y1 "
                           f"({gt[image, row].tolist()}); boxes are corners x1, y1, x2, y2")
    batch, num_anchors = labels.shape[0], anchors.shape[0]
    assigned = greedy_assign(pairwise_iou(anchors, gt), threshold, valid)  # (B, A)
    mask = assigned >= 0
    if labels.shape[1] == 0:
        classes = torch.zeros(batch, num_anchors, dtype=torch.long, device=anchors.device)
        offsets = anchors.new_zeros(batch, num_anchors, 4)
    else:
        index = assigned.clamp(min=0)
        classes = torch.where(mask, labels[..., 0].gather(1, index).long() + 1, 0)
        boxes = gt.gather(1, index[..., None].expand(-1, -1, 4))
        # where(), not a product with the mask: a background anchor's offsets may be anything.
        offsets = torch.where(mask[..., None], encode_boxes(anchors, boxes), 0)
    box_mask = mask[..., None].expand(-1, -1, 4).to(anchors.dtype)
    return offsets.reshape(batch, -1), box_mask.reshape(batch, -1), classes


def multibox_detection(cls_probs: Tensor, offset_preds: Tensor, anchors: Tensor,
                       nms_threshold: float = 0.5, pos_threshold: float = 0.009999999) -> Tensor:
    """Predicted boxes from class probabilities and offsets, the course's way (d2l 14.4.4).

    Per anchor: the most likely object class (background excluded) and its probability, the
    box decoded from the anchor; NMS runs over all classes jointly, as the course does (a box
    can suppress a box of another class; the models' detectors use class-aware
    :func:`~divekit.vision.nms.batched_nms` instead). The course's output order per image: kept
    boxes by decreasing score, then the suppressed ones by anchor index with class -1;
    a kept box scoring below ``pos_threshold`` also gets class -1 and score ``1 - score``.

    Args:
        cls_probs: ``(B, C+1, A)`` probabilities, row 0 background.
        offset_preds: ``(B, A*4)`` offsets (:func:`decode_boxes` with the default weights).
        anchors: ``(1, A, 4)`` or ``(A, 4)`` normalised xyxy anchors.
        nms_threshold: IoU in ``[0, 1]`` for the NMS.
        pos_threshold: the course's 0.009999999.

    Returns:
        ``(B, A, 6)`` rows ``(class, score, x1, y1, x2, y2)``, normalised; class -1 for
        background or suppressed.
    """
    anchors = anchors[0] if anchors.ndim == 3 and anchors.shape[0] == 1 else anchors
    check_boxes(anchors, "anchors (1, A, 4)", ordered=False)
    num_anchors = anchors.shape[0]
    if cls_probs.ndim != 3 or cls_probs.shape[2] != num_anchors or cls_probs.shape[1] < 2:
        raise DivekitError(f"cls_probs must be (B, C+1, A) with A = {num_anchors} anchors and "
                           f"row 0 the background, got {tuple(cls_probs.shape)}")
    batch = cls_probs.shape[0]
    if tuple(offset_preds.shape) != (batch, num_anchors * 4):
        raise DivekitError(f"offset_preds must be (B, A*4) = ({batch}, {num_anchors * 4}), got "
                           f"{tuple(offset_preds.shape)}")
    threshold = check_iou_threshold(nms_threshold, "nms_threshold")
    conf, class_id = cls_probs[:, 1:].max(dim=1)  # (B, A)
    boxes = decode_boxes(anchors, offset_preds.reshape(batch, num_anchors, 4))
    # Sort key per image: kept boxes by their rank (decreasing score), then the rest by index.
    # One NMS per image: NMS is sequential anyway, and one NMS over the batch (images kept
    # apart as batched_nms keeps classes apart) would compare boxes across images.
    key = torch.arange(num_anchors, device=boxes.device).repeat(batch, 1) + num_anchors
    for image in range(batch):
        keep = nms_sorted(boxes[image], conf[image], threshold)
        key[image, keep] = torch.arange(len(keep), device=boxes.device)
    kept = key < num_anchors
    order = key.argsort(dim=1)
    kept = kept.gather(1, order)
    class_id, conf = class_id.gather(1, order), conf.gather(1, order)
    boxes = boxes.gather(1, order[..., None].expand(-1, -1, 4))
    low = conf < pos_threshold
    class_id = torch.where(kept & ~low, class_id, -1)
    conf = torch.where(low, 1 - conf, conf)
    return torch.cat((class_id[..., None].to(conf.dtype), conf[..., None], boxes), dim=-1)
