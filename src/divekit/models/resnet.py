"""Residual networks, section 8.6 (He et al., 2016, "Deep Residual Learning for Image Recognition").

A residual block outputs ``relu(F(x) + shortcut(x))``: its layers only have to learn the change
``F`` to their input, so stacking more blocks cannot make the function class worse. The shortcut
is the identity, or a strided 1x1 convolution where the block changes the resolution or the
number of channels (a "projection"), so that the two terms have the same shape.

Three layouts live here:

* ``resnet18-d2l``: the course's ResNet-18 (``Residual`` blocks: biased convs, a plain 1x1 conv
  as the projection, Xavier initialisation), for Fashion-MNIST resized to 96x96.
* ``resnet18``, ``resnet34``, ``resnet50``: torchvision's layout and module names (``conv1``,
  ``bn1``, ``layer1`` ... ``layer4``, ``fc``), so torchvision's ImageNet weights load with
  ``load_state_dict(strict=True)``. ``Bottleneck`` strides in its 3x3 conv, as torchvision's
  "v1.5" does (the original release strides in the first 1x1 conv, which then reads only a
  quarter of its input positions).
* ``resnet-cpu``: a narrow three-stage ResNet for 28x28 images that trains on a laptop CPU.

Small images: the ImageNet stem (7x7 stride-2 conv, 3x3 stride-2 max-pool) divides the resolution
by 4 before the first block, which would leave a 28x28 image at 7x7 before three more halvings.
For ``image_size < 96`` (the zoo's rule, see :mod:`divekit.models.stems`) every model here uses
a 3x3 stride-1 conv and no max-pool instead (the usual CIFAR stem). Adaptive average pooling
before the classifier makes any input size work.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from divekit.errors import DivekitError
from divekit.models.linear import init_xavier
from divekit.models.registry import from_published, register_model
from divekit.models.stems import uses_small_stem

SECTION = "8.6 Residual Networks (ResNet) and ResNeXt"


def check_positive(**options: int) -> None:
    """Raise ``DivekitError`` naming the first option that is not a positive integer."""
    for name, value in options.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DivekitError(f"{name} must be a positive integer, got {value!r}")


def stem(in_channels: int, width: int, image_size: int, bias: bool = False) -> list[nn.Module]:
    """The input stem: conv, batch norm, ReLU, then max-pool (ImageNet) or nothing (small images).

    Args:
        in_channels: channels of the input image.
        width: channels the stem outputs.
        image_size: side of the square input; below 96 the small-image stem is used.
        bias: whether the conv has a bias (the course's convs do; torchvision's do not, since
            the batch norm that follows has its own shift).

    Returns:
        ``[conv, norm, relu, pool]``, ``pool`` being ``nn.Identity`` for small images.

    Shape:
        ``(N, in_channels, H, W) -> (N, width, ceil(H / 4), ceil(W / 4))`` for the ImageNet stem
        (7x7/2 conv with padding 3, 3x3/2 max-pool with padding 1) and
        ``(N, in_channels, H, W) -> (N, width, H, W)`` for the small-image stem (3x3/1 conv).
    """
    if uses_small_stem(image_size):
        conv = nn.Conv2d(in_channels, width, 3, padding=1, bias=bias)
        pool: nn.Module = nn.Identity()
    else:
        conv = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=bias)
        pool = nn.MaxPool2d(3, stride=2, padding=1)
    return [conv, nn.BatchNorm2d(width), nn.ReLU(inplace=True), pool]


def projection(in_channels: int, out_channels: int, stride: int) -> nn.Sequential | None:
    """The shortcut of a block: 1x1 conv + BN where the shape changes, ``None`` for identity."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class Residual(nn.Module):
    """The course's residual block: two biased 3x3 convs with BN, a plain 1x1 conv projection.

    Shape:
        ``(N, in_channels, H, W) -> (N, channels, ceil(H / stride), ceil(W / stride))``.
    """

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv3 = (nn.Conv2d(in_channels, channels, 1, stride=stride)
                      if stride != 1 or in_channels != channels else None)
        self.bn1 = nn.BatchNorm2d(channels)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.conv3 is None else self.conv3(x)
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + shortcut)


