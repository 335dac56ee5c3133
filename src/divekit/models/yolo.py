"""YOLO, the single-stage detector the course names (section 14.7's single-shot family): a small
YOLOX (Ge et al., 2021, "YOLOX: Exceeding YOLO Series in 2021") trained from scratch.

Which YOLO, and why YOLOX:

* Anchor-free: each feature-map cell predicts one box (centre offset and log width/height in
  units of the cell's stride), so no anchor sizes have to be tuned to the synthetic scenes; the
  anchor-based YOLOv3/v5 heads need k-means anchors per dataset.
* Decoupled head (separate class and box branches, an objectness output on the box branch):
  the paper shows it converges much faster than the coupled YOLOv3 head, which is what matters
  for a few minutes of CPU training.
* SimOTA label assignment: candidates are cells whose centre lies in a ground-truth box or
  within 2.5 strides of its centre; each box takes its ``k`` cheapest candidates (cost = class
  BCE + 3 * (-log IoU)), ``k`` being the sum of its 10 best IoUs. Many positives per object
  early on means useful gradient from the first steps (YOLOv3 gives one anchor per object).
* Losses as in the paper: BCE objectness over all cells, BCE classes on positives with the IoU
  as soft target, and an IoU-based box loss (here GIoU, one of YOLOX's options, which still
  has a gradient for non-overlapping boxes).

What is smaller than the paper: a CSP backbone and PAFPN neck of YOLOX's layout but a few
channels wide (``width``), plain 3x3 convs, no Mosaic/MixUp augmentation and no L1 term in the
last epochs. Hence the name ``yolox-cpu``: a YOLOX-shaped model sized for a CPU, not one of the
paper's Nano/Tiny/S configurations.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from divekit.errors import DivekitError
from divekit.models.registry import register_model
from divekit.models.ssd import (
    Detections,
    check_batch,
    check_detector_options,
    class_aware_detections,
)
from divekit.vision.boxes import box_area, clip_boxes_to_image, pairwise_iou

SECTION = "14.7 Single Shot Multibox Detection (YOLOX, an anchor-free single-shot detector)"
STRIDES = (8, 16, 32)


class ConvBnSiLU(nn.Sequential):
    """YOLO's basic layer: conv (no bias), batch norm, SiLU; "same" padding."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1,
                 stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2,
                      bias=False),
            nn.BatchNorm2d(out_channels), nn.SiLU(inplace=True))


