"""A small modern CNN for 28x28 images: the course's ideas (ReLU, max pooling, batch norm,
section 8.5) sized so an epoch of Fashion-MNIST takes seconds on a laptop CPU.

Each stage is conv 3x3 -> max-pool 2x2 -> batch norm -> ReLU. Pooling before normalising is
the speed trick: batch norm and ReLU then touch a quarter of the activations. It is equivalent
to the usual conv -> BN -> ReLU -> pool order whenever the BN scale is positive, because
max-pooling commutes with increasing functions.
"""

from __future__ import annotations

from torch import nn

from divekit.models.registry import register_model


# Ours; tests/models/test_registry.py derives the count by formula.
@register_model("small-cnn", family="cnn", section="8.5 Batch Normalization (modern small CNN)",
                params=29_178)
def small_cnn(
    num_classes: int = 10,
    in_channels: int = 1,
    image_size: int = 28,
    widths: tuple[int, ...] = (16, 32, 64),
) -> nn.Module:
    """Three conv/pool/BN/ReLU stages (16-32-64 channels) and one linear classifier."""
    layers: list[nn.Module] = []
    channels, size = in_channels, image_size
    for width in widths:
        layers += [
            nn.Conv2d(channels, width, kernel_size=3, padding=1, bias=False),
            nn.MaxPool2d(2), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
        ]
        channels, size = width, size // 2
    layers += [nn.Flatten(), nn.Linear(channels * size * size, num_classes)]
    return nn.Sequential(*layers)
