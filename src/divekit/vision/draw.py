"""14.3 Bounding boxes drawn on images: detections, ground truth, anchors (d2l's
``show_bboxes``), with class captions, scores and translucent instance masks; 14.9 per-pixel
class maps over their images.

    picture = draw_detections(image, boxes, labels, scores, class_names=names)
    save_image(picture, "boxes.png")

Boxes are continuous pixel corners ``x1, y1, x2, y2`` (the whole ``W x H`` image is
``(0, 0, W, H)``): the outline covers the pixels just inside that rectangle. Colours are one
per class when labels are given (the same class, the same colour, in every picture), else
one per box, or taken in turn from ``colors`` (as d2l's ``show_bboxes``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageColor, ImageDraw, ImageFont

from divekit.engine.checkpoint import replace_file
from divekit.errors import DivekitError

# Tableau's 10 colours (matplotlib's default cycle), then 10 more distinct ones.
PALETTE = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (0, 0, 255), (0, 200, 0), (255, 0, 0), (255, 0, 255), (0, 200, 200),
    (128, 0, 0), (0, 0, 128), (128, 128, 0), (255, 215, 0), (0, 128, 128),
)
MASK_OPACITY = 0.45
Colour = str | tuple[int, int, int]


def to_pixels(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """An image as uint8 ``(H, W, 3)``: from ``(3, H, W)`` or ``(1, H, W)`` tensors (float in
    ``[0, 1]`` or uint8) or ``(H, W, 3)`` / ``(H, W)`` uint8 arrays."""
    if isinstance(image, np.ndarray):
        array = image
        if array.ndim == 2:
            array = np.repeat(array[:, :, None], 3, axis=2)
        if array.ndim != 3 or array.shape[2] != 3:
            raise DivekitError(f"an image array must be (H, W, 3) or (H, W), got {array.shape}")
        if array.dtype != np.uint8:
            array = (np.clip(array.astype(np.float64), 0, 1) * 255 + 0.5).astype(np.uint8)
        return np.ascontiguousarray(array)
    if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] not in (1, 3):
        shape = tuple(image.shape) if hasattr(image, "shape") else type(image).__name__
        raise DivekitError(f"an image tensor must be (3, H, W) or (1, H, W), got {shape}")
    image = image.detach().cpu().expand(3, -1, -1)
    if image.dtype != torch.uint8:
        image = image.float().clamp(0, 1).mul(255).add(0.5).to(torch.uint8)
    return image.permute(1, 2, 0).contiguous().numpy()


def _colour(value: Colour) -> tuple[int, int, int]:
    if isinstance(value, str):
        try:
            return ImageColor.getrgb(_SHORT_NAMES.get(value, value))[:3]
        except ValueError:
            raise DivekitError(f"unknown colour {value!r}; use a name such as 'red' or an "
                               "(r, g, b) tuple") from None
    return tuple(int(c) for c in value)[:3]


_SHORT_NAMES = {"b": "blue", "g": "green", "r": "red", "c": "cyan", "m": "magenta",
                "y": "yellow", "k": "black", "w": "white"}  # matplotlib's, as d2l passes them


def box_colours(count: int, labels: Sequence[int] | None = None,
                colors: Sequence[Colour] | None = None) -> list[tuple[int, int, int]]:
    """The colour of each of ``count`` boxes: ``colors`` in turn, else the class's palette
    colour, else the box's."""
    if colors:
        return [_colour(colors[i % len(colors)]) for i in range(count)]
    keys = labels if labels is not None else range(count)
    return [PALETTE[int(key) % len(PALETTE)] for key in keys]


def blend_masks(pixels: np.ndarray, masks: torch.Tensor | np.ndarray,
                colours: Sequence[tuple[int, int, int]], opacity: float = MASK_OPACITY
                ) -> np.ndarray:
    """Overlay masks ``(K, H, W)`` (bool/uint8, or float in ``[0, 1]`` cut at 0.5) on
    ``pixels`` ``(H, W, 3)`` uint8: each masked pixel becomes ``(1 - opacity) * pixel +
    opacity * colour``, masks in order (a later one over an earlier one)."""
    masks = torch.as_tensor(masks)
    if masks.ndim != 3 or tuple(masks.shape[1:]) != pixels.shape[:2]:
        raise DivekitError(f"masks must be (K, H, W) with the image's H, W = {pixels.shape[:2]}, "
                           f"got {tuple(masks.shape)}")
    inside = (masks > 0.5) if masks.is_floating_point() else masks.bool()
    out = torch.from_numpy(pixels.copy()).float()
    for mask, colour in zip(inside, colours, strict=True):
        paint = torch.tensor(colour, dtype=torch.float32)
        out[mask] = out[mask] * (1 - opacity) + paint * opacity
    return out.add_(0.5).clamp_(0, 255).to(torch.uint8).numpy()


