"""Network in network (course section 8.3): NiN (Lin, Chen & Yan, 2013).

A NiN block is a conv followed by two 1 x 1 convs, all with ReLU: the 1 x 1 convs act as a
small MLP applied at every pixel. There are no dense layers: the last block has one channel per
class and a global average pool turns each channel into a logit.

Small inputs (``image_size < 96``, the zoo's rule in :mod:`divekit.models.stems`) get the
small-input stem: the first block uses a 3 x 3 stride-1 conv and is not followed by a max-pool,
because the 11 x 11 stride-4 conv and the pools shrink 28 pixels to nothing by the second pool.
Everything after the stem is identical.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from divekit.errors import DivekitError
from divekit.models.linear import init_xavier
from divekit.models.registry import register_model
from divekit.models.stems import uses_small_stem


def nin_block(
    in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int,
) -> nn.Module:
    """Conv(``kernel_size``, ``stride``, ``padding``) + ReLU, then two 1x1 conv + ReLU.

    Shape:
        ``(N, in_channels, H, W) -> (N, out_channels, H', W')`` with
        ``H' = (H + 2 * padding - kernel_size) // stride + 1`` (the 1x1 convs keep the size).
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding), nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, kernel_size=1), nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, kernel_size=1), nn.ReLU(),
    )


# The course's layout, no published figure: tests/models/test_zoo_classic.py's formula.
@register_model("nin", family="nin", section="8.3 Network in Network (NiN)",
                input_shape=(1, 224, 224), params=1_992_166)
def nin(num_classes: int = 10, in_channels: int = 1, image_size: int = 224) -> nn.Module:
    """NiN: four NiN blocks (96-256-384-classes channels) and global average pooling.

    Args:
        num_classes: number of output logits (channels of the last block).
        in_channels: channels of the input image.
        image_size: side of the (square) input; below 96 the small-input stem is used.

    Returns:
        ``nn.Sequential`` with children ``stem``, ``features`` and ``head``.

    Shape:
        input ``(N, in_channels, H, W)``, output ``(N, num_classes)``. At 224: stem 11x11/4
        -> 96 x 54 x 54, max-pool 3/2 -> 26; block 5x5 -> 256 x 26 x 26, pool -> 12;
        block 3x3 -> 384 x 12 x 12, pool -> 5; block 3x3 -> classes x 5 x 5; average -> classes.
    """
    if image_size < 7:
        # Two 3x3 stride-2 max-pools after the stem need at least 7 pixels.
        raise DivekitError(f"nin needs image_size >= 7, got {image_size}")
    if uses_small_stem(image_size):
        stem = nn.Sequential(nin_block(in_channels, 96, kernel_size=3, stride=1, padding=1))
    else:
        stem = nn.Sequential(
            nin_block(in_channels, 96, kernel_size=11, stride=4, padding=0),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
    features = nn.Sequential(
        nin_block(96, 256, kernel_size=5, stride=1, padding=2),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nin_block(256, 384, kernel_size=3, stride=1, padding=1),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Dropout(0.5),
        nin_block(384, num_classes, kernel_size=3, stride=1, padding=1),
    )
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model = nn.Sequential(OrderedDict(stem=stem, features=features, head=head))
    model.apply(init_xavier)
    return model
