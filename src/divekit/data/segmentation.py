"""14.9 Semantic segmentation and the dataset: Pascal VOC2012 label maps, and generated scenes.

Two registered datasets of task ``"segmentation"``; every batch is ``(images, labels)``:
float images ``(N, 3, H, W)`` in ``[0, 1]`` and uint8 label maps ``(N, H, W)``, one class per
pixel, :data:`~divekit.data.targets.IGNORE` (255) where no class counts.

* ``voc-segmentation``: PASCAL VOC2012 (Everingham et al. 2010, "The PASCAL Visual Object
  Classes (VOC) Challenge"), read from its published layout ``VOCdevkit/VOC2012/`` with
  ``JPEGImages/*.jpg``, ``SegmentationClass/*.png`` and ``ImageSets/Segmentation/{train,
  val}.txt`` (the test split is ``val``, as in the book). A label PNG is a palette image whose
  indices are the classes (0 background, 1-20 the objects, 255 the "void" outline around
  objects, kept as ignore); a label saved as RGB is mapped back through the VOC colormap. As
  in the book, images are cut to a fixed crop (320x480) instead of being resized, and images
  smaller than the crop are left out. Training crops are random; the crop of example ``i`` in
  epoch ``e`` is drawn from a generator seeded by ``(seed, e, i)``, so it is the same for any
  number of workers and after a resume. Evaluation takes the centre crop, so that scores do
  not change from one evaluation to the next (the book random-crops its test images too).
* ``scenes-segmentation``: the generated ``scenes`` (see :mod:`divekit.data.scenes`) with
  per-pixel labels, 0 background and ``k + 1`` on the visible pixels of an object of
  :data:`~divekit.data.scenes.SCENE_CLASSES` ``k``; held in memory as tensors.

Both carry ``class_names`` and ``colormap`` (VOC's palette): ``colorize(labels, data.colormap)``
draws label maps.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset

from divekit.data.detection import VOC_CLASSES
from divekit.data.loaders import TensorLoader
from divekit.data.paths import data_root
from divekit.data.registry import DataModule, Split, register_dataset
from divekit.data.scenes import SCENE_CLASSES, scenes_data
from divekit.data.streaming import DatasetLoader
from divekit.data.targets import IGNORE
from divekit.errors import DataError, DivekitError

SECTION = "14.9 Semantic Segmentation and the Dataset"
# VOC's 20 object classes after background, spelt as in VOC's files (metric names stay
# one word: iou_pottedplant, iou_tvmonitor).
VOC_SEGMENTATION_CLASSES = ("background", *VOC_CLASSES)
VOC_URL = "http://d2l-data.s3-accelerate.amazonaws.com/VOCtrainval_11-May-2012.tar"
VOC_SHA1 = "4e443f8a2eca6b1dac8a6c57641b67dd40621a49"
VOC_FOLDERS = ("voc2012", "pascal-voc")  # under the data root; the second is pascal-voc's
DEFAULT_CROP = (320, 480)
LABEL_MODES = ("P", "L", "RGB")  # palette or grey: indices are classes; RGB: colours


# ---------------------------------------------------------------- colours

def voc_colormap(num_colors: int = 256) -> torch.Tensor:
    """The VOC palette: the colour of class ``i`` spreads the bits of ``i`` over R, G, B.

    Bit ``3k`` of ``i`` becomes bit ``7 - k`` of red, bit ``3k + 1`` of green and bit
    ``3k + 2`` of blue, so class 1 is (128, 0, 0), class 2 (0, 128, 0) and void, 255,
    (224, 224, 192).

    Returns:
        uint8 tensor of shape ``(num_colors, 3)``.
    """
    index = torch.arange(num_colors)
    colormap = torch.zeros(num_colors, 3, dtype=torch.long)
    for bit in range(8):
        for channel in range(3):
            colormap[:, channel] |= ((index >> (3 * bit + channel)) & 1) << (7 - bit)
    return colormap.to(torch.uint8)


VOC_COLORMAP = voc_colormap()


def colorize(labels: torch.Tensor, colormap: torch.Tensor | None = None) -> torch.Tensor:
    """Label maps as RGB pictures, each class in its colormap colour (for overlays).

    Args:
        labels: integer class indices, 255 = void.
        colormap: ``(K, 3)`` uint8 colours, one per index; default :data:`VOC_COLORMAP`.

    Shape: labels ``(..., H, W)`` -> ``(..., H, W, 3)`` uint8 (channels last, as Pillow and
    matplotlib take images).
    """
    colormap = VOC_COLORMAP if colormap is None else colormap
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise DivekitError(f"colorize needs integer label maps, got a {labels.dtype} tensor")
    if labels.numel() and not 0 <= int(labels.min()) <= int(labels.max()) < len(colormap):
        raise DivekitError(f"colorize: labels {int(labels.min())}..{int(labels.max())} lie "
                           f"outside the colormap's 0..{len(colormap) - 1}")
    return colormap.to(labels.device)[labels.long()]


def _colour_codes(colours: torch.Tensor) -> torch.Tensor:
    # One integer per RGB triple, so colours can be sorted and searched.
    return (colours.long() * torch.tensor([65536, 256, 1], device=colours.device)).sum(-1)


def decolorize(rgb: torch.Tensor, num_classes: int = len(VOC_SEGMENTATION_CLASSES),
               source: str = "label image") -> torch.Tensor:
    """The inverse of :func:`colorize` for VOC: RGB label pictures back to class indices.

    Only the colours of classes ``0..num_classes - 1`` and of void (255) are accepted.

    Args:
        rgb: uint8 colours.
        source: what names the picture (a file) in the error about an unknown colour.

    Shape: ``(..., H, W, 3)`` -> ``(..., H, W)`` uint8.
    """
    if rgb.dtype != torch.uint8 or rgb.ndim < 3 or rgb.shape[-1] != 3:
        raise DivekitError(f"decolorize needs uint8 RGB pictures (..., H, W, 3), got a "
                           f"{rgb.dtype} tensor of shape {tuple(rgb.shape)}")
    classes = torch.tensor([*range(num_classes), IGNORE])
    codes, order = _colour_codes(VOC_COLORMAP[classes]).sort()
    pixels = _colour_codes(rgb)
    position = torch.searchsorted(codes.to(rgb.device), pixels).clamp_(max=len(codes) - 1)
    unknown = codes.to(rgb.device)[position] != pixels
    if unknown.any():
        where = unknown.nonzero()[0].tolist()
        colour = tuple(rgb[tuple(where)].tolist())
        raise DataError(f"{source}: colour {colour} at row {where[-2]}, column {where[-1]} is "
                        f"not a VOC class colour (classes 0-{num_classes - 1} or void "
                        f"(224, 224, 192)); fix the label or save it as a palette PNG")
    return classes[order].to(device=rgb.device, dtype=torch.uint8)[position]


# ---------------------------------------------------------------- reading VOC files

def read_label(path: Path, num_classes: int = len(VOC_SEGMENTATION_CLASSES)) -> np.ndarray:
    """Decode a VOC label PNG: palette (or grey) indices as they are, RGB through the colormap.

    Returns:
        uint8 array ``(H, W)``: classes ``0..num_classes - 1``, 255 void.
    """
    try:
        with Image.open(path) as image:
            mode = image.mode
            pixels = np.array(image) if mode in LABEL_MODES else None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path} is not a readable label image ({e}); remove or replace it"
                        ) from e
    if pixels is None:
        raise DataError(f"{path} is a {mode} image; a VOC label must be a palette (P) PNG of "
                        "class indices or an RGB PNG in the VOC colours")
    if mode == "RGB":
        return decolorize(torch.from_numpy(pixels), num_classes, str(path)).numpy()
    valid = np.zeros(256, dtype=bool)
    valid[:num_classes] = valid[IGNORE] = True
    bad = ~valid[pixels]
    if bad.any():
        row, column = (int(v) for v in np.argwhere(bad)[0])
        raise DataError(f"{path}: class index {pixels[row, column]} at row {row}, column "
                        f"{column}; VOC labels are 0-{num_classes - 1} (255: void)")
    return pixels


def read_image(path: Path) -> np.ndarray:
    """Decode an image as RGB: uint8 ``(H, W, 3)``."""
    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path} is not a readable image ({e}); remove or replace it") from e


def _header(path: Path, source: str) -> tuple[tuple[int, int], str]:
    """``((width, height), mode)`` of an image file, from its header only (nothing decoded)."""
    try:
        with Image.open(path) as image:
            return image.size, image.mode
    except FileNotFoundError as e:
        raise DataError(f"{source}: {path} does not exist") from e
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{source}: {path} is not a readable image ({e}); remove or replace "
                        "it") from e


def parse_crop(crop: str | tuple[int, int] | list[int]) -> tuple[int, int]:
    """``"320x480"`` or ``(320, 480)`` -> ``(height, width)``."""
    values: list = []
    if isinstance(crop, str):
        try:
            values = [int(part) for part in crop.lower().split("x")]
        except ValueError:
            values = []
    elif isinstance(crop, tuple | list):
        values = list(crop)
    if len(values) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                   for v in values):
        raise DivekitError(f"crop must be HEIGHTxWIDTH in pixels, e.g. '320x480' or "
                           f"(320, 480), got {crop!r}")
    return values[0], values[1]


def _cut(image: torch.Tensor, label: torch.Tensor, top: int, left: int,
         size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The same window of an image (uint8 ``(3, H, W)``, returned as float in [0, 1]) and of
    its label map ``(H, W)``."""
    rows, cols = slice(top, top + size[0]), slice(left, left + size[1])
    return image[:, rows, cols].float().div_(255), label[rows, cols].clone()


