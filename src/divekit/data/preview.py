"""Image augmentation (course section 14.1): look at a batch of (augmented) training images.

    show_batch(load_data("fashion-mnist"), "batch.png", augment="flip,crop=0.5,mixup")

writes a PNG grid with each image's class name as its title; mixed (soft) labels show the
strongest class and its weight. Detection data (14.6) shows each image with its ground-truth
boxes and class names drawn, moved by the augmentation as the images are; segmentation data
(14.9) each image beside its label map, in the dataset's colours.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import Dataset

from divekit.data.augment import parse_augment
from divekit.data.registry import DataModule
from divekit.errors import DivekitError

COLUMNS = 8
CELL_INCHES = (1.4, 1.6)  # width, height of one image with its title
TITLE_LINE_INCHES = 0.16  # one more line of an 8-point title
DPI = 100


def grid_shape(n: int) -> tuple[int, int]:
    """Rows and columns of the grid for ``n`` images: at most ``COLUMNS`` per row."""
    columns = min(n, COLUMNS)
    return math.ceil(n / columns), columns


def label_title(label: torch.Tensor, class_names: list[str]) -> str:
    """Title of one image: its class name, or for a soft label the top class and its weight."""
    if label.is_floating_point() and label.ndim == 1 and class_names:
        top = int(label.argmax())
        return f"{class_names[top]} {float(label[top]):.2f}"
    if label.numel() != 1:
        return ""
    if class_names and not label.is_floating_point():
        return class_names[int(label)]
    return f"{float(label):.3g}"


def show_batch(
    data: DataModule,
    path: str | Path,
    augment: str | Callable | None = None,
    n: int = 32,
    split: str = "train",
    seed: int = 0,
) -> Path:
    """Draw ``n`` random images of a split, augmented, into a PNG grid; returns the path.

    Args:
        data: an image dataset, inputs ``(N, C, H, W)`` with 1 or 3 channels.
        path: the PNG to write (folders are created).
        augment: a spec for :func:`parse_augment` or a callable ``(images, labels) ->
            (images, labels)``; ``None`` shows the images as stored.
        n: images to show (fewer if the split is smaller).
        split: ``train``, ``val`` or ``test``.
        seed: picks the images and seeds the augmentation (a spec's generator, or torch's
            global generator, restored afterwards, for a callable).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise DivekitError(f"n must be a positive integer, got {n!r}")
    if split not in ("train", "val", "test") or getattr(data, split) is None:
        raise DivekitError(f"dataset {data.name!r} has no split {split!r}; choose train, test"
                           + (", val" if data.val is not None else ""))
    if data.task == "detection":
        return _show_detection(data, Path(path), augment, n, getattr(data, split), seed)
    if data.task == "segmentation":
        return _show_segmentation(data, Path(path), augment, n, getattr(data, split), seed)
    inputs, targets = getattr(data, split)[:2]
    if inputs.ndim != 4 or inputs.shape[1] not in (1, 3):
        raise DivekitError(f"show_batch needs images (N, 1 or 3, H, W); dataset {data.name!r} "
                           f"has inputs of shape {tuple(inputs.shape)} ({data.task} data)")
    pick = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(seed))[:n]
    images, labels = inputs[pick].float(), targets[pick]
    images, labels = _augmented(images, labels, augment, data, seed)
    return draw_grid(images.detach().cpu(), labels.detach().cpu(), data.class_names, Path(path))


def _augmented(images: torch.Tensor, targets, augment: str | Callable | None, data: DataModule,
               seed: int) -> tuple[torch.Tensor, object]:
    """``images`` and their targets through ``augment`` (a spec or a callable), seeded by
    ``seed`` without disturbing torch's global generator."""
    if isinstance(augment, str):
        augment = parse_augment(augment, num_classes=data.num_classes, seed=seed)
    if augment is None:
        return images, targets
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return augment(images, targets)


