"""Single-shot multibox detectors, section 14.7 (Liu et al., 2016, "SSD: Single Shot MultiBox
Detector").

A single-shot detector puts anchor boxes on several feature maps of one CNN, one map per scale
(fine maps for small objects, coarse maps for large ones), and predicts for every anchor a class
(background included) and four offsets to the object's box with two small conv heads. Nothing
is proposed first: one forward pass gives every detection.

Two models live here:

* ``tiny-ssd``: the course's TinySSD exactly (module names ``blk_i``, ``cls_i``, ``bbox_i``,
  its 5444 anchors for a 256x256 image, its loss and its ``multibox_detection`` decoding).
* ``ssd``: a multiscale SSD sized for a CPU, with the paper's ideas the course leaves out:
  aspect ratios ``1, 2, 1/2, 3, 1/3`` plus the extra anchor of size ``sqrt(s_k s_{k+1})``, the
  paper's linearly spaced scales, hard negative mining (at most 3 negatives per positive),
  smooth L1 on offsets encoded with the variances ``0.1, 0.2`` (weights ``10, 10, 5, 5``) and
  class-aware NMS at evaluation.

Both follow the detection protocol (``divekit.tasks.detection``): in training
``model(images, targets)`` returns a dict of ``loss_*`` parts (plus diagnostics), in evaluation
``model(images)`` returns one dict per image with ``boxes`` (pixels, xyxy), ``scores`` and
``labels`` (object classes ``0..C-1``; the background class is internal).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from divekit.errors import DivekitError
from divekit.models.registry import register_model
from divekit.vision.anchors import multibox_prior
from divekit.vision.boxes import clip_boxes_to_image
from divekit.vision.coding import (
    assign_anchor_to_bbox,
    decode_boxes,
    encode_boxes,
    multibox_detection,
    multibox_target,
)
from divekit.vision.nms import batched_nms

SECTION = "14.7 Single Shot Multibox Detection"

Detections = list[dict[str, torch.Tensor]]


def check_detector_options(num_classes: int, image_size: int, score_threshold: float,
                           nms_threshold: float, max_detections: int) -> None:
    """Raise ``DivekitError`` naming the first detector option out of range."""
    for name, value in (("num_classes", num_classes), ("image_size", image_size),
                        ("max_detections", max_detections)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DivekitError(f"{name} must be a positive integer, got {value!r}")
    for name, value in (("score_threshold", score_threshold), ("nms_threshold", nms_threshold)):
        if not 0.0 <= value <= 1.0:
            raise DivekitError(f"{name} must be in [0, 1], got {value!r}")


def check_batch(images: torch.Tensor, targets: list[dict] | None, num_classes: int) -> None:
    """Raise ``DivekitError`` for images or targets that do not follow the detection protocol."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise DivekitError(f"detector images must be a (B, 3, H, W) float tensor, got {shape}")
    if targets is None:
        return
    if len(targets) != images.shape[0]:
        raise DivekitError(f"got {len(targets)} target dicts for {images.shape[0]} images; "
                           "pass one dict (boxes, labels) per image")
    for i, target in enumerate(targets):
        boxes, labels = target["boxes"], target["labels"]
        if boxes.dim() != 2 or boxes.shape[1] != 4 or labels.shape != boxes.shape[:1]:
            raise DivekitError(f"targets[{i}]: boxes must be (K, 4) and labels (K,), got "
                               f"{tuple(boxes.shape)} and {tuple(labels.shape)}")
        if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
            raise DivekitError(f"targets[{i}]: labels must be in 0..{num_classes - 1} (object "
                               f"classes, no background), got {labels.tolist()}")


