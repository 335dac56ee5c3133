"""14.2 Fine-tuning: your own images, one folder per class (the course's hotdog set is laid out so).

The layout is::

    path/train/<class>/<image files>
    path/test/<class>/<image files>

A ``val/`` folder is used in place of ``test/`` when there is no ``test/`` (many published sets
name their held-out split so). Class names are the sorted class folder names and must be the
same in both splits. Names starting with a dot are skipped (``.DS_Store``, ``.ipynb_checkpoints``),
as are loose files next to the class folders; every other file in a class folder must be an
image that Pillow can read.

Small sets are decoded once and kept in memory as one tensor (the fast path); large ones are
streamed: an :class:`ImageFolderDataset` decodes one image per ``__getitem__``, read by
``DataLoader`` workers. The rule, decided before decoding anything: preload when both splits
decoded as float32, ``N * C * size * size * 4`` bytes, take at most ``PRELOAD_LIMIT_BYTES``
(1 GiB; e.g. 1,783 RGB images at 224x224), stream otherwise; the option ``stream`` forces
either. Both paths give identical tensors. A streamed image that Pillow cannot read is reported
when it is first read, not up front.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from divekit.data.registry import DataModule, register_dataset
from divekit.errors import DataError, DivekitError

HELD_OUT_SPLITS = ("test", "val")
PRELOAD_LIMIT_BYTES = 2**30


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


def _paths_and_labels(classes: dict[str, list[Path]]) -> tuple[list[Path], torch.Tensor]:
    paths = [path for files in classes.values() for path in files]
    labels = torch.tensor([label for label, files in enumerate(classes.values()) for _ in files],
                          dtype=torch.long)
    return paths, labels


def to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """uint8 ``(..., H, W, C)`` -> float32 ``(..., C, H, W)`` in ``[0, 1]``, contiguous."""
    # np.asarray of a Pillow image is read-only; torch warns about wrapping such an array.
    images = torch.from_numpy(np.require(pixels, requirements="W")).movedim(-1, -3)
    return images.to(torch.float32, memory_format=torch.contiguous_format).div_(255)


def load_split(classes: dict[str, list[Path]], size: int,
               grayscale: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode every image of one split into a float tensor in ``[0, 1]`` with folder labels.

    Returns:
        ``(images, labels)``: images of shape ``(N, C, size, size)`` and int64 labels of shape
        ``(N,)``, label ``k`` for the ``k``-th class of ``classes``.
    """
    paths, labels = _paths_and_labels(classes)
    pixels = np.empty((len(paths), size, size, 1 if grayscale else 3), dtype=np.uint8)
    for i, path in enumerate(paths):
        pixels[i] = read_image(path, size, grayscale)
    return to_tensor(pixels), labels


class ImageFolderDataset(Dataset):
    """Images decoded one at a time (the streamed path), as :func:`load_split` decodes them.

    Args:
        paths: image files.
        labels: one class index per file.
        size: every image is resized to ``size x size``.
        grayscale: one grey channel instead of RGB.

    Shape:
        ``dataset[i]`` is ``(image (C, size, size) float32 in [0, 1], label () int64)``,
        ``C`` = 3 (or 1 when ``grayscale``).
    """

    def __init__(self, paths: Sequence[Path | str], labels: Sequence[int] | torch.Tensor,
                 size: int, grayscale: bool = False) -> None:
        if len(paths) != len(labels):
            raise DivekitError(f"{len(paths)} image paths but {len(labels)} labels")
        self.paths = [Path(path) for path in paths]
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.size, self.grayscale = size, grayscale

    @classmethod
    def from_classes(cls, classes: dict[str, list[Path]], size: int,
                     grayscale: bool = False) -> ImageFolderDataset:
        """The split of :func:`list_classes`, label ``k`` for its ``k``-th class."""
        return cls(*_paths_and_labels(classes), size, grayscale)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = to_tensor(read_image(self.paths[index], self.size, self.grayscale))
        # A clone, not a view: a view would carry the whole label tensor to the main process.
        return image, self.labels[index].clone()

    def __repr__(self) -> str:
        shape = (1 if self.grayscale else 3, self.size, self.size)
        return f"ImageFolderDataset({len(self)} images, shape={shape})"


def decoded_bytes(num_images: int, size: int, grayscale: bool = False) -> int:
    """Bytes ``num_images`` images take decoded as float32 ``(C, size, size)`` tensors."""
    return num_images * (1 if grayscale else 3) * size * size * 4


@register_dataset("image-folder", section="14.2 Fine-Tuning")
def image_folder(
    data_dir: str | None = None,
    path: str | None = None,
    size: int = 64,
    grayscale: bool = False,
    stream: bool | None = None,
    num_workers: int = 0,
) -> DataModule:
    """Your own images in ``train/<class>/`` and ``test/<class>/`` folders (option ``path``).

    Both splits are preloaded as tensors when, decoded as float32, they take at most
    ``PRELOAD_LIMIT_BYTES`` (1 GiB, estimated as ``N * C * size * size * 4`` before decoding
    anything) and are streamed from disk otherwise.

    Args:
        data_dir: unused; ``path`` is read as given.
        path: the folder holding ``train/`` and ``test/`` (or ``val/``).
        size: every image is resized to ``size x size`` (the course uses 224 for hotdog).
        grayscale: one grey channel instead of RGB.
        stream: ``None`` applies the rule above; ``True`` streams, ``False`` preloads.
        num_workers: processes decoding images when streamed (ignored when preloaded).

    Returns:
        A :class:`DataModule` whose splits are, preloaded, float images in ``[0, 1]`` of shape
        ``(N, 3, size, size)`` (``(N, 1, size, size)`` when ``grayscale``) with int64 labels,
        or, streamed, :class:`ImageFolderDataset` objects giving the same tensors one image
        at a time.
    """
    if path is None:
        raise DivekitError("dataset 'image-folder' needs the option path=<folder with train/ "
                           "and test/>")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise DivekitError(f"size must be a positive integer, got {size!r}")
    if stream is not None and not isinstance(stream, bool):
        raise DivekitError(f"stream must be true, false or unset (automatic), got {stream!r}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise DivekitError(f"num_workers must be an integer >= 0, got {num_workers!r}")
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
    if stream is None:
        count = sum(len(files) for split in (train, test) for files in split.values())
        stream = decoded_bytes(count, size, grayscale) > PRELOAD_LIMIT_BYTES
    if stream:
        return DataModule("image-folder",
                          train=ImageFolderDataset.from_classes(train, size, grayscale),
                          test=ImageFolderDataset.from_classes(test, size, grayscale),
                          class_names=list(train), num_workers=num_workers)
    return DataModule("image-folder", train=load_split(train, size, grayscale),
                      test=load_split(test, size, grayscale), class_names=list(train))
