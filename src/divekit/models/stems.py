"""Small-image stems of the modern CNNs (course sections 8.1-8.7): one rule for the whole zoo.

The ImageNet networks start by shrinking the input fast (AlexNet and NiN by 4 with a stride-4
conv, then 2 with a max-pool; GoogLeNet, ResNet and DenseNet by 4 with a stride-2 conv and a
max-pool; VGG by 2 after its first block). On a 28 x 28 Fashion-MNIST image that leaves too few
pixels for the later stages, so every chapter-8 model swaps in a small-image stem, a 3 x 3
stride-1 conv with no pooling after it (VGG: a first block that does not pool), for inputs
smaller than ``SMALL_IMAGE_SIZE``. Everything after the stem is the same in both variants.

96 is the smallest size the course feeds to an ImageNet stem (GoogLeNet, ResNet and DenseNet on
Fashion-MNIST resized to 96). A lower threshold would not do for every model: the ImageNet
stems of AlexNet and NiN leave nothing after their third max-pool below 65 and 67 pixels.
"""

from __future__ import annotations

SMALL_IMAGE_SIZE = 96


def uses_small_stem(image_size: int) -> bool:
    """Whether a square input of side ``image_size`` gets the small-image stem (below 96)."""
    return image_size < SMALL_IMAGE_SIZE
