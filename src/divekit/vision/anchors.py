"""Anchor boxes (d2l 14.4.1 "Generating Multiple Anchor Boxes", 14.5 "Multiscale Object
Detection"; the default boxes of SSD, Liu et al. 2016, "SSD: Single Shot MultiBox Detector").

At every pixel of an ``h x w`` feature map, the course centres ``n + m - 1`` anchors for sizes
``s_1..s_n`` and ratios ``r_1..r_m``: all sizes with ``r_1``, then ``s_1`` with ``r_2..r_m``. A
box of size s and ratio r has normalised height ``s / sqrt(r)`` and width ``s * sqrt(r) * h / w``
(the course's factor: on a non-square map, r is then the box's width/height in map cells).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from divekit.errors import DivekitError


def _check_positive(values: Sequence[float], name: str) -> None:
    if len(values) == 0 or any(not float(v) > 0 for v in values):
        raise DivekitError(f"{name} must be a non-empty list of positive numbers, got "
                           f"{list(values)}")


def anchor_grid(height: int, width: int, sizes: Sequence[float], ratios: Sequence[float],
                device: torch.device | str | None = None,
                dtype: torch.dtype = torch.float32) -> Tensor:
    """The course's anchors of an ``height x width`` map, without the leading batch dim.

    Returns:
        ``(height * width * (n + m - 1), 4)`` normalised xyxy anchors, pixel by pixel in
        row-major order, each pixel's anchors in the course's order.
    """
    _check_positive(sizes, "sizes")
    _check_positive(ratios, "ratios")
    if height <= 0 or width <= 0:
        raise DivekitError(f"the feature map must have a positive size, got {height}x{width}")
    size = torch.tensor(sizes, dtype=dtype, device=device)
    ratio = torch.tensor(ratios, dtype=dtype, device=device)
    # (size, ratio) pairs of one pixel: every size with ratios[0], then sizes[0] with the rest.
    pair_size = torch.cat((size, size[:1].expand(len(ratios) - 1)))
    pair_root = torch.cat((ratio[:1].expand(len(sizes)), ratio[1:])).sqrt()
    half_w = pair_size * pair_root * height / width / 2
    half_h = pair_size / pair_root / 2
    corners = torch.stack((-half_w, -half_h, half_w, half_h), dim=1)  # (k, 4)
    cy = (torch.arange(height, device=device, dtype=dtype) + 0.5) / height
    cx = (torch.arange(width, device=device, dtype=dtype) + 0.5) / width
    cy, cx = torch.meshgrid(cy, cx, indexing="ij")
    centres = torch.stack((cx, cy, cx, cy), dim=-1).reshape(-1, 1, 4)  # (h*w, 1, 4)
    return (centres + corners).reshape(-1, 4)


def multibox_prior(data: Tensor, sizes: Sequence[float], ratios: Sequence[float]) -> Tensor:
    """The course's anchor boxes centred on every pixel of a feature map (d2l 14.4.1).

    Args:
        data: a feature map ``(B, C, h, w)`` (only its size, device and dtype are used).
        sizes: anchor sizes as fractions of the image, ``(0, 1]``.
        ratios: width/height ratios.

    Returns:
        ``(1, h * w * (n + m - 1), 4)`` normalised xyxy anchors (see :func:`anchor_grid`).
    """
    if not isinstance(data, Tensor) or data.ndim < 2:
        raise DivekitError("data must be a feature map tensor (B, C, h, w)")
    height, width = data.shape[-2:]
    dtype = data.dtype if data.is_floating_point() else torch.float32
    return anchor_grid(height, width, sizes, ratios, data.device, dtype)[None]


def multiscale_anchors(feature_maps: Sequence[Tensor | tuple[int, int]],
                       sizes: Sequence[Sequence[float]],
                       ratios: Sequence[Sequence[float]]) -> Tensor:
    """Anchors of several feature maps, concatenated in order (d2l 14.5, TinySSD in 14.7).

    Args:
        feature_maps: per scale, a feature map ``(B, C, h, w)`` or its ``(h, w)``.
        sizes: per scale, the sizes for :func:`multibox_prior`.
        ratios: per scale, the ratios (one list is reused for every scale).

    Returns:
        ``(1, sum of h * w * (n + m - 1), 4)`` normalised xyxy anchors.
    """
    if len(ratios) and not isinstance(ratios[0], Sequence):
        ratios = [ratios] * len(feature_maps)  # type: ignore[list-item]
    if not len(feature_maps) == len(sizes) == len(ratios):
        raise DivekitError(f"give one sizes list and one ratios list per feature map: got "
                           f"{len(feature_maps)} maps, {len(sizes)} sizes, {len(ratios)} ratios")
    grids = []
    for fmap, size, ratio in zip(feature_maps, sizes, ratios, strict=True):
        if isinstance(fmap, Tensor):
            dtype = fmap.dtype if fmap.is_floating_point() else torch.float32
            grids.append(anchor_grid(*fmap.shape[-2:], size, ratio, fmap.device, dtype))
        else:
            grids.append(anchor_grid(*fmap, size, ratio))
    return torch.cat(grids)[None]


def ssd_anchor_sizes(num_scales: int = 5, smallest: float = 0.2,
                     largest: float = 0.88) -> list[list[float]]:
    """The course's TinySSD sizes: per scale ``[s_k, sqrt(s_k * s_{k+1})]``, s evenly spaced.

    The defaults give d2l 14.7's ``[[0.2, 0.272], [0.37, 0.447], [0.54, 0.619], [0.71, 0.79],
    [0.88, 0.961]]`` (to the book's three digits; s_6 = 1.05 continues the spacing).
    """
    if num_scales < 1 or not 0 < smallest <= largest:
        raise DivekitError("ssd_anchor_sizes needs num_scales >= 1 and 0 < smallest <= largest")
    step = (largest - smallest) / (num_scales - 1) if num_scales > 1 else 0.0
    scales = [smallest + step * k for k in range(num_scales + 1)]
    return [[scales[k], math.sqrt(scales[k] * scales[k + 1])] for k in range(num_scales)]
