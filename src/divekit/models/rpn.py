"""Region proposal network, d2l 14.8.4 (Ren et al., 2015, "Faster R-CNN: Towards Real-Time Object
Detection with Region Proposal Networks").

Faster R-CNN replaces selective search by a small network over the backbone's feature map: at
every feature pixel a 3x3 conv reads the neighbourhood, and two 1x1 convs predict, for each of
``A`` anchors centred there (several sizes and aspect ratios), whether it holds an object
("objectness", two-class) and how to move it onto the object (offsets coded with weights
(1, 1, 1, 1), as torchvision's RPN). The best-scoring decoded anchors that survive NMS at 0.7
become the proposals of the second stage.

Training labels each anchor as torchvision's ``Matcher`` does: IoU >= 0.7 with some ground-truth
box is positive, < 0.3 negative, in between ignored, and each ground-truth box's best anchors
(ties included) are positive whatever their IoU, so that every object has an anchor. 256 anchors
per image are sampled with up to half positives, because negatives outnumber positives a
thousand to one. :func:`match_boxes` and :func:`sample_labels` serve the RoI heads too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from divekit.vision.anchors import multibox_prior
from divekit.vision.boxes import box_iou, clip_boxes_to_image, remove_small_boxes
from divekit.vision.coding import decode_boxes, encode_boxes
from divekit.vision.nms import nms

BELOW_LOW = -1  # a negative: IoU below the low threshold with every ground-truth box
BETWEEN = -2  # ignored: IoU between the thresholds
RPN_WEIGHTS = (1.0, 1.0, 1.0, 1.0)


def match_boxes(iou: torch.Tensor, high: float, low: float,
                allow_low_quality: bool = False) -> torch.Tensor:
    """The ground-truth box each anchor (or proposal) is matched to, torchvision's ``Matcher``.

    Args:
        iou: ``(M, N)`` IoU of ``M`` ground-truth boxes with ``N`` anchors.
        high: IoU from which an anchor is matched (positive).
        low: IoU below which an anchor is a negative; IoU in ``[low, high)`` is ignored.
        allow_low_quality: also match every anchor whose IoU with some ground-truth box equals
            that box's highest IoU over all anchors (when above 0), to its own best box.

    Returns:
        ``(N,)`` int64: index of the matched box, ``BELOW_LOW`` (-1) or ``BETWEEN`` (-2).
    """
    if iou.shape[0] == 0:
        return torch.full((iou.shape[1],), BELOW_LOW, dtype=torch.int64, device=iou.device)
    best, matches = iou.max(dim=0)
    result = matches.clone()
    result[best < low] = BELOW_LOW
    result[(best >= low) & (best < high)] = BETWEEN
    if allow_low_quality:
        best_per_gt = iou.max(dim=1, keepdim=True).values
        # An empty or off-image box has best IoU 0: every anchor would tie, so it gets none.
        anchors = ((iou == best_per_gt) & (best_per_gt > 0)).any(dim=0)
        result[anchors] = matches[anchors]
    return result


def sample_labels(labels: torch.Tensor, batch_size: int,
                  positive_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of a random sample of positives (``labels >= 1``) and negatives (``labels == 0``).

    Args:
        labels: ``(N,)`` int: >= 1 positive, 0 negative, -1 ignored.
        batch_size: number to sample (fewer when there are not enough).
        positive_fraction: at most this fraction of ``batch_size`` are positives; negatives
            fill the rest.

    Returns:
        ``(positive indices, negative indices)``, int64.
    """
    positive = torch.nonzero(labels >= 1).flatten()
    negative = torch.nonzero(labels == 0).flatten()
    num_pos = min(int(batch_size * positive_fraction), positive.numel())
    num_neg = min(batch_size - num_pos, negative.numel())
    positive = positive[torch.randperm(positive.numel(), device=labels.device)[:num_pos]]
    negative = negative[torch.randperm(negative.numel(), device=labels.device)[:num_neg]]
    return positive, negative


