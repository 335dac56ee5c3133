"""Densely connected networks, section 8.7 (Huang et al., 2017, "Densely Connected Convolutional
Networks").

Where a ResNet adds a block's output to its input, a dense block concatenates: each layer sees
the block's input and the outputs of all earlier layers of the block, and appends
``growth_rate`` new channels. Transition layers (BN-ReLU-1x1 conv, 2x2 average pool) between
dense blocks halve both the resolution and the number of channels to keep the width in check.

* ``densenet-d2l``: the course's DenseNet (layers BN-ReLU-3x3 conv with bias, four blocks of
  four layers, Xavier initialisation), for Fashion-MNIST resized to 96x96.
* ``densenet121``: torchvision's DenseNet-121 with its module names (``features.conv0``,
  ``features.denseblock1.denselayer1.conv1``, ``features.transition1.conv``, ``classifier``),
  so torchvision's weights load with ``load_state_dict(strict=True)``. Its layers are
  bottlenecks: BN-ReLU-1x1 conv to ``4 * growth_rate`` channels, then BN-ReLU-3x3 conv.

Both start with ResNet's stem (``divekit.models.resnet.stem``), so inputs below 96 pixels (the
zoo's rule, see :mod:`divekit.models.stems`) get a 3x3 stride-1 conv and no max-pool.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

from divekit.errors import DivekitError
from divekit.models.linear import init_xavier
from divekit.models.registry import from_published, register_model
from divekit.models.resnet import check_positive, stem

SECTION = "8.7 Densely Connected Networks (DenseNet)"


class DenseBlock(nn.Module):
    """Layers whose outputs are concatenated, one after another, onto the block's input.

    Args:
        layers: layer ``i`` (from 0) maps ``C + i * growth`` channels to ``growth`` channels.

    Shape:
        ``(N, C, H, W) -> (N, C + len(layers) * growth, H, W)``.
    """

    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        for i, layer in enumerate(layers, start=1):
            self.add_module(f"denselayer{i}", layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.children():
            x = torch.cat([x, layer(x)], dim=1)
        return x


def conv_block(in_channels: int, growth_rate: int) -> nn.Sequential:
    """The course's dense layer: BN, ReLU, 3x3 conv (with bias) to ``growth_rate`` channels."""
    return nn.Sequential(OrderedDict(
        norm=nn.BatchNorm2d(in_channels), relu=nn.ReLU(inplace=True),
        conv=nn.Conv2d(in_channels, growth_rate, 3, padding=1),
    ))


def bottleneck_layer(in_channels: int, growth_rate: int, bn_size: int = 4) -> nn.Sequential:
    """DenseNet-B's layer: BN-ReLU-1x1 conv to ``bn_size * growth_rate``, BN-ReLU-3x3 conv.

    The 1x1 conv caps the input of the 3x3 conv, which otherwise grows with every layer.
    """
    width = bn_size * growth_rate
    return nn.Sequential(OrderedDict(
        norm1=nn.BatchNorm2d(in_channels), relu1=nn.ReLU(inplace=True),
        conv1=nn.Conv2d(in_channels, width, 1, bias=False),
        norm2=nn.BatchNorm2d(width), relu2=nn.ReLU(inplace=True),
        conv2=nn.Conv2d(width, growth_rate, 3, padding=1, bias=False),
    ))


def transition(in_channels: int, out_channels: int, bias: bool = False) -> nn.Sequential:
    """Transition layer: BN, ReLU, 1x1 conv, 2x2 average pool.

    Shape:
        ``(N, in_channels, H, W) -> (N, out_channels, floor(H / 2), floor(W / 2))``.
    """
    return nn.Sequential(OrderedDict(
        norm=nn.BatchNorm2d(in_channels), relu=nn.ReLU(inplace=True),
        conv=nn.Conv2d(in_channels, out_channels, 1, bias=bias),
        pool=nn.AvgPool2d(2, stride=2),
    ))