def normalised_labels(targets: list[dict], height: int, width: int) -> torch.Tensor:
    """The course's label tensor from per-image targets in pixels.

    Args:
        targets: one dict per image with ``boxes`` ``(K_i, 4)`` xyxy pixels and ``labels``.
        height, width: image size, to turn pixels into fractions of the image.

    Returns:
        ``(B, M, 5)`` rows ``(class, x1, y1, x2, y2)`` normalised, ``M = max(K_i, 1)``; padding
        rows have class ``-1`` (an image without boxes is all padding, so all background).
    """
    rows = max([len(t["boxes"]) for t in targets] + [1])
    boxes = targets[0]["boxes"] if targets else torch.zeros(0, 4)
    dtype = boxes.dtype if boxes.is_floating_point() else torch.float32
    labels = torch.full((len(targets), rows, 5), -1.0, dtype=dtype, device=boxes.device)
    scale = torch.tensor([width, height, width, height], dtype=dtype, device=boxes.device)
    for i, target in enumerate(targets):
        k = len(target["boxes"])
        labels[i, :k, 0] = target["labels"].to(dtype)
        labels[i, :k, 1:] = target["boxes"].to(dtype) / scale
    return labels


def select_detections(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
                      max_detections: int) -> dict[str, torch.Tensor]:
    """One image's detection dict: sorted by decreasing score, at most ``max_detections``."""
    order = scores.argsort(descending=True)[:max_detections]
    return {"boxes": boxes[order], "scores": scores[order], "labels": labels[order].long()}


def class_aware_detections(boxes: torch.Tensor, probs: torch.Tensor, score_threshold: float,
                           nms_threshold: float, max_detections: int,
                           candidates_per_class: int = 400) -> dict[str, torch.Tensor]:
    """One image's detections: every (box, class) pair above a score, class-aware NMS.

    Args:
        boxes: ``(P, 4)`` xyxy pixel boxes, one per prediction.
        probs: ``(P, C)`` class scores of the object classes (no background).
        score_threshold: lowest score kept.
        nms_threshold: IoU above which a box suppresses a lower-scored box of its class.
        max_detections: most detections returned.
        candidates_per_class: the top scores of each class that go into NMS (torchvision's
            SSD keeps 400), which bounds NMS's cost while the model is still unsure.

    Returns:
        ``boxes (D, 4)``, ``scores (D,)`` decreasing, ``labels (D,)`` int64 in ``0..C-1``.
    """
    scores = probs.masked_fill(probs <= score_threshold, 0)
    top = scores.topk(min(candidates_per_class, len(scores)), dim=0)
    keep = top.values > 0
    index = top.indices[keep]
    labels = keep.nonzero(as_tuple=True)[1]
    score = top.values[keep]
    kept = batched_nms(boxes[index], score, labels, nms_threshold)
    return select_detections(boxes[index[kept]], score[kept], labels[kept], max_detections)


# ---------------------------------------------------------------------------------------------
# TinySSD, the course's model
# ---------------------------------------------------------------------------------------------

TINY_SIZES = ((0.2, 0.272), (0.37, 0.447), (0.54, 0.619), (0.71, 0.79), (0.88, 0.961))
TINY_RATIOS = (1.0, 2.0, 0.5)