class CSPBlock(nn.Module):
    """Cross-stage partial block: half the channels go through a residual bottleneck, half skip.

    Shape:
        ``(N, in_channels, H, W) -> (N, out_channels, H, W)``.
    """

    def __init__(self, in_channels: int, out_channels: int, shortcut: bool = True) -> None:
        super().__init__()
        hidden = out_channels // 2
        self.split1 = ConvBnSiLU(in_channels, hidden)
        self.split2 = ConvBnSiLU(in_channels, hidden)
        self.bottleneck = nn.Sequential(ConvBnSiLU(hidden, hidden),
                                        ConvBnSiLU(hidden, hidden, 3))
        self.shortcut = shortcut
        self.merge = ConvBnSiLU(2 * hidden, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.split1(x)
        y = y + self.bottleneck(y) if self.shortcut else self.bottleneck(y)
        return self.merge(torch.cat([y, self.split2(x)], dim=1))


class DecoupledHead(nn.Module):
    """One level's head: a 1x1 stem, then a class branch and a box branch (box + objectness).

    Shape:
        ``(N, in_channels, h, w) -> (N, 4 + 1 + num_classes, h, w)``: box, objectness, classes.
    """

    def __init__(self, in_channels: int, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.stem = ConvBnSiLU(in_channels, hidden)
        self.cls_convs = nn.Sequential(ConvBnSiLU(hidden, hidden, 3), ConvBnSiLU(hidden, hidden, 3))
        self.reg_convs = nn.Sequential(ConvBnSiLU(hidden, hidden, 3), ConvBnSiLU(hidden, hidden, 3))
        self.cls_pred = nn.Conv2d(hidden, num_classes, 1)
        self.reg_pred = nn.Conv2d(hidden, 4, 1)
        self.obj_pred = nn.Conv2d(hidden, 1, 1)
        # Start from "1% of cells hold an object" (RetinaNet's prior), so the thousands of
        # background cells do not swamp the first steps.
        prior = -math.log((1 - 0.01) / 0.01)
        nn.init.constant_(self.cls_pred.bias, prior)
        nn.init.constant_(self.obj_pred.bias, prior)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        reg = self.reg_convs(x)
        return torch.cat([self.reg_pred(reg), self.obj_pred(reg),
                          self.cls_pred(self.cls_convs(x))], dim=1)


def aligned_giou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IoU and generalized IoU of ``boxes1[i]`` with ``boxes2[i]`` (Rezatofighi et al., 2019).

    Shape:
        ``(N, 4), (N, 4) -> (N,), (N,)``.
    """
    top_left = torch.maximum(boxes1[:, :2], boxes2[:, :2])
    bottom_right = torch.minimum(boxes1[:, 2:], boxes2[:, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=1)
    union = box_area(boxes1) + box_area(boxes2) - inter
    iou = inter / union.clamp(min=1e-7)
    hull = (torch.maximum(boxes1[:, 2:], boxes2[:, 2:])
            - torch.minimum(boxes1[:, :2], boxes2[:, :2])).prod(dim=1)
    return iou, iou - (hull - union) / hull.clamp(min=1e-7)


@torch.no_grad()
def simota(gt_boxes: torch.Tensor, gt_labels: torch.Tensor, points: torch.Tensor,
           strides: torch.Tensor, pred_boxes: torch.Tensor, cls_logits: torch.Tensor,
           obj_logits: torch.Tensor, center_radius: float = 2.5,
           top_candidates: int = 10) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """YOLOX's SimOTA: match each ground-truth box to its ``k`` cheapest cells.

    Args:
        gt_boxes: ``(G, 4)`` xyxy pixels, ``G >= 1``; gt_labels: ``(G,)``.
        points: ``(P, 2)`` cell centres in pixels; strides: ``(P,)``.
        pred_boxes: ``(P, 4)`` decoded predictions; cls_logits ``(P, C)``; obj_logits ``(P,)``.
        center_radius: the centre prior's half-side, in strides.
        top_candidates: the dynamic ``k`` of a box is the sum of its best IoUs among this many.

    Returns:
        ``foreground`` ``(P,)`` bool, ``matched`` ``(F,)`` index of the box of each foreground
        cell, ``iou`` ``(F,)`` IoU of its prediction with that box.
    """
    x, y = points[:, 0], points[:, 1]
    in_box = ((x > gt_boxes[:, None, 0]) & (x < gt_boxes[:, None, 2])
              & (y > gt_boxes[:, None, 1]) & (y < gt_boxes[:, None, 3]))
    centres = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
    radius = center_radius * strides
    in_centre = (((x - centres[:, None, 0]).abs() < radius)
                 & ((y - centres[:, None, 1]).abs() < radius))
    candidate = (in_box | in_centre).any(dim=0)
    foreground = torch.zeros_like(candidate)
    if not candidate.any():
        empty = torch.zeros(0, dtype=torch.long, device=points.device)
        return foreground, empty, empty.float()
    both = (in_box & in_centre)[:, candidate]
    ious = pairwise_iou(gt_boxes, pred_boxes[candidate])
    probs = (torch.sigmoid(cls_logits[candidate].float())
             * torch.sigmoid(obj_logits[candidate, None].float())).sqrt()
    one_hot = F.one_hot(gt_labels, cls_logits.shape[1]).float()
    cls_cost = F.binary_cross_entropy(probs[None].expand(len(gt_boxes), -1, -1),
                                      one_hot[:, None].expand(-1, len(probs), -1),
                                      reduction="none").sum(dim=-1)
    cost = cls_cost + 3.0 * -torch.log(ious + 1e-8) + 1e5 * (~both).float()
    k = ious.topk(min(top_candidates, ious.shape[1]), dim=1).values.sum(dim=1).int().clamp(min=1)
    rank = cost.argsort(dim=1).argsort(dim=1)
    matching = rank < k[:, None]
    # A cell claimed by several boxes goes to the one it costs least.
    shared = matching.sum(dim=0) > 1
    if shared.any():
        best = cost[:, shared].argmin(dim=0)
        matching[:, shared] = F.one_hot(best, len(gt_boxes)).T.bool()
    chosen = matching.any(dim=0)
    matched = matching[:, chosen].float().argmax(dim=0)
    foreground[candidate.nonzero(as_tuple=True)[0][chosen]] = True
    return foreground, matched, ious[:, chosen][matched, torch.arange(len(matched))]


class YOLOX(nn.Module):
    """A small YOLOX: CSP backbone, PAFPN neck, decoupled anchor-free heads at strides 8-32.

    Args:
        num_classes: object classes (no background class: objectness plays its part).
        width: channels of the stem; the backbone's stages have 2, 4, 8 and 16 times that.
        score_threshold: lowest ``objectness * class probability`` kept at evaluation.
        nms_threshold: IoU above which class-aware NMS suppresses a box.
        max_detections: most detections returned per image.
        box_weight: weight of the box loss (YOLOX's 5).
    """

    def __init__(self, num_classes: int, width: int = 16, score_threshold: float = 0.01,
                 nms_threshold: float = 0.5, max_detections: int = 100,
                 box_weight: float = 5.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.max_detections = max_detections
        self.box_weight = box_weight
        w = width
        self.stem = ConvBnSiLU(3, w, 3, 2)
        self.dark2 = nn.Sequential(ConvBnSiLU(w, 2 * w, 3, 2), CSPBlock(2 * w, 2 * w))
        self.dark3 = nn.Sequential(ConvBnSiLU(2 * w, 4 * w, 3, 2), CSPBlock(4 * w, 4 * w))
        self.dark4 = nn.Sequential(ConvBnSiLU(4 * w, 8 * w, 3, 2), CSPBlock(8 * w, 8 * w))
        self.dark5 = nn.Sequential(ConvBnSiLU(8 * w, 16 * w, 3, 2), CSPBlock(16 * w, 16 * w))
        # PAFPN: top-down (coarse meaning to fine maps), then bottom-up (fine detail back up).
        self.lateral5 = ConvBnSiLU(16 * w, 8 * w)
        self.top_down4 = CSPBlock(16 * w, 8 * w, shortcut=False)
        self.lateral4 = ConvBnSiLU(8 * w, 4 * w)
        self.top_down3 = CSPBlock(8 * w, 4 * w, shortcut=False)
        self.down3 = ConvBnSiLU(4 * w, 4 * w, 3, 2)
        self.bottom_up4 = CSPBlock(8 * w, 8 * w, shortcut=False)
        self.down4 = ConvBnSiLU(8 * w, 8 * w, 3, 2)
        self.bottom_up5 = CSPBlock(16 * w, 16 * w, shortcut=False)
        self.heads = nn.ModuleList(DecoupledHead(c, 4 * w, num_classes)
                                   for c in (4 * w, 8 * w, 16 * w))

    def feature_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The neck's three outputs, at strides 8, 16 and 32."""
        c3 = self.dark3(self.dark2(self.stem(images)))
        c4 = self.dark4(c3)
        c5 = self.dark5(c4)
        lat5 = self.lateral5(c5)
        p4 = self.top_down4(torch.cat([F.interpolate(lat5, size=c4.shape[-2:]), c4], dim=1))
        lat4 = self.lateral4(p4)
        p3 = self.top_down3(torch.cat([F.interpolate(lat4, size=c3.shape[-2:]), c3], dim=1))
        n4 = self.bottom_up4(torch.cat([self.down3(p3), lat4], dim=1))
        n5 = self.bottom_up5(torch.cat([self.down4(n4), lat5], dim=1))
        return [p3, n4, n5]

    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Cell centres, strides, decoded boxes, objectness and class logits of every cell.

        Shape:
            ``(B, 3, H, W) -> points (P, 2), strides (P,), boxes (B, P, 4) xyxy pixels,
            obj (B, P), cls (B, P, C)``, ``P = sum (H / s) (W / s)`` over strides 8, 16, 32.
        """
        outputs, points, strides = [], [], []
        for head, features, stride in zip(self.heads, self.feature_maps(images), STRIDES,
                                          strict=True):
            out = head(features)
            h, w = out.shape[-2:]
            ys, xs = torch.meshgrid(torch.arange(h, device=out.device),
                                    torch.arange(w, device=out.device), indexing="ij")
            points.append((torch.stack([xs, ys], dim=-1).reshape(-1, 2) + 0.5) * stride)
            strides.append(torch.full((h * w,), float(stride), device=out.device))
            outputs.append(out.flatten(2).transpose(1, 2))
        out, points, strides = torch.cat(outputs, 1), torch.cat(points), torch.cat(strides)
        # Centre: the cell's centre plus an offset in strides; size: exp(log size) strides.
        centre = points + out[..., :2] * strides[:, None]
        size = out[..., 2:4].clamp(max=math.log(1e3)).exp() * strides[:, None]
        boxes = torch.cat([centre - size / 2, centre + size / 2], dim=-1)
        return points, strides, boxes, out[..., 4], out[..., 5:]

    def losses(self, points: torch.Tensor, strides: torch.Tensor, boxes: torch.Tensor,
               obj: torch.Tensor, cls: torch.Tensor,
               targets: list[dict]) -> dict[str, torch.Tensor]:
        """YOLOX's losses, each summed over the batch and divided by the number of positives.

        ``loss_box`` is ``box_weight * (1 - GIoU)`` over positive cells, ``loss_obj`` BCE of
        objectness over all cells, ``loss_cls`` BCE of the classes of positive cells against
        ``one_hot * IoU``. Images without boxes only teach objectness 0.
        """
        obj_targets = torch.zeros_like(obj)
        fg_boxes, fg_targets, cls_logits, cls_targets = [], [], [], []
        for i, target in enumerate(targets):
            gt_boxes = target["boxes"].to(boxes)
            if len(gt_boxes) == 0:
                continue
            labels = target["labels"].to(boxes.device)
            foreground, matched, iou = simota(gt_boxes, labels, points, strides,
                                              boxes[i].detach(), cls[i].detach(),
                                              obj[i].detach())
            obj_targets[i] = foreground.to(obj)
            fg_boxes.append(boxes[i, foreground])
            fg_targets.append(gt_boxes[matched])
            cls_logits.append(cls[i, foreground])
            cls_targets.append(F.one_hot(labels[matched], self.num_classes).to(cls)
                               * iou[:, None].to(cls))
        num_fg = max(int(obj_targets.sum()), 1)
        loss_obj = F.binary_cross_entropy_with_logits(obj, obj_targets, reduction="sum") / num_fg
        if fg_boxes:
            _, giou = aligned_giou(torch.cat(fg_boxes), torch.cat(fg_targets))
            loss_box = self.box_weight * (1 - giou).sum() / num_fg
            loss_cls = F.binary_cross_entropy_with_logits(
                torch.cat(cls_logits), torch.cat(cls_targets), reduction="sum") / num_fg
        else:  # keep the graph (and every parameter's grad) connected with a zero
            loss_box = boxes.sum() * 0.0
            loss_cls = cls.sum() * 0.0
        return {"loss_box": loss_box, "loss_obj": loss_obj, "loss_cls": loss_cls,
                "positives": obj_targets.sum() / len(targets)}

    def forward(self, images: torch.Tensor, targets: list[dict] | None = None):
        check_batch(images, targets, self.num_classes)
        if self.training and targets is None:
            raise DivekitError("a detector in training mode needs targets; call model.eval() "
                               "to detect")
        points, strides, boxes, obj, cls = self.predict(images)
        if self.training:
            return self.losses(points, strides, boxes, obj, cls, targets)
        size = tuple(images.shape[-2:])
        probs = torch.sigmoid(obj.detach())[..., None] * torch.sigmoid(cls.detach())
        detections: Detections = [
            class_aware_detections(clip_boxes_to_image(b, size), p, self.score_threshold,
                                   self.nms_threshold, self.max_detections)
            for b, p in zip(boxes.detach(), probs, strict=True)]
        if targets is None:
            return detections
        return detections, self.losses(points, strides, boxes, obj, cls, targets)


def yolox_parameters(num_classes: int, width: int) -> int:
    """Parameter count of ``YOLOX(num_classes, width)``, by formula."""
    def conv(c_in: int, c_out: int, k: int = 1) -> int:  # conv without bias + BN
        return c_in * c_out * k * k + 2 * c_out

    def csp(c_in: int, c_out: int) -> int:
        h = c_out // 2
        return 2 * conv(c_in, h) + conv(h, h) + conv(h, h, 3) + conv(2 * h, c_out)

    def head(c_in: int, h: int) -> int:
        return conv(c_in, h) + 4 * conv(h, h, 3) + (h + 1) * (num_classes + 5)

    w = width
    backbone = (conv(3, w, 3) + conv(w, 2 * w, 3) + csp(2 * w, 2 * w) + conv(2 * w, 4 * w, 3)
                + csp(4 * w, 4 * w) + conv(4 * w, 8 * w, 3) + csp(8 * w, 8 * w)
                + conv(8 * w, 16 * w, 3) + csp(16 * w, 16 * w))
    neck = (conv(16 * w, 8 * w) + csp(16 * w, 8 * w) + conv(8 * w, 4 * w) + csp(8 * w, 4 * w)
            + conv(4 * w, 4 * w, 3) + csp(8 * w, 8 * w) + conv(8 * w, 8 * w, 3)
            + csp(16 * w, 16 * w))
    return backbone + neck + sum(head(c, 4 * w) for c in (4 * w, 8 * w, 16 * w))


@register_model("yolox-cpu", family="yolo", section=SECTION, task="detection",
                input_shape=(3, 256, 256), params=yolox_parameters(6, 16))
def yolox_cpu(num_classes: int = 6, image_size: int = 256, width: int = 16,
              score_threshold: float = 0.01, nms_threshold: float = 0.5,
              max_detections: int = 100) -> nn.Module:
    """A small YOLOX trained from scratch: CSP-PAFPN, decoupled anchor-free head, SimOTA."""
    # image_size is accepted for the registry's data plumbing: cells and box sizes are in
    # strides of the input, so any size works (the grid follows the feature maps).
    check_detector_options(num_classes, image_size, score_threshold, nms_threshold,
                           max_detections)
    return YOLOX(num_classes, width, score_threshold, nms_threshold, max_detections)
