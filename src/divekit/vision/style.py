"""Neural style transfer (d2l 14.12; Gatys, Ecker & Bethge, 2016, "Image Style Transfer Using
Convolutional Neural Networks").

The synthesised image is the only parameter: it starts as the content photograph and Adam
moves its pixels so that a fixed network's features of it match the content image's deep
features (content loss) and the style image's feature correlations, their Gram matrices
(style loss), while a total-variation term keeps it smooth::

    image, history = style_transfer(content, style, extractor=VGG19Features.from_file(path))
    run_style_transfer("rainier.jpg", "autumn-oak.jpg", "out.png", steps=500, run_dir="runs/st")

Like the book, the optimisation runs on ImageNet-normalised pixels (the extractors expect them)
and the image is clamped to ``[0, 1]`` only for display and at the end. The losses reported are
the weighted ones, as the book prints them: content x 1, style x 1e4, TV x 10 with VGG-19;
the random-feature fallback (no weights file) weights content x 10 instead
(:class:`~divekit.vision.style_features.RandomFeatures`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from divekit.engine.checkpoint import write_atomically
from divekit.engine.device import select_device
from divekit.engine.plots import save_png
from divekit.errors import DataError, DivekitError
from divekit.vision.draw import save_image
from divekit.vision.style_features import (
    BOOK_WEIGHTS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    RandomFeatures,
    VGG19Features,
)

LOSS_NAMES = ("content", "style", "tv")
Extractor = Callable[[torch.Tensor], tuple[list[torch.Tensor], list[torch.Tensor]]]
StepCallback = Callable[[int, dict[str, float], torch.Tensor], None]


def content_loss(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error between the synthesised image's features and the content's (fixed,
    so no gradient flows into ``y``)."""
    return F.mse_loss(y_hat, y.detach())


def gram(x: torch.Tensor) -> torch.Tensor:
    """Channel correlations ``X X^T / (c h w)`` of a feature map, ``X`` its ``(c, h*w)`` reshape.

    Dividing by the element count makes Grams of different layers and sizes comparable.

    Shape:
        ``(C, H, W) -> (C, C)``, or per image ``(N, C, H, W) -> (N, C, C)``.
    """
    if x.ndim not in (3, 4):
        raise DivekitError(f"gram takes a (C, H, W) or (N, C, H, W) map, got {tuple(x.shape)}")
    flat = x.reshape(*x.shape[:-2], -1)  # (..., C, H*W)
    return flat @ flat.transpose(-1, -2) / x.shape[-3:].numel()


def style_loss(y_hat: torch.Tensor, gram_y: torch.Tensor) -> torch.Tensor:
    """Mean squared error between the Gram matrix of features ``y_hat`` and a style Gram."""
    return F.mse_loss(gram(y_hat), gram_y.detach())


def tv_loss(y_hat: torch.Tensor) -> torch.Tensor:
    """Total variation ``0.5 * (mean |vertical differences| + mean |horizontal differences|)``.

    Shape:
        ``(N, C, H, W)`` (H, W >= 2) -> scalar.
    """
    return 0.5 * ((y_hat[:, :, 1:, :] - y_hat[:, :, :-1, :]).abs().mean()
                  + (y_hat[:, :, :, 1:] - y_hat[:, :, :, :-1]).abs().mean())


def normalize(image: torch.Tensor) -> torch.Tensor:
    """Pixels in ``[0, 1]`` to ImageNet-normalised ones, ``(x - mean) / std`` per channel."""
    mean, std = _statistics(image)
    return (image - mean) / std


