"""Region-of-interest pooling (d2l 14.8, Fast R-CNN and Mask R-CNN): a fixed-size feature per box.

``roi_pool`` is Fast R-CNN's RoI pooling (Girshick, 2015): each box is rounded to the feature
map's grid, cut into ``oh x ow`` bins by floor/ceil and every bin keeps its maximum.
``roi_align`` is Mask R-CNN's RoIAlign (He et al., 2017): no rounding; each bin averages
bilinear samples of the feature map on a regular grid, so the output moves smoothly with the box.

Both follow ``torchvision.ops`` (argument order, box formats, border rules, rounding), so a user
can swap torchvision in and get the same numbers. Both are vectorised over boxes and bins and
autograd supplies the gradient. ``roi_pool`` lays the map out as rows of channels
``(B * H * W, C)`` and gathers every bin's cells at once. ``roi_align`` has two paths: on small
maps (a detector's RoI heads) the bilinear weights, separable per axis, become a dense (oh, H)
row matrix and (ow, W) column matrix per box and the bins are two matrix products with the map;
on large maps ``grid_sample`` reads the samples (one call per image) and a pooling kernel sums
each bin's block. ``benchmarks/roi_ops.py`` times both against a naive loop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from divekit.errors import DivekitError

IntPair = int | tuple[int, int]

# Gathered values per chunk of boxes: bounds the temporary memory of a call with many boxes.
_CHUNK_ELEMENTS = 1 << 24
# Adaptive sampling pads every box to the largest grid unless that gathers more than this many
# times the samples actually needed; then it runs one pass per grid size (benchmarks/roi_ops.py).
_PADDED_WASTE = 2.0
# The separable path (two matrix products over the whole map) runs when its multiply-adds per
# box and channel are at most this many times the bilinear samples' count (benchmarks/roi_ops.py).
_SEPARABLE_RATIO = 128.0
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def roi_pool(input: torch.Tensor, boxes: torch.Tensor | Sequence[torch.Tensor],
             output_size: IntPair, spatial_scale: float = 1.0) -> torch.Tensor:
    """Fast R-CNN's RoI max pooling (torchvision's ``roi_pool``).

    Box corners are scaled by ``spatial_scale`` and rounded (half away from zero) to feature
    cells; a box covers the cells from its rounded start to its rounded end inclusive (at least
    one). Bin ``(i, j)`` spans rows ``floor(i * h / oh)`` to ``ceil((i + 1) * h / oh)`` of it
    (clipped to the map) and keeps their maximum; a bin entirely off the map gives 0.

    Args:
        input: feature map (B, C, H, W).
        boxes: a (K, 5) tensor of rows ``(batch_index, x1, y1, x2, y2)`` or a list of B tensors
            (K_i, 4) of ``x1, y1, x2, y2``, in input-image pixels.
        output_size: ``(oh, ow)`` or one int for both.
        spatial_scale: feature cells per input pixel (1/16 for a stride-16 backbone).

    Returns:
        (K, C, oh, ow), differentiable with respect to ``input`` (the gradient goes to each
        bin's maximum, the first one in row-major order on ties).
    """
    if input.dtype in _LOW_PRECISION:  # box corners need float32 (torchvision's autocast too)
        return roi_pool(input.float(), boxes, output_size, spatial_scale).to(input.dtype)
    rois = _rois(input, boxes, "roi_pool")
    oh, ow = _pair(output_size)
    _, C, H, W = input.shape
    if rois.shape[0] == 0:
        return input.flatten()[:0].reshape(0, C, oh, ow)
    coords = _round_half_away(rois[:, 1:].detach() * spatial_scale).long()
    x1, y1, x2, y2 = coords.unbind(1)
    # Rows (and columns) of every bin, from the box's integer extent as torchvision cuts it.
    rows, row_ok = _pool_bins(y1, (y2 - y1 + 1).clamp(min=1), oh, H, rois.dtype)
    cols, col_ok = _pool_bins(x1, (x2 - x1 + 1).clamp(min=1), ow, W, rois.dtype)
    batch = rois[:, 0].long()
    pixels = input.permute(0, 2, 3, 1).reshape(-1, C)  # one row of channels per pixel
    outputs = []
    for k in _chunks(rois.shape[0], oh * ow * rows.shape[2] * cols.shape[2] * C):
        # (k, oh, ow, bin_h, bin_w): every cell of every bin, padded to the largest bin.
        index = ((batch[k, None, None, None, None] * H + rows[k, :, None, :, None]) * W
                 + cols[k, None, :, None, :])
        inside = row_ok[k, :, None, :, None] & col_ok[k, None, :, None, :]
        values = pixels.index_select(0, index.flatten()).view(*index.shape, C)
        values = values.masked_fill(~inside[..., None], -math.inf).flatten(3, 4)
        best = values.max(dim=3).values  # (k, oh, ow, C)
        empty = ~inside.flatten(3).any(3)
        outputs.append(best.masked_fill(empty[..., None], 0.0))
    return torch.cat(outputs).permute(0, 3, 1, 2)


def roi_align(input: torch.Tensor, boxes: torch.Tensor | Sequence[torch.Tensor],
              output_size: IntPair, spatial_scale: float = 1.0, sampling_ratio: int = -1,
              aligned: bool = False) -> torch.Tensor:
    """Mask R-CNN's RoIAlign (torchvision's ``roi_align``): averaged bilinear samples per bin.

    Each box, scaled by ``spatial_scale`` (and shifted by half a cell when ``aligned``, so
    continuous pixel coordinates map onto cell centres), is cut into ``oh x ow`` equal bins.
    Each bin averages ``gh x gw`` bilinear samples at the centres of a regular grid:
    ``gh = sampling_ratio`` when positive, else ``ceil(box_height / oh)`` for that box. A sample
    beyond ``-1`` or the map's size counts as 0; nearer samples are clamped onto the border.
    Without ``aligned`` a box is at least one cell wide and high (the original Mask R-CNN).

    Args:
        input: feature map (B, C, H, W).
        boxes: a (K, 5) tensor of rows ``(batch_index, x1, y1, x2, y2)`` or a list of B tensors
            (K_i, 4) of ``x1, y1, x2, y2``, in input-image pixels.
        output_size: ``(oh, ow)`` or one int for both.
        spatial_scale: feature cells per input pixel (1/16 for a stride-16 backbone).
        sampling_ratio: samples per bin along each axis; ``<= 0`` adapts it to each box.
        aligned: subtract half a cell from the scaled corners (use True for new models).

    Returns:
        (K, C, oh, ow), differentiable with respect to ``input`` (not the boxes, as torchvision).
    """
    if input.dtype in _LOW_PRECISION:  # box corners need float32 (torchvision's autocast too)
        return roi_align(input.float(), boxes, output_size, spatial_scale, sampling_ratio,
                         aligned).to(input.dtype)
    rois = _rois(input, boxes, "roi_align")
    oh, ow = _pair(output_size)
    _, C, H, W = input.shape
    K = rois.shape[0]
    if K == 0:
        return input.flatten()[:0].reshape(0, C, oh, ow)
    corners = rois[:, 1:].detach().to(input.dtype) * spatial_scale - (0.5 if aligned else 0.0)
    x1, y1, x2, y2 = corners.unbind(1)
    width, height = x2 - x1, y2 - y1
    if not aligned:
        width, height = width.clamp(min=1.0), height.clamp(min=1.0)
    if sampling_ratio > 0:
        grid_h = torch.full((K,), sampling_ratio, dtype=torch.long, device=rois.device)
        grid_w = grid_h
    else:
        grid_h = torch.ceil(height / oh).long()
        grid_w = torch.ceil(width / ow).long()
    batch = rois[:, 0].long()
    geometry = (batch, y1, x1, height / oh, width / ow, grid_h, grid_w)
    samples = float((grid_h.clamp(min=1) * grid_w.clamp(min=1)).double().mean())
    if _separable_cost(H, W, oh, ow) <= _SEPARABLE_RATIO * oh * ow * samples:
        # Small maps (a detector's RoI heads): two matrix products per image, any grids.
        return _align_separable(input, (oh, ow), geometry)
    # One key per (gh, gw) pair: the boxes that share a sample grid.
    keys = grid_h.clamp(min=1) * (int(grid_w.max()) + 2) + grid_w.clamp(min=1)
    unique = keys.unique()
    padded_cost = K * int(grid_h.max().clamp(min=1)) * int(grid_w.max().clamp(min=1))
    exact_cost = int((grid_h.clamp(min=1) * grid_w.clamp(min=1)).sum())
    if len(unique) == 1 or padded_cost <= _PADDED_WASTE * exact_cost:
        # One padded grid for all boxes: little waste, one pass (the common case).
        return _align(input, (oh, ow), geometry)
    # Sample counts vary a lot (a few large boxes among small ones): one pass per grid so
    # the small boxes do not pay for the largest one.
    pieces, places = [], []
    for key in unique:
        place = (keys == key).nonzero().squeeze(1)
        pieces.append(_align(input, (oh, ow), [t[place] for t in geometry]))
        places.append(place)
    return torch.cat(pieces)[torch.argsort(torch.cat(places))]


def _align(input: torch.Tensor, output_size: tuple[int, int],
           geometry: Sequence[torch.Tensor]) -> torch.Tensor:
    """RoIAlign of boxes on a sample grid padded to their largest sample count.

    The samples are read by ``grid_sample`` (bilinear, zero padding), one call per image and
    chunk of boxes: every box becomes ``oh * Gh`` rows of ``ow * Gw`` samples of its image, then
    each bin's ``Gh x Gw`` block is summed and divided by the box's own sample count. The
    coordinates are clamped onto the map beforehand as torchvision does, and a sample that
    counts as 0 (beyond ``-1`` or the map's size, or padding) is moved far outside the map.
    """
    _, C, H, W = input.shape
    oh, ow = output_size
    batch, y1, x1, bin_h, bin_w, grid_h, grid_w = geometry
    Gh, Gw = int(grid_h.max().clamp(min=1)), int(grid_w.max().clamp(min=1))
    rows = _axis(y1, bin_h, grid_h, oh, Gh, H)  # (K, oh * Gh) normalised coordinates
    cols = _axis(x1, bin_w, grid_w, ow, Gw, W)  # (K, ow * Gw)
    if H == 1 or W == 1:  # a zero row / column after a single one: see _axis
        input = nn.functional.pad(input, (0, int(W == 1), 0, int(H == 1)))
    count = (grid_h * grid_w).clamp(min=1).to(input.dtype)
    order, sizes, restore = _by_image(batch, input.shape[0])
    outputs = []
    for image, group in enumerate(order.split(sizes)):
        for k in _chunks(len(group), oh * Gh * ow * Gw * C):
            place = group[k]
            n = len(place)
            if n == 0:
                continue
            grid = torch.stack(torch.broadcast_tensors(cols[place, None, :],
                                                       rows[place, :, None]), -1)
            samples = nn.functional.grid_sample(
                input[image:image + 1], grid.view(1, n * oh * Gh, ow * Gw, 2), mode="bilinear",
                padding_mode="zeros", align_corners=True)  # (1, C, n * oh * Gh, ow * Gw)
            # Each bin's Gh x Gw block summed (a pooling kernel: far faster than a strided sum).
            sums = nn.functional.avg_pool2d(samples, (Gh, Gw), divisor_override=1)
            outputs.append(sums.view(C, n, oh, ow).permute(1, 0, 2, 3)
                           / count[place, None, None, None])
    pooled = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
    return pooled if restore is None else pooled[restore]


def _separable_cost(H: int, W: int, oh: int, ow: int) -> int:
    """Multiply-adds per box and channel of :func:`_align_separable` (rows first)."""
    return oh * H * W + oh * W * ow


def _align_separable(input: torch.Tensor, output_size: tuple[int, int],
                     geometry: Sequence[torch.Tensor]) -> torch.Tensor:
    """RoIAlign as ``rows @ map @ cols.T`` per box and channel: bilinear weights are separable.

    A bin's average is ``sum_s wy_s * wx_s * F[y_s, x_s] / count`` over its samples ``s``, and
    both the weights and the border rule (a sample counts as 0 when either coordinate is out)
    factor into a row part and a column part. Summing each axis's weights per bin gives dense
    (oh, H) and (ow, W) matrices per box, so the whole pass is one matrix product of every
    box's row matrix with its image's map and a batched product with the column matrices; the
    cost is independent of the sample grid, and autograd's gradient is two products as well.
    """
    _, C, H, W = input.shape
    oh, ow = output_size
    batch, y1, x1, bin_h, bin_w, grid_h, grid_w = geometry
    Gh, Gw = int(grid_h.max().clamp(min=1)), int(grid_w.max().clamp(min=1))
    count = (grid_h * grid_w).clamp(min=1).to(input.dtype)
    rows = _dense_weights(*_axis_weights(y1, bin_h, grid_h, oh, Gh, H), H)
    rows = rows / count[:, None, None]  # (K, oh, H)
    cols = _dense_weights(*_axis_weights(x1, bin_w, grid_w, ow, Gw, W), W)  # (K, ow, W)
    order, sizes, restore = _by_image(batch, input.shape[0])
    outputs = []
    for image, group in enumerate(order.split(sizes)):
        fm = input[image].transpose(0, 1).reshape(H, C * W)  # a small copy of one map
        for k in _chunks(len(group), C * oh * (W + ow)):
            place = group[k]
            n = len(place)
            if n == 0:
                continue
            # (n * oh, H) @ (H, C * W): every box's rows at once, then each box's columns.
            down = (rows[place].reshape(n * oh, H) @ fm).view(n, oh * C, W)
            outputs.append(torch.bmm(down, cols[place].transpose(1, 2)).view(n, oh, C, ow))
    pooled = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
    if restore is not None:
        pooled = pooled[restore]
    return pooled.permute(0, 2, 1, 3)


def _by_image(batch: torch.Tensor, images: int
              ) -> tuple[torch.Tensor, list[int], torch.Tensor | None]:
    """Boxes sorted by image (stable), boxes per image, and the order that undoes the sort
    (None when the boxes come sorted already, as a detector's proposals do)."""
    order = torch.argsort(batch, stable=True)
    sizes = torch.bincount(batch, minlength=images).tolist()
    ordered = len(batch) < 2 or bool((batch[1:] >= batch[:-1]).all())
    return order, sizes, None if ordered else torch.argsort(order)


def _dense_weights(index: torch.Tensor, weights: torch.Tensor, size: int) -> torch.Tensor:
    """(K, bins, padded, 2) neighbour indices and weights summed per bin into (K, bins, size)."""
    K, bins = index.shape[:2]
    dense = weights.new_zeros(K, bins, size)
    return dense.scatter_add_(2, index.flatten(2), weights.flatten(2))


def _axis_weights(start: torch.Tensor, bin_size: torch.Tensor, grid: torch.Tensor, bins: int,
                  padded: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Neighbour indices and bilinear weights of the samples along one axis.

    Returns (K, bins, padded, 2) long indices (low, high neighbour) and weights; a padded
    sample (index >= the box's grid) or one beyond ``-1`` or ``size`` has weight 0.
    """
    position, valid = _positions(start, bin_size, grid, bins, padded, size)
    position = position.clamp(min=0.0)
    low = position.floor()
    at_end = low >= size - 1  # clamp onto the last cell: both neighbours are that cell
    low = torch.where(at_end, torch.full_like(low, size - 1), low)
    position = torch.where(at_end, low, position)
    high = torch.where(at_end, low, low + 1)
    frac = position - low
    weights = torch.stack([1 - frac, frac], -1) * valid[..., None]
    return torch.stack([low, high], -1).long(), weights


def _positions(start: torch.Tensor, bin_size: torch.Tensor, grid: torch.Tensor, bins: int,
               padded: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(K, bins, padded) sample coordinates along one axis and whether each counts."""
    dtype = start.dtype
    p = torch.arange(bins, dtype=dtype, device=start.device)[None, :, None]
    i = torch.arange(padded, dtype=dtype, device=start.device)[None, None, :]
    g = grid.clamp(min=1).to(dtype)[:, None, None]
    b = bin_size[:, None, None]
    # torchvision's order of operations, so float32 results round the same way.
    position = start[:, None, None] + p * b + (i + 0.5) * b / g
    valid = (position >= -1.0) & (position <= size) & (i < grid[:, None, None])
    return position, valid


def _axis(start: torch.Tensor, bin_size: torch.Tensor, grid: torch.Tensor, bins: int,
          padded: int, size: int) -> torch.Tensor:
    """Sample coordinates along one axis, normalised for ``grid_sample(align_corners=True)``.

    Returns (K, bins * padded): bin-major, ``padded`` samples per bin. A sample clamps onto
    ``[0, size - 1]`` (torchvision's border rule), which is ``[-1, 1]`` normalised; a padded one
    (index >= the box's grid) or one beyond ``-1`` or ``size`` goes to -4, whose neighbours are
    both off the map (value 0). A map one cell long is normalised as two long (the caller pads
    a zero cell): align_corners maps every coordinate of a single cell onto it.
    """
    position, valid = _positions(start, bin_size, grid, bins, padded, size)
    position = position.clamp(min=0.0, max=size - 1)
    normal = position * (2.0 / max(size - 1, 1)) - 1  # grid_sample: (v + 1) * (size - 1) / 2
    return normal.masked_fill(~valid, -4.0).flatten(1)


def _pool_bins(start: torch.Tensor, length: torch.Tensor, bins: int, size: int,
               dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Cells of each RoI-pooling bin along one axis: (K, bins, widest) indices and validity."""
    bin_size = length.to(dtype)[:, None] / bins
    p = torch.arange(bins, dtype=dtype, device=start.device)[None]
    first = (torch.floor(p * bin_size).long() + start[:, None]).clamp(0, size)
    last = (torch.ceil((p + 1) * bin_size).long() + start[:, None]).clamp(0, size)
    widest = max(int((last - first).max()), 1)
    cells = first[..., None] + torch.arange(widest, device=start.device)
    valid = cells < last[..., None]
    return cells.clamp(max=size - 1), valid


def _round_half_away(x: torch.Tensor) -> torch.Tensor:
    """C's ``round``: halves go away from zero (``torch.round`` sends them to even)."""
    whole = torch.trunc(x)
    return whole + torch.sign(x) * ((x - whole).abs() >= 0.5)


def _chunks(count: int, per_item: int) -> list[slice]:
    step = max(1, _CHUNK_ELEMENTS // max(per_item, 1))
    return [slice(first, first + step) for first in range(0, count, step)]


def _pair(size: IntPair) -> tuple[int, int]:
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or not all(isinstance(v, int) and v > 0 for v in pair):
        raise DivekitError(f"output_size must be a positive int or (height, width), got {size!r}")
    return pair  # type: ignore[return-value]


def _rois(input: torch.Tensor, boxes: torch.Tensor | Sequence[torch.Tensor],
          name: str) -> torch.Tensor:
    """Boxes as one (K, 5) tensor ``(batch_index, x1, y1, x2, y2)``, checked against input."""
    if input.dim() != 4:
        raise DivekitError(f"{name} takes a feature map (B, C, H, W), got shape "
                           f"{tuple(input.shape)}")
    if isinstance(boxes, torch.Tensor):
        if boxes.dim() != 2 or boxes.shape[1] != 5:
            raise DivekitError(f"{name} takes boxes as a (K, 5) tensor of (batch_index, x1, y1, "
                               f"x2, y2) or a list of (K_i, 4) tensors, got shape "
                               f"{tuple(boxes.shape)}")
        rois = boxes
    else:
        parts = list(boxes)
        for i, part in enumerate(parts):
            if not isinstance(part, torch.Tensor) or part.dim() != 2 or part.shape[1] != 4:
                got = tuple(part.shape) if isinstance(part, torch.Tensor) else type(part).__name__
                raise DivekitError(f"{name}: boxes[{i}] must be a (K, 4) tensor of x1, y1, x2, "
                                   f"y2, got {got}")
        if len(parts) != input.shape[0]:
            raise DivekitError(f"{name}: {len(parts)} box tensors for a batch of "
                               f"{input.shape[0]} feature maps; pass one (K_i, 4) per image")
        rois = torch.cat([torch.cat([torch.full_like(part[:, :1], i), part], 1)
                          for i, part in enumerate(parts)]) if parts else \
            input.new_zeros((0, 5))
    rois = rois.to(input.device, input.dtype)  # torchvision computes in the input's dtype
    if len(rois) and (rois[:, 0].min() < 0 or rois[:, 0].max() >= input.shape[0]):
        raise DivekitError(f"{name}: a box's batch index is outside 0..{input.shape[0] - 1}; "
                           "the first column of a (K, 5) boxes tensor names its image")
    return rois


class RoIPool(nn.Module):
    """:func:`roi_pool` as a module (torchvision's ``RoIPool``)."""

    def __init__(self, output_size: IntPair, spatial_scale: float) -> None:
        super().__init__()
        self.output_size, self.spatial_scale = output_size, spatial_scale

    def forward(self, input: torch.Tensor, rois: torch.Tensor | Sequence[torch.Tensor]
                ) -> torch.Tensor:
        return roi_pool(input, rois, self.output_size, self.spatial_scale)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, spatial_scale={self.spatial_scale}"


class RoIAlign(nn.Module):
    """:func:`roi_align` as a module (torchvision's ``RoIAlign``)."""

    def __init__(self, output_size: IntPair, spatial_scale: float, sampling_ratio: int,
                 aligned: bool = False) -> None:
        super().__init__()
        self.output_size, self.spatial_scale = output_size, spatial_scale
        self.sampling_ratio, self.aligned = sampling_ratio, aligned

    def forward(self, input: torch.Tensor, rois: torch.Tensor | Sequence[torch.Tensor]
                ) -> torch.Tensor:
        return roi_align(input, rois, self.output_size, self.spatial_scale,
                         self.sampling_ratio, self.aligned)

    def extra_repr(self) -> str:
        return (f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
                f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}")
