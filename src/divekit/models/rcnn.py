"""Region-based CNNs, d2l 14.8: R-CNN (Girshick et al., 2014, "Rich feature hierarchies for
accurate object detection and semantic segmentation"), Fast R-CNN (Girshick, 2015), Faster R-CNN
(Ren et al., 2015) and Mask R-CNN (He et al., 2017).

All four are torchvision's ``GeneralizedRCNN`` shape, ``backbone -> rpn -> roi_heads``, and
share :class:`~divekit.models.rcnn_heads.RoIHeads` (sampling, losses, post-processing):

* ``rcnn``: no shared features. Each proposal is cropped from the *image* and warped to 64x64
  (RoIAlign of the image), and a small CNN classifies it and regresses its box: the slow baseline
  the course starts from (one CNN pass per region, ~2,000 regions per image).
* ``fast-rcnn``: one backbone pass per image; RoI max-pooling (7x7) cuts each proposal's
  features from the shared map.
* ``faster-rcnn``: the proposals come from a region proposal network
  (:mod:`divekit.models.rpn`) on the same features; RoIAlign replaces RoI pooling.
* ``mask-rcnn``: Faster R-CNN plus a mask head on 14x14 RoIAlign grids.

Proposals for R-CNN and Fast R-CNN: the papers use selective search, which is not available here.
:func:`sliding_windows` gives a fixed multiscale set instead: square-ish windows of sizes 10% to
50% of the image side (a factor 1.5 apart) and width/height ratios 1/2, 1 and 2, each size on a
grid of half its side (2,106 windows at any square size, about selective search's 2,000). It
needs no learning and has a window at IoU >= 0.5 for 96% of the generated scenes' objects (median
best IoU 0.64), which the box regression then tightens; unlike colour segmentation it does not
depend on objects being uniformly coloured (the scenes' objects are striped, dotted, shaded).

Backbone: a zoo ResNet's stem convolution and stages 1-3 (``resnet-cpu``-like widths by default,
or ``resnet18``), *without* the stem's max-pool, so the map is at stride 8 instead of 16: the
generated scenes are 128x128 with objects from 13 pixels across, which at stride 16 would cover
less than one cell of an 8x8 map. The max-pool has no parameters, so the keys stay the zoo
model's (under ``backbone.``) and ImageNet weights load: ``divekit train faster-rcnn -M
backbone=resnet18 --weights resnet18-f37072fd.pth`` (torchvision's file) goes through
:meth:`GeneralizedRCNN.adapt_state_dict`, which adds the prefix and drops ``layer4``/``fc``; the
detection heads (``head_patterns``) keep their initialisation.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from divekit.errors import DivekitError
from divekit.models.rcnn_heads import (
    BoxPredictor,
    RoIHeads,
    RoIPooler,
    TwoMLPHead,
    mask_head,
)
from divekit.models.registry import register_model
from divekit.models.resnet import check_positive, resnet18, resnet_cpu
from divekit.models.rpn import RegionProposalNetwork
from divekit.vision.anchors import anchor_grid
from divekit.vision.boxes import clip_boxes_to_image

SECTION = "14.8 Region-based CNNs (R-CNNs)"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BACKBONE_STAGES = ("conv1", "bn1", "relu", "layer1", "layer2", "layer3")
# Defaults, as fractions of the image side (the scenes' objects are 10-45% across).
ANCHOR_SIZES = (0.125, 0.25, 0.5)
WINDOW_SIZES = (0.1, 0.15, 0.225, 0.34, 0.5)
RATIOS = (0.5, 1.0, 2.0)


def build_backbone(name: str, width: int, image_size: int) -> tuple[nn.Sequential, int]:
    """A zoo ResNet's stem conv and stages 1-3, with the zoo's module names.

    Args:
        name: ``"resnet-cpu"`` (one basic block per stage, widths ``width, 2 width, 4 width``)
            or ``"resnet18"`` (torchvision's layout; ``width`` must be 64).
        width: channels of the first stage.
        image_size: picks the zoo's stem (see :mod:`divekit.models.stems`).

    Returns:
        ``(backbone, channels)``: the map has ``channels = 4 * width`` channels at stride 8
        (stride 2 for images under 96 pixels, whose small-image stem does not stride).
    """
    check_positive(width=width, image_size=image_size)
    if name == "resnet18":
        if width != 64:
            raise DivekitError(f"backbone resnet18 is 64 wide, got width={width}; leave width "
                               "out or use backbone='resnet-cpu'")
        net = resnet18(num_classes=1, in_channels=3, image_size=image_size)
    elif name == "resnet-cpu":
        net = resnet_cpu(num_classes=1, in_channels=3, image_size=image_size,
                         widths=(width, 2 * width, 4 * width))
    else:
        raise DivekitError(f"unknown backbone {name!r}; choose 'resnet-cpu' or 'resnet18'")
    return nn.Sequential(OrderedDict((key, net.get_submodule(key)) for key in BACKBONE_STAGES)), \
        4 * width


def sliding_windows(image_size: tuple[int, int], sizes: tuple[float, ...] = WINDOW_SIZES,
                    ratios: tuple[float, ...] = RATIOS) -> torch.Tensor:
    """R-CNN's and Fast R-CNN's fixed proposals: multiscale windows, each size on a half-step grid.

    Args:
        image_size: ``(H, W)``.
        sizes: window sides as fractions of ``H`` (of a ratio-1 window).
        ratios: width / height ratios.

    Returns:
        ``(N, 4)`` xyxy pixel boxes, clipped to the image; for each size, a grid of
        ``round(H / step) x round(W / step)`` centres, ``step`` half the window side.
    """
    height, width = image_size
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    windows = []
    for size in sizes:
        step = size * height / 2
        rows, cols = max(1, round(height / step)), max(1, round(width / step))
        # anchor_grid's widths scale by rows / cols, its ratio being in map cells: undo that.
        grid = anchor_grid(rows, cols, [size], ratios)
        centre = (grid[:, :2] + grid[:, 2:]) / 2
        half = (grid[:, 2:] - grid[:, :2]) / 2 * torch.tensor([cols * height / (rows * width), 1])
        windows.append(torch.cat([centre - half, centre + half], dim=1) * scale)
    return clip_boxes_to_image(torch.cat(windows), image_size)


class SlidingWindowProposals(nn.Module):
    """The proposal stage of R-CNN and Fast R-CNN: :func:`sliding_windows`, no losses."""

    def __init__(self, sizes: tuple[float, ...] = WINDOW_SIZES,
                 ratios: tuple[float, ...] = RATIOS) -> None:
        super().__init__()
        self.sizes, self.ratios = tuple(sizes), tuple(ratios)

    def forward(self, features: torch.Tensor, image_size: tuple[int, int],
                targets: list[dict[str, torch.Tensor]] | None = None
                ) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        windows = sliding_windows(image_size, self.sizes, self.ratios).to(features.device)
        return [windows] * features.shape[0], {}


class RegionCNN(nn.Module):
    """R-CNN's per-region network: four conv-BN-ReLU-maxpool blocks, then one linear layer.

    Shape:
        ``(K, 3, region_size, region_size) -> (K, representation_size)``.
    """

    def __init__(self, width: int, representation_size: int, region_size: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for i in range(4):
            layers += [nn.Conv2d(channels, width * 2**i, 3, padding=1, bias=False),
                       nn.BatchNorm2d(width * 2**i), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            channels = width * 2**i
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(channels * (region_size // 16) ** 2, representation_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc(self.features(x).flatten(1)))


class GeneralizedRCNN(nn.Module):
    """``backbone -> rpn -> roi_heads`` with torchvision's detection protocol.

    Images are ``(B, 3, H, W)`` in [0, 1]; the model standardises them with ImageNet's mean and
    standard deviation (torchvision's ``GeneralizedRCNNTransform`` does the same) and does not
    resize them.

    Args:
        backbone: images -> one feature map (``nn.Identity`` for R-CNN, which crops images).
        rpn: features, image size, targets -> proposals per image and losses
            (:class:`RegionProposalNetwork` or :class:`SlidingWindowProposals`).
        roi_heads: the second stage.
        num_classes: object classes.
    """

    # Loaded from a weights file only where file and model agree: an ImageNet backbone file
    # leaves the detection heads as initialised.
    head_patterns = ("rpn.*", "roi_heads.*")

    def __init__(self, backbone: nn.Module, rpn: nn.Module, roi_heads: RoIHeads,
                 num_classes: int) -> None:
        super().__init__()
        self.backbone, self.rpn, self.roi_heads = backbone, rpn, roi_heads
        self.num_classes = num_classes
        self.register_buffer("image_mean", torch.tensor(IMAGENET_MEAN).view(3, 1, 1),
                             persistent=False)
        self.register_buffer("image_std", torch.tensor(IMAGENET_STD).view(3, 1, 1),
                             persistent=False)

    def forward(self, images: torch.Tensor | list[torch.Tensor],
                targets: list[dict[str, torch.Tensor]] | None = None):
        """Losses (training), detections (evaluation), or both (evaluation with targets).

        Args:
            images: ``(B, 3, H, W)`` in [0, 1], or a list of same-sized ``(3, H, W)``.
            targets: per image ``boxes`` ``(K, 4)`` xyxy pixels, ``labels`` ``(K,)`` in
                ``0..num_classes-1``, ``masks`` ``(K, H, W)`` (Mask R-CNN); K may be 0.

        Returns:
            Training: ``{"loss_objectness", "loss_rpn_box_reg" (Faster/Mask), "loss_classifier",
            "loss_box_reg", "loss_mask" (Mask)}``. Evaluation: a list of dicts ``boxes`` (D, 4),
            ``scores`` (D,), ``labels`` (D,) and ``masks`` (D, H, W) in [0, 1] (Mask R-CNN),
            by decreasing score; with targets, ``(detections, losses)``.
        """
        images = self.check_images(images)
        if targets is not None:
            targets = self.check_targets(targets, images)
        elif self.training:
            raise DivekitError("a detector in training mode needs targets: model(images, "
                               "targets); call model.eval() to detect")
        image_size = (images.shape[-2], images.shape[-1])
        features = self.backbone((images - self.image_mean) / self.image_std)
        proposals, losses = self.rpn(features, image_size, targets)
        detections, head_losses = self.roi_heads(features, proposals, image_size, targets)
        losses = {**losses, **head_losses}
        if self.training:
            return losses
        return detections if targets is None else (detections, losses)

    @staticmethod
    def check_images(images: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        if isinstance(images, list | tuple):
            if len({tuple(image.shape) for image in images}) > 1:
                raise DivekitError("images of one batch must share one size; resize them "
                                   "first (the R-CNN models do not resize)")
            images = torch.stack(list(images))
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images)
            raise DivekitError(f"images must be a (B, 3, H, W) float tensor in [0, 1], got "
                               f"{shape}")
        return images if images.is_floating_point() else images.float() / 255

    def check_targets(self, targets: list[dict[str, torch.Tensor]],
                      images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """The targets, checked: one per image, valid boxes and labels (raises DivekitError)."""
        if len(targets) != images.shape[0]:
            raise DivekitError(f"got {len(targets)} targets for {images.shape[0]} images; give "
                               "one dict (boxes, labels) per image")
        for i, target in enumerate(targets):
            boxes, labels = target.get("boxes"), target.get("labels")
            if boxes is None or labels is None:
                raise DivekitError(f"target {i} needs 'boxes' (K, 4) and 'labels' (K,)")
            if boxes.ndim != 2 or boxes.shape[1] != 4 or labels.shape != boxes.shape[:1]:
                raise DivekitError(f"target {i}: boxes must be (K, 4) and labels (K,), got "
                                   f"{tuple(boxes.shape)} and {tuple(labels.shape)}")
            if boxes.numel() and not bool((boxes[:, 2:] > boxes[:, :2]).all()):
                raise DivekitError(f"target {i}: every box needs x2 > x1 and y2 > y1 (xyxy "
                                   "pixels); drop empty boxes before training")
            if labels.numel() and not (int(labels.min()) >= 0 and
                                       int(labels.max()) < self.num_classes):
                raise DivekitError(f"target {i}: labels must be in 0..{self.num_classes - 1} "
                                   f"(object classes, no background), got {labels.tolist()}")
        return targets

    def adapt_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A bare ResNet's weights (e.g. torchvision's ImageNet resnet18) as ``backbone.*``.

        Keys of the stages the backbone lacks (``layer4``, ``fc``) are dropped; a file with
        ``backbone.`` keys (a detector's own checkpoint) is returned unchanged.
        """
        if any(key.startswith("backbone.") for key in state) or "conv1.weight" not in state:
            return state
        return {f"backbone.{key}": value for key, value in state.items()
                if key.split(".")[0] not in ("layer4", "fc")}


def _box_options(box_fg_iou_thresh: float, box_bg_iou_thresh: float,
                 box_batch_size_per_image: int, box_positive_fraction: float,
                 box_score_thresh: float, box_nms_thresh: float, max_detections: int) -> dict:
    return {"fg_iou_thresh": box_fg_iou_thresh, "bg_iou_thresh": box_bg_iou_thresh,
            "batch_size_per_image": box_batch_size_per_image,
            "positive_fraction": box_positive_fraction, "score_thresh": box_score_thresh,
            "nms_thresh": box_nms_thresh, "max_detections": max_detections}


def _rpn_options(image_size: int, anchor_sizes: tuple[float, ...] | None,
                 anchor_ratios: tuple[float, ...], fg: float, bg: float, nms_thresh: float,
                 pre: tuple[int, int], post: tuple[int, int]) -> dict:
    sizes = tuple(s * image_size for s in ANCHOR_SIZES) if anchor_sizes is None else anchor_sizes
    return {"anchor_sizes": tuple(sizes), "anchor_ratios": tuple(anchor_ratios),
            "fg_iou_thresh": fg, "bg_iou_thresh": bg, "nms_thresh": nms_thresh,
            "pre_nms_top_n": tuple(pre), "post_nms_top_n": tuple(post)}


def _two_stage(num_classes: int, image_size: int, backbone: str, width: int | None,
               representation_size: int, proposals: dict | SlidingWindowProposals, pool: str,
               box: dict, mask: tuple[int, int | None] | None = None) -> GeneralizedRCNN:
    """Fast/Faster/Mask R-CNN: backbone, proposals, RoI heads (and the mask branch).

    Args:
        proposals: the RPN's options (Faster/Mask R-CNN) or the windows module (Fast R-CNN).
        pool: ``"pool"`` (Fast R-CNN's RoI pooling) or ``"align"``.
        box: :class:`RoIHeads` options.
        mask: ``(layers, width)`` of the mask head (``width`` None: the map's channels).
    """
    check_positive(num_classes=num_classes, representation_size=representation_size)
    features, channels = build_backbone(backbone, width or (64 if backbone == "resnet18" else 32),
                                        image_size)
    if isinstance(proposals, dict):
        proposals = RegionProposalNetwork(channels, **proposals)
    masks, mask_pooler = None, None
    if mask is not None:
        masks = mask_head(channels, mask[1] or channels, mask[0], num_classes)
        mask_pooler = RoIPooler(14)
    heads = RoIHeads(RoIPooler(7, pool), TwoMLPHead(channels * 7 * 7, representation_size),
                     BoxPredictor(representation_size, num_classes), num_classes=num_classes,
                     mask_pooler=mask_pooler, mask_head=masks, **box)
    return GeneralizedRCNN(features, proposals, heads, num_classes)


# Default-options counts: tests/models/test_rcnn.py derives each from a formula.
PARAMS = {"rcnn": 630_191, "fast-rcnn": 1_990_847, "faster-rcnn": 2_144_236,
          "mask-rcnn": 2_505_842}


@register_model("faster-rcnn", family="rcnn", section=SECTION, task="detection",
                input_shape=(3, 128, 128), params=PARAMS["faster-rcnn"])
def faster_rcnn(
    num_classes: int = 6, image_size: int = 128, backbone: str = "resnet-cpu",
    width: int | None = None, representation_size: int = 256,
    anchor_sizes: tuple[float, ...] | None = None, anchor_ratios: tuple[float, ...] = RATIOS,
    rpn_fg_iou_thresh: float = 0.7, rpn_bg_iou_thresh: float = 0.3, rpn_nms_thresh: float = 0.7,
    rpn_pre_nms_top_n: tuple[int, int] = (1000, 500),
    rpn_post_nms_top_n: tuple[int, int] = (500, 300),
    box_fg_iou_thresh: float = 0.5, box_bg_iou_thresh: float = 0.5,
    box_batch_size_per_image: int = 128, box_positive_fraction: float = 0.25,
    box_score_thresh: float = 0.05, box_nms_thresh: float = 0.5, max_detections: int = 100,
) -> nn.Module:
    """Faster R-CNN: RPN proposals, RoIAlign 7x7, two-layer MLP box head (stride-8 ResNet).

    Args:
        num_classes: object classes (background is added internally).
        image_size: side of the (square) training images; anchors scale with it.
        backbone: ``"resnet-cpu"`` (widths ``width``, 2x, 4x; default width 32) or
            ``"resnet18"`` (torchvision's keys, ImageNet weights load via ``--weights``).
        width: first-stage channels (the map has 4x that).
        representation_size: width of the box head's two fully connected layers.
        anchor_sizes: RPN anchor sides in pixels; default 1/8, 1/4, 1/2 of ``image_size``.
        anchor_ratios: RPN anchor width/height ratios.
        rpn_*: RPN matching thresholds, NMS threshold, (train, test) top-n before/after NMS.
        box_*: RoI matching thresholds, sampled RoIs per image (torchvision: 512; 128 here for
            CPUs) and their positive fraction, evaluation score and NMS thresholds.
        max_detections: detections kept per image.
    """
    rpn = _rpn_options(image_size, anchor_sizes, anchor_ratios, rpn_fg_iou_thresh,
                       rpn_bg_iou_thresh, rpn_nms_thresh, rpn_pre_nms_top_n, rpn_post_nms_top_n)
    box = _box_options(box_fg_iou_thresh, box_bg_iou_thresh, box_batch_size_per_image,
                       box_positive_fraction, box_score_thresh, box_nms_thresh, max_detections)
    return _two_stage(num_classes, image_size, backbone, width, representation_size, rpn,
                      "align", box)


@register_model("mask-rcnn", family="rcnn", section=SECTION, task="detection",
                input_shape=(3, 128, 128), params=PARAMS["mask-rcnn"])
def mask_rcnn(
    num_classes: int = 6, image_size: int = 128, backbone: str = "resnet-cpu",
    width: int | None = None, representation_size: int = 256, mask_layers: int = 2,
    mask_width: int | None = None,
    anchor_sizes: tuple[float, ...] | None = None, anchor_ratios: tuple[float, ...] = RATIOS,
    rpn_fg_iou_thresh: float = 0.7, rpn_bg_iou_thresh: float = 0.3, rpn_nms_thresh: float = 0.7,
    rpn_pre_nms_top_n: tuple[int, int] = (1000, 500),
    rpn_post_nms_top_n: tuple[int, int] = (500, 300),
    box_fg_iou_thresh: float = 0.5, box_bg_iou_thresh: float = 0.5,
    box_batch_size_per_image: int = 128, box_positive_fraction: float = 0.25,
    box_score_thresh: float = 0.05, box_nms_thresh: float = 0.5, max_detections: int = 100,
) -> nn.Module:
    """Mask R-CNN: Faster R-CNN plus a mask head (RoIAlign 14x14, convs, 28x28 class masks).

    Args:
        mask_layers: 3x3 convs of the mask head before its upsampling (torchvision: 4; 2 here
            for CPUs).
        mask_width: their channels (default: the feature map's).
        others: as :func:`faster_rcnn`.
    """
    check_positive(mask_layers=mask_layers)
    rpn = _rpn_options(image_size, anchor_sizes, anchor_ratios, rpn_fg_iou_thresh,
                       rpn_bg_iou_thresh, rpn_nms_thresh, rpn_pre_nms_top_n, rpn_post_nms_top_n)
    box = _box_options(box_fg_iou_thresh, box_bg_iou_thresh, box_batch_size_per_image,
                       box_positive_fraction, box_score_thresh, box_nms_thresh, max_detections)
    return _two_stage(num_classes, image_size, backbone, width, representation_size, rpn,
                      "align", box, mask=(mask_layers, mask_width))


@register_model("fast-rcnn", family="rcnn", section=SECTION, task="detection",
                input_shape=(3, 128, 128), params=PARAMS["fast-rcnn"])
def fast_rcnn(
    num_classes: int = 6, image_size: int = 128, backbone: str = "resnet-cpu",
    width: int | None = None, representation_size: int = 256,
    window_sizes: tuple[float, ...] = WINDOW_SIZES, window_ratios: tuple[float, ...] = RATIOS,
    box_fg_iou_thresh: float = 0.5, box_bg_iou_thresh: float = 0.5,
    box_batch_size_per_image: int = 128, box_positive_fraction: float = 0.25,
    box_score_thresh: float = 0.05, box_nms_thresh: float = 0.5, max_detections: int = 100,
) -> nn.Module:
    """Fast R-CNN: fixed sliding-window proposals, RoI max-pooling 7x7 on shared features.

    Args:
        window_sizes: proposal window sides as fractions of the image side.
        window_ratios: their width/height ratios.
        others: as :func:`faster_rcnn`.
    """
    box = _box_options(box_fg_iou_thresh, box_bg_iou_thresh, box_batch_size_per_image,
                       box_positive_fraction, box_score_thresh, box_nms_thresh, max_detections)
    return _two_stage(num_classes, image_size, backbone, width, representation_size,
                      SlidingWindowProposals(window_sizes, window_ratios), "pool", box)


@register_model("rcnn", family="rcnn", section=SECTION, task="detection",
                input_shape=(3, 128, 128), params=PARAMS["rcnn"])
def rcnn(
    num_classes: int = 6, image_size: int = 128, width: int = 16,
    representation_size: int = 256, region_size: int = 64,
    window_sizes: tuple[float, ...] = WINDOW_SIZES, window_ratios: tuple[float, ...] = RATIOS,
    box_fg_iou_thresh: float = 0.5, box_bg_iou_thresh: float = 0.5,
    box_batch_size_per_image: int = 128, box_positive_fraction: float = 0.25,
    box_score_thresh: float = 0.05, box_nms_thresh: float = 0.5, max_detections: int = 100,
) -> nn.Module:
    """R-CNN: each sliding-window proposal warped from the image to 64x64, a small CNN per region.

    The original fine-tunes AlexNet on 227x227 warps and trains per-class SVMs and box
    regressors afterwards; here one network learns softmax classes and boxes jointly (as Fast
    R-CNN does), so that only the missing feature sharing sets the two apart.

    Args:
        width: channels of the region CNN's first block (doubling over four blocks).
        region_size: side of the warped regions (a multiple of 16).
        others: as :func:`fast_rcnn`.
    """
    check_positive(num_classes=num_classes, width=width, image_size=image_size,
                   representation_size=representation_size, region_size=region_size)
    if region_size % 16:
        raise DivekitError(f"region_size must be a multiple of 16 (four 2x poolings), got "
                           f"{region_size}")
    box = _box_options(box_fg_iou_thresh, box_bg_iou_thresh, box_batch_size_per_image,
                       box_positive_fraction, box_score_thresh, box_nms_thresh, max_detections)
    heads = RoIHeads(RoIPooler(region_size), RegionCNN(width, representation_size, region_size),
                     BoxPredictor(representation_size, num_classes), num_classes=num_classes,
                     **box)
    return GeneralizedRCNN(nn.Identity(), SlidingWindowProposals(window_sizes, window_ratios),
                           heads, num_classes)
