"""The course's anchor-box figures (14.4 anchors at one pixel, 14.5 multiscale anchors).

    anchor_figure("catdog.jpg", "anchors.png")                     # 14.4: 5 boxes at (250, 250)
    anchor_figure("catdog.jpg", "fmap.png", sizes=[0.15], fmap=(4, 4))  # 14.5: a 4x4 map
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from divekit.errors import DivekitError
from divekit.vision.anchors import multibox_prior
from divekit.vision.draw import draw_detections, save_image


def anchor_figure(image_path: str | Path, out: str | Path,
                  sizes: Sequence[float] = (0.75, 0.5, 0.25),
                  ratios: Sequence[float] = (1.0, 2.0, 0.5),
                  at: tuple[int, int] | None = None,
                  fmap: tuple[int, int] | None = None) -> list[str]:
    """Draw anchor boxes on an image and write the PNG.

    Without ``fmap``, the ``n + m - 1`` anchors of the image's pixel ``at`` (``(x, y)``,
    default the centre) are drawn, labelled ``s=…, r=…`` as in the course's figure; with
    ``fmap=(h, w)`` the anchors of every cell of an ``h x w`` feature map spread over the
    image (the multiscale figure).

    Returns:
        One line per drawn anchor: its label and its corners in pixels.
    """
    try:
        with Image.open(image_path) as image:
            pixels = torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)
    except (OSError, ValueError) as e:
        raise DivekitError(f"{image_path} is not a readable image ({e})") from e
    _, height, width = pixels.shape
    if any(s <= 0 or s > 1 for s in sizes) or any(r <= 0 for r in ratios) or not sizes \
            or not ratios:
        raise DivekitError(f"anchor sizes must be in (0, 1] and ratios positive, got sizes "
                           f"{list(sizes)} and ratios {list(ratios)}")
    map_h, map_w = fmap if fmap is not None else (height, width)
    anchors = multibox_prior(torch.zeros(1, 1, map_h, map_w), sizes=list(sizes),
                             ratios=list(ratios))[0]
    per_pixel = len(sizes) + len(ratios) - 1
    names = [f"s={s}, r={ratios[0]}" for s in sizes] + [f"s={sizes[0]}, r={r}"
                                                          for r in ratios[1:]]
    if fmap is None:
        x, y = at if at is not None else (width // 2, height // 2)
        if not (0 <= x < width and 0 <= y < height):
            raise DivekitError(f"pixel ({x}, {y}) is outside the {width}x{height} image")
        first = (y * width + x) * per_pixel
        anchors = anchors[first:first + per_pixel]
        labels = torch.arange(per_pixel)
    else:
        labels = torch.arange(per_pixel).repeat(map_h * map_w)
    boxes = anchors * torch.tensor([width, height, width, height], dtype=anchors.dtype)
    save_image(draw_detections(pixels, boxes, labels, class_names=names), out)
    return [f"{names[label]}: [{', '.join(f'{v:.0f}' for v in box)}]"
            for box, label in zip(boxes.tolist(), labels.tolist(), strict=True)]