def denormalize(image: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`normalize`, clamped to ``[0, 1]`` for display."""
    mean, std = _statistics(image)
    return (image * std + mean).clamp(0, 1)


def _statistics(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    def shaped(values):
        return torch.tensor(values, dtype=image.dtype, device=image.device).view(3, 1, 1)

    return shaped(IMAGENET_MEAN), shaped(IMAGENET_STD)


def style_transfer(
    content: torch.Tensor,
    style: torch.Tensor,
    *,
    extractor: Extractor | None = None,
    steps: int = 500,
    lr: float = 0.3,
    weights: Sequence[float] | None = None,
    decay_every: int = 50,
    gamma: float = 0.8,
    on_step: StepCallback | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, list[dict[str, float]]]:
    """Synthesise an image with ``content``'s layout and ``style``'s texture and colours.

    Args:
        content: the photograph, pixels in ``[0, 1]``; the image starts as it.
        style: the painting; resized (bilinear, antialiased) to the content's size if needed.
        extractor: ``extractor(normalised_images) -> (content_features, style_features)`` on
            the content's device; default :class:`RandomFeatures` ``(seed)``.
        steps: Adam updates of the image.
        lr: Adam's learning rate on normalised pixels, multiplied by ``gamma`` every
            ``decay_every`` updates (``StepLR``).
        weights: ``(content, style, tv)`` loss weights; default the extractor's
            ``loss_weights`` (the book's ``(1, 1e4, 10)`` for VGG-19), else the book's.
        on_step: called as ``on_step(step, losses, image)`` for ``step = 0 .. steps`` with the
            losses of the image after ``step`` updates and that image for display.
        seed: seeds the default extractor.

    Returns:
        ``(image, history)``: the image in ``[0, 1]`` and one dict per step ``0 .. steps``
        (``step``, weighted ``content``, ``style``, ``tv`` losses and their ``total``); step 0
        is the content image itself.

    Shape:
        ``content``, ``style``: ``(3, H, W)`` or ``(1, 3, H, W)``; image ``(1, 3, H, W)``.
    """
    content, style = _as_batch(content, "content"), _as_batch(style, "style")
    if extractor is None:
        extractor = RandomFeatures(seed).to(device=content.device, dtype=content.dtype)
    if weights is None:
        weights = getattr(extractor, "loss_weights", BOOK_WEIGHTS)
    if steps < 0 or lr <= 0 or decay_every < 1 or len(weights) != 3 or min(weights) < 0:
        raise DivekitError(f"style_transfer needs steps >= 0, lr > 0, decay_every >= 1 and three "
                           f"weights >= 0; got steps={steps}, lr={lr}, decay_every={decay_every}, "
                           f"weights={tuple(weights)}")
    style = style.to(device=content.device, dtype=content.dtype)
    if style.shape[-2:] != content.shape[-2:]:
        style = F.interpolate(style, size=content.shape[-2:], mode="bilinear",
                              align_corners=False, antialias=True)
    with torch.no_grad():
        content_targets, _ = extractor(normalize(content))
        style_grams = [gram(y) for y in extractor(normalize(style))[1]]
    image = normalize(content).clone().requires_grad_(True)
    optimizer = torch.optim.Adam([image], lr=lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=decay_every, gamma=gamma)
    history = []
    for step in range(steps + 1):
        with torch.set_grad_enabled(step < steps):  # the last pass only measures
            parts = _weighted_losses(extractor(image), image, content_targets, style_grams,
                                     weights)
            total = parts["content"] + parts["style"] + parts["tv"]
        record = {"step": step, **{name: float(value.detach()) for name, value in parts.items()},
                  "total": float(total.detach())}
        history.append(record)
        if on_step is not None:
            on_step(step, record, denormalize(image.detach()))
        if step == steps:
            break
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        scheduler.step()
    return denormalize(image.detach()), history


def _weighted_losses(features: tuple[list[torch.Tensor], list[torch.Tensor]],
                     image: torch.Tensor, content_targets: list[torch.Tensor],
                     style_grams: list[torch.Tensor], weights: Sequence[float]
                     ) -> dict[str, torch.Tensor]:
    """The book's ``compute_loss``: each part summed over its layers and weighted."""
    content_weight, style_weight, tv_weight = weights
    content_features, style_features = features
    zero = image.new_zeros(())  # the start of each sum, so a part is a tensor even if empty
    return {
        "content": content_weight * sum(
            (content_loss(y_hat, y)
             for y_hat, y in zip(content_features, content_targets, strict=True)), zero),
        "style": style_weight * sum(
            (style_loss(y_hat, g) for y_hat, g in zip(style_features, style_grams, strict=True)),
            zero),
        "tv": tv_weight * tv_loss(image),
    }


def _as_batch(image: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(image, torch.Tensor) or not image.is_floating_point() or \
            image.ndim not in (3, 4) or image.shape[-3] != 3 or \
            (image.ndim == 4 and image.shape[0] != 1) or min(image.shape[-2:]) < 2:
        shape = tuple(image.shape) if hasattr(image, "shape") else type(image).__name__
        raise DivekitError(f"the {name} image must be a float (3, H, W) or (1, 3, H, W) tensor "
                           f"in [0, 1] with H, W >= 2, got {shape}")
    return image if image.ndim == 4 else image.unsqueeze(0)


def read_image(path: str | Path, size: tuple[int, int], what: str
               ) -> tuple[torch.Tensor, tuple[int, int]]:
    """Decode an image file as RGB, resized (PIL's antialiased bilinear) to ``size``.

    Args:
        size: ``(height, width)``.
        what: names the image in error messages (``"content"``, ``"style"``).

    Returns:
        ``(image, (height, width))``: float ``(3, H, W)`` in ``[0, 1]`` and the original size.
    """
    path = Path(path)
    try:
        with Image.open(path) as opened:
            original = (opened.height, opened.width)
            rgb = opened.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"{what} image {path} does not exist; give the path of an image "
                        "file") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{what} image {path} is not a readable image ({e}); give a JPEG or "
                        "PNG file") from e
    height, width = size
    if rgb.size != (width, height):
        rgb = rgb.resize((width, height), Image.Resampling.BILINEAR)
    pixels = torch.from_numpy(np.asarray(rgb).copy())
    return pixels.permute(2, 0, 1).float().div(255), original


def run_style_transfer(
    content_path: str | Path,
    style_path: str | Path,
    out_path: str | Path,
    *,
    size: tuple[int, int] = (300, 450),
    steps: int = 500,
    weights_file: str | Path | None = None,
    save_every: int = 50,
    run_dir: str | Path | None = None,
    lr: float = 0.3,
    loss_weights: Sequence[float] | None = None,
    seed: int = 0,
    device: str = "auto",
    log: Callable[[str], object] = print,
) -> dict:
    """Style-transfer two image files into a PNG: the ``divekit style-transfer`` command.

    Args:
        content_path, style_path: image files; both are resized to ``size``.
        out_path: the result, a ``.png`` written atomically.
        size: ``(height, width)`` of the synthesised image (the book's 300 x 450).
        steps, lr, loss_weights, seed: as in :func:`style_transfer`.
        weights_file: a torchvision VGG-19 state dict (the book's extractor); without it the
            seeded :class:`RandomFeatures` fallback is used.
        save_every: a progress line every this many steps (and at the first and last), and
            with ``run_dir`` the image at those steps (``step_0050.png``, ...).
        run_dir: a folder for the intermediate images, ``losses.csv`` and ``losses.png``.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        log: receives each progress line.

    Returns:
        A summary: ``extractor``, ``size``, ``steps``, ``seconds`` and the weighted losses at
        ``start`` (the content image) and ``end`` (the result).
    """
    if len(size) != 2 or min(size) < 2 or steps < 0 or save_every < 1:
        raise DivekitError(f"style transfer needs a size HxW of at least 2x2, steps >= 0 and "
                           f"save_every >= 1; got size {'x'.join(map(str, size))}, steps "
                           f"{steps}, save_every {save_every}")
    height, width = size
    out_path = Path(out_path)
    if out_path.suffix.lower() != ".png":
        raise DivekitError(f"the result is written as PNG: name it *.png, not {out_path.name}")
    content, content_size = read_image(content_path, size, "content")
    style, style_size = read_image(style_path, size, "style")
    for what, (old_height, old_width) in (("content", content_size), ("style", style_size)):
        if (old_height, old_width) != (height, width):
            log(f"{what} image resized from {old_height}x{old_width} to {height}x{width} "
                "(height x width)")
    device = select_device(device)
    if weights_file is None:
        extractor, name = RandomFeatures(seed), "random"
        log(f"no VGG-19 weights file: using random features (seed {seed}); give --weights "
            "with torchvision's vgg19 state dict for the book's extractor")
    else:
        extractor, name = VGG19Features.from_file(weights_file), "vgg19"
    run_dir = None if run_dir is None else Path(run_dir)
    started = time.perf_counter()

    def report(step: int, losses: dict[str, float], image: torch.Tensor) -> None:
        if step % save_every and step != steps:
            return
        log(f"step {step}/{steps}: content {losses['content']:.4g}, style "
            f"{losses['style']:.4g}, tv {losses['tv']:.4g} "
            f"({time.perf_counter() - started:.0f} s)")
        if run_dir is not None and step > 0:
            save_image(image[0], run_dir / f"step_{step:04d}.png")

    image, history = style_transfer(
        content.to(device), style.to(device), extractor=extractor.to(device), steps=steps,
        lr=lr, weights=loss_weights, on_step=report)
    seconds = time.perf_counter() - started
    save_image(image[0], out_path)
    if run_dir is not None:
        write_losses_csv(history, run_dir / "losses.csv")
        plot_losses(history, run_dir / "losses.png")
    start, end = history[0], history[-1]
    log(f"wrote {out_path}: style loss {start['style']:.4g} -> {end['style']:.4g}, content "
        f"{end['content']:.4g}, tv {start['tv']:.4g} -> {end['tv']:.4g} in {seconds:.0f} s")
    return {"extractor": name, "size": (height, width), "steps": steps, "seconds": seconds,
            "start": start, "end": end}


def write_losses_csv(history: list[dict[str, float]], path: Path) -> Path:
    """Write the per-step losses as CSV (``step,content,style,tv,total``), atomically."""
    columns = ("step", *LOSS_NAMES, "total")
    lines = [",".join(columns)]
    lines += [",".join(f"{row[column]:.6g}" for column in columns) for row in history]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, "\n".join(lines) + "\n")
    return path


def plot_losses(history: list[dict[str, float]], path: Path) -> Path:
    """Draw the content, style and TV losses against the step on a log axis into ``path``."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    steps = [row["step"] for row in history]
    fig, axis = plt.subplots(figsize=(6, 4))
    for name in LOSS_NAMES:
        axis.plot(steps, [row[name] for row in history], label=name)
    axis.set_yscale("log", nonpositive="mask")  # the content loss is 0 at step 0
    axis.set_xlabel("step")
    axis.set_ylabel("weighted loss")
    axis.grid(alpha=0.3, which="both")
    axis.legend()
    fig.tight_layout()
    return save_png(fig, path)