def draw_detections(
    image: torch.Tensor | np.ndarray,
    boxes: torch.Tensor | np.ndarray | Sequence[Sequence[float]],
    labels: torch.Tensor | Sequence[int] | None = None,
    scores: torch.Tensor | Sequence[float] | None = None,
    masks: torch.Tensor | np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    colors: Sequence[Colour] | None = None,
    width: int = 2,
) -> np.ndarray:
    """Draw boxes with captions (class name and score) and translucent masks on an image.

    Args:
        image: ``(3, H, W)`` float in ``[0, 1]`` or uint8 tensor, or ``(H, W, 3)`` uint8.
        boxes: ``(K, 4)`` corners ``x1, y1, x2, y2`` in pixels (anchors may leave the image;
            what is outside is not drawn).
        labels: ``(K,)`` class indices, or None (boxes without classes: anchors).
        scores: ``(K,)`` confidences, shown as ``0.93`` after the class name.
        masks: ``(K, H, W)`` instance masks (bool/uint8, or float probabilities cut at 0.5).
        class_names: names of the class indices; without them a caption shows the index.
        colors: colours taken in turn by the boxes (names or ``(r, g, b)``), e.g. d2l's
            ``['b', 'g', 'r', 'm', 'c']``; default one colour per class.
        width: outline width in pixels.

    Returns:
        uint8 ``(H, W, 3)`` array (a new one; the input is not changed).
    """
    pixels = to_pixels(image)
    boxes = torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4) if len(boxes) else \
        torch.zeros(0, 4, dtype=torch.float64)
    count = len(boxes)
    label_list = _per_box(labels, count, "labels", int)
    score_list = _per_box(scores, count, "scores", float)
    colours = box_colours(count, label_list, colors)
    if masks is not None:
        if len(masks) != count:
            raise DivekitError(f"{count} boxes but {len(masks)} masks")
        pixels = blend_masks(pixels, masks, colours)
    picture = Image.fromarray(pixels)
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default()
    for i, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        # The outline covers pixels x1 .. x2 - 1: a box of the whole image is its border.
        draw.rectangle([x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)], outline=colours[i],
                       width=width)
        caption = _caption(label_list, score_list, class_names, i)
        if caption:
            _draw_caption(draw, font, caption, x1, y1, colours[i], picture.size)
    return np.asarray(picture).copy()


def _per_box(values, count: int, name: str, kind: type) -> list | None:
    if values is None:
        return None
    values = torch.as_tensor(values).flatten().tolist()
    if len(values) != count:
        raise DivekitError(f"{count} boxes but {len(values)} {name}")
    return [kind(v) for v in values]


def _caption(labels: list[int] | None, scores: list[float] | None,
             class_names: Sequence[str] | None, i: int) -> str:
    parts = []
    if labels is not None:
        label = labels[i]
        parts.append(class_names[label] if class_names and 0 <= label < len(class_names)
                     else str(label))
    if scores is not None:
        parts.append(f"{scores[i]:.2f}")
    return " ".join(parts)


def _draw_caption(draw: ImageDraw.ImageDraw, font, text: str, x: float, y: float,
                  colour: tuple[int, int, int], size: tuple[int, int]) -> None:
    """Text on a filled tag just above the box's top-left corner (inside the box when there
    is no room above), kept inside the picture."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    tag_w, tag_h = right - left + 4, bottom - top + 4
    tx = min(max(x, 0), max(size[0] - tag_w, 0))
    ty = y - tag_h if y - tag_h >= 0 else min(max(y, 0), max(size[1] - tag_h, 0))
    draw.rectangle([tx, ty, tx + tag_w - 1, ty + tag_h - 1], fill=colour)
    # Dark text on light colours, white on dark ones (ITU-R BT.601 luma).
    luma = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
    draw.text((tx + 2 - left, ty + 2 - top), text, font=font,
              fill=(0, 0, 0) if luma > 140 else (255, 255, 255))


def draw_segmentation(image: torch.Tensor | np.ndarray, labels: torch.Tensor,
                      colors: Sequence[tuple[int, int, int]],
                      class_names: Sequence[str] | None = None, background: int | None = 0,
                      opacity: float = MASK_OPACITY) -> np.ndarray:
    """A per-pixel class map over its image (14.9), with a legend of the classes shown.

    Args:
        image: see :func:`to_pixels`.
        labels: ``(H, W)`` class indices, the image's size (255, VOC's "void", is not drawn).
        colors: one RGB colour per class (e.g. the VOC palette).
        class_names: names for the legend (default: the indices).
        background: the class left undrawn (``None``: every class is painted).

    Returns:
        uint8 ``(H, W, 3)``.
    """
    pixels = to_pixels(image)
    labels = torch.as_tensor(labels).cpu()
    if labels.shape != pixels.shape[:2]:
        raise DivekitError(f"labels must be (H, W) = {pixels.shape[:2]}, the image's size, got "
                           f"{tuple(labels.shape)}")
    shown = [c for c in torch.unique(labels).tolist()
             if c != background and 0 <= c < len(colors)]
    masks = torch.stack([labels == c for c in shown]) if shown else torch.zeros(0, *labels.shape)
    picture = Image.fromarray(blend_masks(pixels, masks, [colors[c] for c in shown], opacity))
    draw, font = ImageDraw.Draw(picture), ImageFont.load_default()
    top = 0
    for c in shown:
        text = class_names[c] if class_names and c < len(class_names) else str(c)
        _, text_top, _, text_bottom = draw.textbbox((0, 0), text, font=font)
        tag_height = text_bottom - text_top + 4
        # A caption sits just above its y: the legend stacks tags from the top-left corner.
        _draw_caption(draw, font, text, 0, top + tag_height, tuple(colors[c]), picture.size)
        top += tag_height + 2
    return np.asarray(picture)


def save_image(image: torch.Tensor | np.ndarray, path: str | os.PathLike) -> Path:
    """Write an image as PNG, atomically (:func:`~divekit.engine.checkpoint.replace_file`),
    creating folders; returns the path.

    Args:
        image: uint8 ``(H, W, 3)`` / ``(H, W)`` array or a ``(3, H, W)`` tensor (float in
            ``[0, 1]`` or uint8).
    """
    path = Path(path)
    pixels = to_pixels(image)
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_file(path, "wb", lambda f: Image.fromarray(pixels).save(f, format="PNG"))
    return path
