"""The second stage of the R-CNN family, d2l 14.8 (Girshick, 2015, "Fast R-CNN"; He et al., 2017,
"Mask R-CNN").

Given region proposals, the RoI heads pool a fixed-size feature grid from each region (RoI
pooling in Fast R-CNN, RoIAlign's bilinear sampling in Faster and Mask R-CNN), classify it into
``num_classes`` object classes plus background (index 0, internal only) and regress
class-specific box offsets (weights (10, 10, 5, 5)). Training matches proposals, with the
ground-truth boxes added so that every object has a perfect one, to ground truth at IoU 0.5 and
samples a batch per image with at most a quarter positives. Evaluation decodes every class's box
for every proposal, drops low scores and runs class-aware NMS at 0.5.

Mask R-CNN adds a small fully convolutional head on 14x14 RoIAlign grids that predicts a 28x28
mask per class; the target is the ground-truth instance mask cropped and resized into each
positive proposal (RoIAlign of the mask, torchvision's ``project_masks_on_boxes`` idea), and at
evaluation each detection's mask is pasted back into its box (:func:`paste_masks_in_image`).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from divekit.errors import DivekitError
from divekit.models.rpn import BETWEEN, match_boxes, sample_labels
from divekit.vision.boxes import box_iou, clip_boxes_to_image, remove_small_boxes
from divekit.vision.coding import decode_boxes, encode_boxes
from divekit.vision.nms import batched_nms
from divekit.vision.roi import roi_align, roi_pool

BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
EVAL_CHUNK = 1024  # proposals through the box head at once in evaluation
PRE_NMS_TOP_N = 2000  # candidates per image entering the final NMS
MASK_SIZE = 28  # side of the predicted and target masks (the head upsamples 14 -> 28)


def feature_scale(features: torch.Tensor, image_size: tuple[int, int]) -> float:
    """The map's resolution over the image's, rounded to a power of two as torchvision does.

    Rounding absorbs the ceil of odd sizes: a 250-pixel image gives a 16-pixel map at stride 16.
    """
    return 2.0 ** round(math.log2(features.shape[-1] / image_size[1]))


class RoIPooler(nn.Module):
    """Fixed-size grids for boxes on a feature map: RoIAlign or RoI max-pooling.

    Args:
        output_size: side of the output grid.
        kind: ``"align"`` (bilinear samples, ``aligned=True`` half-pixel semantics: a box edge
            lands exactly on the continuous pixel coordinate) or ``"pool"`` (Fast R-CNN's
            quantised max-pooling).
        sampling_ratio: RoIAlign samples per bin side; -1 (default) adapts it to each box,
            ceil(box side / output side) in map cells: one sample per bin for the scenes'
            objects at stride 8, a quarter of the cost of torchvision's fixed 2.

    Shape:
        features ``(B, C, h, w)``, B box tensors ``(K_i, 4)`` image pixels ->
        ``(sum K_i, C, output_size, output_size)``.
    """

    def __init__(self, output_size: int, kind: str = "align", sampling_ratio: int = -1) -> None:
        super().__init__()
        self.output_size, self.kind, self.sampling_ratio = output_size, kind, sampling_ratio

    def forward(self, features: torch.Tensor, boxes: list[torch.Tensor],
                image_size: tuple[int, int]) -> torch.Tensor:
        scale = feature_scale(features, image_size)
        size = (self.output_size, self.output_size)
        if self.kind == "pool":
            return roi_pool(features, boxes, size, scale)
        return roi_align(features, boxes, size, scale, self.sampling_ratio, aligned=True)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, kind={self.kind!r}"


class TwoMLPHead(nn.Module):
    """Flatten, then two fully connected layers with ReLU (torchvision's names ``fc6``, ``fc7``).

    Shape:
        ``(K, C, s, s) -> (K, representation_size)``.
    """

    def __init__(self, in_features: int, representation_size: int) -> None:
        super().__init__()
        self.fc6 = nn.Linear(in_features, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc7(F.relu(self.fc6(x.flatten(1)))))


class BoxPredictor(nn.Module):
    """Class logits (``num_classes + 1``, background first) and class-specific box offsets.

    Offsets exist for the object classes only (``4 * num_classes``; torchvision also has
    background's, which no loss ever trains).

    Shape:
        ``(K, in_features) -> ((K, num_classes + 1), (K, 4 * num_classes))``.
    """

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_features, num_classes + 1)
        self.bbox_pred = nn.Linear(in_features, 4 * num_classes)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cls_score(x), self.bbox_pred(x)


def mask_head(in_channels: int, width: int, num_layers: int, num_classes: int) -> nn.Sequential:
    """Mask R-CNN's head: 3x3 convs, a 2x2 stride-2 transposed conv, 1x1 conv to class masks.

    Shape:
        ``(K, in_channels, 14, 14) -> (K, num_classes, 28, 28)`` mask logits.
    """
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    channels = in_channels
    for i in range(1, num_layers + 1):
        layers[f"mask_fcn{i}"] = nn.Conv2d(channels, width, 3, padding=1)
        layers[f"relu{i}"] = nn.ReLU(inplace=True)
        channels = width
    layers["conv5_mask"] = nn.ConvTranspose2d(channels, width, 2, stride=2)
    layers["relu"] = nn.ReLU(inplace=True)
    layers["mask_fcn_logits"] = nn.Conv2d(width, num_classes, 1)
    head = nn.Sequential(layers)
    for module in head.modules():
        if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(module.bias)
    return head


def project_masks_on_boxes(gt_masks: torch.Tensor, boxes: torch.Tensor, matched: torch.Tensor,
                           size: int = MASK_SIZE) -> torch.Tensor:
    """Each box's matched ground-truth mask, cropped to the box and resized to ``size``.

    RoIAlign of the mask (bilinear, half-pixel aligned, ``ceil(cell side)`` samples per cell
    side, so a cell of at most one pixel reads the mask at its centre) gives a soft target in
    [0, 1] that is exactly the mask where the box follows the pixel grid.

    Args:
        gt_masks: ``(K, H, W)`` instance masks of one image (any dtype; nonzero is object).
        boxes: ``(P, 4)`` xyxy pixels.
        matched: ``(P,)`` index into ``gt_masks`` of each box's object.
        size: output side.

    Returns:
        ``(P, size, size)`` float targets.
    """
    rois = torch.cat([matched[:, None].to(boxes), boxes], dim=1)
    masks = (gt_masks[:, None] != 0).to(boxes.dtype)
    return roi_align(masks, rois, (size, size), 1.0, -1, aligned=True)[:, 0]


def paste_masks_in_image(masks: torch.Tensor, boxes: torch.Tensor,
                         image_size: tuple[int, int]) -> torch.Tensor:
    """Masks predicted in boxes, resized back into the whole image.

    Each pixel whose centre lies inside a box gets the bilinear interpolation of that box's
    ``(M, M)`` mask (edge cells extended) at the centre's position in the box; the rest is 0.

    Args:
        masks: ``(D, M, M)`` values (probabilities).
        boxes: ``(D, 4)`` xyxy pixels.
        image_size: ``(H, W)``.

    Returns:
        ``(D, H, W)``.
    """
    height, width = image_size
    if masks.shape[0] == 0:
        return masks.new_zeros((0, height, width))
    x = torch.arange(width, dtype=masks.dtype, device=masks.device) + 0.5
    y = torch.arange(height, dtype=masks.dtype, device=masks.device) + 0.5
    x1, y1, x2, y2 = (boxes[:, i, None] for i in range(4))
    # grid_sample with align_corners=False puts cell m's centre at -1 + (2m + 1) / M: a box
    # fraction f maps to 2f - 1.
    gx = 2 * (x - x1) / (x2 - x1).clamp(min=1e-6) - 1  # (D, W)
    gy = 2 * (y - y1) / (y2 - y1).clamp(min=1e-6) - 1  # (D, H)
    grid = torch.stack([gx[:, None, :].expand(-1, height, -1),
                        gy[:, :, None].expand(-1, -1, width)], dim=-1)
    pasted = F.grid_sample(masks[:, None], grid, mode="bilinear", padding_mode="border",
                           align_corners=False)[:, 0]
    inside = ((gx >= -1) & (gx < 1))[:, None, :] & ((gy >= -1) & (gy < 1))[:, :, None]
    return pasted * inside


class RoIHeads(nn.Module):
    """Box classification and regression (and masks) for region proposals.

    Args:
        box_pooler: features, boxes, image size -> per-region inputs of ``box_head``.
        box_head: per-region inputs -> ``(K, F)`` features.
        box_predictor: ``(K, F)`` -> class logits and class-specific offsets.
        num_classes: object classes (background is added internally).
        fg_iou_thresh, bg_iou_thresh: a proposal is positive at IoU >= fg with a ground-truth
            box, background below bg (between them ignored).
        batch_size_per_image, positive_fraction: proposals sampled per image for the losses.
        score_thresh, nms_thresh, max_detections: evaluation's post-processing.
        mask_pooler, mask_head: Mask R-CNN's branch, or ``None``.
    """

    def __init__(
        self, box_pooler: Callable[..., torch.Tensor], box_head: nn.Module,
        box_predictor: nn.Module, *, num_classes: int, fg_iou_thresh: float = 0.5,
        bg_iou_thresh: float = 0.5, batch_size_per_image: int = 128,
        positive_fraction: float = 0.25, score_thresh: float = 0.05, nms_thresh: float = 0.5,
        max_detections: int = 100, mask_pooler: nn.Module | None = None,
        mask_head: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.box_pooler, self.box_head, self.box_predictor = box_pooler, box_head, box_predictor
        self.mask_pooler, self.mask_head = mask_pooler, mask_head
        self.num_classes = num_classes
        self.fg_iou_thresh, self.bg_iou_thresh = fg_iou_thresh, bg_iou_thresh
        self.batch_size_per_image, self.positive_fraction = batch_size_per_image, positive_fraction
        self.score_thresh, self.nms_thresh = score_thresh, nms_thresh
        self.max_detections = max_detections

    @property
    def has_mask(self) -> bool:
        return self.mask_head is not None

    def forward(
        self, features: torch.Tensor, proposals: list[torch.Tensor], image_size: tuple[int, int],
        targets: list[dict[str, torch.Tensor]] | None = None,
    ) -> tuple[list[dict[str, torch.Tensor]] | None, dict[str, torch.Tensor]]:
        """Detections (evaluation) and losses (given targets).

        Returns:
            ``(detections, losses)``: detections is ``None`` in training, else one dict per
            image (``boxes``, ``scores``, ``labels`` 0..C-1, and ``masks`` ``(D, H, W)``);
            losses ``loss_classifier``, ``loss_box_reg`` (and ``loss_mask``), empty without
            targets.
        """
        losses = {} if targets is None else self.loss(features, proposals, image_size, targets)
        if self.training:
            return None, losses
        return self.detect(features, proposals, image_size), losses

    def sample(self, proposals: torch.Tensor, gt_boxes: torch.Tensor, gt_labels: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One image's sampled boxes, their labels (0 background, c + 1) and matched gt index.

        The ground-truth boxes join the proposals, so each object has a positive from the
        first step of training on, before the RPN has learnt anything.
        """
        boxes = torch.cat([proposals, gt_boxes])
        matches = match_boxes(box_iou(gt_boxes, boxes), self.fg_iou_thresh, self.bg_iou_thresh)
        matched = matches.clamp(min=0)
        labels = torch.zeros_like(matches)
        if gt_labels.numel():
            labels = torch.where(matches >= 0, gt_labels[matched] + 1, 0)
        labels[matches == BETWEEN] = -1
        pos, neg = sample_labels(labels, self.batch_size_per_image, self.positive_fraction)
        keep = torch.cat([pos, neg])
        return boxes[keep], labels[keep], matched[keep]

    def loss(self, features: torch.Tensor, proposals: list[torch.Tensor],
             image_size: tuple[int, int], targets: list[dict[str, torch.Tensor]]
             ) -> dict[str, torch.Tensor]:
        """Cross-entropy over the sampled proposals, smooth L1 (beta 1/9) on the positives.

        The box loss is summed over positives and divided by the number of sampled proposals,
        as torchvision does; the mask loss is the mean binary cross-entropy of the positives'
        masks of their own class.
        """
        boxes, labels, matched = [], [], []
        for image_proposals, target in zip(proposals, targets, strict=True):
            sampled = self.sample(image_proposals, target["boxes"].to(image_proposals),
                                  target["labels"].to(image_proposals.device))
            for out, value in zip((boxes, labels, matched), sampled, strict=True):
                out.append(value)
        logits, offsets = (x.float() for x in self.box_predictor(self.box_head(
            self.box_pooler(features, boxes, image_size))))  # float32 losses under autocast
        all_labels = torch.cat(labels)
        # No RoI at all (no proposals, no boxes): zero losses that still backpropagate.
        loss_classifier = (F.cross_entropy(logits, all_labels) if all_labels.numel()
                           else logits.sum() * 0)
        positive = torch.nonzero(all_labels > 0).flatten()
        gt_boxes = torch.cat([t["boxes"].to(b)[m] if t["boxes"].numel() else torch.zeros_like(b)
                              for t, b, m in zip(targets, boxes, matched, strict=True)])
        box_targets = encode_boxes(torch.cat(boxes)[positive], gt_boxes[positive],
                                   weights=BOX_WEIGHTS)
        pos_offsets = offsets.view(offsets.shape[0], -1, 4)[positive, all_labels[positive] - 1]
        loss_box = F.smooth_l1_loss(pos_offsets, box_targets, beta=1 / 9,
                                    reduction="sum") / max(all_labels.numel(), 1)
        losses = {"loss_classifier": loss_classifier, "loss_box_reg": loss_box}
        if self.has_mask:
            losses["loss_mask"] = self.mask_loss(features, boxes, labels, matched, image_size,
                                                 targets)
        return losses

    def mask_loss(self, features: torch.Tensor, boxes: list[torch.Tensor],
                  labels: list[torch.Tensor], matched: list[torch.Tensor],
                  image_size: tuple[int, int], targets: list[dict[str, torch.Tensor]]
                  ) -> torch.Tensor:
        """Binary cross-entropy of each positive's mask logits of its class vs its target."""
        pos_boxes, pos_labels, mask_targets = [], [], []
        for image_boxes, image_labels, image_matched, target in zip(
                boxes, labels, matched, targets, strict=True):
            pos = torch.nonzero(image_labels > 0).flatten()
            pos_boxes.append(image_boxes[pos])
            pos_labels.append(image_labels[pos])
            if pos.numel():
                masks = target.get("masks")
                if masks is None:
                    raise DivekitError("Mask R-CNN trains on instance masks: give each target "
                                       "a 'masks' entry (K, H, W), e.g. --data scenes")
                mask_targets.append(project_masks_on_boxes(masks.to(image_boxes.device),
                                                           image_boxes[pos], image_matched[pos]))
        logits = self.mask_head(self.mask_pooler(features, pos_boxes, image_size)).float()
        all_labels = torch.cat(pos_labels)
        if all_labels.numel() == 0:  # keeps the graph, so backward works on any batch
            return logits.sum() * 0
        logits = logits[torch.arange(all_labels.numel(), device=logits.device), all_labels - 1]
        return F.binary_cross_entropy_with_logits(logits, torch.cat(mask_targets))

    @torch.no_grad()
    def detect(self, features: torch.Tensor, proposals: list[torch.Tensor],
               image_size: tuple[int, int]) -> list[dict[str, torch.Tensor]]:
        """Score every class's decoded box per proposal, threshold, class-aware NMS, top-n."""
        rois = torch.cat([torch.cat([torch.full_like(p[:, :1], i), p], dim=1)
                          for i, p in enumerate(proposals)])
        # In chunks: R-CNN warps thousands of regions per image.
        outputs = [self.box_predictor(self.box_head(self.box_pooler(features, chunk, image_size)))
                   for chunk in rois.split(EVAL_CHUNK)]
        logits = torch.cat([o[0] for o in outputs]).float()
        offsets = torch.cat([o[1] for o in outputs]).float()
        counts = [p.shape[0] for p in proposals]
        detections = []
        for image_proposals, image_logits, image_offsets in zip(
                proposals, logits.split(counts), offsets.split(counts), strict=True):
            detections.append(self.postprocess(image_proposals, image_logits, image_offsets,
                                               image_size))
        if self.has_mask:
            self.add_masks(features, detections, image_size)
        return detections

    def postprocess(self, proposals: torch.Tensor, logits: torch.Tensor, offsets: torch.Tensor,
                    image_size: tuple[int, int]) -> dict[str, torch.Tensor]:
        """One image's detections from its proposals' logits and offsets."""
        num_classes = self.num_classes
        scores = F.softmax(logits, dim=-1)[:, 1:].reshape(-1)
        boxes = decode_boxes(proposals.repeat_interleave(num_classes, dim=0),
                             offsets.reshape(-1, 4), weights=BOX_WEIGHTS)
        boxes = clip_boxes_to_image(boxes, image_size)
        labels = torch.arange(num_classes, device=logits.device).repeat(proposals.shape[0])
        keep = torch.nonzero(scores > self.score_thresh).flatten()
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = remove_small_boxes(boxes, 1e-2)
        # NMS is quadratic in the candidates: an untrained head scores every class of every
        # proposal above the threshold, so only the best few thousand go in.
        keep = keep[scores[keep].topk(min(keep.numel(), PRE_NMS_TOP_N)).indices]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = batched_nms(boxes, scores, labels, self.nms_thresh)[:self.max_detections]
        return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}

    def add_masks(self, features: torch.Tensor, detections: list[dict[str, torch.Tensor]],
                  image_size: tuple[int, int]) -> None:
        """Each detection's mask of its class, pasted into the image, as ``masks`` ``(D, H, W)``."""
        boxes = [d["boxes"] for d in detections]
        logits = self.mask_head(self.mask_pooler(features, boxes, image_size))
        labels = torch.cat([d["labels"] for d in detections])
        probs = logits[torch.arange(labels.numel(), device=logits.device), labels].sigmoid()
        for detection, masks in zip(detections, probs.split([b.shape[0] for b in boxes]),
                                    strict=True):
            detection["masks"] = paste_masks_in_image(masks, detection["boxes"], image_size)