class BasicBlock(nn.Module):
    """ResNet-18/34's block: 3x3 conv-BN-ReLU, 3x3 conv-BN, add the shortcut, ReLU.

    Shape:
        ``(N, in_channels, H, W) -> (N, channels, ceil(H / stride), ceil(W / stride))``.
    """

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = projection(in_channels, channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + shortcut)


class Bottleneck(nn.Module):
    """ResNet-50's block: 1x1 conv narrows to ``channels``, 3x3 conv, 1x1 conv widens 4x.

    The 1x1 convs make the expensive 3x3 conv work on a quarter of the block's width.

    Shape:
        ``(N, in_channels, H, W) -> (N, 4 * channels, ceil(H / stride), ceil(W / stride))``.
    """

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = projection(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.bn3(self.conv3(y)) + shortcut)


Block = type[Residual] | type[BasicBlock] | type[Bottleneck]


def resnet(
    block: Block, depths: tuple[int, ...], widths: tuple[int, ...], *,
    num_classes: int, in_channels: int, image_size: int, bias: bool = False,
) -> nn.Sequential:
    """A ResNet as an ``nn.Sequential`` with torchvision's names: conv1 ... layer1.. avgpool, fc.

    Args:
        block: the residual block class.
        depths: number of blocks in each stage.
        widths: ``channels`` of the blocks in each stage (a bottleneck outputs 4x that).
        num_classes: classifier outputs.
        in_channels: channels of the input image.
        image_size: side of the square input; picks the stem (see ``stem``), which outputs
            ``widths[0]`` channels.
        bias: whether the stem conv has a bias.

    Returns:
        The network; every stage after the first halves the resolution in its first block.

    Shape:
        ``(N, in_channels, H, W) -> (N, num_classes)``.
    """
    check_positive(num_classes=num_classes, in_channels=in_channels, image_size=image_size)
    if len(depths) != len(widths) or not depths:
        raise DivekitError(f"need one width per stage, got depths {depths} and widths {widths}")
    check_positive(**{f"depths[{i}]": d for i, d in enumerate(depths)},
                   **{f"widths[{i}]": w for i, w in enumerate(widths)})
    channels = widths[0]
    conv, norm, relu, pool = stem(in_channels, channels, image_size, bias)
    layers: OrderedDict[str, nn.Module] = OrderedDict(conv1=conv, bn1=norm, relu=relu, maxpool=pool)
    for i, (depth, width) in enumerate(zip(depths, widths, strict=True), start=1):
        stride = 1 if i == 1 else 2
        blocks = [block(channels, width, stride)]
        channels = width * block.expansion
        blocks += [block(channels, width) for _ in range(depth - 1)]
        layers[f"layer{i}"] = nn.Sequential(*blocks)
    layers["avgpool"] = nn.AdaptiveAvgPool2d(1)
    layers["flatten"] = nn.Flatten()  # no parameters, so the state-dict keys stay torchvision's
    layers["fc"] = nn.Linear(channels, num_classes)
    return nn.Sequential(layers)


