"""Bounding boxes (d2l 14.3 "Object Detection and Bounding Boxes", 14.4.1 IoU / Jaccard index).

Boxes are float ``(N, 4)`` tensors of corners ``x1, y1, x2, y2`` (torchvision.ops' layout) in
continuous coordinates: pixel (row i, column j) covers ``[j, j+1) x [i, i+1)``, a whole W x H
image is ``(0, 0, W, H)`` and a box's area is ``(x2 - x1) * (y2 - y1)`` (no "+1"). The course's
functions use the same corners as fractions of the image's width and height ("normalised").
"""

from __future__ import annotations

import torch
from torch import Tensor

from divekit.errors import DivekitError

FORMATS = ("xyxy", "xywh", "cxcywh")


def check_boxes(boxes: Tensor, name: str = "boxes", ordered: bool = True) -> Tensor:
    """Raise a one-line DivekitError unless ``boxes`` is an ``(N, 4)`` tensor of valid corners.

    Args:
        boxes: the tensor to check.
        name: what the message calls it.
        ordered: also require ``x2 >= x1`` and ``y2 >= y1`` (zero-area boxes are allowed).

    Returns:
        ``boxes`` itself, so calls can be chained.
    """
    if not isinstance(boxes, Tensor) or boxes.ndim != 2 or boxes.shape[-1] != 4:
        shape = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        raise DivekitError(f"{name} must be an (N, 4) tensor of x1, y1, x2, y2 corners, got "
                           f"{shape}; reshape it with .reshape(-1, 4)")
    if ordered and boxes.numel():
        bad = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
        if bool(bad.any()):
            row = int(bad.nonzero()[0, 0])
            raise DivekitError(f"{name} row {row} has x2 < x1 or y2 < y1 "
                               f"({boxes[row].tolist()}); boxes are corners x1, y1, x2, y2 "
                               f"(convert other formats with box_convert)")
    return boxes


def check_iou_threshold(value: float, name: str = "iou_threshold") -> float:
    """Raise a one-line DivekitError unless ``value`` is an IoU in ``[0, 1]``."""
    if not 0.0 <= float(value) <= 1.0:
        raise DivekitError(f"{name} must be an IoU in [0, 1], got {value}")
    return float(value)


def box_convert(boxes: Tensor, in_fmt: str, out_fmt: str) -> Tensor:
    """Convert boxes between corner and centre formats (d2l's box_corner_to_center and back).

    Args:
        boxes: ``(..., 4)`` boxes in ``in_fmt``.
        in_fmt, out_fmt: ``"xyxy"`` (corners), ``"xywh"`` (top-left corner, width, height) or
            ``"cxcywh"`` (centre, width, height).

    Returns:
        ``(..., 4)`` boxes in ``out_fmt``.
    """
    for fmt in (in_fmt, out_fmt):
        if fmt not in FORMATS:
            raise DivekitError(f"unknown box format {fmt!r}; use one of {', '.join(FORMATS)}")
    if boxes.shape[-1] != 4:
        raise DivekitError(f"boxes must have 4 numbers in the last dimension, got "
                           f"{tuple(boxes.shape)}")
    if in_fmt == out_fmt:
        return boxes.clone()
    a, b, c, d = boxes.unbind(-1)
    # Go through corners: two short formulas per format instead of six pairwise ones.
    if in_fmt == "xywh":
        a, b, c, d = a, b, a + c, b + d
    elif in_fmt == "cxcywh":
        a, b, c, d = a - c / 2, b - d / 2, a + c / 2, b + d / 2
    if out_fmt == "xywh":
        a, b, c, d = a, b, c - a, d - b
    elif out_fmt == "cxcywh":
        a, b, c, d = (a + c) / 2, (b + d) / 2, c - a, d - b
    return torch.stack((a, b, c, d), dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """The areas ``(x2 - x1) * (y2 - y1)`` of ``(..., 4)`` xyxy boxes, shape ``(...)``."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def pairwise_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of every box in ``boxes1`` with every box in ``boxes2``, with leading batch dims.

    No input checks (the operators that call it have checked already). Two boxes whose union
    is empty (both zero-area, e.g. identical points) have IoU 0, not NaN.

    Shape:
        boxes1 ``(..., N, 4)``, boxes2 ``(..., M, 4)`` (leading dims broadcast) ->
        ``(..., N, M)``.
    """
    if not boxes1.is_floating_point():
        boxes1 = boxes1.float()
    boxes2 = boxes2.to(boxes1.dtype)
    area1, area2 = box_area(boxes1), box_area(boxes2)
    top_left = torch.maximum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
    bottom_right = torch.minimum(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[..., :, None] + area2[..., None, :] - inter
    # where() keeps 0/0 out of the result (and of the gradient of the other branch).
    positive = union > 0
    return torch.where(positive, inter / torch.where(positive, union, 1), 0)


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise intersection over union (Jaccard index) of two sets of xyxy boxes.

    Args:
        boxes1: ``(N, 4)`` boxes.
        boxes2: ``(M, 4)`` boxes.

    Returns:
        ``(N, M)`` IoUs in ``[0, 1]``; 0 where both boxes have zero area (torchvision gives NaN
        there). Integer boxes are computed in float32.
    """
    check_boxes(boxes1, "boxes1")
    check_boxes(boxes2, "boxes2")
    return pairwise_iou(boxes1, boxes2)


def clip_boxes_to_image(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Clamp ``(..., 4)`` xyxy pixel boxes into an image of ``size = (H, W)``."""
    if boxes.shape[-1] != 4:
        raise DivekitError(f"boxes must have 4 numbers in the last dimension, got "
                           f"{tuple(boxes.shape)}")
    height, width = size
    x = boxes[..., 0::2].clamp(min=0, max=width)
    y = boxes[..., 1::2].clamp(min=0, max=height)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def remove_small_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """Indices (int64, increasing) of the boxes whose width and height are both ``>= min_size``.
    """
    check_boxes(boxes, ordered=False)
    wh = boxes[:, 2:] - boxes[:, :2]
    return torch.where((wh >= min_size).all(dim=1))[0]