class SegmentationFiles(Dataset):
    """Image and label files read one pair at a time; items are centre crops.

    Args:
        pairs: ``(image file, label file)`` pairs of equal sizes, each at least ``crop``.
        crop: ``(height, width)`` of the items.

    Shape:
        ``dataset[i]`` is ``(image (3, h, w) float32 in [0, 1], label (h, w) uint8)``,
        ``(h, w) = crop``, the centre of the pair (rounded towards the top left).
    """

    def __init__(self, pairs: list[tuple[Path, Path]], crop: tuple[int, int]) -> None:
        self.pairs, self.crop = pairs, crop

    def __len__(self) -> int:
        return len(self.pairs)

    def read(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole pair: uint8 image ``(3, H, W)`` and uint8 label ``(H, W)``."""
        image_path, label_path = self.pairs[index]
        image = torch.from_numpy(read_image(image_path)).permute(2, 0, 1)
        return image, torch.from_numpy(read_label(label_path))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.read(index)
        height, width = label.shape
        top, left = (height - self.crop[0]) // 2, (width - self.crop[1]) // 2
        return _cut(image, label, top, left, self.crop)

    def __repr__(self) -> str:
        return f"SegmentationFiles({len(self)} pairs, crop={self.crop})"


def crop_seed(seed: int, epoch: int, index: int) -> int:
    """Seed of the random crop of example ``index`` in epoch ``epoch``."""
    # SeedSequence hashes the triple, so neighbouring examples and epochs draw unrelated crops.
    entropy = [seed % 2**64, epoch, index]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> 1)


class RandomCrops(Dataset):
    """Random crops of a :class:`SegmentationFiles` split (or a ``Subset`` of one): the
    training view.

    The window of item ``index`` is drawn uniformly among whole-pixel positions from a
    generator seeded by :func:`crop_seed` ``(seed, epoch, index)``; its loader sets ``seed``
    and ``epoch`` before each epoch (see :class:`EpochCropLoader`).

    Shape:
        ``dataset[i]`` is ``(image (3, h, w) float32 in [0, 1], label (h, w) uint8)``.
    """

    def __init__(self, split: Dataset) -> None:
        self.split, self.seed, self.epoch = split, 0, 0

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        files, position = self.split, index
        while isinstance(files, Subset):  # a held-out validation split leaves a Subset
            files, position = files.dataset, files.indices[position]
        image, label = files.read(position)
        generator = torch.Generator().manual_seed(crop_seed(self.seed, self.epoch, index))
        (height, width), (crop_h, crop_w) = label.shape, files.crop
        top = int(torch.randint(height - crop_h + 1, (1,), generator=generator))
        left = int(torch.randint(width - crop_w + 1, (1,), generator=generator))
        return _cut(image, label, top, left, files.crop)


class EpochCropLoader(DatasetLoader):
    """A :class:`~divekit.data.streaming.DatasetLoader` of :class:`RandomCrops` that gives
    them its seed and epoch before each epoch is read (workers copy the dataset then)."""

    def dataloader(self) -> DataLoader:
        self.dataset.seed, self.dataset.epoch = self.seed, self.epoch
        return super().dataloader()


@dataclass(repr=False)
class SegmentationData(DataModule):
    """A :class:`DataModule` of label maps, with the colours to draw them in.

    Attributes:
        colormap: ``(256, 3)`` uint8, the colour of each label (``colorize(labels, colormap)``).
        crop: when set, the splits are :class:`SegmentationFiles` (centre crops for
            evaluation) and the training loader reads random crops of this ``(h, w)``.
        left_out: per split (``train``, ``val``), images smaller than ``crop`` left out.
    """

    colormap: torch.Tensor = field(default_factory=voc_colormap)
    crop: tuple[int, int] | None = None
    left_out: dict[str, int] = field(default_factory=dict)

    def _loader(self, split: Split, batch_size: int, shuffle: bool = False,
                transform: Callable | None = None) -> TensorLoader | DatasetLoader:
        if self.crop is None or not shuffle:
            return super()._loader(split, batch_size, shuffle, transform)
        return EpochCropLoader(RandomCrops(split), batch_size=batch_size, shuffle=True,
                               seed=self.seed, collate_fn=self.collate_fn,
                               num_workers=self.num_workers, transform=transform)


def _voc_folder(data_dir: str | None) -> Path:
    root = data_root(data_dir)
    for name in VOC_FOLDERS:
        folder = root / name / "VOCdevkit" / "VOC2012"
        if (folder / "ImageSets" / "Segmentation").is_dir():
            return folder
    where = root / VOC_FOLDERS[0]
    raise DataError(f"voc-segmentation files missing: no VOCdevkit/VOC2012/ImageSets/"
                    f"Segmentation in {where} or {root / VOC_FOLDERS[1]}. Download the book's "
                    f"VOCtrainval_11-May-2012.tar ({VOC_URL}, sha1 {VOC_SHA1}) and extract it "
                    f"into {where} (it unpacks to VOCdevkit/VOC2012/), or point --data-dir / "
                    "DIVEKIT_DATA at a folder that has a 'voc2012' sub-folder.")


def voc_pairs(folder: Path, split: str, crop: tuple[int, int]
              ) -> tuple[list[tuple[Path, Path]], int]:
    """The image and label files of one VOC2012 segmentation list, checked from their
    headers, without the images smaller than ``crop``.

    Returns:
        ``(pairs, left_out)``: ``(JPEGImages/<id>.jpg, SegmentationClass/<id>.png)`` in list
        order, and how many listed images were smaller than the crop.
    """
    listing = folder / "ImageSets" / "Segmentation" / f"{split}.txt"
    try:
        lines = listing.read_text().splitlines()
    except OSError:
        raise DataError(f"voc-segmentation image list {listing} does not exist; the VOC2012 "
                        f"release has it (see {VOC_URL})") from None
    pairs, left_out = [], 0
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        image_id = line.split()[0]
        source = f"{listing}, line {number}"
        image_path = folder / "JPEGImages" / f"{image_id}.jpg"
        label_path = folder / "SegmentationClass" / f"{image_id}.png"
        (width, height), _ = _header(image_path, source)
        label_size, mode = _header(label_path, source)
        if mode not in LABEL_MODES:
            raise DataError(f"{source}: {label_path} is a {mode} image; a VOC label must be a "
                            "palette (P) PNG of class indices or an RGB PNG in the VOC colours")
        if label_size != (width, height):
            raise DataError(f"{source}: label {label_path} is {label_size[0]}x{label_size[1]} "
                            f"but its image {image_path.name} is {width}x{height}; they must "
                            "be the same size")
        if height < crop[0] or width < crop[1]:
            left_out += 1
            continue
        pairs.append((image_path, label_path))
    if not pairs:
        what = "lists no images" if not left_out else (
            f"has no image of at least {crop[0]}x{crop[1]}; choose a smaller crop")
        raise DataError(f"{listing} {what}")
    return pairs, left_out


@register_dataset("voc-segmentation", section=SECTION,
                  files=("VOCdevkit/VOC2012/JPEGImages", "VOCdevkit/VOC2012/SegmentationClass",
                         "VOCdevkit/VOC2012/ImageSets/Segmentation"))
def voc_segmentation(data_dir: str | None = None, crop: str | tuple[int, int] = DEFAULT_CROP,
                     num_workers: int = 0) -> SegmentationData:
    """PASCAL VOC2012 semantic segmentation: 21 classes, 1,464 train / 1,449 val images.

    Read from ``voc2012/VOCdevkit/VOC2012/`` (or ``pascal-voc/VOCdevkit/VOC2012/``) under the
    data folder, streamed from disk. Images smaller than ``crop`` are left out, with a warning
    that says how many.

    Args:
        data_dir: folder holding the ``voc2012/`` (or ``pascal-voc/``) sub-folder.
        crop: ``(height, width)`` or ``"HxW"`` of the examples: random crops for training,
            centre crops for evaluation (the book's 320x480).
        num_workers: processes decoding images.
    """
    crop = parse_crop(crop)
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise DivekitError(f"num_workers must be an integer >= 0, got {num_workers!r}")
    folder = _voc_folder(data_dir)
    splits, left_out = {}, {}
    for split in ("train", "val"):
        pairs, left_out[split] = voc_pairs(folder, split, crop)
        if left_out[split]:
            warnings.warn(f"voc-segmentation: {left_out[split]} of {len(pairs) + left_out[split]}"
                          f" {split} images smaller than {crop[0]}x{crop[1]} left out",
                          stacklevel=2)
        splits[split] = SegmentationFiles(pairs, crop)
    return SegmentationData("voc-segmentation", train=splits["train"], test=splits["val"],
                            task="segmentation", class_names=list(VOC_SEGMENTATION_CLASSES),
                            num_workers=num_workers, crop=crop, left_out=left_out)


# ---------------------------------------------------------------- generated scenes

def class_maps(instances: torch.Tensor, labels: list[torch.Tensor]) -> torch.Tensor:
    """Instance maps to class maps: 0 stays background, instance ``k + 1`` of an image
    becomes ``labels[k] + 1``.

    Shape: instances ``(N, H, W)`` uint8 and ``N`` label vectors ``(K_i,)`` -> ``(N, H, W)``
    uint8.
    """
    maps = torch.empty_like(instances)
    background = torch.zeros(1, dtype=torch.uint8)
    for i, (instance_map, image_labels) in enumerate(zip(instances, labels, strict=True)):
        lookup = torch.cat([background, (image_labels + 1).to(torch.uint8)])
        maps[i] = lookup[instance_map.long()]
    return maps


@register_dataset("scenes-segmentation", section=SECTION)
def scenes_segmentation(data_dir: str | None = None, num_train: int = 2000, num_test: int = 300,
                        image_size: int = 128, max_objects: int = 6, data_seed: int = 0
                        ) -> SegmentationData:
    """Generated: the ``scenes`` images with per-pixel classes (background + 6 shapes), 128x128.

    The images of the ``scenes`` detection set for the same options, each pixel labelled
    with the class of the object drawn on it (``k + 1`` for shape class ``k``, 0 elsewhere);
    held in memory (no files, no network).

    Args:
        data_dir: unused (nothing is read).
        num_train: training images.
        num_test: test images.
        image_size: images are ``image_size x image_size``.
        max_objects: objects drawn per image, uniform in ``0..max_objects``.
        data_seed: seeds the drawing; the same seed gives the same images.
    """
    scenes = scenes_data(num_train=num_train, num_test=num_test, image_size=image_size,
                         max_objects=max_objects, data_seed=data_seed)
    splits = {}
    for name in ("train", "test"):
        split = getattr(scenes, name)
        labels = [target["labels"] for target in split.targets]
        splits[name] = (split.images.float().div_(255), class_maps(split.instances, labels))
    return SegmentationData("scenes-segmentation", train=splits["train"], test=splits["test"],
                            task="segmentation", class_names=["background", *SCENE_CLASSES])