def densenet(
    layer: Callable[[int, int], nn.Module], block_sizes: tuple[int, ...], growth_rate: int, *,
    num_classes: int, in_channels: int, image_size: int, init_width: int = 64, bias: bool = False,
) -> nn.Sequential:
    """A DenseNet as an ``nn.Sequential`` named like torchvision's: features, classifier.

    Args:
        layer: builds one dense layer from (input channels, growth rate).
        block_sizes: number of layers in each dense block.
        growth_rate: channels each layer adds.
        num_classes: classifier outputs.
        in_channels: channels of the input image.
        image_size: side of the square input; picks the stem (see ``resnet.stem``).
        init_width: channels out of the stem.
        bias: whether the stem and transition convs have a bias.

    Returns:
        The network; the channels after a dense block are halved (rounding down) by the
        transition that follows it.

    Shape:
        ``(N, in_channels, H, W) -> (N, num_classes)``.
    """
    check_positive(num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                   growth_rate=growth_rate, init_width=init_width)
    if not block_sizes:
        raise DivekitError("block_sizes must name at least one dense block")
    check_positive(**{f"block_sizes[{i}]": size for i, size in enumerate(block_sizes)})
    conv, norm, relu, pool = stem(in_channels, init_width, image_size, bias)
    features: OrderedDict[str, nn.Module] = OrderedDict(
        conv0=conv, norm0=norm, relu0=relu, pool0=pool)
    channels = init_width
    for i, size in enumerate(block_sizes, start=1):
        features[f"denseblock{i}"] = DenseBlock(
            [layer(channels + j * growth_rate, growth_rate) for j in range(size)])
        channels += size * growth_rate
        if i < len(block_sizes):
            features[f"transition{i}"] = transition(channels, channels // 2, bias)
            channels //= 2
    features[f"norm{len(block_sizes) + 1}"] = nn.BatchNorm2d(channels)
    return nn.Sequential(OrderedDict(
        features=nn.Sequential(features), relu=nn.ReLU(inplace=True),
        avgpool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(),
        classifier=nn.Linear(channels, num_classes),
    ))


# Ours (the course's and a CPU-sized variant): tests/models/test_zoo_resnet_densenet.py formulas.
@register_model("densenet-d2l", family="densenet", section=SECTION, input_shape=(1, 96, 96),
                params=758_226)
def densenet_d2l(
    num_classes: int = 10, in_channels: int = 1, image_size: int = 96, growth_rate: int = 32,
    block_sizes: tuple[int, ...] = (4, 4, 4, 4),
) -> nn.Module:
    """The course's DenseNet for 96x96 Fashion-MNIST: 4 dense blocks of 4 conv blocks, growth 32."""
    model = densenet(conv_block, block_sizes, growth_rate, num_classes=num_classes,
                     in_channels=in_channels, image_size=image_size, bias=True)
    model.apply(init_xavier)
    return model


@register_model("densenet121", family="densenet", section=SECTION, input_shape=(1, 224, 224),
                params=from_published(7_978_856, stem_weights=64 * 7 * 7, head_inputs=1024))
def densenet121(num_classes: int = 10, in_channels: int = 1, image_size: int = 224) -> nn.Module:
    """DenseNet-121 in torchvision's layout: bottleneck layers (6, 12, 24, 16), growth 32."""
    model = densenet(bottleneck_layer, (6, 12, 24, 16), 32, num_classes=num_classes,
                     in_channels=in_channels, image_size=image_size)
    for module in model.modules():
        # torchvision's initialisation: He-normal (fan-in) convs, BN 1 and 0, zero classifier bias.
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.zeros_(module.bias)
    return model


@register_model("densenet-cpu", family="densenet", section=SECTION, input_shape=(1, 28, 28),
                params=23_218)
def densenet_cpu(
    num_classes: int = 10, in_channels: int = 1, image_size: int = 28, growth_rate: int = 12,
    block_sizes: tuple[int, ...] = (2, 2, 2), init_width: int = 24,
) -> nn.Module:
    """A CPU-sized DenseNet for 28x28 images: three blocks of two layers, growth 12.

    The stem is 2 x growth wide (as DenseNet-BC's CIFAR models), the blocks run at 28, 14 and
    7 pixels: 8.0M multiply-adds per image, 23k parameters, about ResNet-CPU's cost.
    """
    return densenet(conv_block, block_sizes, growth_rate, num_classes=num_classes,
                    in_channels=in_channels, image_size=image_size, init_width=init_width)
