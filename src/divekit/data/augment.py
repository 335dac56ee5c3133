"""Image augmentation (course section 14.1), batched on tensors; mixup (Zhang et al., 2018).

Every transform works on a whole batch of float images ``(N, C, H, W)`` on whatever device the
batch is on, and draws its own random decision for every image (one flip coin, one crop box,
one set of colour factors per sample). Only those per-image numbers are drawn, on the CPU, from
a ``torch.Generator`` when one is given and from torch's global generator otherwise (which the
Trainer seeds and checkpoints, so a resumed run sees the same augmentations). The same seed
therefore gives the same batch on every device.

    aug = Compose(RandomHorizontalFlip(), RandomResizedCrop(32, scale=(0.5, 1)),
                  ColorJitter(0.4, 0.4, 0.4), Mixup(0.2, num_classes=10), seed=0)
    data.transform = aug            # TensorLoader calls aug(images, labels) on every batch
    aug = parse_augment("flip,crop=0.5,jitter=0.4,mixup=0.2", num_classes=10)

The geometric transforms (flips, :class:`RandomResizedCrop`) move the targets with the images
when a pipeline is called with them: label maps ``(N, H, W)`` and detection boxes follow the
pixels, class labels pass through (see :mod:`divekit.data.targets`). The photometric ones
leave targets alone, and :class:`Mixup` takes class labels only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from divekit.data.targets import Targets, check_targets, crop_targets, flip_targets
from divekit.errors import DivekitError

Generator = torch.Generator | None


def _uniform(n: int, low: float, high: float, generator: Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)


def _log_uniform(shape: tuple[int, ...], low: float, high: float, generator: Generator
                 ) -> torch.Tensor:
    # Aspect ratios are drawn uniformly in log space, so r and 1/r are equally likely.
    log_ratio = torch.rand(shape, generator=generator, dtype=torch.float64)
    return torch.exp(math.log(low) + (math.log(high) - math.log(low)) * log_ratio)


def _check_images(images: torch.Tensor, name: str) -> None:
    if images.ndim != 4 or not images.is_floating_point():
        raise DivekitError(f"{name} expects float images (N, C, H, W), got a {images.dtype} "
                           f"tensor of shape {tuple(images.shape)}")


def _check_probability(p: float, name: str) -> None:
    if not 0 <= p <= 1:
        raise DivekitError(f"{name}: p must be a probability in [0, 1], got {p}")


def _check_range(bounds: Sequence[float], name: str, upper: float = math.inf
                 ) -> tuple[float, float]:
    low, high = bounds
    if not 0 < low <= high <= upper:
        limit = "" if upper == math.inf else f" <= {upper}"
        raise DivekitError(f"{name} must be (low, high) with 0 < low <= high{limit}, got {bounds}")
    return float(low), float(high)


class RandomHorizontalFlip:
    """Mirror each image left-right with probability ``p``, its targets with it."""

    dim = -1
    moves_targets = True  # Compose calls apply(images, targets, generator)

    def __init__(self, p: float = 0.5) -> None:
        _check_probability(p, type(self).__name__)
        self.p = p

    def __call__(self, images: torch.Tensor, generator: Generator = None) -> torch.Tensor:
        return self.apply(images, None, generator)[0]

    def apply(self, images: torch.Tensor, targets: Targets, generator: Generator = None
              ) -> tuple[torch.Tensor, Targets]:
        """Flip images and targets (label maps, detection boxes; class labels pass through).

        Shape: images ``(N, C, H, W)``; targets as in :mod:`divekit.data.targets`.
        """
        _check_images(images, type(self).__name__)
        check_targets(targets, images, type(self).__name__)
        flip = torch.rand(len(images), generator=generator) < self.p
        flipped = torch.where(flip.to(images.device).view(-1, 1, 1, 1), images.flip(self.dim),
                              images)
        return flipped, flip_targets(targets, flip, self.dim, *images.shape[-2:])


class RandomVerticalFlip(RandomHorizontalFlip):
    """Mirror each image top-bottom with probability ``p``, its targets with it."""

    dim = -2


class RandomTranslate:
    """Shift each image by a random whole number of pixels, up to ``max_shift`` along each
    axis, its targets with it; the border it uncovers is the image mirrored (reflect padding,
    as the CIFAR-10 speed-run recipes pad and crop). Label maps get the ignore label there;
    detection boxes move and are clipped (see :mod:`divekit.data.targets`).

    Args:
        max_shift: the largest shift in pixels; under the image's height and width.
    """

    moves_targets = True

    def __init__(self, max_shift: int = 2) -> None:
        if isinstance(max_shift, bool) or max_shift != int(max_shift) or max_shift < 1:
            raise DivekitError(f"RandomTranslate: max_shift must be a positive whole number of "
                               f"pixels, got {max_shift}")
        self.max_shift = int(max_shift)

    def __call__(self, images: torch.Tensor, generator: Generator = None) -> torch.Tensor:
        return self.apply(images, None, generator)[0]

    def apply(self, images: torch.Tensor, targets: Targets, generator: Generator = None
              ) -> tuple[torch.Tensor, Targets]:
        """Shift images and targets. Shape: images ``(N, C, H, W)``; targets as in
        :mod:`divekit.data.targets`."""
        _check_images(images, type(self).__name__)
        check_targets(targets, images, type(self).__name__)
        n, (height, width), s = len(images), images.shape[-2:], self.max_shift
        if s >= min(height, width):
            raise DivekitError(f"RandomTranslate: max_shift {s} must be under the image size "
                               f"{height}x{width}")
        # The window each output shows, in input pixels: its top-left corner moves by (dx, dy).
        shifts = torch.randint(-s, s + 1, (n, 2), generator=generator)
        padded = F.pad(images, (s, s, s, s), mode="reflect")
        # Output pixel (i, j) of image k is padded pixel (i + s + dy_k, j + s + dx_k).
        offsets = shifts.to(images.device) + s
        rows = (torch.arange(height, device=images.device) + offsets[:, 1:]).view(n, 1, -1, 1)
        cols = (torch.arange(width, device=images.device) + offsets[:, :1]).view(n, 1, 1, -1)
        channels = images.shape[1]
        out = padded.gather(2, rows.expand(n, channels, height, padded.shape[3]))
        out = out.gather(3, cols.expand(n, channels, height, width))
        windows = torch.cat([shifts.double(), torch.tensor([[width, height]], dtype=torch.float64
                                                           ).expand(n, 2)], dim=1)
        return out, crop_targets(targets, windows, (height, width))


class RandomResizedCrop:
    """Crop a random box of each image and resize it to ``size`` (the Inception crop).

    The box covers a fraction ``scale`` of the image area with aspect ratio (width / height)
    in ``ratio``, drawn log-uniformly; after 10 draws that do not fit, the image is
    centre-cropped to the nearest allowed ratio. Boxes have real-valued corners and are
    resampled bilinearly (antialiased when shrinking) for the whole batch at once. Label maps
    take the nearest pixel of the same points; detection boxes are moved, clipped to the
    output and dropped when too little of them is left (see :mod:`divekit.data.targets`).

    Args:
        size: output ``(height, width)`` or one int for a square; ``None`` keeps the input size.
        scale: range of the box area as a fraction of the image area.
        ratio: range of the box aspect ratio, width / height.
        min_visible: a detection box is kept when at least this fraction of its area lies in
            the crop (and always dropped when none of it does).
    """

    attempts = 10
    moves_targets = True

    def __init__(
        self,
        size: int | tuple[int, int] | None = None,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        min_visible: float = 0.0,
    ) -> None:
        if isinstance(size, int):
            size = (size, size)
        if size is not None and (len(size) != 2 or min(size) < 1):
            raise DivekitError(f"RandomResizedCrop: size must be positive, got {size}")
        if not 0 <= min_visible <= 1:
            raise DivekitError(f"RandomResizedCrop: min_visible must be in [0, 1], got "
                               f"{min_visible}")
        self.size = size
        self.scale = _check_range(scale, "RandomResizedCrop scale", upper=1.0)
        self.ratio = _check_range(ratio, "RandomResizedCrop ratio")
        self.min_visible = min_visible

    def boxes(self, n: int, height: int, width: int, generator: Generator = None) -> torch.Tensor:
        """Draw one crop box per image.

        Returns:
            ``(n, 4)`` float64 rows ``(left, top, box_width, box_height)`` in pixels.
        """
        shape = (n, self.attempts)
        area = height * width * _uniform(n * self.attempts, *self.scale, generator).view(shape)
        aspect = _log_uniform(shape, *self.ratio, generator)
        box_w, box_h = torch.sqrt(area * aspect), torch.sqrt(area / aspect)
        fits = (box_w <= width) & (box_h <= height)
        first = fits.int().argmax(1, keepdim=True)  # argmax returns the first True
        box_w, box_h = box_w.gather(1, first)[:, 0], box_h.gather(1, first)[:, 0]
        # Fallback: the largest centred box whose ratio is the nearest allowed one.
        image_ratio = min(max(width / height, self.ratio[0]), self.ratio[1])
        fallback_w = min(width, height * image_ratio)
        fallback_h = fallback_w / image_ratio
        found = fits.any(1)
        box_w = torch.where(found, box_w, torch.full_like(box_w, fallback_w))
        box_h = torch.where(found, box_h, torch.full_like(box_h, fallback_h))
        # A box found by drawing lies anywhere in the image; the fallback one is centred.
        left = torch.rand(n, generator=generator, dtype=torch.float64).where(found, 0.5)
        top = torch.rand(n, generator=generator, dtype=torch.float64).where(found, 0.5)
        left, top = left * (width - box_w), top * (height - box_h)
        return torch.stack([left, top, box_w, box_h], 1)

    def __call__(self, images: torch.Tensor, generator: Generator = None) -> torch.Tensor:
        return self.apply(images, None, generator)[0]

    def apply(self, images: torch.Tensor, targets: Targets, generator: Generator = None
              ) -> tuple[torch.Tensor, Targets]:
        """Crop images and targets (label maps, detection boxes; class labels pass through).

        Shape: images ``(N, C, H, W)`` -> ``(N, C, *size)``; targets as in
        :mod:`divekit.data.targets`.
        """
        _check_images(images, "RandomResizedCrop")
        check_targets(targets, images, "RandomResizedCrop")
        n, _, height, width = images.shape
        windows = self.boxes(n, height, width, generator)
        left, top, box_w, box_h = windows.unbind(1)
        out_h, out_w = self.size or (height, width)
        rows = resampling_weights(top, box_h, height, out_h).to(images.device, images.dtype)
        cols = resampling_weights(left, box_w, width, out_w).to(images.device, images.dtype)
        # Bilinear resampling is separable: rows, then columns, as two batched matmuls.
        cropped = rows.unsqueeze(1) @ images @ cols.unsqueeze(1).transpose(-1, -2)
        return cropped, crop_targets(targets, windows, (out_h, out_w), self.min_visible)


def resampling_weights(start: torch.Tensor, length: torch.Tensor, in_size: int, out_size: int
                       ) -> torch.Tensor:
    """Antialiased bilinear weights that resample ``[start, start + length)`` to ``out_size``.

    Output pixel ``i`` is centred at input coordinate ``c = start + (i + 1/2) step - 1/2``
    with ``step = length / out_size``; input pixel ``j`` gets the tent weight
    ``max(0, 1 - |c - j| / max(step, 1))``, and each row is normalised to sum to one. When
    enlarging this is plain bilinear interpolation with the edge pixel repeated; when
    shrinking the tent widens so that every input pixel counts (as PIL does, no aliasing).

    Shape: ``start, length (N,)`` in pixels -> ``(N, out_size, in_size)``.
    """
    step = (length / out_size).unsqueeze(1)
    output = torch.arange(out_size, dtype=torch.float64)
    centres = start.unsqueeze(1) + (output + 0.5) * step - 0.5
    width = step.clamp(min=1).unsqueeze(2)
    distance = (centres.unsqueeze(2) - torch.arange(in_size, dtype=torch.float64)).abs()
    weights = (1 - distance / width).clamp(min=0)
    return weights / weights.sum(2, keepdim=True)


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """Luma of RGB images (ITU-R 601: 0.299 R + 0.587 G + 0.114 B); grey images unchanged.

    Shape: ``(N, 3, H, W)`` or ``(N, 1, H, W)`` -> ``(N, 1, H, W)``.
    """
    if images.shape[1] == 1:
        return images
    red, green, blue = images.unbind(1)
    return (0.299 * red + 0.587 * green + 0.114 * blue).unsqueeze(1)


def _hue_chroma_value(images: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Hue in [0, 1), chroma (max - min) and value (max) of RGB images, each ``(N, 1, H, W)``."""
    red, green, blue = images.split(1, 1)
    value = torch.maximum(torch.maximum(red, green), blue)
    chroma = value - torch.minimum(torch.minimum(red, green), blue)
    safe_chroma = chroma.where(chroma > 0, 1.0)
    # Hue is the angle on the colour hexagon in sixths of a turn, measured from the largest
    # channel (red wins ties, then green, as in colorsys).
    sixths = torch.where(
        value == red, (green - blue) / safe_chroma,
        torch.where(value == green, (blue - red) / safe_chroma + 2,
                    (red - green) / safe_chroma + 4),
    )
    return (sixths / 6 % 1).where(chroma > 0, 0.0), chroma, value