def init_weights(model: nn.Module, zero_init_residual: bool = False) -> None:
    """torchvision's ResNet initialisation: He-normal convs (fan-out), BN weight 1 and bias 0.

    Args:
        model: the network, changed in place.
        zero_init_residual: also zero the scale of the last BN of every residual block, so each
            block starts as ``relu(shortcut(x))`` (Goyal et al., 2017); this helps large batches.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    if zero_init_residual:
        for module in model.modules():
            if isinstance(module, Bottleneck):
                nn.init.zeros_(module.bn3.weight)
            elif isinstance(module, BasicBlock | Residual):
                nn.init.zeros_(module.bn2.weight)


def _torchvision_resnet(
    block: Block, depths: tuple[int, ...], num_classes: int, in_channels: int, image_size: int,
    zero_init_residual: bool,
) -> nn.Sequential:
    model = resnet(block, depths, (64, 128, 256, 512), num_classes=num_classes,
                   in_channels=in_channels, image_size=image_size)
    init_weights(model, zero_init_residual)
    return model


@register_model("resnet18", family="resnet", section=SECTION, input_shape=(1, 224, 224),
                params=from_published(11_689_512, stem_weights=64 * 7 * 7, head_inputs=512))
def resnet18(num_classes: int = 10, in_channels: int = 1, image_size: int = 224,
             zero_init_residual: bool = False) -> nn.Module:
    """ResNet-18 in torchvision's layout: basic blocks (2, 2, 2, 2), widths 64-512."""
    return _torchvision_resnet(BasicBlock, (2, 2, 2, 2), num_classes, in_channels, image_size,
                               zero_init_residual)


@register_model("resnet34", family="resnet", section=SECTION, input_shape=(1, 224, 224),
                params=from_published(21_797_672, stem_weights=64 * 7 * 7, head_inputs=512))
def resnet34(num_classes: int = 10, in_channels: int = 1, image_size: int = 224,
             zero_init_residual: bool = False) -> nn.Module:
    """ResNet-34 in torchvision's layout: basic blocks (3, 4, 6, 3), widths 64-512."""
    return _torchvision_resnet(BasicBlock, (3, 4, 6, 3), num_classes, in_channels, image_size,
                               zero_init_residual)


@register_model("resnet50", family="resnet", section=SECTION, input_shape=(1, 224, 224),
                params=from_published(25_557_032, stem_weights=64 * 7 * 7, head_inputs=2048))
def resnet50(num_classes: int = 10, in_channels: int = 1, image_size: int = 224,
             zero_init_residual: bool = False) -> nn.Module:
    """ResNet-50 in torchvision's layout: bottleneck blocks (3, 4, 6, 3), outputs 256-2048 wide."""
    return _torchvision_resnet(Bottleneck, (3, 4, 6, 3), num_classes, in_channels, image_size,
                               zero_init_residual)


# Ours (the course's and a CPU-sized variant): tests/models/test_zoo_resnet_densenet.py formulas.
@register_model("resnet18-d2l", family="resnet", section=SECTION, input_shape=(1, 96, 96),
                params=11_178_378)
def resnet18_d2l(num_classes: int = 10, in_channels: int = 1, image_size: int = 96) -> nn.Module:
    """The course's ResNet-18 for 96x96 Fashion-MNIST: ``Residual`` blocks (2, 2, 2, 2)."""
    model = resnet(Residual, (2, 2, 2, 2), (64, 128, 256, 512), num_classes=num_classes,
                   in_channels=in_channels, image_size=image_size, bias=True)
    model.apply(init_xavier)
    return model


@register_model("resnet-cpu", family="resnet", section=SECTION, input_shape=(1, 28, 28),
                params=77_754)
def resnet_cpu(
    num_classes: int = 10, in_channels: int = 1, image_size: int = 28,
    widths: tuple[int, ...] = (16, 32, 64), depths: tuple[int, ...] = (1, 1, 1),
    zero_init_residual: bool = False,
) -> nn.Module:
    """A CPU-sized ResNet for 28x28 images: 3x3 stem, one basic block per stage, 16-32-64 wide.

    At 28x28 the stages run at 28, 14 and 7 pixels: 9.3M multiply-adds per image. The wider
    ``widths=(32, 64, 128)`` costs 4x that and trains about 3.5x slower on two CPU cores, which
    leaves time for only about three Fashion-MNIST epochs in ten minutes.
    """
    model = resnet(BasicBlock, depths, widths, num_classes=num_classes, in_channels=in_channels,
                   image_size=image_size)
    init_weights(model, zero_init_residual)
    return model
