"""Targets that move with their images under flips, crops and resizes (sections 14.3, 14.9).

A geometric augmentation of a detection or segmentation batch must move the targets exactly as
it moves the pixels. Three kinds of target are told apart by their type:

- class labels, any tensor of at most two dimensions (``(N,)`` indices, ``(N, K)`` soft
  labels): nothing to move, returned as they are (the same object);
- label maps, an integer ``(N, H, W)`` tensor with the images' ``H, W`` (one class per pixel,
  :data:`IGNORE` = 255 where no class counts): resampled with the nearest pixel, never
  interpolated, since the average of classes 3 and 5 is not class 4; pixels that fall outside
  the image become :data:`IGNORE`;
- detection targets, a list of ``N`` dicts as :func:`~divekit.data.collate.detection_collate`
  gives them (torchvision's convention): ``"boxes"`` ``(K_i, 4)`` float corners
  ``x1, y1, x2, y2`` in pixels, ``"labels"`` ``(K_i,)``, optionally ``"masks"``
  ``(K_i, H, W)`` (resampled like label maps, 0 outside). Boxes are mapped by the same affine
  map as the image and clipped to it; a box whose clipped area is zero, or below
  ``min_visible`` of its whole area, is dropped with its entries of :data:`PER_BOX`. Other
  keys are copied unchanged.

Coordinates are continuous: pixel ``(row i, column j)`` covers ``[j, j + 1) x [i, i + 1)``, so
a box around the whole ``W x H`` image is ``(0, 0, W, H)``. A crop window ``(left, top, width,
height)`` resampled to ``out_h x out_w`` puts output pixel ``i``'s centre at input coordinate
``top + (i + 1/2) height / out_h``, the point bilinear resampling of the image samples too; a
label map takes the pixel that contains that point.
"""

from __future__ import annotations

from typing import Any

import torch

from divekit.errors import DivekitError

IGNORE = 255
PER_BOX = ("labels", "masks", "iscrowd", "difficult")  # filtered with the boxes

Targets = Any  # a tensor of class labels or label maps, or a list of detection target dicts


def check_targets(targets: Targets, images: torch.Tensor, name: str) -> None:
    """Raise a :class:`DivekitError` naming ``name`` unless ``targets`` is one of the three kinds
    above for ``images`` ``(N, C, H, W)``; ``None`` (no targets) is accepted too."""
    n, _, height, width = images.shape
    if targets is None or _is_labels(targets) or _is_label_map(targets, (n, height, width)):
        return
    if isinstance(targets, list | tuple) and all(isinstance(t, dict) for t in targets):
        if len(targets) != n:
            raise DivekitError(f"{name}: {len(targets)} detection targets for {n} images")
        for i, target in enumerate(targets):
            boxes = target.get("boxes")
            if not (isinstance(boxes, torch.Tensor) and boxes.is_floating_point()
                    and boxes.ndim == 2 and boxes.shape[1] == 4):
                raise DivekitError(f"{name}: detection target {i} needs float 'boxes' of shape "
                                   f"(K, 4), got {_describe(boxes)}")
        return
    raise DivekitError(f"{name} moves class labels (N,) or (N, K), integer label maps "
                       f"{(n, height, width)} or a list of {n} detection target dicts; got "
                       f"{_describe(targets)}")


def flip_targets(targets: Targets, flip: torch.Tensor, dim: int, height: int, width: int
                 ) -> Targets:
    """Mirror the targets of the images where ``flip`` is true.

    Args:
        flip: ``(N,)`` bool, one decision per image.
        dim: ``-1`` mirrors left-right (``x -> W - x``), ``-2`` top-bottom (``y -> H - y``).
        height, width: the images' size.
    """
    if _is_detection(targets):
        return [_flip_detection(t, dim, height, width) if f else dict(t)
                for t, f in zip(targets, flip.tolist(), strict=True)]
    if _is_label_map(targets):
        return torch.where(flip.to(targets.device).view(-1, 1, 1), targets.flip(dim), targets)
    return targets


def crop_targets(targets: Targets, windows: torch.Tensor, out_size: tuple[int, int],
                 min_visible: float = 0.0) -> Targets:
    """Cut a window out of each image's targets and stretch it to ``out_size``.

    Args:
        windows: ``(N, 4)`` rows ``(left, top, width, height)`` in input pixels.
        out_size: ``(out_h, out_w)``.
        min_visible: keep a box only if at least this fraction of its area is in the window
            (it is always dropped when none of it is).
    """
    if _is_detection(targets):
        return [_crop_detection(t, window, out_size, min_visible)
                for t, window in zip(targets, windows.tolist(), strict=True)]
    if _is_label_map(targets):
        return sample_nearest(targets, windows, out_size, IGNORE)
    return targets


