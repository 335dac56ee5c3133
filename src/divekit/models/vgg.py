"""Networks using blocks (course section 8.2): VGG (Simonyan & Zisserman, 2014).

A VGG block is ``num_convs`` 3 x 3 convs (padding 1, ReLU) followed by a 2 x 2 max-pool that
halves the resolution. The network is a sequence of blocks, an adaptive average pool to 7 x 7
and a 4096-4096 dropout classifier: torchvision's layout without batch norm, so VGG-11 and
VGG-16 have the published 132,863,336 and 138,357,544 parameters (3 channels, 1000 classes).

Small inputs (``image_size < 96``, the zoo's rule in :mod:`divekit.models.stems`) get the
small-input variant: the first block keeps its resolution (no max-pool), because five halvings
turn 28 pixels into nothing. No parameter changes; the adaptive pool (the identity at 224) still
hands the classifier a 7 x 7 map.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from divekit.errors import DivekitError
from divekit.models.linear import init_xavier
from divekit.models.registry import from_published, register_model
from divekit.models.stems import uses_small_stem

SECTION = "8.2 Networks Using Blocks (VGG)"

# (number of 3x3 convs, output channels) per block: the paper's configurations A, B, D, E.
VGG11 = ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512))
VGG13 = ((2, 64), (2, 128), (2, 256), (2, 512), (2, 512))
VGG16 = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))
VGG19 = ((2, 64), (2, 128), (4, 256), (4, 512), (4, 512))
# The course's Fashion-MNIST VGG-11: a quarter of the channels, so it trains on a laptop.
VGG11_NARROW = ((1, 16), (1, 32), (2, 64), (2, 128), (2, 128))


def vgg_block(num_convs: int, in_channels: int, out_channels: int, pool: bool = True) -> nn.Module:
    """``num_convs`` 3x3 conv + ReLU layers, then (if ``pool``) a 2x2 stride-2 max-pool.

    Shape:
        ``(N, in_channels, H, W) -> (N, out_channels, H // 2, W // 2)``, or ``H, W`` unchanged
        without the pool.
    """
    layers: list[nn.Module] = []
    for i in range(num_convs):
        layers += [
            nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1),
            nn.ReLU(),
        ]
    if pool:
        layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    return nn.Sequential(*layers)


def vgg(
    arch: Sequence[tuple[int, int]],
    num_classes: int = 10,
    in_channels: int = 1,
    image_size: int = 224,
    hidden: int = 4096,
    dropout: float = 0.5,
) -> nn.Module:
    """VGG from a block spec, e.g. ``vgg(((1, 64), (2, 128)), num_classes=10)``.

    Args:
        arch: one ``(num_convs, out_channels)`` pair per block.
        num_classes: number of output logits.
        in_channels: channels of the input image.
        image_size: side of the (square) input; below 96 the first block does not pool.
        hidden: width of the two hidden dense layers.
        dropout: drop probability after each hidden dense layer.

    Returns:
        ``nn.Sequential`` with children ``stem`` (the first block), ``blocks``, ``pool`` and
        ``classifier``.

    Shape:
        input ``(N, in_channels, H, W)``, output ``(N, num_classes)``. Each pooling block halves
        ``H`` and ``W`` (224 -> 7 after five); the adaptive pool makes the map
        ``C_last x 7 x 7`` and the classifier maps ``C_last * 49 -> hidden -> hidden -> classes``.
    """
    if not arch:
        raise DivekitError("vgg needs at least one block in arch")
    small = uses_small_stem(image_size)
    halvings = len(arch) - 1 if small else len(arch)
    if image_size < 2**halvings:
        raise DivekitError(
            f"image_size {image_size} is too small for {len(arch)} VGG blocks: "
            f"{halvings} 2x2 max-pools need at least {2**halvings} pixels"
        )
    stages: list[nn.Module] = []
    channels = in_channels
    for i, (num_convs, out_channels) in enumerate(arch):
        stages.append(vgg_block(num_convs, channels, out_channels, pool=not (small and i == 0)))
        channels = out_channels
    classifier = nn.Sequential(
        nn.Flatten(),
        nn.Linear(channels * 7 * 7, hidden), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )
    model = nn.Sequential(OrderedDict(
        stem=stages[0], blocks=nn.Sequential(*stages[1:]), pool=nn.AdaptiveAvgPool2d(7),
        classifier=classifier,
    ))
    model.apply(init_xavier)
    return model


@register_model("vgg11", family="vgg", section=SECTION, input_shape=(1, 224, 224),
                params=from_published(132_863_336, stem_weights=64 * 3 * 3, head_inputs=4096))
def vgg11(num_classes: int = 10, in_channels: int = 1, image_size: int = 224) -> nn.Module:
    """VGG-11 (configuration A): 8 convs in 5 blocks, 64 to 512 channels, 3 dense layers."""
    return vgg(VGG11, num_classes, in_channels, image_size)


@register_model("vgg13", family="vgg", section=SECTION, input_shape=(1, 224, 224),
                params=from_published(133_047_848, stem_weights=64 * 3 * 3, head_inputs=4096))
def vgg13(num_classes: int = 10, in_channels: int = 1, image_size: int = 224) -> nn.Module:
    """VGG-13 (configuration B): 10 convs in 5 blocks, 64 to 512 channels, 3 dense layers."""
    return vgg(VGG13, num_classes, in_channels, image_size)


@register_model("vgg16", family="vgg", section=SECTION, input_shape=(1, 224, 224),
                params=from_published(138_357_544, stem_weights=64 * 3 * 3, head_inputs=4096))
def vgg16(num_classes: int = 10, in_channels: int = 1, image_size: int = 224) -> nn.Module:
    """VGG-16 (configuration D): 13 convs in 5 blocks, 64 to 512 channels, 3 dense layers."""
    return vgg(VGG16, num_classes, in_channels, image_size)


@register_model("vgg19", family="vgg", section=SECTION, input_shape=(1, 224, 224),
                params=from_published(143_667_240, stem_weights=64 * 3 * 3, head_inputs=4096))
def vgg19(num_classes: int = 10, in_channels: int = 1, image_size: int = 224) -> nn.Module:
    """VGG-19 (configuration E): 16 convs in 5 blocks, 64 to 512 channels, 3 dense layers."""
    return vgg(VGG19, num_classes, in_channels, image_size)


# Ours (no published figure): tests/models/test_zoo_classic.py derives it by formula.
@register_model("vgg11-narrow", family="vgg", section=SECTION, input_shape=(1, 224, 224),
                params=43_093_322)
def vgg11_narrow(num_classes: int = 10, in_channels: int = 1, image_size: int = 224) -> nn.Module:
    """The course's Fashion-MNIST VGG-11: channels divided by 4 (16 to 128), same classifier."""
    return vgg(VGG11_NARROW, num_classes, in_channels, image_size)