def down_sample_blk(in_channels: int, out_channels: int) -> nn.Sequential:
    """Two (3x3 conv, batch norm, ReLU) then a 2x2 max-pool: halves height and width.

    Shape:
        ``(N, in_channels, H, W) -> (N, out_channels, H // 2, W // 2)``.
    """
    layers: list[nn.Module] = []
    for _ in range(2):
        layers += [nn.Conv2d(in_channels, out_channels, 3, padding=1),
                   nn.BatchNorm2d(out_channels), nn.ReLU()]
        in_channels = out_channels
    layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def flatten_preds(preds: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate per-scale predictions ``(B, k, h, w)`` channels-last into ``(B, sum hwk)``.

    Channels-last puts the predictions of one pixel's anchors next to each other, the order of
    ``multibox_prior``'s anchors.
    """
    return torch.cat([p.permute(0, 2, 3, 1).flatten(1) for p in preds], dim=1)


class TinySSD(nn.Module):
    """The course's TinySSD: a base net, three down-sampling blocks, a global max-pool.

    Feature maps of a 256x256 image are 32, 16, 8, 4 and 1 pixels wide; each pixel has 4 anchors
    (sizes ``TINY_SIZES[i]``, ratios 1, 2, 1/2), 5444 in all.

    Args:
        num_classes: object classes (background is added internally).
        score_threshold: lowest score kept at evaluation.
        nms_threshold: IoU above which ``multibox_detection`` suppresses a box.
        max_detections: most detections returned per image.
    """

    def __init__(self, num_classes: int = 1, score_threshold: float = 0.01,
                 nms_threshold: float = 0.5, max_detections: int = 100) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.max_detections = max_detections
        num_anchors = len(TINY_SIZES[0]) + len(TINY_RATIOS) - 1
        in_channels = (64, 128, 128, 128, 128)
        base_net = nn.Sequential(*(down_sample_blk(c_in, c_out)
                                   for c_in, c_out in ((3, 16), (16, 32), (32, 64))))
        blocks = [base_net, down_sample_blk(64, 128), down_sample_blk(128, 128),
                  down_sample_blk(128, 128), nn.AdaptiveMaxPool2d((1, 1))]
        for i, (block, channels) in enumerate(zip(blocks, in_channels, strict=True)):
            setattr(self, f"blk_{i}", block)
            setattr(self, f"cls_{i}", nn.Conv2d(channels, num_anchors * (num_classes + 1), 3,
                                                padding=1))
            setattr(self, f"bbox_{i}", nn.Conv2d(channels, num_anchors * 4, 3, padding=1))

    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The course's ``net(X)``: anchors, class logits and box offsets.

        Shape:
            ``(B, 3, H, W) -> anchors (1, A, 4) normalised xyxy, class logits
            (B, A, num_classes + 1), offsets (B, 4A)``; ``A = 5444`` for 256x256 images.
        """
        anchors, cls_preds, bbox_preds = [], [], []
        x = images
        for i in range(5):
            x = getattr(self, f"blk_{i}")(x)
            anchors.append(multibox_prior(x, sizes=TINY_SIZES[i], ratios=TINY_RATIOS))
            cls_preds.append(getattr(self, f"cls_{i}")(x))
            bbox_preds.append(getattr(self, f"bbox_{i}")(x))
        logits = flatten_preds(cls_preds).reshape(images.shape[0], -1, self.num_classes + 1)
        return torch.cat(anchors, dim=1), logits, flatten_preds(bbox_preds)

    def losses(self, anchors: torch.Tensor, logits: torch.Tensor, offsets: torch.Tensor,
               targets: list[dict], size: tuple[int, int]) -> dict[str, torch.Tensor]:
        """The course's ``calc_loss`` split in its two parts, and its two evaluation measures.

        Cross-entropy over all anchors (background included) and L1 on the offsets of the
        anchors assigned to an object, each averaged over the anchors of an image (the L1 over
        all ``4A`` entries, zeros where masked), then over images. ``class_err`` is
        ``1 - cls_eval / numel`` and ``box_mae`` is ``bbox_eval / numel`` as the course prints.
        ``size`` is the images' ``(H, W)``, to normalise the targets' pixel boxes.
        """
        labels = normalised_labels(targets, *size)
        bbox_labels, bbox_masks, cls_labels = multibox_target(anchors, labels.to(logits.device))
        batch, _, classes = logits.shape
        cls = F.cross_entropy(logits.reshape(-1, classes), cls_labels.reshape(-1),
                              reduction="none").reshape(batch, -1).mean(dim=1)
        box = F.l1_loss(offsets * bbox_masks, bbox_labels * bbox_masks,
                        reduction="none").mean(dim=1)
        with torch.no_grad():
            class_err = 1 - (logits.argmax(dim=-1) == cls_labels).to(logits.dtype).mean()
            box_mae = ((bbox_labels - offsets) * bbox_masks).abs().sum() / bbox_labels.numel()
        return {"loss_cls": cls.mean(), "loss_box": box.mean(), "class_err": class_err,
                "box_mae": box_mae}

    @torch.no_grad()
    def detect_normalised(self, images: torch.Tensor) -> torch.Tensor:
        """The course's prediction: softmax, then ``multibox_detection`` with its thresholds.

        Shape:
            ``(B, 3, H, W) -> (B, A, 6)`` rows ``(class, score, x1, y1, x2, y2)``, boxes
            normalised, class ``-1`` for background and suppressed anchors.
        """
        anchors, logits, offsets = self.predict(images)
        probs = F.softmax(logits, dim=2).permute(0, 2, 1)
        return multibox_detection(probs, offsets, anchors, nms_threshold=self.nms_threshold)

    def detections(self, images: torch.Tensor, output: torch.Tensor | None = None) -> Detections:
        """Per-image detection dicts in pixels from the course's ``(B, A, 6)`` output."""
        if output is None:
            output = self.detect_normalised(images)
        height, width = images.shape[-2:]
        scale = output.new_tensor([width, height, width, height])
        result = []
        for rows in output:
            rows = rows[(rows[:, 0] >= 0) & (rows[:, 1] > self.score_threshold)]
            boxes = clip_boxes_to_image(rows[:, 2:] * scale, (height, width))
            result.append(select_detections(boxes, rows[:, 1], rows[:, 0], self.max_detections))
        return result

    def forward(self, images: torch.Tensor, targets: list[dict] | None = None):
        check_batch(images, targets, self.num_classes)
        size = tuple(images.shape[-2:])
        if self.training:
            if targets is None:
                raise DivekitError("a detector in training mode needs targets; call "
                                   "model.eval() to detect")
            return self.losses(*self.predict(images), targets, size)
        anchors, logits, offsets = self.predict(images)
        probs = F.softmax(logits.detach(), dim=2).permute(0, 2, 1)
        output = multibox_detection(probs, offsets.detach(), anchors,
                                    nms_threshold=self.nms_threshold)
        detections = self.detections(images, output)
        if targets is None:
            return detections
        return detections, self.losses(anchors, logits, offsets, targets, size)


@register_model("tiny-ssd", family="ssd", section=SECTION, task="detection",
                input_shape=(3, 256, 256), params=1_010_376)
def tiny_ssd(num_classes: int = 1, image_size: int = 256, score_threshold: float = 0.01,
             nms_threshold: float = 0.5, max_detections: int = 100) -> nn.Module:
    """The course's TinySSD: 5 scales, 4 anchors per pixel, 5444 anchors at 256x256."""
    # image_size is accepted for the registry's data plumbing: the anchors are fractions of
    # the image, so they scale with any input size by construction.
    check_detector_options(num_classes, image_size, score_threshold, nms_threshold,
                           max_detections)
    return TinySSD(num_classes, score_threshold, nms_threshold, max_detections)


# ---------------------------------------------------------------------------------------------
# A multiscale SSD sized for a CPU
# ---------------------------------------------------------------------------------------------

SSD_RATIOS = (1.0, 2.0, 0.5, 3.0, 1.0 / 3.0)


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: int = 1) -> nn.Sequential:
    """Conv (no bias: batch norm shifts), batch norm, ReLU; "same" padding."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


def ssd_scales(num_maps: int, min_scale: float, max_scale: float) -> list[tuple[float, float]]:
    """The paper's anchor sizes per feature map: ``(s_k, sqrt(s_k s_{k+1}))``.

    ``s_k`` runs linearly from ``min_scale`` to ``max_scale`` over the maps (equation 4 of the
    paper); the last map's extra size uses ``s_{m+1} = 1``, as the reference implementation's
    last "max size" covers the whole image.
    """
    step = (max_scale - min_scale) / max(num_maps - 1, 1)
    scales = [min_scale + step * k for k in range(num_maps)] + [1.0]
    return [(scales[k], math.sqrt(scales[k] * scales[k + 1])) for k in range(num_maps)]


class SSD(nn.Module):
    """A multiscale SSD: a small VGG-like backbone, SSD's extra layers, 6 feature maps.

    The backbone halves the resolution four times (widths ``w, 2w, 4w, 8w``); the maps at
    strides 8 and 16 feed the heads, then four extra blocks (1x1 conv to narrow, 3x3 stride-2
    conv) give strides 32, 64, 128 and 256: maps 32, 16, 8, 4, 2, 1 pixels wide for a 256x256
    image, like SSD300's 38, 19, 10, 5, 3, 1. Every pixel has 6 anchors (sizes ``s_k`` and
    ``sqrt(s_k s_{k+1})`` at ratio 1, ``s_k`` at ratios 2, 1/2, 3, 1/3).

    Args:
        num_classes: object classes (background is added internally).
        width: channels of the first conv; the rest are multiples of it.
        min_scale, max_scale: anchor sizes of the first and last maps, fractions of the image.
        score_threshold: lowest class score kept at evaluation.
        nms_threshold: IoU above which class-aware NMS suppresses a box.
        max_detections: most detections returned per image.
        neg_to_pos: hard negative mining keeps at most this many negatives per positive.
    """

    def __init__(self, num_classes: int, width: int = 16, min_scale: float = 0.1,
                 max_scale: float = 0.9, score_threshold: float = 0.01,
                 nms_threshold: float = 0.45, max_detections: int = 100,
                 neg_to_pos: int = 3) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.max_detections = max_detections
        self.neg_to_pos = neg_to_pos
        w = width
        self.backbone = nn.ModuleList([
            nn.Sequential(conv_bn_relu(3, w, stride=2),
                          conv_bn_relu(w, 2 * w, stride=2), conv_bn_relu(2 * w, 2 * w),
                          conv_bn_relu(2 * w, 4 * w, stride=2), conv_bn_relu(4 * w, 4 * w)),
            nn.Sequential(conv_bn_relu(4 * w, 8 * w, stride=2), conv_bn_relu(8 * w, 8 * w)),
        ])
        self.extras = nn.ModuleList([
            nn.Sequential(conv_bn_relu(8 * w, 4 * w, 1), conv_bn_relu(4 * w, 8 * w, stride=2))
            for _ in range(4)])
        channels = [4 * w] + [8 * w] * 5
        self.sizes = ssd_scales(len(channels), min_scale, max_scale)
        per_pixel = len(self.sizes[0]) + len(SSD_RATIOS) - 1
        self.cls_heads = nn.ModuleList(
            nn.Conv2d(c, per_pixel * (num_classes + 1), 3, padding=1) for c in channels)
        self.box_heads = nn.ModuleList(nn.Conv2d(c, per_pixel * 4, 3, padding=1)
                                       for c in channels)

    def feature_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The six maps the heads read, finest first."""
        maps, x = [], images
        for block in [*self.backbone, *self.extras]:
            x = block(x)
            maps.append(x)
        return maps

    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Anchors, class logits and encoded offsets for every anchor.

        Shape:
            ``(B, 3, H, W) -> anchors (A, 4) normalised xyxy, logits (B, A, num_classes + 1),
            offsets (B, A, 4)``.
        """
        maps = self.feature_maps(images)
        anchors = torch.cat([multibox_prior(m, sizes=s, ratios=SSD_RATIOS)[0]
                             for m, s in zip(maps, self.sizes, strict=True)])
        batch = images.shape[0]
        logits = flatten_preds([h(m) for h, m in zip(self.cls_heads, maps, strict=True)])
        offsets = flatten_preds([h(m) for h, m in zip(self.box_heads, maps, strict=True)])
        return anchors, logits.reshape(batch, -1, self.num_classes + 1), offsets.reshape(
            batch, -1, 4)

    def losses(self, anchors: torch.Tensor, logits: torch.Tensor, offsets: torch.Tensor,
               targets: list[dict], size: tuple[int, int]) -> dict[str, torch.Tensor]:
        """SSD's multibox loss: cross-entropy with hard negatives (3:1) + smooth L1, over N.

        Each anchor is matched to a ground-truth box by the course's greedy assignment (every
        box gets its best anchor, then anchors with IoU >= 0.5 take their best box). ``N`` is
        the number of matched anchors in the batch (at least 1). Negatives are the unmatched
        anchors with the largest cross-entropy, at most ``neg_to_pos`` per positive of the
        image and at least ``neg_to_pos`` in an image without objects, so empty images still
        teach "background".
        """
        height, width = size
        scale = anchors.new_tensor([width, height, width, height])
        classes = torch.zeros(logits.shape[:2], dtype=torch.long, device=logits.device)
        box_targets = torch.zeros_like(offsets)
        for i, target in enumerate(targets):
            boxes = target["boxes"].to(anchors) / scale
            if len(boxes) == 0:
                continue
            match = assign_anchor_to_bbox(boxes, anchors)
            matched = match >= 0
            classes[i, matched] = target["labels"].to(logits.device)[match[matched]] + 1
            box_targets[i, matched] = encode_boxes(anchors[matched], boxes[match[matched]])
        positive = classes > 0
        num_positive = positive.sum()
        total = num_positive.clamp(min=1)
        ce = F.cross_entropy(logits.flatten(0, 1), classes.flatten(), reduction="none")
        ce = ce.reshape(classes.shape)
        with torch.no_grad():
            # Rank each image's negatives by loss; keep the top neg_to_pos * positives.
            negative_ce = ce.masked_fill(positive, -math.inf)
            rank = negative_ce.argsort(dim=1, descending=True).argsort(dim=1)
            quota = self.neg_to_pos * positive.sum(dim=1, keepdim=True).clamp(min=1)
            negative = (rank < quota) & ~positive
        loss_cls = (ce[positive].sum() + ce[negative].sum()) / total
        loss_box = F.smooth_l1_loss(offsets[positive], box_targets[positive],
                                    reduction="sum") / total
        return {"loss_cls": loss_cls, "loss_box": loss_box,
                "positives": num_positive.float() / len(targets)}

    def postprocess(self, anchors: torch.Tensor, logits: torch.Tensor, offsets: torch.Tensor,
                    size: tuple[int, int]) -> Detections:
        """Softmax, decode to pixels, then ``class_aware_detections`` per image."""
        height, width = size
        scale = anchors.new_tensor([width, height, width, height])
        probs = F.softmax(logits, dim=-1)[..., 1:]
        return [class_aware_detections(
                    clip_boxes_to_image(decode_boxes(anchors, offset) * scale, size), prob,
                    self.score_threshold, self.nms_threshold, self.max_detections)
                for prob, offset in zip(probs, offsets, strict=True)]

    def forward(self, images: torch.Tensor, targets: list[dict] | None = None):
        check_batch(images, targets, self.num_classes)
        size = tuple(images.shape[-2:])
        if self.training and targets is None:
            raise DivekitError("a detector in training mode needs targets; call model.eval() "
                               "to detect")
        anchors, logits, offsets = self.predict(images)
        if self.training:
            return self.losses(anchors, logits, offsets, targets, size)
        detections = self.postprocess(anchors, logits.detach(), offsets.detach(), size)
        if targets is None:
            return detections
        return detections, self.losses(anchors, logits, offsets, targets, size)


@register_model("ssd", family="ssd", section=SECTION, task="detection",
                input_shape=(3, 256, 256), params=1_039_452)
def ssd(num_classes: int = 6, image_size: int = 256, width: int = 16,
        score_threshold: float = 0.01, nms_threshold: float = 0.45,
        max_detections: int = 100) -> nn.Module:
    """A multiscale SSD for a CPU: 6 maps, 6 anchors per pixel, hard negatives, class-aware NMS.
    """
    # As for TinySSD, the anchors are fractions of the image and follow image_size.
    check_detector_options(num_classes, image_size, score_threshold, nms_threshold,
                           max_detections)
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise DivekitError(f"width must be a positive integer, got {width!r}")
    return SSD(num_classes, width, score_threshold=score_threshold,
               nms_threshold=nms_threshold, max_detections=max_detections)
