"""14.6 The object detection dataset, generated: ``bananas`` and multi-object ``scenes``.

The course's banana-detection set (d2l 14.6) was made by pasting one banana photo onto
background photos: 1,000 training and 100 validation images of 256x256, one box each. Its
files could not be obtained here, so :func:`generate_bananas` draws the same kind of data: a
procedural banana (a tapering arc, yellow with brown tips and a stem, shaded across its width)
with random size, aspect, rotation, mirror and colour, composited with its alpha mask on a
cluttered procedural background (a two-colour gradient, smooth noise, stripes, grain and
ellipses or lines in any colour but yellow). :func:`write_banana_detection` writes such a set
in the original layout, so the book's loader (and ours, ``banana-detection``) reads it as is.

:func:`generate_scenes` draws several classes of shape (:data:`SCENE_CLASSES`) of varied size,
colour and texture (solid, stripes, dots, gradient) on such backgrounds with elongated clutter
that is none of the classes. Later objects hide earlier ones: an instance mask is the visible
part of its object, its box is the tight box of that mask, and an object less than
:data:`MIN_VISIBLE` visible is not drawn at all (so every drawn pixel of an object is labelled).

Everything is drawn with torch tensor operations over whole chunks of images (signed distance
functions of pixel centres, antialiased over one pixel), seeded per chunk, so a seed gives the
same bytes on every run. Boxes are continuous pixel corners: a mask whose pixels span columns
``j0..j1`` and rows ``i0..i1`` has the box ``(j0, i0, j1 + 1, i1 + 1)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from divekit.data.detection import DetectionTensors, check_size, detection_data
from divekit.data.registry import DataModule, register_dataset
from divekit.errors import DivekitError

SCENE_CLASSES = ("circle", "triangle", "square", "star", "ring", "cross")
BANANA_CLASSES = ("banana",)
MIN_VISIBLE = 0.3  # objects hidden more than this are left out
CHUNK_PIXELS = 2**22  # pixels of one image layer rendered at once (bounds memory, ~16 MB/layer)
EMBEDDED = "embedded default (no network)"  # the section of generated sets


# ---------------------------------------------------------------- shared drawing primitives

def _chunk_seed(seed: int, chunk: int) -> int:
    # SeedSequence hashes the pair, so chunks of nearby seeds draw unrelated streams.
    return int(np.random.SeedSequence([seed, chunk]).generate_state(1, np.uint64)[0] >> 1)


def _chunks(n: int, size: int, seed: int) -> Iterator[tuple[int, torch.Generator]]:
    """``(count, generator)`` per chunk of images; the chunk length depends on ``size`` only."""
    per_chunk = max(1, CHUNK_PIXELS // (size * size))
    for index, start in enumerate(range(0, n, per_chunk)):
        yield min(per_chunk, n - start), torch.Generator().manual_seed(_chunk_seed(seed, index))


def _uniform(gen: torch.Generator, n: int, low: float, high: float) -> torch.Tensor:
    return torch.rand(n, generator=gen) * (high - low) + low


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """Hue, saturation, value in ``[0, 1]`` to RGB in ``[0, 1]`` (the hexcone model).

    Shape: ``(..., 3)`` -> ``(..., 3)``.
    """
    h, s, v = hsv.unbind(-1)
    # Each channel is v minus a clamped triangle wave of the hue (colorsys's piecewise rule).
    k = (torch.tensor([5.0, 3.0, 1.0]) + (h % 1.0).unsqueeze(-1) * 6) % 6
    ramp = torch.minimum(k, 4 - k).clamp(0, 1)
    return v.unsqueeze(-1) - (v * s).unsqueeze(-1) * ramp


def _colours(gen: torch.Generator, n: int, sat: tuple[float, float], val: tuple[float, float],
             avoid_yellow: bool = False) -> torch.Tensor:
    """``(n, 3)`` random RGB colours; hues 35-75 degrees (yellow) skipped when asked."""
    if avoid_yellow:
        hue = (75 + torch.rand(n, generator=gen) * 320) / 360
    else:
        hue = torch.rand(n, generator=gen)
    hsv = torch.stack([hue, _uniform(gen, n, *sat), _uniform(gen, n, *val)], -1)
    return hsv_to_rgb(hsv)


class _Canvas:
    """A chunk of ``n`` images ``(n, 3, S, S)`` being painted, object by object.

    Each object is computed in a square window of pixels around it (its area, not the whole
    image's, vectorised over the chunk) and pasted with one in-place blend per image.
    """

    def __init__(self, pixels: torch.Tensor) -> None:
        self.pixels, self.size = pixels, pixels.shape[-1]

    def window(self, cx: torch.Tensor, cy: torch.Tensor, reach: torch.Tensor
               ) -> tuple[list[tuple[int, int, int]], torch.Tensor, torch.Tensor]:
        """The ``P x P`` pixels around each centre ``(n,)`` that hold a disc of radius
        ``reach`` as far as it is inside the image (a window is moved, not cut, at the
        border; P is at most S).

        Returns:
            ``(corners, y, x)``: per image ``(top, left, P)``, and the window's pixel centres
            in image coordinates ``y (n, P, 1)``, ``x (n, 1, P)``.
        """
        longest = float(reach.max()) if len(reach) else 0.0
        side = min(self.size, int(math.ceil(2 * longest)) + 3)
        top = (cy.floor().long() - side // 2).clamp(0, self.size - side)
        left = (cx.floor().long() - side // 2).clamp(0, self.size - side)
        offsets = torch.arange(side, dtype=torch.float32) + 0.5
        y = (top.float().view(-1, 1) + offsets).unsqueeze(2)
        x = (left.float().view(-1, 1) + offsets).unsqueeze(1)
        corners = [(t, lft, side) for t, lft in zip(top.tolist(), left.tolist(), strict=True)]
        return corners, y, x

    def paint(self, corners: list[tuple[int, int, int]], colour: torch.Tensor,
              alpha: torch.Tensor, present: torch.Tensor | None = None) -> None:
        """Blend ``colour`` ``(n, 3)`` or ``(n, 3, P, P)`` in with ``alpha`` ``(n, P, P)``
        where ``present`` ``(n,)`` (default everywhere)."""
        if colour.ndim == 2:
            colour = colour.view(-1, 3, 1, 1)
        shown = [True] * len(corners) if present is None else present.tolist()
        for i, (top, left, side) in enumerate(corners):
            if shown[i]:
                patch = self.pixels[i, :, top:top + side, left:left + side]
                patch.lerp_(colour[i], alpha[i].unsqueeze(0))

    def mask(self, corners: list[tuple[int, int, int]], inside: torch.Tensor) -> torch.Tensor:
        """Window masks ``(n, P, P)`` placed in their images: ``(n, S, S)`` bool."""
        full = torch.zeros(len(corners), self.size, self.size, dtype=torch.bool)
        for i, (top, left, side) in enumerate(corners):
            full[i, top:top + side, left:left + side] = inside[i]
        return full


def _object_coords(x: torch.Tensor, y: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor,
                   angle: torch.Tensor, sx: torch.Tensor, sy: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel centres in each object's frame: centred, rotated by ``angle``, divided by the
    half extents ``sx, sy`` (pixels).

    Shape: ``x (n, 1, P)``, ``y (n, P, 1)``, parameters ``(n,)`` -> two ``(n, P, P)``.
    """
    c, s = torch.cos(angle).view(-1, 1, 1), torch.sin(angle).view(-1, 1, 1)
    dx, dy = x - cx.view(-1, 1, 1), y - cy.view(-1, 1, 1)
    sx, sy = sx.view(-1, 1, 1), sy.view(-1, 1, 1)
    # Each term varies along one axis only: two broadcast sums instead of full-size products.
    return c * dx / sx + s * dy / sx, c * dy / sy - s * dx / sy


def _alpha(distance: torch.Tensor, pixels_per_unit: torch.Tensor) -> torch.Tensor:
    """Coverage of each pixel from a signed distance in object units (< 0 inside): one pixel
    of antialiasing, exactly 0.5 on the outline, so ``alpha > 0.5`` is the object's mask."""
    return (0.5 - distance * pixels_per_unit.view(-1, 1, 1)).clamp_(0, 1)


def _backgrounds(gen: torch.Generator, n: int, size: int, avoid_yellow: bool) -> _Canvas:
    """Cluttered backgrounds: gradient + smooth noise + stripes + grain + elongated shapes.

    The gradient, two scales of smooth noise and the stripes add up to a field that is a sum
    of separable terms, computed as one batched matrix product per channel; the shapes are
    ellipses 2.5 to 12 times as long as wide (down to lines), so that they are none of the
    scene classes; with ``avoid_yellow`` none is yellow, so none is a banana.
    """
    fine = 16  # smooth noise and gradient live on a 16 x 16 grid, upsampled bicubically
    grid = (torch.arange(fine, dtype=torch.float32) + 0.5) / fine - 0.5
    # A two-colour linear gradient in a random direction, in muted colours.
    ends = _colours(gen, 2 * n, (0.0, 0.5), (0.25, 0.9)).view(n, 2, 3, 1, 1)
    angle = _uniform(gen, n, 0, 2 * math.pi).view(-1, 1, 1, 1)
    t = 0.5 + 0.7 * (grid.view(1, 1, 1, -1) * torch.cos(angle)
                     + grid.view(1, 1, -1, 1) * torch.sin(angle))
    field = torch.lerp(ends[:, 0], ends[:, 1], t)  # (n, 3, 16, 16)
    # Blotches (4 x 4 values, upsampled to the grid) and mottling (16 x 16 values).
    coarse = torch.randn(n, 3, 4, 4, generator=gen)
    coarse = F.interpolate(coarse, size=(fine, fine), mode="bicubic", align_corners=False)
    field += coarse * (torch.rand(n, 1, 1, 1, generator=gen) * 0.15)
    field += torch.randn(n, 3, fine, fine, generator=gen) * (
        torch.rand(n, 1, 1, 1, generator=gen) * 0.08)
    grain = _uniform(gen, n, 0, 0.06).view(-1, 1, 1, 1)
    field -= grain / 2  # grain is uniform in [0, amplitude): centre it
    basis = F.interpolate(torch.eye(fine).view(fine, 1, 1, fine), size=(1, size),
                          mode="bicubic", align_corners=False).view(fine, size)
    # Faint stripes sin(a x + b y + c) = sin(a x) cos(b y + c) + cos(a x) sin(b y + c).
    centres = (torch.arange(size, dtype=torch.float32) + 0.5) / size - 0.5
    angle = _uniform(gen, n, 0, math.pi).view(-1, 1)
    freq = _uniform(gen, n, 4, 24).view(-1, 1) * (2 * math.pi)
    phase = _uniform(gen, n, 0, 2 * math.pi).view(-1, 1)
    along_x = freq * torch.cos(angle) * centres
    along_y = freq * torch.sin(angle) * centres + phase
    amplitude = _uniform(gen, n, 0, 0.08).view(-1, 1)
    rows_factor = torch.stack([torch.cos(along_y), torch.sin(along_y)], -1) * amplitude[..., None]
    cols_factor = torch.stack([torch.sin(along_x), torch.cos(along_x)], 1)  # (n, 2, S)
    left = torch.cat([basis.T @ field, rows_factor.unsqueeze(1).expand(n, 3, size, 2)], -1)
    right = torch.cat([basis.expand(n, 3, fine, size), cols_factor.unsqueeze(1).expand(
        n, 3, 2, size)], -2)
    pixels = left @ right  # (n, 3, S, S)
    # Grain: one uniform noise field per chunk (drawing one per image took a tenth of the
    # time), at a different strength in each image.
    pixels.addcmul_(torch.rand(1, 1, size, size, generator=gen), grain)
    canvas = _Canvas(pixels)
    # Elongated clutter: 2 large and 4 small slots, each drawn in about 60% of the images.
    for longest in (0.3, 0.3, 0.12, 0.12, 0.12, 0.12):
        long_side = _uniform(gen, n, 0.04, longest) * size
        thin = long_side / _uniform(gen, n, 2.5, 12)
        cx, cy = _uniform(gen, n, 0, size), _uniform(gen, n, 0, size)
        corners, y, x = canvas.window(cx, cy, long_side + 1)
        u, v = _object_coords(x, y, cx, cy, _uniform(gen, n, 0, math.pi), long_side, thin)
        alpha = _alpha(torch.sqrt(u * u + v * v) - 1, thin)
        colour = _colours(gen, n, (0.2, 0.9), (0.15, 0.95), avoid_yellow)
        canvas.paint(corners, colour, alpha, torch.rand(n, generator=gen) < 0.6)
    return canvas


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    # + 0.5 then truncation rounds; the clamp keeps the conversion defined.
    return images.mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8)


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight continuous boxes of boolean masks: ``(j0, i0, j1 + 1, i1 + 1)`` for pixels in
    columns ``j0..j1`` and rows ``i0..i1``; an empty mask gives ``(0, 0, 0, 0)``.

    Shape: ``(N, H, W)`` -> ``(N, 4)`` float32.
    """
    n, height, width = masks.shape
    rows, cols = masks.any(dim=2), masks.any(dim=1)

    def first_last(hit: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        first = hit.to(torch.uint8).argmax(dim=1)
        last = length - hit.flip(1).to(torch.uint8).argmax(dim=1)
        empty = ~hit.any(dim=1)
        return first.masked_fill(empty, 0), last.masked_fill(empty, 0)

    x0, x1 = first_last(cols, width)
    y0, y1 = first_last(rows, height)
    return torch.stack([x0, y0, x1, y1], dim=1).float()


# ---------------------------------------------------------------- bananas

def _draw_bananas(gen: torch.Generator, n: int, size: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """One banana on each of ``n`` backgrounds: float images ``(n, 3, S, S)``, masks
    ``(n, S, S)`` bool."""
    canvas = _backgrounds(gen, n, size, avoid_yellow=True)
    # The banana spans about u in [-1, 1]: half its length is `half` pixels (the whole banana
    # 14-34% of the side; the book's are about 15-25%).
    half = _uniform(gen, n, 0.07, 0.17) * size
    stretch = _uniform(gen, n, 0.8, 1.25)
    reach = half * torch.maximum(stretch, torch.ones(n)) * 1.2 + 1
    cx = reach + torch.rand(n, generator=gen) * (size - 2 * reach)
    cy = reach + torch.rand(n, generator=gen) * (size - 2 * reach)
    angle = _uniform(gen, n, 0, 2 * math.pi)
    corners, y, x = canvas.window(cx, cy, reach)
    u, v = _object_coords(x, y, cx, cy, angle, half, half * stretch)
    u = u * torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0).view(-1, 1, 1)
    # A tapering arc of radius R around (0, R - sag / 2): the middle of its length at the top.
    radius = _uniform(gen, n, 1.1, 2.6).view(-1, 1, 1)
    span = 1 / radius  # half the arc's angle: its length is about 2 units
    sag = radius * (1 - torch.cos(span))
    dy = radius - sag / 2 - v
    r = torch.sqrt(u * u + dy * dy)
    theta = torch.atan2(u, dy)
    along = (theta / span).clamp(-1, 1)
    width = _uniform(gen, n, 0.14, 0.24).view(-1, 1, 1) * (1 - along**2).clamp(min=0) ** 0.6
    across = r - radius
    body = torch.maximum(across.abs() - width, (theta.abs() - span) * radius)
    # A short stem past the end at theta = +span.
    stem = torch.maximum(across.abs() - 0.045, ((theta - span) * radius - 0.06).abs() - 0.1)
    distance = torch.minimum(body, stem)
    alpha = _alpha(distance, torch.minimum(half, half * stretch))
    # Colour: yellow (to greenish) shaded across the width, a ridge highlight, brown tips.
    hsv = torch.stack([_uniform(gen, n, 0.115, 0.19), _uniform(gen, n, 0.6, 0.95),
                       _uniform(gen, n, 0.78, 1.0)], -1)
    base = hsv_to_rgb(hsv).view(n, 3, 1, 1)
    q = (across / width.clamp(min=1e-3)).clamp(-1, 1)
    shade = 1 - 0.35 * q**2 - 0.12 * q + 0.12 * torch.exp(-(((q + 0.35) / 0.25) ** 2))
    colour = base * shade.unsqueeze(1)
    brown = torch.tensor([0.33, 0.21, 0.08]).view(1, 3, 1, 1)
    tip = ((theta.abs() / span - 0.82) / 0.14).clamp(0, 1)
    tip = torch.where(stem < body, torch.ones_like(tip), tip)
    colour = torch.lerp(colour, brown.expand_as(colour), tip.unsqueeze(1))
    canvas.paint(corners, colour.clamp(0, 1), alpha)
    return canvas.pixels, canvas.mask(corners, alpha > 0.5)


def generate_bananas(n: int, size: int = 256, seed: int = 0
                     ) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """``n`` generated banana-detection images: one banana each, on cluttered backgrounds.

    Args:
        n: number of images.
        size: images are ``size x size`` (the book's are 256).
        seed: the same seed gives the same bytes.

    Returns:
        ``(images, targets)``: uint8 images ``(n, 3, size, size)`` and per image a dict with
        ``boxes`` ``(1, 4)`` float32 (the tight box of the banana's mask, continuous pixel
        corners) and ``labels`` ``(1,)`` int64 zeros.
    """
    _check_counts(n, size, seed)
    images, boxes = [], []
    for count, gen in _chunks(n, size, seed):
        drawn, masks = _draw_bananas(gen, count, size)
        images.append(_to_uint8(drawn))
        boxes.append(mask_boxes(masks))
    all_boxes = torch.cat(boxes) if boxes else torch.zeros(0, 4)
    targets = [{"boxes": box.view(1, 4).clone(), "labels": torch.zeros(1, dtype=torch.long)}
               for box in all_boxes]
    return _cat_images(images, size), targets


def write_banana_detection(folder: str | Path, num_train: int = 1000, num_val: int = 100,
                           seed: int = 0, size: int = 256) -> Path:
    """Write generated bananas in the book's banana-detection layout; returns ``folder``.

    ``folder/bananas_train/label.csv`` (header ``img_name,label,xmin,ymin,xmax,ymax``, one row
    per image, integer pixel corners) with ``folder/bananas_train/images/0.png``, ...; the
    same for ``bananas_val``. The images are PNG (lossless), so reading them back gives the
    generated pixels exactly. The training images are ``generate_bananas(num_train, size,
    seed)``, the validation ones :func:`bananas_data`'s (``seed`` + a different stream).
    """
    from PIL import Image

    folder = Path(folder)
    for split, count, split_seed in (("bananas_train", num_train, seed),
                                     ("bananas_val", num_val, _val_seed(seed))):
        images, targets = generate_bananas(count, size, split_seed)
        (folder / split / "images").mkdir(parents=True, exist_ok=True)
        rows = ["img_name,label,xmin,ymin,xmax,ymax"]
        for i, (image, target) in enumerate(zip(images, targets, strict=True)):
            # Level 1: noisy backgrounds compress little, and level 6 took 8 times as long.
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(
                folder / split / "images" / f"{i}.png", compress_level=1)
            x0, y0, x1, y1 = (int(v) for v in target["boxes"][0].tolist())
            rows.append(f"{i}.png,{int(target['labels'][0])},{x0},{y0},{x1},{y1}")
        (folder / split / "label.csv").write_text("\n".join(rows) + "\n")
    return folder


def _val_seed(seed: int) -> int:
    return _chunk_seed(seed, -1 % 2**32)  # a stream no training chunk uses


# ---------------------------------------------------------------- scenes

def _shape_distance(cls: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Signed distance (object units, < 0 inside) of the class's shape, which fills about the
    unit disc."""
    name = SCENE_CLASSES[cls]
    if name == "circle":
        return torch.sqrt(u * u + v * v) - 1
    if name == "ring":
        return (torch.sqrt(u * u + v * v) - 0.72).abs() - 0.28
    if name == "square":
        return torch.maximum(u.abs(), v.abs()) - 0.8
    if name == "cross":
        arm, bar = 0.95, 0.3
        return torch.minimum(torch.maximum(u.abs() - arm, v.abs() - bar),
                             torch.maximum(u.abs() - bar, v.abs() - arm))
    if name == "triangle":  # equilateral, circumradius 1: three half-planes at inradius 0.5
        sides = [u * math.cos(a) + v * math.sin(a) for a in (math.pi / 2, 7 * math.pi / 6,
                                                              11 * math.pi / 6)]
        return torch.maximum(torch.maximum(sides[0], sides[1]), sides[2]) - 0.5
    if name == "star":  # five points at radius 1, inner corners at 0.45
        sector = 2 * math.pi / 5
        angle = torch.atan2(v, u) + math.pi / 2  # a point straight up
        folded = (((angle + sector / 2) % sector) - sector / 2).abs()  # from the nearest point
        r = torch.sqrt(u * u + v * v)
        qx, qy = r * torch.cos(folded), r * torch.sin(folded)
        inner = 0.45
        ex, ey = inner * math.cos(sector / 2) - 1, inner * math.sin(sector / 2)
        norm = math.hypot(ex, ey)
        # Distance to the edge from the tip (1, 0) to the inner corner, positive outside.
        return ((qx - 1) * ey - qy * ex) / norm
    raise AssertionError(name)


def _texture(gen: torch.Generator, n: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Weight of each object's second colour per pixel: 0 (solid), stripes, dots or a
    gradient, one pattern per object, each computed for its own objects only.

    Shape: ``u, v (n, P, P)`` -> ``(n, P, P)`` in ``[0, 1]``.
    """
    pattern = torch.randint(0, 4, (n,), generator=gen)
    angle = _uniform(gen, n, 0, math.pi).view(-1, 1, 1)
    stripes = _uniform(gen, n, 7, 14).view(-1, 1, 1)
    cells = _uniform(gen, n, 2.5, 4.5).view(-1, 1, 1)
    dot_size = _uniform(gen, n, 0.04, 0.1).view(-1, 1, 1)
    weight = torch.zeros_like(u)
    for kind in (1, 2, 3):
        pick = (pattern == kind).nonzero().flatten()
        if not len(pick):
            continue
        pu, pv = u[pick], v[pick]
        if kind == 2:  # dots on a square grid of the object's frame
            fu, fv = torch.frac(pu * cells[pick] + 8) - 0.5, torch.frac(pv * cells[pick] + 8) - 0.5
            weight[pick] = (fu * fu + fv * fv < dot_size[pick]).float()
            continue
        along = pu * torch.cos(angle[pick]) + pv * torch.sin(angle[pick])
        weight[pick] = ((torch.sin(along * stripes[pick]) > 0).float() if kind == 1
                        else (along * 0.5 + 0.5).clamp(0, 1))
    return weight


def _draw_scenes(gen: torch.Generator, n: int, size: int, max_objects: int
                 ) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Images ``(n, 3, S, S)`` float, instance maps ``(n, S, S)`` uint8 (``k + 1`` on the
    visible pixels of the image's ``k``-th object) and targets (``boxes``, ``labels``)."""
    canvas = _backgrounds(gen, n, size, avoid_yellow=False)
    count = torch.randint(0, max_objects + 1, (n,), generator=gen)
    classes = torch.randint(0, len(SCENE_CLASSES), (max_objects, n), generator=gen)
    layers, area = [], torch.zeros(max_objects, n, dtype=torch.long)
    for k in range(max_objects):
        half = _uniform(gen, n, 0.05, 0.225) * size  # 10-45% of the side across
        aspect = torch.exp(_uniform(gen, n, -0.2, 0.2))
        sx, sy = half * aspect.sqrt(), half / aspect.sqrt()
        border = torch.maximum(sx, sy) * 0.7  # up to about 30% may be cut off by the border
        cx = border + torch.rand(n, generator=gen) * (size - 2 * border)
        cy = border + torch.rand(n, generator=gen) * (size - 2 * border)
        # Square corners reach 0.8 * sqrt(2) of the half extent: 1.2 holds every shape.
        corners, y, x = canvas.window(cx, cy, torch.maximum(sx, sy) * 1.2 + 1)
        u, v = _object_coords(x, y, cx, cy, _uniform(gen, n, 0, 2 * math.pi), sx, sy)
        distance = torch.empty_like(u)
        for c in range(len(SCENE_CLASSES)):
            pick = (classes[k] == c).nonzero().flatten()
            if len(pick):
                distance[pick] = _shape_distance(c, u[pick], v[pick])
        alpha = _alpha(distance, torch.minimum(sx, sy))
        first = _colours(gen, n, (0.55, 1.0), (0.5, 1.0)).view(n, 3, 1, 1)
        second = _colours(gen, n, (0.3, 1.0), (0.2, 1.0)).view(n, 3, 1, 1)
        weight = _texture(gen, n, u, v).unsqueeze(1)
        shade = (1 - 0.06 * (u + v)).clamp(0.8, 1.2).unsqueeze(1)
        colour = (torch.lerp(first, second, weight) * shade).clamp(0, 1)
        inside = alpha > 0.5
        area[k] = torch.count_nonzero(inside, dim=(1, 2))  # windows lie inside the image
        layers.append((corners, colour, alpha, inside))
    keep = (torch.arange(max_objects).view(-1, 1) < count) & (area > 0)
    visible = _visible_areas(_top_layers(layers, keep, size), max_objects)
    # Hidden objects are not drawn: leaving them out only uncovers the ones under them.
    keep &= visible >= MIN_VISIBLE * area
    top = _top_layers(layers, keep, size)
    for k, (corners, colour, alpha, _) in enumerate(layers):
        canvas.paint(corners, colour, alpha, keep[k])
    # Number the kept objects of each image 1, 2, ... in drawing order.
    rank = torch.cat([torch.zeros(1, n, dtype=torch.long), keep.long().cumsum(0) * keep])
    instances = rank.T.gather(1, top.view(n, -1).long()).view(n, size, size)
    boxes = _instance_boxes(instances, max_objects)
    targets = [{"boxes": boxes[i, :int(kept.sum())].clone(), "labels": classes[kept, i]}
               for i, kept in enumerate(keep.T)]
    return canvas.pixels, instances.to(torch.uint8), targets


def _top_layers(layers: list, keep: torch.Tensor, size: int) -> torch.Tensor:
    """``(n, S, S)`` uint8: ``k + 1`` where the kept layer ``k`` is the top one, else 0."""
    top = torch.zeros(keep.shape[1], size, size, dtype=torch.uint8)
    for k, (corners, _, _, inside) in enumerate(layers):
        shown = keep[k].tolist()
        for i, (t, left, side) in enumerate(corners):
            if shown[i]:
                top[i, t:t + side, left:left + side].masked_fill_(inside[i], k + 1)
    return top


def _visible_areas(top: torch.Tensor, layers: int) -> torch.Tensor:
    """Pixels of each layer on top, ``(layers, n)``, counted in one pass over the maps."""
    n = len(top)
    bins = top.long() + (layers + 1) * torch.arange(n).view(-1, 1, 1)
    counts = torch.bincount(bins.flatten(), minlength=n * (layers + 1)).view(n, layers + 1)
    return counts[:, 1:].T


def _instance_boxes(instances: torch.Tensor, count: int) -> torch.Tensor:
    """Tight boxes of the pixels of each instance ``1..count`` of maps ``(n, H, W)``:
    ``(n, count, 4)`` float32, zeros for an instance without pixels."""
    n, height, width = instances.shape
    bins = (instances.long() + (count + 1) * torch.arange(n).view(-1, 1, 1)).flatten()
    cols = torch.arange(width).expand(n, height, width).flatten()
    rows = torch.arange(height).view(-1, 1).expand(n, height, width).flatten()
    bounds = []
    for coords, reduce, start in ((cols, "amin", width), (rows, "amin", height),
                                  (cols, "amax", -1), (rows, "amax", -1)):
        found = torch.full((n * (count + 1),), start, dtype=torch.long)
        bounds.append(found.scatter_reduce_(0, bins, coords, reduce))
    x0, y0, x1, y1 = (b.view(n, count + 1)[:, 1:] for b in bounds)
    boxes = torch.stack([x0, y0, x1 + 1, y1 + 1], -1).float()
    return boxes.masked_fill((x1 < 0).unsqueeze(-1), 0)


def render_scenes(n: int, size: int = 256, seed: int = 0, max_objects: int = 6
                  ) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, torch.Tensor]]]:
    """:func:`generate_scenes` with the masks as one map per image (they do not overlap).

    Returns:
        ``(images, instances, targets)``: uint8 images ``(n, 3, S, S)``; uint8 ``instances``
        ``(n, S, S)``, ``k + 1`` on the visible pixels of the image's ``k``-th object and 0
        elsewhere; targets with ``boxes`` and ``labels`` (no ``masks``).
    """
    _check_counts(n, size, seed)
    if isinstance(max_objects, bool) or not isinstance(max_objects, int) or not (
            0 <= max_objects < 255):
        raise DivekitError(f"max_objects must be an integer in [0, 254], got {max_objects!r}")
    images, instance_maps, targets = [], [], []
    for count, gen in _chunks(n, size, seed):
        drawn, instances, chunk_targets = _draw_scenes(gen, count, size, max_objects)
        images.append(_to_uint8(drawn))
        instance_maps.append(instances)
        targets += chunk_targets
    maps = torch.cat(instance_maps) if instance_maps else torch.zeros(0, size, size,
                                                                      dtype=torch.uint8)
    return _cat_images(images, size), maps, targets