def grid_anchors(feature: torch.Tensor, image_size: tuple[int, int], sizes: tuple[float, ...],
                 ratios: tuple[float, ...]) -> torch.Tensor:
    """Every size with every ratio at each pixel of ``feature``, in image pixels.

    The course's ``multibox_prior`` makes ``n + m - 1`` anchors per pixel; the RPN wants the
    full ``n x m`` set, so it is called once per size and the results interleaved per pixel.

    Args:
        feature: ``(B, C, h, w)`` feature map (only its shape and device are used).
        image_size: ``(H, W)`` of the image the map was computed from.
        sizes: anchor sides in pixels (of a ratio-1 anchor).
        ratios: width / height ratios.

    Returns:
        ``(h * w * len(sizes) * len(ratios), 4)`` xyxy pixels, ordered by pixel (row-major),
        then size, then ratio: the channel order of :class:`RPNHead`'s outputs.
    """
    height, width = image_size
    h, w = feature.shape[-2:]
    # float32 whatever the map's dtype: bfloat16 cannot hold pixel coordinates like 100.5.
    grid = torch.empty((1, 1, h, w), dtype=torch.float32, device=feature.device)
    per_size = [multibox_prior(grid, [size / height], list(ratios))[0].view(h * w, -1, 4)
                for size in sizes]
    scale = torch.tensor([width, height, width, height], dtype=per_size[0].dtype,
                         device=feature.device)
    return torch.cat(per_size, dim=1).reshape(-1, 4) * scale


