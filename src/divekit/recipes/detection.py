"""Recipes for the object-detection chapter (d2l 14.7 SSD, 14.8 R-CNNs, and YOLO) on generated
data: the book's TinySSD on ``bananas``, and the other detectors on ``scenes`` (six shape
classes at 128x128, 2,000 training and 300 held-out images)."""

import dataclasses

from divekit.recipes import Recipe, add_recipe
from divekit.recipes import training_run as _run


def _scenes(model: str, epochs: int, lr: float, batch_size: int, *, weight_decay: float,
            schedule: str = "onecycle", warmup_epochs: float = 0.0, **model_options):
    config = _run(model, "scenes", batch_size, model_options=model_options, max_epochs=epochs,
                  optimizer="adamw", lr=lr, weight_decay=weight_decay, schedule=schedule,
                  warmup_epochs=warmup_epochs)
    return dataclasses.replace(config, augment="flip")


add_recipe(Recipe(
    "tiny-ssd-bananas", "14.7 Single Shot Multibox Detection",
    "The course's TinySSD on 1,000 generated banana images (256x256), SGD lr 0.2, wd 5e-4, "
    "batch 32, 20 epochs; precision, memory format and compiling measured (amp auto: "
    "channels_last was 1.9x fp32 speed on a 2-core EPYC, bf16 1.8x more on a CPU with fast "
    "bf16)",
    _run("tiny-ssd", "bananas", 32, max_epochs=20, lr=0.2, weight_decay=5e-4,
         amp="auto", channels_last="auto", compile="auto"),
    book="class err 3.22e-3, bbox MAE 3.16e-3 (training set, real banana-detection)",
    target="held-out mAP@0.5 >= 0.95 on the 100 generated validation images",
))
add_recipe(Recipe(
    "tiny-ssd-bananas-fast", "14.7 Single Shot Multibox Detection",
    "The course's TinySSD on the same bananas with AdamW one-cycle lr 3e-3, wd 5e-4, batch 16, "
    "flips, 12 epochs, precision, memory format and compiling measured (amp auto)",
    dataclasses.replace(_run("tiny-ssd", "bananas", 16, max_epochs=12, optimizer="adamw",
                             lr=3e-3, weight_decay=5e-4, schedule="onecycle", amp="auto",
                             channels_last="auto", compile="auto"), augment="flip"),
    target="held-out mAP@0.5 above the book schedule's in less time",
))
add_recipe(Recipe(
    "ssd-scenes", "14.7 Single Shot Multibox Detection (multiscale)",
    "A multiscale SSD (6 maps, 6 anchors per cell, hard negatives 3:1) on generated scenes, "
    "AdamW one-cycle lr 3e-3, batch 16, flips, 24 epochs",
    _scenes("ssd", 24, 3e-3, 16, weight_decay=5e-4),
    target="held-out mAP@0.5 >= 0.8 within 15 minutes on a 2-core CPU",
))
add_recipe(Recipe(
    "yolox-scenes", "YOLO (YOLOX: anchor-free, decoupled head, SimOTA)",
    "A CPU-sized YOLOX on generated scenes, AdamW one-cycle lr 3e-3, batch 16, flips, 24 epochs",
    _scenes("yolox-cpu", 24, 3e-3, 16, weight_decay=5e-4),
    target="held-out mAP@0.5 >= 0.8 within 15 minutes on a 2-core CPU",
))
add_recipe(Recipe(
    "faster-rcnn-scenes", "14.8 Region-based CNNs (Faster R-CNN)",
    "Faster R-CNN (stride-8 ResNet features, RPN, RoIAlign head) on generated scenes, AdamW "
    "lr 1e-3 with warm-up and cosine decay, batch 4, flips, 20 epochs",
    _scenes("faster-rcnn", 20, 1e-3, 4, weight_decay=1e-4, schedule="cosine",
            warmup_epochs=0.2, width=16, representation_size=128),
    target="held-out mAP@0.5 >= 0.8 within 15 minutes on a 2-core CPU",
))
add_recipe(Recipe(
    "mask-rcnn-scenes", "14.8 Region-based CNNs (Mask R-CNN)",
    "Mask R-CNN (Faster R-CNN + a 28x28 mask branch) on generated scenes with instance masks, "
    "AdamW lr 1e-3 with warm-up and cosine decay, batch 4, flips, 12 epochs",
    _scenes("mask-rcnn", 12, 1e-3, 4, weight_decay=1e-4, schedule="cosine",
            warmup_epochs=0.2, width=16, representation_size=128, mask_width=32),
    target="held-out mask AP@0.5 >= 0.7 within 15 minutes on a 2-core CPU",
))
add_recipe(Recipe(
    "fast-rcnn-scenes", "14.8 Region-based CNNs (Fast R-CNN)",
    "Fast R-CNN (RoI pooling of sliding-window proposals over shared features) on generated "
    "scenes, AdamW lr 1e-3 with warm-up and cosine decay, batch 4, flips, 2 epochs",
    _scenes("fast-rcnn", 2, 1e-3, 4, weight_decay=1e-4, schedule="cosine",
            warmup_epochs=0.2, width=16, representation_size=128),
    target="the course's step from R-CNN: reported beside it, with the time per image",
))
add_recipe(Recipe(
    "rcnn-scenes", "14.8 Region-based CNNs (R-CNN)",
    "R-CNN (a small CNN on every warped sliding-window proposal) on generated scenes, AdamW lr "
    "1e-3 with warm-up and cosine decay, batch 4, flips, 3 epochs",
    _scenes("rcnn", 3, 1e-3, 4, weight_decay=1e-4, schedule="cosine", warmup_epochs=0.2,
            width=8, region_size=32, representation_size=128),
    target="the slow baseline the course starts from: mAP and time per image reported",
))
