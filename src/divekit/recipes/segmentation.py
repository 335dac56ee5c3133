"""Recipes for semantic segmentation (d2l 14.9-14.11): the course's FCN with the book's
settings on Pascal VOC2012, and a CPU-sized FCN with skips on the generated scenes."""

import dataclasses

from divekit.recipes import Recipe, add_recipe
from divekit.recipes import training_run as _run

add_recipe(Recipe(
    "fcn-voc", "14.11 Fully Convolutional Networks",
    "The course's FCN (ResNet-18, 1x1 conv, 32x bilinear transposed conv) on VOC2012 random "
    "320x480 crops, SGD lr 1e-3, wd 1e-3, batch 32, 5 epochs; add --weights "
    "resnet18-f37072fd.pth (torchvision's ImageNet file) as the book does; sized for a GPU",
    _run("fcn", "voc-segmentation", 32, max_epochs=5, optimizer="sgd", lr=1e-3,
         weight_decay=1e-3),
    book="train loss 0.443, train pixel acc 0.863, test pixel acc 0.848 (ImageNet-pretrained)",
    target="the book's pixel accuracy with ImageNet weights (needs VOC2012 and a GPU)",
))
add_recipe(Recipe(
    "fcn-scenes", "14.11 Fully Convolutional Networks (skips, FCN-8s style)",
    "A CPU-sized FCN with skips (scores at strides 32 to 4) on 8,000 generated scenes with "
    "per-pixel labels, AdamW one-cycle lr 3e-3, batch 32, flips, 8 epochs",
    dataclasses.replace(
        _run("fcn-cpu", "scenes-segmentation", 32, data_options={"num_train": 8000},
             max_epochs=8, optimizer="adamw", lr=3e-3, weight_decay=1e-4, schedule="onecycle"),
        augment="flip"),
    target="held-out mIoU >= 0.8 within 10 minutes on a 2-core CPU",
))
