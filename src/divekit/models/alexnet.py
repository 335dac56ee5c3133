"""Deep convolutional neural networks (course section 8.1): AlexNet (Krizhevsky et al., 2012).

The course's single-tower AlexNet: the paper's layer sizes without its two-GPU split and local
response normalisation, ReLU throughout and dropout in the dense layers. At 224 x 224 it has
50,844,008 parameters with 3 input channels and 1000 classes.

Small inputs (``image_size < 96``, e.g. 28 x 28 Fashion-MNIST; the zoo's rule, see
:mod:`divekit.models.stems`) get the small-input stem: a 3 x 3 stride-1 conv and no max-pool
after it, because the 11 x 11 stride-4 conv and its pool shrink 28 pixels to nothing by the
second pool. Everything after the stem is identical, and an adaptive average pool to 5 x 5 (the
identity at 224) keeps the classifier at 6400 inputs.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from divekit.errors import DivekitError
from divekit.models.linear import init_xavier
from divekit.models.registry import from_published, register_model
from divekit.models.stems import uses_small_stem


@register_model("alexnet", family="alexnet",
                section="8.1 Deep Convolutional Neural Networks (AlexNet)",
                input_shape=(1, 224, 224),
                params=from_published(50_844_008, stem_weights=96 * 11 * 11, head_inputs=4096))
def alexnet(num_classes: int = 10, in_channels: int = 1, image_size: int = 224) -> nn.Module:
    """AlexNet: five conv layers (96-256-384-384-256) and a 4096-4096 dropout classifier.

    Args:
        num_classes: number of output logits.
        in_channels: channels of the input image.
        image_size: side of the (square) input; below 96 the small-input stem is used.

    Returns:
        ``nn.Sequential`` with children ``stem``, ``features``, ``pool``, ``classifier``.

    Shape:
        input ``(N, in_channels, H, W)``, output ``(N, num_classes)``. At 224:
        stem 11x11/4 pad 1 -> 96 x 54 x 54, max-pool 3/2 -> 26; conv 5x5 -> 256 x 26 x 26,
        pool -> 12; three 3x3 convs -> 256 x 12 x 12, pool -> 5; flatten 256 * 5 * 5 = 6400.
    """
    if image_size < 7:
        # Two 3x3 stride-2 max-pools after the stem need at least 7 pixels.
        raise DivekitError(f"alexnet needs image_size >= 7, got {image_size}")
    if uses_small_stem(image_size):
        stem = nn.Sequential(nn.Conv2d(in_channels, 96, kernel_size=3, padding=1), nn.ReLU())
    else:
        stem = nn.Sequential(
            nn.Conv2d(in_channels, 96, kernel_size=11, stride=4, padding=1), nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
    features = nn.Sequential(
        nn.Conv2d(96, 256, kernel_size=5, padding=2), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(256, 384, kernel_size=3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 384, kernel_size=3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
    )
    classifier = nn.Sequential(
        nn.Flatten(),
        nn.Linear(256 * 5 * 5, 4096), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(4096, num_classes),
    )
    model = nn.Sequential(OrderedDict(
        stem=stem, features=features, pool=nn.AdaptiveAvgPool2d(5), classifier=classifier,
    ))
    model.apply(init_xavier)
    return model
