"""14.2 Fine-tuning: your own images, one folder per class (the course's hotdog set is laid out so).

The layout is::

    path/train/<class>/<image files>
    path/test/<class>/<image files>

A ``val/`` folder is used in place of ``test/`` when there is no ``test/`` (many published sets
name their held-out split so). Class names are the sorted class folder names and must be the
same in both splits. Names starting with a dot are skipped (``.DS_Store``, ``.ipynb_checkpoints``),
as are loose files next to the class folders; every other file in a class folder must be an
image that Pillow can read. Images are decoded once and kept in memory as one tensor.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from divekit.data.registry import DataModule, register_dataset
from divekit.errors import DataError, DivekitError

HELD_OUT_SPLITS = ("test", "val")


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def list_classes(split_dir: Path) -> dict[str, list[Path]]:
    """Map each class folder name in ``split_dir`` (sorted) to its image files (sorted)."""
    if not split_dir.is_dir():
        raise DataError(f"{split_dir} is not a folder; expected {split_dir}/<class>/<images>")
    folders = sorted((p for p in split_dir.iterdir() if p.is_dir() and _visible(p)),
                     key=lambda p: p.name)
    if not folders:
        raise DataError(f"{split_dir} has no class folders; expected {split_dir}/<class>/<images>")
    classes = {}
    for folder in folders:
        files = sorted(p for p in folder.iterdir() if p.is_file() and _visible(p))
        if not files:
            raise DataError(f"class folder {folder} holds no images")
        classes[folder.name] = files
    return classes


def read_image(path: Path, size: int, grayscale: bool = False) -> np.ndarray:
    """Decode an image file, convert it to RGB (or grey) and resize it to ``size x size``.

    The resize is bilinear (Pillow's, which averages over the whole footprint when shrinking)
    and does not keep the aspect ratio.

    Returns:
        uint8 array of shape ``(size, size, C)``, ``C`` = 3 (or 1 when ``grayscale``).
    """
    try:
        with Image.open(path) as image:
            resized = image.convert("L" if grayscale else "RGB").resize(
                (size, size), Image.Resampling.BILINEAR)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path} is not a readable image ({e}); remove or replace it") from e
    return np.asarray(resized).reshape(size, size, -1)


def load_split(classes: dict[str, list[Path]], size: int,
               grayscale: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode every image of one split into a float tensor in ``[0, 1]`` with folder labels.

    Returns:
        ``(images, labels)``: images of shape ``(N, C, size, size)`` and int64 labels of shape
        ``(N,)``, label ``k`` for the ``k``-th class of ``classes``.
    """
    paths = [path for files in classes.values() for path in files]
    labels = torch.tensor([label for label, files in enumerate(classes.values()) for _ in files],
                          dtype=torch.long)
    pixels = np.empty((len(paths), size, size, 1 if grayscale else 3), dtype=np.uint8)
    for i, path in enumerate(paths):
        pixels[i] = read_image(path, size, grayscale)
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2)
    return images.to(torch.float32, memory_format=torch.contiguous_format).div_(255), labels


@register_dataset("image-folder", section="14.2 Fine-Tuning")
def image_folder(
    data_dir: str | None = None,
    path: str | None = None,
    size: int = 64,
    grayscale: bool = False,
) -> DataModule:
    """Your own images in ``train/<class>/`` and ``test/<class>/`` folders (option ``path``).

    Args:
        data_dir: unused; ``path`` is read as given.
        path: the folder holding ``train/`` and ``test/`` (or ``val/``).
        size: every image is resized to ``size x size`` (the course uses 224 for hotdog).
        grayscale: one grey channel instead of RGB.

    Returns:
        A :class:`DataModule` with float images in ``[0, 1]`` of shape ``(N, 3, size, size)``
        (``(N, 1, size, size)`` when ``grayscale``) and int64 labels.
    """
    if path is None:
        raise DivekitError("dataset 'image-folder' needs the option path=<folder with train/ "
                           "and test/>")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise DivekitError(f"size must be a positive integer, got {size!r}")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    held_out = next((root / name for name in HELD_OUT_SPLITS if (root / name).is_dir()), None)
    if held_out is None:
        raise DataError(f"{root} has no test/ (or val/) folder; expected {root}/train/<class>/ "
                        f"and {root}/test/<class>/")
    train, test = list_classes(root / "train"), list_classes(held_out)
    if list(train) != list(test):
        raise DataError(
            f"the class folders of {root / 'train'} and {held_out} differ: only in train: "
            f"{sorted(set(train) - set(test)) or 'none'}, only in {held_out.name}: "
            f"{sorted(set(test) - set(train)) or 'none'}"
        )
    return DataModule("image-folder", train=load_split(train, size, grayscale),
                      test=load_split(test, size, grayscale), class_names=list(train))