def instance_masks(instances: torch.Tensor, count: int) -> torch.Tensor:
    """Masks ``(count, H, W)`` uint8 of an instance map ``(H, W)`` (``k + 1`` on object ``k``)."""
    ids = torch.arange(1, count + 1, dtype=instances.dtype).view(-1, 1, 1)
    return (instances.unsqueeze(0) == ids).to(torch.uint8)


def generate_scenes(n: int, size: int = 256, seed: int = 0, max_objects: int = 6
                    ) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """``n`` generated scenes: 0 to ``max_objects`` shapes of :data:`SCENE_CLASSES` each.

    Args:
        n: number of images.
        size: images are ``size x size``; objects are 10-45% of it across.
        seed: the same seed gives the same bytes.
        max_objects: objects drawn per image, uniform in ``0..max_objects`` before the ones
            less than 30% visible are left out.

    Returns:
        ``(images, targets)``: uint8 images ``(n, 3, size, size)`` and per image a dict with
        ``boxes`` ``(K, 4)`` float32 (tight boxes of the visible masks), ``labels`` ``(K,)``
        int64 in ``0..5`` and ``masks`` ``(K, size, size)`` uint8 (visible parts, disjoint),
        objects in drawing order (later ones on top).
    """
    images, instances, targets = render_scenes(n, size, seed, max_objects)
    for instance_map, target in zip(instances, targets, strict=True):
        target["masks"] = instance_masks(instance_map, len(target["labels"]))
    return images, targets


