"""LeNet-5 (LeCun et al., 1998) as the course teaches it (section 7.6), and with batch norm (8.5).

The course's LeNet keeps the 1998 choices: sigmoid activations and average pooling, trained with
plain SGD from Xavier-uniform initialisation.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from divekit.models.linear import init_xavier
from divekit.models.registry import register_model


def _flat_features(image_size: int, first_padding: int) -> int:
    """Width of the flattened 16-channel map for a square input of ``image_size``."""
    size = image_size + 2 * first_padding - 4  # 5x5 conv
    size = (size // 2 - 4) // 2  # pool, 5x5 conv, pool
    return 16 * size * size


# The course prints 61,706 for LeNet; tests/models/test_registry.py derives both by formula.
@register_model("lenet", family="lenet", section="7.6 Convolutional Neural Networks (LeNet)",
                params=61_706)
def lenet(num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> nn.Module:
    """LeNet-5: two 5x5 conv + sigmoid + 2x2 average-pool stages, then 120-84-classes dense."""
    model = nn.Sequential(
        nn.Conv2d(in_channels, 6, kernel_size=5, padding=2), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Flatten(),
        nn.Linear(_flat_features(image_size, 2), 120), nn.Sigmoid(),
        nn.Linear(120, 84), nn.Sigmoid(),
        nn.Linear(84, num_classes),
    )
    model.apply(init_xavier)
    return model


@register_model("lenet-bn", family="lenet", section="8.5 Batch Normalization", params=44_878)
def lenet_bn(num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> nn.Module:
    """LeNet with batch norm after every conv and hidden dense layer (the course's 8.5 layout)."""
    return lenet_bn_with(nn.BatchNorm2d, nn.BatchNorm1d, num_classes, in_channels, image_size)


def lenet_bn_with(
    norm2d: Callable[[int], nn.Module], norm1d: Callable[[int], nn.Module],
    num_classes: int = 10, in_channels: int = 1, image_size: int = 28,
) -> nn.Module:
    """The BN-LeNet layout with the given batch-norm layers (built-in or from scratch)."""
    model = nn.Sequential(
        nn.Conv2d(in_channels, 6, kernel_size=5), norm2d(6), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5), norm2d(16), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Flatten(),
        nn.Linear(_flat_features(image_size, 0), 120), norm1d(120), nn.Sigmoid(),
        nn.Linear(120, 84), norm1d(84), nn.Sigmoid(),
        nn.Linear(84, num_classes),
    )
    model.apply(init_xavier)
    return model
