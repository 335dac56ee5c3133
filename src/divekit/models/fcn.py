"""Fully convolutional networks, d2l 14.11 (Long et al., 2015, "Fully Convolutional Networks
for Semantic Segmentation").

A classification CNN without its pooling and dense head keeps a map of features at stride ``s``
(32 for ResNet-18); a 1x1 convolution turns every feature vector into class scores, and a
transposed convolution initialised to bilinear interpolation (kernel ``2s``, stride ``s``,
padding ``s/2``) scales the score map back to the input's size, so the network predicts one
class per pixel for an input of any size.

* ``fcn``: the course's FCN (FCN-32s): ResNet-18 in torchvision's layout (``--weights`` loads
  torchvision's ImageNet file ``resnet18-f37072fd.pth``; its ``fc`` is dropped), a 1x1
  convolution and a 32x upsampling; the ``fcn-voc`` recipe trains it with the book's settings.
* ``fcn-cpu``: the paper's skip architecture (FCN-8s, here "FCN-4s") on a CPU-sized ResNet
  (four stages of one basic block, 32 to 256 wide): scores from the last stage are upsampled
  2x and added to scores from the stage before it, three times, and the sum, at stride 4, is
  upsampled 4x. The coarse stride-32 map of FCN-32s cannot
  draw the corners of a 13-pixel star on a 128x128 image; the paper's skips restore the detail
  (its FCN-8s gains 3 mean-IoU points over FCN-32s on VOC).

Inputs are images in [0, 1]; the model standardises them with ImageNet's statistics (as the
backbone's weights expect) and pads them to a multiple of the stride, cropping the scores back,
so any size works. The skip scores start at zero (as in the paper), so training starts from the
coarse prediction and learns the refinement.
"""

from __future__ import annotations

from collections import OrderedDict
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from divekit.errors import DivekitError
from divekit.layers.upsampling import bilinear_upsampling
from divekit.models.registry import register_model
from divekit.models.resnet import check_positive, resnet18, resnet_cpu

SECTION = "14.11 Fully Convolutional Networks"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HEAD_MODULES = ("avgpool", "flatten", "fc")


class FCN(nn.Module):
    """A fully convolutional network on a backbone of named stages, with optional skips.

    Args:
        backbone: stages run in order (a zoo ResNet without ``avgpool``/``flatten``/``fc``).
        stages: ``{stage name: (channels, stride)}`` of the last stage and every skip stage.
        num_classes: classes ``C`` including background.
        skips: stages whose features add scores, finest first (empty: FCN-32s).

    Shape:
        ``(N, 3, H, W) -> (N, C, H, W)`` logits, for any ``H, W``.
    """

    head_patterns = ("classifier.*", "skip_scores.*", "skip_upsampling.*", "upsampling.*")

    def __init__(self, backbone: nn.Sequential, stages: dict[str, tuple[int, int]],
                 num_classes: int, skips: tuple[str, ...] = ()) -> None:
        super().__init__()
        check_positive(num_classes=num_classes)
        last = list(backbone.named_children())[-1][0]
        scored = (*skips, last)
        strides = [stages[name][1] for name in scored]
        if any(coarse % fine for fine, coarse in pairwise(strides)):
            raise DivekitError(f"FCN skips need strides that divide each other, got {strides}")
        self.backbone, self.skips = backbone, skips
        self.stride = max(strides)
        self.classifier = nn.Conv2d(stages[last][0], num_classes, 1)
        self.skip_scores = nn.ModuleDict(
            {name: nn.Conv2d(stages[name][0], num_classes, 1) for name in skips})
        for conv in self.skip_scores.values():
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)
        # Coarse to fine: each upsampling brings the running scores to the next skip's stride.
        self.skip_upsampling = nn.ModuleList(
            bilinear_upsampling(num_classes, coarse // fine)
            for coarse, fine in pairwise(reversed(strides)))
        self.upsampling = bilinear_upsampling(num_classes, strides[0])
        self.register_buffer("image_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("image_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1),
                             persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise DivekitError(f"FCN takes RGB images (N, 3, H, W), got {tuple(images.shape)}")
        height, width = images.shape[-2:]
        x = (images - self.image_mean) / self.image_std
        # Zero (mean-colour) padding to a multiple of the stride, so every map size divides.
        x = F.pad(x, (0, -width % self.stride, 0, -height % self.stride))
        features = {}
        for name, stage in self.backbone.named_children():
            x = stage(x)
            if name in self.skip_scores:
                features[name] = x
        scores = self.classifier(x)
        for name, upsampling in zip(reversed(self.skips), self.skip_upsampling, strict=True):
            scores = upsampling(scores) + self.skip_scores[name](features[name])
        return self.upsampling(scores)[..., :height, :width]

    def adapt_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A bare ResNet's weights (torchvision's ImageNet resnet18) as ``backbone.*``; its
        classifier head (``fc``) is dropped. A file with ``backbone.`` keys is left as it is."""
        if any(key.startswith("backbone.") for key in state) or "conv1.weight" not in state:
            return state
        return {f"backbone.{key}": value for key, value in state.items()
                if key.split(".")[0] not in HEAD_MODULES}


def _stages(net: nn.Sequential) -> nn.Sequential:
    return nn.Sequential(OrderedDict((name, module) for name, module in net.named_children()
                                     if name not in HEAD_MODULES))


@register_model("fcn", family="fcn", section=SECTION, task="segmentation",
                input_shape=(3, 320, 480), params=12_993_642)
def fcn(num_classes: int = 21, image_size: int = 320) -> nn.Module:
    """The course's FCN: ResNet-18 features (stride 32), a 1x1 conv, 32x bilinear upsampling.

    Args:
        num_classes: pixel classes including background (VOC's 21).
        image_size: picks the backbone's stem (the ImageNet stem from 96 pixels up).
    """
    backbone = _stages(resnet18(num_classes=1, in_channels=3, image_size=image_size))
    stride = 32 if image_size >= 96 else 8
    return FCN(backbone, {"layer4": (512, stride)}, num_classes)


@register_model("fcn-cpu", family="fcn", section=SECTION, task="segmentation",
                input_shape=(3, 128, 128), params=1_239_144)
def fcn_cpu(num_classes: int = 7, image_size: int = 128,
            widths: tuple[int, ...] = (32, 64, 128, 256), depths: tuple[int, ...] | None = None
            ) -> nn.Module:
    """FCN with skips on a CPU-sized ResNet: scores at strides 32 to 4 fused, 4x upsampling.

    Args:
        num_classes: pixel classes including background (the scenes' 7).
        image_size: picks the backbone's stem (the ImageNet stem, stride 4, from 96 pixels up;
            below, the stride-1 small-image stem).
        widths, depths: channels and basic blocks (default one) of each stage, at least two
            stages; each stage after the first halves the resolution, and all but the last add
            skip scores.
    """
    depths = (1,) * len(widths) if depths is None else depths
    if len(widths) < 2 or len(widths) != len(depths):
        raise DivekitError(f"fcn-cpu needs at least two stages and a depth for each, got "
                           f"widths {widths} and depths {depths}")
    net = resnet_cpu(num_classes=1, in_channels=3, image_size=image_size, widths=widths,
                     depths=depths)
    stem_stride = 4 if image_size >= 96 else 1
    stages = {f"layer{i + 1}": (width, stem_stride * 2**i) for i, width in enumerate(widths)}
    return FCN(_stages(net), stages, num_classes, skips=tuple(stages)[:-1])