def semantic_maps(targets: list[dict[str, torch.Tensor]], size: int | tuple[int, int]
                  ) -> torch.Tensor:
    """Per-pixel class maps of detection targets with masks (for semantic segmentation).

    A pixel is 0 where no mask covers it and ``label + 1`` where one does; where masks
    overlap (not in generated scenes, whose masks are disjoint) the later instance wins, as it
    would be drawn on top.

    Args:
        targets: dicts with ``masks`` ``(K, H, W)`` and ``labels`` ``(K,)``.
        size: ``H`` (square) or ``(H, W)``, the maps' size (needed when K is 0).

    Returns:
        uint8 maps ``(N, H, W)``.
    """
    height, width = (size, size) if isinstance(size, int) else size
    maps = torch.zeros(len(targets), height, width, dtype=torch.uint8)
    for i, target in enumerate(targets):
        masks, labels = target["masks"], target["labels"]
        if masks.shape[1:] != (height, width):
            raise DivekitError(f"target {i} has masks of size {tuple(masks.shape[1:])}, "
                               f"expected {(height, width)}")
        for mask, label in zip(masks.bool(), labels.tolist(), strict=True):
            maps[i][mask] = label + 1
    return maps


# ---------------------------------------------------------------- checks and registration

def _check_counts(n: int, size: int, seed: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise DivekitError(f"the number of images must be an integer >= 0, got {n!r}")
    check_size(size, "size")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DivekitError(f"the seed must be an integer >= 0, got {seed!r}")


def _cat_images(images: list[torch.Tensor], size: int) -> torch.Tensor:
    return torch.cat(images) if images else torch.zeros(0, 3, size, size, dtype=torch.uint8)


def _check_count(value: int, name: str, least: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise DivekitError(f"{name} must be an integer >= {least}, got {value!r}")


@register_dataset("bananas", section=EMBEDDED)
def bananas_data(data_dir: str | None = None, num_train: int = 1000, num_val: int = 100,
                 image_size: int = 256, data_seed: int = 0) -> DataModule:
    """Generated: one banana per 256x256 image on cluttered backgrounds, 1,000 train / 100 test.

    The book's banana-detection set, drawn instead of read (see :mod:`divekit.data.scenes`);
    the test split is the validation images, as the book evaluates on them.

    Args:
        data_dir: unused (nothing is read).
        num_train: training images (the book's 1,000).
        num_val: validation images, the test split (the book's 100).
        image_size: images are ``image_size x image_size`` (the book's 256).
        data_seed: seeds the drawing; the same seed gives the same images.
    """
    _check_count(num_train, "num_train")
    _check_count(num_val, "num_val")
    check_size(image_size)
    _check_counts(0, image_size, data_seed)
    train = generate_bananas(num_train, image_size, data_seed)
    test = generate_bananas(num_val, image_size, _val_seed(data_seed))
    return detection_data("bananas", DetectionTensors(*train), DetectionTensors(*test),
                          BANANA_CLASSES)


@register_dataset("scenes", section=EMBEDDED)
def scenes_data(data_dir: str | None = None, num_train: int = 2000, num_test: int = 300,
                image_size: int = 128, max_objects: int = 6, data_seed: int = 0
                ) -> DataModule:
    """Generated: 0-6 shapes of 6 classes per 128x128 image, occluding, with instance masks.

    Circles, triangles, squares, stars, rings and crosses of varied size, colour and texture
    on cluttered backgrounds (see :mod:`divekit.data.scenes`). 128 pixels keep two-stage
    detectors trainable on a CPU in minutes (a quarter of the pixels of 256) while the smallest
    objects (10% of the side) still cover 13 pixels.

    Args:
        data_dir: unused (nothing is read).
        num_train: training images.
        num_test: test images.
        image_size: images are ``image_size x image_size``.
        max_objects: objects drawn per image, uniform in ``0..max_objects``.
        data_seed: seeds the drawing; the same seed gives the same images.
    """
    _check_count(num_train, "num_train")
    _check_count(num_test, "num_test")
    check_size(image_size)
    _check_counts(0, image_size, data_seed)
    splits = {}
    for name, count, seed in (("train", num_train, data_seed),
                              ("test", num_test, _val_seed(data_seed))):
        images, instances, targets = render_scenes(count, image_size, seed, max_objects)
        splits[name] = DetectionTensors(images, targets, instances=instances)
    return detection_data("scenes", splits["train"], splits["test"], SCENE_CLASSES)