def _show_detection(data: DataModule, path: Path, augment: str | Callable | None, n: int,
                    split, seed: int) -> Path:
    from divekit.data.collate import detection_collate
    from divekit.vision.draw import draw_detections

    pick = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:n]
    images, targets = (data.collate_fn or detection_collate)([split[i] for i in pick.tolist()])
    images, targets = _augmented(images, targets, augment, data, seed)
    drawn = [torch.from_numpy(draw_detections(image, target["boxes"], target["labels"],
                                              masks=target.get("masks"),
                                              class_names=data.class_names)).permute(2, 0, 1)
             for image, target in zip(images, targets, strict=True)]
    titles = [f"{len(target['boxes'])} object" + "s" * (len(target["boxes"]) != 1)
              for target in targets]
    return draw_grid(torch.stack(drawn).float() / 255, titles, data.class_names, path)


def _show_segmentation(data: DataModule, path: Path, augment: str | Callable | None, n: int,
                       split, seed: int) -> Path:
    """Pairs of cells: each image, then its label map in the data's colours (void in its own
    colour), titled with the classes it holds."""
    from divekit.data.segmentation import VOC_COLORMAP, colorize

    pick = torch.randperm(len(split) if isinstance(split, Dataset) else len(split[0]),
                          generator=torch.Generator().manual_seed(seed))[:n]
    if isinstance(split, Dataset):
        images, labels = map(torch.stack, zip(*[split[i] for i in pick.tolist()], strict=True))
    else:
        images, labels = split[0][pick].float(), split[1][pick]
    images, labels = _augmented(images, labels, augment, data, seed)
    pictures = colorize(labels, getattr(data, "colormap", VOC_COLORMAP)).permute(0, 3, 1, 2)
    names = data.class_names
    cells, titles = [], []
    for image, label, picture in zip(images, labels, pictures, strict=True):
        present = [names[c] if c < len(names) else str(c) for c in torch.unique(label).tolist()
                   if c != 0]
        cells += [image, picture.float() / 255]
        titles += ["image", ", ".join(present[:2]) + (" ..." if len(present) > 2 else "")]
    return draw_grid(torch.stack(cells), titles, names, path)


def _displayable(image: torch.Tensor) -> torch.Tensor:
    """``(C, H, W)`` -> ``(H, W)`` or ``(H, W, 3)`` in [0, 1]; normalised images are rescaled."""
    low, high = float(image.min()), float(image.max())
    if low < 0 or high > 1:
        image = (image - low) / max(high - low, 1e-12)
    return image[0] if image.shape[0] == 1 else image.permute(1, 2, 0)


def draw_grid(images: torch.Tensor, labels: torch.Tensor | list[str], class_names: list[str],
              path: Path, title_lines: int = 1) -> Path:
    """Draw images in a grid of at most ``COLUMNS`` per row, each with a title, into a PNG.

    Args:
        images: ``(N, C, H, W)`` with 1 or 3 channels; values outside [0, 1] are rescaled.
        labels: one title string per image, or labels turned into titles by
            :func:`label_title`.
        class_names: names for integer labels.
        path: the PNG to write.
        title_lines: lines in the longest title; each beyond the first makes the rows taller.

    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    rows, columns = grid_shape(len(images))
    height = CELL_INCHES[1] + TITLE_LINE_INCHES * (title_lines - 1)
    fig, axes = plt.subplots(rows, columns, squeeze=False,
                             figsize=(columns * CELL_INCHES[0], rows * height))
    for index, axis in enumerate(axes.flat):
        axis.axis("off")
        if index < len(images):
            axis.imshow(_displayable(images[index]).numpy(), cmap="gray", vmin=0, vmax=1,
                        interpolation="nearest")
            title = labels[index] if isinstance(labels[index], str) else label_title(
                labels[index], class_names)
            axis.set_title(title, fontsize=8)
    fig.tight_layout()
    from divekit.engine.plots import save_png

    return save_png(fig, path, dpi=DPI)
