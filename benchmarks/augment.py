"""Image augmentation throughput: per-image PIL transforms versus divekit's batched tensors.

The pipeline is random horizontal flip, random resized crop (back to the input size) and colour
jitter (brightness, contrast, saturation 0.4, hue 0.1 on RGB; brightness and contrast on grey).

1. pil: the way torchvision-style datasets augment, one image at a time in ``__getitem__``:
   uint8 array -> PIL image -> flip, crop + bilinear resize, ``ImageEnhance``, hue through HSV
   -> float tensor, then the batch is stacked (collated).
2. divekit: ``divekit.data.augment`` on preloaded float batches of 256, every image its own
   random draw, no Python loop over images.

Runs alternate; the median of ``--repeats`` is reported, as images/s and their ratio.

    python benchmarks/augment.py --images 2000 --repeats 3
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time

import numpy as np
import torch
from PIL import Image, ImageEnhance

from divekit.data.augment import ColorJitter, Compose, RandomHorizontalFlip, RandomResizedCrop

BATCH = 256
STRENGTH, HUE = 0.4, 0.1


def pil_crop_box(rng: random.Random, width: int, height: int) -> tuple[float, ...]:
    """The Inception crop box (scale 0.08-1, ratio 3/4-4/3), as ``(left, top, right, bottom)``."""
    for _ in range(10):
        area = width * height * rng.uniform(0.08, 1.0)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        w, h = math.sqrt(area * ratio), math.sqrt(area / ratio)
        if w <= width and h <= height:
            left, top = rng.uniform(0, width - w), rng.uniform(0, height - h)
            return left, top, left + w, top + h
    return 0, 0, width, height


def pil_augment(image: Image.Image, rng: random.Random) -> Image.Image:
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    image = image.resize(image.size, Image.Resampling.BILINEAR,
                         box=pil_crop_box(rng, *image.size))
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(1 - STRENGTH, 1 + STRENGTH))
    image = ImageEnhance.Contrast(image).enhance(rng.uniform(1 - STRENGTH, 1 + STRENGTH))
    if image.mode == "RGB":
        image = ImageEnhance.Color(image).enhance(rng.uniform(1 - STRENGTH, 1 + STRENGTH))
        hue, saturation, value = image.convert("HSV").split()
        shift = round(rng.uniform(-HUE, HUE) * 255)
        hue = Image.fromarray((np.asarray(hue).astype(np.int16) + shift).astype(np.uint8), "L")
        image = Image.merge("HSV", (hue, saturation, value)).convert("RGB")
    return image


def pil_epoch(arrays: np.ndarray, rng: random.Random) -> float:
    """Augment every image one at a time and collate batches of ``BATCH``."""
    mode = "L" if arrays.ndim == 3 else "RGB"
    start = time.perf_counter()
    for first in range(0, len(arrays), BATCH):
        tensors = []
        for array in arrays[first : first + BATCH]:
            image = pil_augment(Image.fromarray(array, mode), rng)
            tensor = torch.from_numpy(np.array(image, copy=True)).float().div(255)
            tensors.append(tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1))
        torch.stack(tensors)
    return time.perf_counter() - start


def divekit_epoch(images: torch.Tensor, pipeline: Compose) -> float:
    start = time.perf_counter()
    for first in range(0, len(images), BATCH):
        pipeline(images[first : first + BATCH])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (PIL uses one; one also avoids thread handoffs on a "
                             "busy machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    jitter_rgb = ColorJitter(STRENGTH, STRENGTH, STRENGTH, HUE)
    print(f"flip + random resized crop + colour jitter, {args.images} images, batches of {BATCH}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}:")
    for shape in [(3, 32, 32), (1, 28, 28)]:
        generator = torch.Generator().manual_seed(0)
        images = torch.rand(args.images, *shape, generator=generator)
        arrays = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        arrays = arrays[..., 0] if shape[0] == 1 else arrays
        jitter = jitter_rgb if shape[0] == 3 else ColorJitter(STRENGTH, STRENGTH)
        pipeline = Compose(RandomHorizontalFlip(), RandomResizedCrop(), jitter, seed=0)
        times: dict[str, list[float]] = {"pil": [], "divekit": []}
        for repeat in range(args.repeats):
            times["pil"].append(pil_epoch(arrays, random.Random(repeat)))
            times["divekit"].append(divekit_epoch(images, pipeline))
        median = {name: statistics.median(values) for name, values in times.items()}
        label = "x".join(map(str, shape))
        for name, seconds in median.items():
            print(f"  {label:<8} {name:<8} {seconds:7.3f} s  {args.images / seconds:10,.0f} "
                  f"images/s")
        print(f"  {label:<8} divekit vs per-image PIL: "
              f"{median['pil'] / median['divekit']:.1f}x the throughput")


if __name__ == "__main__":
    main()