def resize_targets(targets: Targets, images: torch.Tensor, out_size: tuple[int, int]) -> Targets:
    """Resize the targets of ``images`` ``(N, C, H, W)`` as the images are resized to
    ``out_size``: a crop whose window is the whole image."""
    check_targets(targets, images, "resize")
    n, _, height, width = images.shape
    windows = torch.tensor([0.0, 0.0, width, height], dtype=torch.float64).expand(n, 4)
    return crop_targets(targets, windows, out_size)


def sample_nearest(maps: torch.Tensor, windows: torch.Tensor, out_size: tuple[int, int],
                   fill: int) -> torch.Tensor:
    """Nearest-pixel resampling of a window of each map; ``fill`` where it leaves the map.

    Shape: maps ``(N, H, W)``, windows ``(N, 4)`` -> ``(N, out_h, out_w)``, dtype kept.
    """
    n, height, width = maps.shape
    left, top, box_w, box_h = windows.to(torch.float64).unbind(1)
    rows = _pixel_under_centres(top, box_h, out_size[0]).to(maps.device)
    cols = _pixel_under_centres(left, box_w, out_size[1]).to(maps.device)
    inside = ((rows >= 0) & (rows < height)).unsqueeze(2) & ((cols >= 0) & (cols < width)
                                                             ).unsqueeze(1)
    batch = torch.arange(n, device=maps.device).view(-1, 1, 1)
    picked = maps[batch, rows.clamp(0, height - 1).unsqueeze(2),
                  cols.clamp(0, width - 1).unsqueeze(1)]
    return picked.where(inside, fill)


def _pixel_under_centres(start: torch.Tensor, length: torch.Tensor, out_size: int
                         ) -> torch.Tensor:
    # (N,) windows -> (N, out_size) index of the input pixel holding each output pixel's centre.
    centres = torch.arange(out_size, dtype=torch.float64) + 0.5
    return (start.unsqueeze(1) + centres * (length / out_size).unsqueeze(1)).floor().long()


def _flip_detection(target: dict, dim: int, height: int, width: int) -> dict:
    axis, size = (0, width) if dim == -1 else (1, height)
    boxes = target["boxes"].clone()
    # The far edge becomes the near one: (x1, x2) -> (W - x2, W - x1).
    boxes[:, [axis, axis + 2]] = size - target["boxes"][:, [axis + 2, axis]]
    flipped = dict(target, boxes=boxes)
    if "masks" in target:
        flipped["masks"] = target["masks"].flip(dim)
    return flipped


def _crop_detection(target: dict, window: list[float], out_size: tuple[int, int],
                    min_visible: float) -> dict:
    left, top, box_w, box_h = window
    out_h, out_w = out_size
    boxes = target["boxes"]
    scale = boxes.new_tensor([out_w / box_w, out_h / box_h] * 2)
    moved = (boxes - boxes.new_tensor([left, top] * 2)) * scale
    clipped = moved.clamp(min=boxes.new_zeros(4), max=boxes.new_tensor([out_w, out_h] * 2))
    visible = _area(clipped)
    # The map is affine, so the visible fraction is the same before and after it.
    keep = (visible > 0) & (visible >= min_visible * _area(moved))
    cropped = {key: value[keep] if key in PER_BOX else value for key, value in target.items()}
    cropped["boxes"] = clipped[keep]
    if "masks" in target:
        windows = torch.tensor([window], dtype=torch.float64).expand(len(cropped["masks"]), 4)
        cropped["masks"] = sample_nearest(cropped["masks"], windows, out_size, 0)
    return cropped


def _area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


def _is_labels(targets: Targets) -> bool:
    return isinstance(targets, torch.Tensor) and targets.ndim <= 2


def _is_label_map(targets: Targets, shape: tuple[int, int, int] | None = None) -> bool:
    return (isinstance(targets, torch.Tensor) and targets.ndim == 3
            and not targets.is_floating_point() and not targets.is_complex()
            and targets.dtype != torch.bool and (shape is None or targets.shape == shape))


def _is_detection(targets: Targets) -> bool:
    return isinstance(targets, list | tuple)


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__
