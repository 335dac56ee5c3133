"""Object-detection operators of the course (d2l chapter 14: 14.3 bounding boxes, 14.4 anchor
boxes, IoU, labelling and NMS, 14.5 multiscale anchors, 14.8 RoI pooling / RoIAlign) with
torchvision.ops' argument order and semantics, so that code moves to torchvision unchanged:
xyxy pixel boxes ``(N, 4)``, ``box_iou(a, b)``, ``nms(boxes, scores, iou_threshold)``,
``batched_nms(boxes, scores, idxs, iou_threshold)``, ``roi_align(input, boxes, output_size,
spatial_scale, sampling_ratio, aligned)``; the course's own functions (``multibox_prior``,
``multibox_target``, ``multibox_detection``) keep its normalised coordinates and outputs.
``MeanAveragePrecision`` follows torchmetrics' (COCO mAP through pycocotools). Neural style
transfer (14.12) is :func:`style_transfer` (and :mod:`divekit.vision.style`).
"""

from divekit.vision.anchors import anchor_grid, multibox_prior, multiscale_anchors, ssd_anchor_sizes
from divekit.vision.boxes import (
    box_area,
    box_convert,
    box_iou,
    clip_boxes_to_image,
    remove_small_boxes,
)
from divekit.vision.coding import (
    assign_anchor_to_bbox,
    decode_boxes,
    encode_boxes,
    multibox_detection,
    multibox_target,
)
from divekit.vision.metrics import MeanAveragePrecision
from divekit.vision.nms import batched_nms, nms
from divekit.vision.roi import roi_align, roi_pool
from divekit.vision.style import run_style_transfer, style_transfer

__all__ = [
    "MeanAveragePrecision", "anchor_grid", "assign_anchor_to_bbox", "batched_nms", "box_area",
    "box_convert", "box_iou", "clip_boxes_to_image", "decode_boxes", "encode_boxes",
    "multibox_detection", "multibox_prior", "multibox_target", "multiscale_anchors", "nms",
    "remove_small_boxes", "roi_align", "roi_pool", "run_style_transfer", "ssd_anchor_sizes",
    "style_transfer",
]
