"""Multi-branch networks (course section 8.4): GoogLeNet (Szegedy et al., 2015).

The Inception block runs four paths in parallel and concatenates them on channels: a 1 x 1
conv; 1 x 1 then 3 x 3; 1 x 1 then 5 x 5 (the paper's true 5 x 5, not two 3 x 3); a 3 x 3
max-pool then 1 x 1. The cheap 1 x 1 convs shrink the channels before the costly ones. As in the
course there is no batch norm and no auxiliary classifier: 6,998,552 parameters with 3 input
channels and 1000 classes.

Small inputs (``image_size < 96``, the zoo's rule in :mod:`divekit.models.stems`; the course
trains GoogLeNet at 96 with the ImageNet stem) get the small-input stem: a 3 x 3 stride-1 conv
and no max-pool after it, so a 28 x 28 image reaches the last stage as 4 x 4 instead of 1 x 1.
The rest, which ends in a global average pool, is identical.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from divekit.models.linear import init_xavier
from divekit.models.registry import from_published, register_model
from divekit.models.stems import uses_small_stem


class Inception(nn.Module):
    """Inception block: four parallel paths concatenated on the channel axis.

    Args:
        in_channels: channels of the input.
        c1: output channels of the 1x1 path.
        c2: ``(reduce, out)`` channels of the 1x1 -> 3x3 path.
        c3: ``(reduce, out)`` channels of the 1x1 -> 5x5 path.
        c4: output channels of the max-pool -> 1x1 path.

    Shape:
        ``(N, in_channels, H, W) -> (N, c1 + c2[1] + c3[1] + c4, H, W)``: every path keeps the
        spatial size (3x3 pad 1, 5x5 pad 2, pool stride 1 pad 1).
    """

    def __init__(
        self, in_channels: int, c1: int, c2: tuple[int, int], c3: tuple[int, int], c4: int,
    ) -> None:
        super().__init__()
        self.p1 = nn.Sequential(nn.Conv2d(in_channels, c1, kernel_size=1), nn.ReLU())
        self.p2 = nn.Sequential(
            nn.Conv2d(in_channels, c2[0], kernel_size=1), nn.ReLU(),
            nn.Conv2d(c2[0], c2[1], kernel_size=3, padding=1), nn.ReLU(),
        )
        self.p3 = nn.Sequential(
            nn.Conv2d(in_channels, c3[0], kernel_size=1), nn.ReLU(),
            nn.Conv2d(c3[0], c3[1], kernel_size=5, padding=2), nn.ReLU(),
        )
        self.p4 = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1),
            nn.Conv2d(in_channels, c4, kernel_size=1), nn.ReLU(),
        )
        self.out_channels = c1 + c2[1] + c3[1] + c4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.p1(x), self.p2(x), self.p3(x), self.p4(x)], dim=1)


def _pool() -> nn.Module:
    # Padding 1 makes every stage-ending pool a ceil(H / 2), so no input shrinks to nothing.
    return nn.MaxPool2d(kernel_size=3, stride=2, padding=1)


@register_model("googlenet", family="googlenet", section="8.4 Multi-Branch Networks (GoogLeNet)",
                input_shape=(1, 224, 224),
                params=from_published(6_998_552, stem_weights=64 * 7 * 7, head_inputs=1024))
def googlenet(num_classes: int = 10, in_channels: int = 1, image_size: int = 224) -> nn.Module:
    """GoogLeNet: a conv stem, nine Inception blocks in three stages, global average pool.

    Args:
        num_classes: number of output logits.
        in_channels: channels of the input image.
        image_size: side of the (square) input; below 96 the small-input stem is used.

    Returns:
        ``nn.Sequential`` with children ``stem`` (the course's b1), ``b2``-``b5`` and ``head``.

    Shape:
        input ``(N, in_channels, H, W)``, output ``(N, num_classes)``. At 224: stem 7x7/2 and
        pool -> 64 x 56 x 56; b2 -> 192 x 28 x 28; b3 -> 480 x 14 x 14; b4 -> 832 x 7 x 7;
        b5 -> 1024 x 7 x 7; average and linear -> classes.
    """
    if uses_small_stem(image_size):
        stem = nn.Sequential(nn.Conv2d(in_channels, 64, kernel_size=3, padding=1), nn.ReLU())
    else:
        stem = nn.Sequential(
            nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3), nn.ReLU(), _pool(),
        )
    b2 = nn.Sequential(
        nn.Conv2d(64, 64, kernel_size=1), nn.ReLU(),
        nn.Conv2d(64, 192, kernel_size=3, padding=1), nn.ReLU(),
        _pool(),
    )
    b3 = nn.Sequential(
        Inception(192, 64, (96, 128), (16, 32), 32),
        Inception(256, 128, (128, 192), (32, 96), 64),
        _pool(),
    )
    b4 = nn.Sequential(
        Inception(480, 192, (96, 208), (16, 48), 64),
        Inception(512, 160, (112, 224), (24, 64), 64),
        Inception(512, 128, (128, 256), (24, 64), 64),
        Inception(512, 112, (144, 288), (32, 64), 64),
        Inception(528, 256, (160, 320), (32, 128), 128),
        _pool(),
    )
    b5 = nn.Sequential(
        Inception(832, 256, (160, 320), (32, 128), 128),
        Inception(832, 384, (192, 384), (48, 128), 128),
    )
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1024, num_classes))
    model = nn.Sequential(OrderedDict(stem=stem, b2=b2, b3=b3, b4=b4, b5=b5, head=head))
    model.apply(init_xavier)
    return model