def _rgb(hue: torch.Tensor, chroma: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """RGB from hue (any real: it wraps), chroma and value, each ``(N, 1, H, W)``.

    Channel ``c`` is ``value - chroma clamp(min(k, 4 - k), 0, 1)`` with
    ``k = (n_c + 6 hue) mod 6`` and ``n = (5, 3, 1)`` for red, green, blue.
    """
    offsets = torch.tensor([5.0, 3.0, 1.0], dtype=hue.dtype, device=hue.device)
    k = (offsets.view(1, 3, 1, 1) + 6 * hue) % 6
    return value - chroma * torch.minimum(k, 4 - k).clamp(0, 1)


def rgb_to_hsv(images: torch.Tensor) -> torch.Tensor:
    """Convert RGB in [0, 1] to HSV with hue, saturation and value all in [0, 1].

    Shape: ``(N, 3, H, W)`` -> ``(N, 3, H, W)``; hue and saturation are 0 where undefined
    (grey pixels, black). Saturation is ``chroma / value``.
    """
    hue, chroma, value = _hue_chroma_value(images)
    return torch.cat([hue, chroma / value.where(value > 0, 1.0), value], 1)


def hsv_to_rgb(images: torch.Tensor) -> torch.Tensor:
    """Convert HSV in [0, 1] back to RGB in [0, 1].

    Shape: ``(N, 3, H, W)`` -> ``(N, 3, H, W)``.
    """
    hue, saturation, value = images.split(1, 1)
    return _rgb(hue, value * saturation, value)


def _factor(factor: float | torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """A number or per-image factors ``(N,)`` as ``(N or 1, 1, 1, 1)`` like ``images``."""
    return torch.as_tensor(factor, dtype=images.dtype).to(images.device).view(-1, 1, 1, 1)


def _blend(images: torch.Tensor, other: torch.Tensor, factor) -> torch.Tensor:
    """``factor * images + (1 - factor) * other``, kept in [0, 1]."""
    factor = _factor(factor, images)
    return (factor * images + (1 - factor) * other).clamp(0, 1)


def adjust_brightness(images: torch.Tensor, factor: float | torch.Tensor) -> torch.Tensor:
    """``factor * x`` clamped to [0, 1]; ``factor`` is a number or one per image ``(N,)``."""
    return _blend(images, torch.zeros_like(images), factor)


def adjust_contrast(images: torch.Tensor, factor: float | torch.Tensor) -> torch.Tensor:
    """``factor * x + (1 - factor) * mean(grey(x))`` per image, clamped to [0, 1]."""
    return _blend(images, grayscale(images).mean((1, 2, 3), keepdim=True), factor)


def adjust_saturation(images: torch.Tensor, factor: float | torch.Tensor) -> torch.Tensor:
    """``factor * x + (1 - factor) * grey(x)`` clamped to [0, 1]; grey images are unchanged."""
    if images.shape[1] == 1:
        return images
    return _blend(images, grayscale(images), factor)


def adjust_hue(images: torch.Tensor, shift: float | torch.Tensor) -> torch.Tensor:
    """Turn the hue of RGB images by ``shift`` (a fraction of the colour wheel, per image or
    one for all); grey images are unchanged."""
    if images.shape[1] == 1:
        return images
    # Only the hue moves, so go straight from (hue, chroma, value) back to RGB.
    hue, chroma, value = _hue_chroma_value(images)
    return _rgb(hue + _factor(shift, images), chroma, value)


class ColorJitter:
    """Randomly change brightness, contrast, saturation and hue of each image, in that order.

    Factors are drawn per image, uniformly from ``[max(0, 1 - b), 1 + b]`` (brightness,
    contrast, saturation) and ``[-hue, hue]`` (a turn of the colour wheel); see the
    ``adjust_*`` functions for what each factor does. On grey (1-channel) images saturation
    and hue change nothing. Images must hold values in [0, 1]: apply it before ``Normalize``.
    """

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0,
                 hue: float = 0.0) -> None:
        for name, value in [("brightness", brightness), ("contrast", contrast),
                            ("saturation", saturation)]:
            if value < 0:
                raise DivekitError(f"ColorJitter: {name} must be >= 0, got {value}")
        if not 0 <= hue <= 0.5:
            raise DivekitError(f"ColorJitter: hue must be in [0, 0.5], got {hue}")
        self.brightness, self.contrast = brightness, contrast
        self.saturation, self.hue = saturation, hue

    def __call__(self, images: torch.Tensor, generator: Generator = None) -> torch.Tensor:
        _check_images(images, "ColorJitter")
        if images.shape[1] not in (1, 3):
            raise DivekitError(f"ColorJitter needs 1 (grey) or 3 (RGB) channels, got "
                               f"{images.shape[1]}")
        n = len(images)
        if self.brightness:
            b = self.brightness
            images = adjust_brightness(images, _uniform(n, max(0.0, 1 - b), 1 + b, generator))
        if self.contrast:
            c = self.contrast
            images = adjust_contrast(images, _uniform(n, max(0.0, 1 - c), 1 + c, generator))
        if images.shape[1] == 1:
            return images
        if self.saturation:
            s = self.saturation
            images = adjust_saturation(images, _uniform(n, max(0.0, 1 - s), 1 + s, generator))
        if self.hue:
            images = adjust_hue(images, _uniform(n, -self.hue, self.hue, generator))
        return images


class RandomErasing:
    """Cutout / random erasing (Zhong et al., 2020): fill a random rectangle of each image.

    With probability ``p`` an image gets one rectangle covering a fraction ``scale`` of its
    area with aspect ratio (height / width) in ``ratio``, on whole pixels; if 10 draws do not
    fit, that image is left alone.

    Args:
        value: fill value, one number or one per channel.
    """

    attempts = 10

    def __init__(self, p: float = 0.5, scale: tuple[float, float] = (0.02, 0.33),
                 ratio: tuple[float, float] = (0.3, 3.3), value: float | Sequence[float] = 0.0
                 ) -> None:
        _check_probability(p, "RandomErasing")
        self.p = p
        self.scale = _check_range(scale, "RandomErasing scale", upper=1.0)
        self.ratio = _check_range(ratio, "RandomErasing ratio")
        self.value = value

    def rectangles(self, n: int, height: int, width: int, generator: Generator = None
                   ) -> torch.Tensor:
        """Draw one rectangle per image; empty (zero size) where the image is not erased.

        Returns:
            ``(n, 4)`` int64 rows ``(top, left, rect_height, rect_width)``.
        """
        shape = (n, self.attempts)
        area = height * width * _uniform(n * self.attempts, *self.scale, generator).view(shape)
        aspect = _log_uniform(shape, *self.ratio, generator)
        rect_h = torch.sqrt(area * aspect).round().long()
        rect_w = torch.sqrt(area / aspect).round().long()
        fits = (rect_h < height) & (rect_w < width)
        first = fits.int().argmax(1, keepdim=True)
        erase = fits.any(1) & (torch.rand(n, generator=generator) < self.p)
        rect_h = rect_h.gather(1, first)[:, 0] * erase
        rect_w = rect_w.gather(1, first)[:, 0] * erase
        top = (torch.rand(n, generator=generator, dtype=torch.float64)
               * (height - rect_h + 1)).long()
        left = (torch.rand(n, generator=generator, dtype=torch.float64)
                * (width - rect_w + 1)).long()
        return torch.stack([top, left, rect_h, rect_w], 1)

    def __call__(self, images: torch.Tensor, generator: Generator = None) -> torch.Tensor:
        _check_images(images, "RandomErasing")
        n, channels, height, width = images.shape
        rects = self.rectangles(n, height, width, generator).to(images.device)
        top, left, rect_h, rect_w = (column.view(-1, 1, 1) for column in rects.unbind(1))
        rows = torch.arange(height, device=images.device).view(1, -1, 1)
        cols = torch.arange(width, device=images.device).view(1, 1, -1)
        inside = (rows >= top) & (rows < top + rect_h) & (cols >= left) & (cols < left + rect_w)
        value = torch.as_tensor(self.value, dtype=images.dtype, device=images.device)
        if value.numel() not in (1, channels):
            raise DivekitError(f"RandomErasing: value has {value.numel()} entries for "
                               f"{channels} channels")
        return torch.where(inside.unsqueeze(1), value.view(1, -1, 1, 1), images)


class Normalize:
    """Standardise each channel: ``(x - mean[c]) / std[c]``.

    Apply it to evaluation data too; a training-only transform would leave the test split
    unnormalised.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.as_tensor(mean, dtype=torch.float64).reshape(-1)
        self.std = torch.as_tensor(std, dtype=torch.float64).reshape(-1)
        if len(self.mean) != len(self.std) or not bool((self.std > 0).all()):
            raise DivekitError(f"Normalize needs one mean and one positive std per channel, got "
                               f"mean={list(mean)}, std={list(std)}")

    def __call__(self, images: torch.Tensor, generator: Generator = None) -> torch.Tensor:
        _check_images(images, "Normalize")
        if len(self.mean) not in (1, images.shape[1]):
            raise DivekitError(f"Normalize has {len(self.mean)} channel statistics, the images "
                               f"have {images.shape[1]} channels")
        mean = self.mean.to(images.device, images.dtype).view(1, -1, 1, 1)
        std = self.std.to(images.device, images.dtype).view(1, -1, 1, 1)
        return (images - mean) / std


def _beta(alpha: float, n: int, generator: Generator) -> torch.Tensor:
    """``n`` draws of Beta(alpha, alpha) on the CPU, reproducible from ``generator``."""
    beta = torch.distributions.Beta(torch.tensor(alpha), torch.tensor(alpha))
    if generator is None:
        return beta.sample((n,))
    # torch's Beta sampler takes no generator: seed a forked copy of the global CPU one.
    seed = int(torch.randint(2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return beta.sample((n,))


class Mixup:
    """Mixup (Zhang et al., 2018): blend each image and its label with another of the batch.

    Image ``i`` is paired with image ``j = perm[i]`` of a random permutation and, with its own
    ``lam_i ~ Beta(alpha, alpha)``, becomes ``lam_i x_i + (1 - lam_i) x_j``; its label becomes
    ``lam_i y_i + (1 - lam_i) y_j`` with ``y`` one-hot. Cross-entropy accepts such soft labels.

    Shape: images ``(N, C, H, W)``; labels ``(N,)`` class indices or ``(N, K)`` probabilities
    -> ``(N, K)`` probabilities summing to one.
    """

    uses_labels = True

    def __init__(self, alpha: float = 0.2, num_classes: int | None = None) -> None:
        if not alpha > 0:
            raise DivekitError(f"Mixup: alpha must be positive, got {alpha}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise DivekitError(f"Mixup needs num_classes, a positive integer, got {num_classes!r}")
        self.alpha, self.num_classes = alpha, num_classes

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, generator: Generator = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        _check_images(images, "Mixup")
        if not isinstance(labels, torch.Tensor) or labels.ndim > 2:
            raise DivekitError("Mixup mixes class labels only; it cannot mix label maps or "
                               "detection targets")
        if labels.is_floating_point() and labels.shape == (len(images), self.num_classes):
            soft = labels
        elif labels.shape == (len(images),) and not labels.is_floating_point():
            if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < self.num_classes:
                raise DivekitError(f"Mixup: labels must lie in [0, {self.num_classes}), got "
                                   f"{int(labels.min())}..{int(labels.max())}")
            classes = torch.arange(self.num_classes, device=labels.device)
            soft = (labels.unsqueeze(1) == classes).to(images.dtype)
        else:
            raise DivekitError(f"Mixup needs labels of shape ({len(images)},) (class indices) or "
                               f"({len(images)}, {self.num_classes}) (probabilities), got "
                               f"{labels.dtype} {tuple(labels.shape)}")
        lam = _beta(self.alpha, len(images), generator)
        partner = torch.randperm(len(images), generator=generator).to(images.device)
        lam_images = _factor(lam, images)
        lam_labels = lam_images.view(-1, 1).to(soft.dtype)
        mixed = lam_images * images + (1 - lam_images) * images[partner]
        return mixed, lam_labels * soft + (1 - lam_labels) * soft[partner]


class Compose:
    """Apply transforms in order; callable as ``aug(images, labels) -> (images, labels)``.

    This is the form ``TensorLoader(transform=...)`` and ``DataModule.transform`` call on each
    batch. ``aug(images)`` alone returns just the images (no label transforms allowed then).

    Args:
        transforms: image transforms ``t(images, generator)``; label transforms such as
            :class:`Mixup` (``uses_labels = True``) take ``t(images, labels, generator)``;
            geometric ones (``moves_targets = True``) are given the labels, when there are
            any, as ``t.apply(images, labels, generator)`` and move label maps and boxes.
        seed: draw from a private generator seeded with this; ``None`` uses torch's global
            generator (seeded and checkpointed by the Trainer, so exact resume holds).
    """

    def __init__(self, *transforms: Callable, seed: int | None = None) -> None:
        self.transforms = list(transforms)
        self.generator = None if seed is None else torch.Generator().manual_seed(seed)

    def __call__(self, images: torch.Tensor, labels: Targets | None = None
                 ) -> torch.Tensor | tuple[torch.Tensor, Targets]:
        for transform in self.transforms:
            if getattr(transform, "uses_labels", False):
                if labels is None:
                    raise DivekitError(f"{type(transform).__name__} needs labels: call the "
                                       "pipeline as aug(images, labels)")
                images, labels = transform(images, labels, self.generator)
            elif labels is not None and getattr(transform, "moves_targets", False):
                images, labels = transform.apply(images, labels, self.generator)
            else:
                images = transform(images, self.generator)
        return images if labels is None else (images, labels)

    def __repr__(self) -> str:
        return f"Compose({', '.join(type(t).__name__ for t in self.transforms)})"


AUGMENT_GRAMMAR = """\
SPEC is a comma-separated list of NAME or NAME=VALUE, applied in the order written:
  flip[=p]        horizontal flip with probability p (default 0.5)
  vflip[=p]       vertical flip with probability p (default 0.5)
  translate[=n]   shift by up to n pixels along each axis, mirrored border (default 2)
  crop[=s]        random resized crop to the input size, area scale in (s, 1) (default 0.08)
  jitter[=f]      brightness, contrast and saturation jitter of strength f (default 0.4)
  hue[=h]         hue jitter by up to h of a turn, h <= 0.5 (default 0.1)
  erase[=p]       random erasing (cutout) with probability p (default 0.5)
  mixup[=alpha]   mixup with Beta(alpha, alpha) weights (default 0.2); soft labels out
Example: "flip,crop=0.5,jitter=0.4,erase,mixup=0.2"."""

_DEFAULTS = {"flip": 0.5, "vflip": 0.5, "translate": 2, "crop": 0.08, "jitter": 0.4, "hue": 0.1,
             "erase": 0.5, "mixup": 0.2}


def parse_augment(spec: str, num_classes: int | None = None, seed: int | None = None) -> Compose:
    """Build a pipeline from a short spec such as ``"flip,crop=0.5,jitter=0.4,mixup=0.2"``.

    Args:
        spec: the grammar in ``AUGMENT_GRAMMAR``.
        num_classes: needed by ``mixup``.
        seed: seed of the pipeline's generator (``None``: torch's global generator).
    """
    transforms = []
    for item in spec.split(","):
        name, _, text = item.strip().partition("=")
        name = name.strip().lower()
        if name not in _DEFAULTS:
            what = f"unknown augmentation {name!r}" if name else f"empty item in {spec!r}"
            raise DivekitError(f"{what}; valid names: {', '.join(_DEFAULTS)} (NAME or NAME=VALUE, "
                               "comma-separated)")
        try:
            value = float(text) if text.strip() else _DEFAULTS[name]
        except ValueError:
            raise DivekitError(f"augmentation {name}: {text!r} is not a number") from None
        transforms.append(_build(name, value, num_classes))
    return Compose(*transforms, seed=seed)


def _build(name: str, value: float, num_classes: int | None):
    if name == "flip":
        return RandomHorizontalFlip(value)
    if name == "vflip":
        return RandomVerticalFlip(value)
    if name == "translate":
        return RandomTranslate(value)
    if name == "crop":
        return RandomResizedCrop(None, scale=(value, 1.0))
    if name == "jitter":
        return ColorJitter(brightness=value, contrast=value, saturation=value)
    if name == "hue":
        return ColorJitter(hue=value)
    if name == "erase":
        return RandomErasing(value)
    if num_classes is None:
        raise DivekitError("mixup needs the number of classes (a classification dataset)")
    return Mixup(value, num_classes)