class RPNHead(nn.Module):
    """3x3 conv + ReLU, then 1x1 convs to ``A`` objectness logits and ``4A`` box offsets.

    Shape:
        ``(B, C, h, w) -> ((B, A, h, w), (B, 4A, h, w))``.
    """

    def __init__(self, channels: int, num_anchors: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.cls_logits = nn.Conv2d(channels, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(channels, 4 * num_anchors, 1)
        for layer in (self.conv, self.cls_logits, self.bbox_pred):  # torchvision's init
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.relu(self.conv(x))
        return self.cls_logits(x), self.bbox_pred(x)


class RegionProposalNetwork(nn.Module):
    """Anchors, :class:`RPNHead`, proposal selection and the RPN's two losses.

    Args:
        channels: channels of the feature map.
        anchor_sizes: anchor sides in pixels.
        anchor_ratios: width / height ratios; ``A = len(sizes) * len(ratios)`` per pixel.
        fg_iou_thresh, bg_iou_thresh: anchors at IoU >= fg are positive, < bg negative.
        batch_size_per_image, positive_fraction: anchors sampled for the losses per image.
        pre_nms_top_n, post_nms_top_n: ``(training, testing)`` numbers of proposals kept per
            image before and after NMS.
        nms_thresh: NMS IoU threshold between proposals.
        min_size: proposals narrower or lower than this (pixels) are dropped.
    """

    def __init__(
        self, channels: int, anchor_sizes: tuple[float, ...], anchor_ratios: tuple[float, ...], *,
        fg_iou_thresh: float = 0.7, bg_iou_thresh: float = 0.3, batch_size_per_image: int = 256,
        positive_fraction: float = 0.5, pre_nms_top_n: tuple[int, int] = (1000, 500),
        post_nms_top_n: tuple[int, int] = (500, 300), nms_thresh: float = 0.7,
        min_size: float = 1e-3,
    ) -> None:
        super().__init__()
        self.anchor_sizes, self.anchor_ratios = tuple(anchor_sizes), tuple(anchor_ratios)
        self.head = RPNHead(channels, len(self.anchor_sizes) * len(self.anchor_ratios))
        self.fg_iou_thresh, self.bg_iou_thresh = fg_iou_thresh, bg_iou_thresh
        self.batch_size_per_image, self.positive_fraction = batch_size_per_image, positive_fraction
        self.pre_nms_top_n, self.post_nms_top_n = pre_nms_top_n, post_nms_top_n
        self.nms_thresh, self.min_size = nms_thresh, min_size

    def forward(
        self, features: torch.Tensor, image_size: tuple[int, int],
        targets: list[dict[str, torch.Tensor]] | None = None,
    ) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """Proposals per image and, given targets, ``loss_objectness`` and ``loss_rpn_box_reg``.

        Args:
            features: ``(B, C, h, w)``.
            image_size: ``(H, W)`` of the images.
            targets: per image, ``boxes`` ``(K, 4)`` pixels.

        Returns:
            ``(proposals, losses)``: ``B`` tensors ``(P_i, 4)`` xyxy pixels, detached (the
            second stage does not train the first through the box coordinates, as in
            torchvision), and a dict that is empty without targets.
        """
        logits, offsets = (x.float() for x in self.head(features))  # boxes in float32
        batch, num_anchors, h, w = logits.shape
        anchors = grid_anchors(features, image_size, self.anchor_sizes, self.anchor_ratios)
        # (B, A, h, w) -> (B, h, w, A): the anchors' order, pixel then anchor.
        objectness = logits.permute(0, 2, 3, 1).reshape(batch, -1)
        offsets = offsets.view(batch, num_anchors, 4, h, w).permute(0, 3, 4, 1, 2)
        offsets = offsets.reshape(batch, -1, 4)
        boxes = decode_boxes(anchors.repeat(batch, 1), offsets.detach().reshape(-1, 4),
                             weights=RPN_WEIGHTS).view(batch, -1, 4)
        proposals = [self.select(b, s, image_size)
                     for b, s in zip(boxes, objectness.detach(), strict=True)]
        losses = {} if targets is None else self.loss(objectness, offsets, anchors, targets)
        return proposals, losses

    def select(self, boxes: torch.Tensor, scores: torch.Tensor,
               image_size: tuple[int, int]) -> torch.Tensor:
        """The top proposals of one image: top-n by objectness, clip, drop tiny, NMS, top-n."""
        mode = 0 if self.training else 1
        pre, post = self.pre_nms_top_n[mode], self.post_nms_top_n[mode]
        top = scores.topk(min(pre, scores.numel())).indices
        boxes, scores = clip_boxes_to_image(boxes[top], image_size), scores[top]
        keep = remove_small_boxes(boxes, self.min_size)
        boxes, scores = boxes[keep], scores[keep]
        keep = nms(boxes, scores, self.nms_thresh)[:post]
        return boxes[keep]

    def label_anchors(self, anchors: torch.Tensor,
                      gt_boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Labels ``(N,)`` (1 positive, 0 negative, -1 ignored) and matched boxes ``(N, 4)``."""
        matches = match_boxes(box_iou(gt_boxes, anchors), self.fg_iou_thresh, self.bg_iou_thresh,
                              allow_low_quality=True)
        labels = (matches >= 0).long()
        labels[matches == BETWEEN] = -1
        if gt_boxes.shape[0] == 0:
            return labels, torch.zeros_like(anchors)
        return labels, gt_boxes[matches.clamp(min=0)]

    def loss(self, objectness: torch.Tensor, offsets: torch.Tensor, anchors: torch.Tensor,
             targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Binary cross-entropy over the sampled anchors, smooth L1 over the positives.

        Both are averaged over the number of sampled anchors (torchvision's normalisation), so
        the box loss weighs less when an image has few positives.
        """
        sampled, positives, labels, box_targets = [], [], [], []
        size = anchors.shape[0]
        for i, target in enumerate(targets):
            image_labels, matched = self.label_anchors(anchors, target["boxes"].to(anchors))
            pos, neg = sample_labels(image_labels, self.batch_size_per_image,
                                     self.positive_fraction)
            sampled.append(torch.cat([pos, neg]) + i * size)
            positives.append(pos + i * size)
            labels.append(image_labels)
            box_targets.append(encode_boxes(anchors[pos], matched[pos], weights=RPN_WEIGHTS))
        sampled, positives = torch.cat(sampled), torch.cat(positives)
        labels = torch.cat(labels)
        count = max(sampled.numel(), 1)
        loss_objectness = F.binary_cross_entropy_with_logits(
            objectness.reshape(-1)[sampled], labels[sampled].to(objectness.dtype),
            reduction="sum") / count
        loss_box = F.smooth_l1_loss(offsets.reshape(-1, 4)[positives], torch.cat(box_targets),
                                    beta=1 / 9, reduction="sum") / count
        return {"loss_objectness": loss_objectness, "loss_rpn_box_reg": loss_box}
