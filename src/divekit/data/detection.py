"""14.3 and 14.6 Object detection data in its published formats: banana-detection, VOC, COCO.

Three readers of the original files, each a registered dataset (task ``"detection"``):

* ``banana-detection``: the book's set (d2l 14.6): ``bananas_train/`` and ``bananas_val/``,
  each ``label.csv`` (``img_name,label,xmin,ymin,xmax,ymax``, pixels) and ``images/``.
* ``pascal-voc``: PASCAL VOC (Everingham et al. 2010, "The PASCAL Visual Object Classes (VOC)
  Challenge"), ``VOCdevkit/VOC2007`` and/or ``VOC2012`` with ``Annotations/*.xml``,
  ``JPEGImages/`` and ``ImageSets/Main/<split>.txt``.
* ``coco``: MS COCO (Lin et al. 2014, "Microsoft COCO: Common Objects in Context"),
  ``annotations/instances_{train,val}2017.json`` with ``images/{train,val}2017/`` (or the
  official ``train2017/``, ``val2017/`` next to ``annotations/``).

Every split yields ``(image, target)``: the image float ``(3, S, S)`` in ``[0, 1]``, resized
(bilinear, aspect not kept) to the option ``image_size`` so batches stack, and the target dict
of torchvision's detection models with boxes scaled alike: ``boxes`` ``(K, 4)`` float32 corners
``x1, y1, x2, y2`` in continuous pixel coordinates (the whole image is ``(0, 0, S, S)``),
``labels`` ``(K,)`` int64 in ``0..C-1`` (no background class), plus ``difficult`` (VOC),
``iscrowd`` and ``masks`` (COCO). Batches come from
:func:`~divekit.data.collate.detection_collate`.

Bad files give one-line errors naming the file (and row, object or annotation): a malformed
row, a missing or unreadable image, a box with ``x2 < x1`` or ``y2 < y1`` or no area, a box
more than one pixel outside its image. A box that crosses the image border by at most one
pixel (VOC's 1-based ``xmin = 0``, an inclusive ``xmax = W``) is clipped to the image.
"""

from __future__ import annotations

import csv
import json
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from divekit.data.collate import detection_collate
from divekit.data.paths import data_root
from divekit.data.registry import DataModule, register_dataset
from divekit.data.targets import sample_nearest
from divekit.errors import DataError, DivekitError

DEFAULT_SIZE = 256
BANANA_URL = "http://d2l-data.s3-accelerate.amazonaws.com/banana-detection.zip"
BANANA_COLUMNS = ["img_name", "label", "xmin", "ymin", "xmax", "ymax"]
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
BORDER_SLACK = 1.0  # pixels a box may cross the image border by and be clipped, not refused
Target = dict[str, torch.Tensor]


def detection_data(name: str, train: Dataset, test: Dataset, class_names: Sequence[str]
                   ) -> DataModule:
    """The DataModule of a detection dataset: task, collation and class names set."""
    return DataModule(name, train=train, test=test, task="detection",
                         class_names=list(class_names), collate_fn=detection_collate)


def check_size(size: int, name: str = "image_size") -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise DivekitError(f"{name} must be a positive integer (pixels), got {size!r}")


class DetectionTensors(Dataset):
    """Detection examples held in memory: images as one uint8 tensor, converted per read.

    Args:
        images: uint8 ``(N, 3, H, W)``.
        targets: ``N`` target dicts (``boxes``, ``labels``, ...).
        instances: optional uint8 ``(N, H, W)`` maps, ``k + 1`` on the pixels of object ``k``
            (disjoint masks, stored in one map per image); items then carry ``masks``
            ``(K, H, W)`` uint8.

    Shape:
        ``dataset[i]`` is ``(image (3, H, W) float32 in [0, 1], target)``.
    """

    def __init__(self, images: torch.Tensor, targets: list[Target],
                 instances: torch.Tensor | None = None) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or len(images) != len(targets):
            raise DivekitError(f"DetectionTensors needs uint8 images (N, 3, H, W) and N targets, "
                               f"got {images.dtype} {tuple(images.shape)} and {len(targets)}")
        self.images, self.targets, self.instances = images, targets, instances

    def __len__(self) -> int:
        return len(self.images)

    def _target(self, index: int) -> Target:
        # Copies, so that a model editing its targets in place cannot change the dataset.
        target = {key: value.clone() for key, value in self.targets[index].items()}
        if self.instances is not None:
            ids = torch.arange(1, len(target["labels"]) + 1, dtype=torch.uint8).view(-1, 1, 1)
            target["masks"] = (self.instances[index].unsqueeze(0) == ids).to(torch.uint8)
        return target

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        return self.images[index].float().div_(255), self._target(index)

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, Target]]:
        # DataLoader reads a whole batch through this: one indexing and one conversion.
        batch = self.images[torch.as_tensor(indices, dtype=torch.long)].float().div_(255)
        return [(image, self._target(i)) for image, i in zip(batch, indices, strict=True)]

    def __repr__(self) -> str:
        return f"DetectionTensors({len(self)} images, shape={tuple(self.images.shape[1:])})"


# ---------------------------------------------------------------- shared checks

def read_rgb(path: Path, size: int, source: str) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode an image as RGB resized (bilinear) to ``size x size``.

    Args:
        source: what names the image (e.g. ``"label.csv, line 3"``), for error messages.

    Returns:
        ``(pixels, (width, height))``: uint8 ``(size, size, 3)`` and the original size.
    """
    try:
        with Image.open(path) as image:
            original = image.size
            rgb = image.convert("RGB")
    except FileNotFoundError as e:
        raise DataError(f"{source}: image {path} does not exist") from e
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{source}: {path} is not a readable image ({e}); remove or replace "
                        "it") from e
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(rgb), original


def check_box(box: Sequence[float], width: float, height: float, source: str) -> list[float]:
    """A box ``x1, y1, x2, y2`` checked against its ``width x height`` image: clipped when it
    crosses the border by at most :data:`BORDER_SLACK` pixels, refused otherwise."""
    x1, y1, x2, y2 = box
    if x2 < x1 or y2 < y1:
        raise DataError(f"{source}: box {_fmt(box)} has x2 < x1 or y2 < y1 (corners must be "
                        "xmin, ymin, xmax, ymax)")
    if x2 == x1 or y2 == y1:
        raise DataError(f"{source}: box {_fmt(box)} has no area; fix or remove it")
    slack = BORDER_SLACK
    if x1 < -slack or y1 < -slack or x2 > width + slack or y2 > height + slack:
        raise DataError(f"{source}: box {_fmt(box)} lies outside the {width:g}x{height:g} image "
                        f"by more than {slack:g} pixel; fix the coordinates")
    return [min(max(x1, 0.0), width), min(max(y1, 0.0), height),
            min(max(x2, 0.0), width), min(max(y2, 0.0), height)]


def _fmt(box: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in box) + ")"


def scaled(boxes: torch.Tensor, width: int, height: int, size: int) -> torch.Tensor:
    """Boxes of a ``width x height`` image moved onto the same image resized to ``size``."""
    scale = torch.tensor([size / width, size / height] * 2, dtype=torch.float64)
    return (boxes.to(torch.float64) * scale).to(torch.float32)


def _find_root(data_dir: str | None, folders: Sequence[str]) -> Path | None:
    """The first of ``folders`` under the data root that exists."""
    root = data_root(data_dir)
    return next((root / name for name in folders if (root / name).is_dir()), None)


# ---------------------------------------------------------------- lazily decoded images

@dataclass
class ImageRecord:
    """One image file and its annotation, boxes in the file's own pixels."""

    path: Path
    width: int
    height: int
    target: Target
    source: str  # the annotation file that names the image, for errors
    segmentations: list[Any] | None = None  # COCO polygons / RLEs, decoded when read


class DetectionFiles(Dataset):
    """Detection examples decoded from their image files one at a time (VOC, COCO).

    Shape:
        ``dataset[i]`` is ``(image (3, size, size) float32 in [0, 1], target)``, boxes scaled
        to ``size`` and, when the records hold segmentations, ``masks`` ``(K, size, size)``
        uint8 (decoded at full size, then resampled by the nearest pixel).
    """

    def __init__(self, records: list[ImageRecord], size: int) -> None:
        self.records, self.size = records, size

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        record = self.records[index]
        pixels, original = read_rgb(record.path, self.size, record.source)
        if original != (record.width, record.height):
            raise DataError(f"{record.source}: says {record.path.name} is {record.width}x"
                            f"{record.height}, the file is {original[0]}x{original[1]}")
        image = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float().div_(255)
        target = {key: value.clone() for key, value in record.target.items()}
        target["boxes"] = scaled(target["boxes"], record.width, record.height, self.size)
        if record.segmentations is not None:
            target["masks"] = _coco_masks(record, self.size)
        return image, target

    def __repr__(self) -> str:
        return f"DetectionFiles({len(self)} images, size={self.size})"


# ---------------------------------------------------------------- banana-detection

def read_banana_split(folder: Path, size: int) -> tuple[torch.Tensor, list[Target]]:
    """Read one split of the book's banana-detection layout (``label.csv`` + ``images/``).

    Rows naming the same image give it several boxes (the book's files have one per image);
    images keep the order of their first row. Coordinates are read as continuous pixel
    corners, as the book does (it divides them by the image side, 256).

    Returns:
        ``(images, targets)``: uint8 ``(N, 3, size, size)`` and per image ``boxes`` ``(K, 4)``
        scaled to ``size`` and ``labels`` ``(K,)``.
    """
    label_file = folder / "label.csv"
    rows = _banana_rows(label_file)
    names = list(dict.fromkeys(name for _, name, _, _ in rows))
    pixels = np.empty((len(names), size, size, 3), dtype=np.uint8)
    index = {name: i for i, name in enumerate(names)}
    boxes: list[list[list[float]]] = [[] for _ in names]
    labels: list[list[int]] = [[] for _ in names]
    sizes: dict[str, tuple[int, int]] = {}
    for line, name, label, box in rows:
        source = f"{label_file}, line {line}"
        i = index[name]
        if name not in sizes:
            pixels[i], sizes[name] = read_rgb(folder / "images" / name, size, source)
        width, height = sizes[name]
        boxes[i].append(check_box(box, width, height, source))
        labels[i].append(label)
    targets = [{"boxes": scaled(torch.tensor(b, dtype=torch.float64).view(-1, 4),
                                *sizes[name], size),
                "labels": torch.tensor(lab, dtype=torch.long)}
               for name, b, lab in zip(names, boxes, labels, strict=True)]
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous(), targets


def _banana_rows(label_file: Path) -> list[tuple[int, str, int, list[float]]]:
    try:
        with open(label_file, newline="", encoding="utf-8-sig") as f:
            lines = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read {label_file} as CSV text: {e}") from e
    if not lines or [c.strip() for c in lines[0]] != BANANA_COLUMNS:
        raise DataError(f"{label_file}, line 1: expected the header {','.join(BANANA_COLUMNS)}, "
                        f"got {','.join(lines[0]) if lines else 'an empty file'}")
    rows = []
    for line, fields in enumerate(lines[1:], 2):
        if not fields or not "".join(fields).strip():
            continue
        if len(fields) != 6:
            raise DataError(f"{label_file}, line {line}: {len(fields)} fields, expected 6 "
                            f"({','.join(BANANA_COLUMNS)})")
        name = fields[0].strip()
        try:
            label = int(fields[1])
            box = [float(v) for v in fields[2:]]
        except ValueError:
            raise DataError(f"{label_file}, line {line}: label and coordinates must be numbers, "
                            f"got {','.join(fields[1:])}") from None
        if not name or label < 0 or not all(np.isfinite(box)):
            raise DataError(f"{label_file}, line {line}: needs an image name, a label >= 0 and "
                            f"finite coordinates, got {','.join(fields)}")
        rows.append((line, name, label, box))
    if not rows:
        raise DataError(f"{label_file} has a header but no rows")
    return rows


@register_dataset("banana-detection", section="14.6 The Object Detection Dataset",
                  files=("bananas_train/label.csv", "bananas_val/label.csv"))
def banana_detection(data_dir: str | None = None, image_size: int = DEFAULT_SIZE
                     ) -> DataModule:
    """The book's banana-detection files: 1,000 train / 100 test 256x256 images, one box each.

    The test split is ``bananas_val``, as the book evaluates on it.

    Args:
        data_dir: folder holding the ``banana-detection/`` sub-folder.
        image_size: images (and boxes) are resized to ``image_size x image_size``.
    """
    check_size(image_size)
    root = data_root(data_dir) / "banana-detection"
    wanted = ("bananas_train/label.csv", "bananas_val/label.csv")
    missing = [name for name in wanted if not (root / name).is_file()]
    if missing:
        raise DataError(f"banana-detection files missing in {root}: {', '.join(missing)}. Put "
                        f"the contents of {BANANA_URL} (bananas_train/, bananas_val/) in that "
                        "folder, point --data-dir / DIVEKIT_DATA at a folder that has a "
                        "'banana-detection' sub-folder, or use the generated dataset 'bananas' "
                        "(no files needed).")
    train = read_banana_split(root / "bananas_train", image_size)
    test = read_banana_split(root / "bananas_val", image_size)
    labels = torch.cat([t["labels"] for t in train[1] + test[1]])
    count = int(labels.max()) + 1
    names = ["banana"] if count == 1 else [f"class {i}" for i in range(count)]
    return detection_data("banana-detection", DetectionTensors(*train), DetectionTensors(*test),
                          names)


# ---------------------------------------------------------------- Pascal VOC

def parse_voc_annotation(path: Path) -> tuple[int, int, Target]:
    """Read one VOC ``Annotations/*.xml`` file.

    VOC corners are 1-based inclusive pixel indices; the box of pixels ``xmin..xmax`` is
    ``(xmin - 1, ymin - 1, xmax, ymax)`` in continuous coordinates. Only the ``<object>``
    elements directly under ``<annotation>`` count (person-layout ``<part>`` boxes do not).

    Returns:
        ``(width, height, target)``: target with ``boxes`` ``(K, 4)`` float64 in the file's
        pixels, ``labels`` ``(K,)`` int64 (index in :data:`VOC_CLASSES`) and ``difficult``
        ``(K,)`` bool.
    """
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError as e:
        raise DataError(f"annotation {path} does not exist") from e
    except (ET.ParseError, OSError) as e:
        raise DataError(f"{path} is not a readable VOC XML annotation ({e})") from e
    try:
        width = int(float(root.findtext("size/width")))
        height = int(float(root.findtext("size/height")))
    except (TypeError, ValueError):
        raise DataError(f"{path}: <size> needs numeric <width> and <height>") from None
    if width < 1 or height < 1:
        raise DataError(f"{path}: <size> is {width}x{height}; fix the annotation")
    boxes, labels, difficult = [], [], []
    for number, obj in enumerate(root.findall("object"), 1):
        source = f"{path}, object {number}"
        name = (obj.findtext("name") or "").strip()
        if name not in VOC_CLASSES:
            raise DataError(f"{source}: class {name!r} is not one of the 20 VOC classes")
        try:
            box = [float(obj.findtext(f"bndbox/{key}"))
                   for key in ("xmin", "ymin", "xmax", "ymax")]
            hard = int(obj.findtext("difficult") or 0)
        except (TypeError, ValueError):
            raise DataError(f"{source}: <bndbox> needs numeric xmin, ymin, xmax, ymax (and "
                            "<difficult> 0 or 1)") from None
        box = [box[0] - 1, box[1] - 1, box[2], box[3]]
        boxes.append(check_box(box, width, height, source))
        labels.append(VOC_CLASSES.index(name))
        difficult.append(bool(hard))
    return width, height, {
        "boxes": torch.tensor(boxes, dtype=torch.float64).view(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.long),
        "difficult": torch.tensor(difficult, dtype=torch.bool),
    }


def _voc_records(devkit: Path, sets: str) -> list[ImageRecord]:
    records = []
    for item in sets.split(","):
        year, _, split = item.strip().partition("-")
        if not year or not split:
            raise DivekitError(f"VOC image set {item!r} is not YEAR-SPLIT, e.g. 2007-trainval or "
                               "2012-val")
        folder = devkit / f"VOC{year}"
        listing = folder / "ImageSets" / "Main" / f"{split}.txt"
        try:
            ids = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
        except OSError:
            raise DataError(f"pascal-voc image list {listing} does not exist; put VOC{year} "
                            f"(with ImageSets/Main/{split}.txt) in {devkit}, or choose other "
                            "image sets") from None
        for image_id in ids:
            width, height, target = parse_voc_annotation(folder / "Annotations" /
                                                          f"{image_id}.xml")
            records.append(ImageRecord(folder / "JPEGImages" / f"{image_id}.jpg", width, height,
                                       target, f"{folder / 'Annotations' / image_id}.xml"))
    return records


@register_dataset("pascal-voc", section="14.3 Object Detection and Bounding Boxes",
                  files=("VOCdevkit/VOC2007", "VOCdevkit/VOC2012"))
def pascal_voc(data_dir: str | None = None, train_sets: str = "2007-trainval,2012-trainval",
               test_sets: str = "2007-test", image_size: int = DEFAULT_SIZE) -> DataModule:
    """PASCAL VOC detection: 20 classes, boxes with their ``difficult`` flag (VOCdevkit layout).

    Read from ``pascal-voc/VOCdevkit/`` under the data folder (or ``pascal-voc-mini/``, the
    name of the small copy in the course's shared data). The default is the usual protocol:
    train on VOC2007+2012 trainval, test on VOC2007 test. ``difficult`` objects are kept and
    flagged: the VOC benchmark ignores them (neither hits nor misses), while COCO-style mAP
    (pycocotools) counts them as ordinary objects unless an evaluation leaves them out.

    Args:
        data_dir: folder holding the ``pascal-voc/`` (or ``pascal-voc-mini/``) sub-folder.
        train_sets: comma-separated ``YEAR-SPLIT`` image sets of the training split (the
            lists ``VOC<YEAR>/ImageSets/Main/<SPLIT>.txt``).
        test_sets: the same for the test split.
        image_size: images (and boxes) are resized to ``image_size x image_size``.
    """
    check_size(image_size)
    folder = _find_root(data_dir, ("pascal-voc", "pascal-voc-mini"))
    if folder is None or not (folder / "VOCdevkit").is_dir():
        where = data_root(data_dir) / "pascal-voc"
        raise DataError(f"pascal-voc files missing: {where / 'VOCdevkit'}. Extract the VOC "
                        "tarballs (VOCtrainval_06-Nov-2007.tar, VOCtest_06-Nov-2007.tar, "
                        f"VOCtrainval_11-May-2012.tar) into {where}, or point --data-dir / "
                        "DIVEKIT_DATA at a folder that has a 'pascal-voc' sub-folder.")
    devkit = folder / "VOCdevkit"
    train = DetectionFiles(_voc_records(devkit, train_sets), image_size)
    test = DetectionFiles(_voc_records(devkit, test_sets), image_size)
    for split in (train, test):
        _check_images_exist(split.records)
    return detection_data("pascal-voc", train, test, VOC_CLASSES)


def _check_images_exist(records: list[ImageRecord]) -> None:
    for record in records:
        if not record.path.is_file():
            raise DataError(f"{record.source}: image {record.path} does not exist")


# ---------------------------------------------------------------- COCO

def read_coco(annotation_file: Path, image_dir: Path, masks: bool = False
              ) -> tuple[list[ImageRecord], list[int], list[str]]:
    """Read a COCO instances JSON file.

    Category ids become labels ``0..C-1`` in increasing id order. Boxes ``[x, y, w, h]``
    become corners; one with ``w`` or ``h`` zero is dropped (as torchvision's COCO reference
    does), one with a negative side is refused. Every image is kept, with no boxes when it
    has no annotation.

    Returns:
        ``(records, category_ids, names)``: one record per image in the file's order
        (targets with ``boxes`` float64 in the image's pixels, ``labels`` and ``iscrowd``
        int64; polygons or RLEs kept for decoding when ``masks``), the category ids and names.
    """
    try:
        with open(annotation_file, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError as e:
        raise DataError(f"COCO annotation file {annotation_file} does not exist") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{annotation_file} is not a readable JSON file ({e})") from e
    if not isinstance(data, dict) or not all(
            isinstance(data.get(key), list) for key in ("images", "annotations", "categories")):
        raise DataError(f"{annotation_file} needs the lists 'images', 'annotations' and "
                        "'categories' of a COCO instances file")
    try:
        categories = sorted((int(c["id"]), str(c["name"])) for c in data["categories"])
        images = {int(im["id"]): (str(im["file_name"]), int(im["width"]), int(im["height"]))
                  for im in data["images"]}
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{annotation_file}: a category needs 'id' and 'name', an image 'id', "
                        f"'file_name', 'width' and 'height' ({e!r})") from None
    label_of = {cid: label for label, (cid, _) in enumerate(categories)}
    per_image: dict[int, list[tuple[list[float], int, int, Any]]] = {i: [] for i in images}
    for ann in data["annotations"]:
        _add_coco_annotation(ann, annotation_file, images, label_of, per_image, masks)
    records = []
    for image_id, (file_name, width, height) in images.items():
        anns = per_image[image_id]
        target = {
            "boxes": torch.tensor([a[0] for a in anns], dtype=torch.float64).view(-1, 4),
            "labels": torch.tensor([a[1] for a in anns], dtype=torch.long),
            "iscrowd": torch.tensor([a[2] for a in anns], dtype=torch.long),
        }
        records.append(ImageRecord(image_dir / file_name, width, height, target,
                                   f"{annotation_file} (image {image_id})",
                                   [a[3] for a in anns] if masks else None))
    return records, [cid for cid, _ in categories], [name for _, name in categories]


def _add_coco_annotation(ann: Any, annotation_file: Path, images: dict, label_of: dict,
                         per_image: dict, masks: bool) -> None:
    where = f"{annotation_file}, annotation {ann.get('id', '?') if isinstance(ann, dict) else '?'}"
    try:
        image_id, category = int(ann["image_id"]), int(ann["category_id"])
        x, y, w, h = (float(v) for v in ann["bbox"])
        crowd = int(ann.get("iscrowd", 0))
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{where}: needs 'image_id', 'category_id' and a 'bbox' of 4 numbers "
                        "[x, y, width, height]") from None
    if image_id not in images:
        raise DataError(f"{where}: image_id {image_id} is not among the file's images")
    if category not in label_of:
        raise DataError(f"{where}: category_id {category} is not among the file's categories")
    if w < 0 or h < 0:
        raise DataError(f"{where}: bbox {[x, y, w, h]} has a negative width or height")
    if w == 0 or h == 0:
        return
    _, width, height = images[image_id]
    box = check_box([x, y, x + w, y + h], width, height, where)
    segmentation = ann.get("segmentation") if masks else None
    if masks:
        _check_segmentation(segmentation, where)
    per_image[image_id].append((box, label_of[category], crowd, segmentation))


def _check_segmentation(segmentation: Any, where: str) -> None:
    if isinstance(segmentation, list):
        if segmentation and all(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0
                                for p in segmentation):
            return
    elif isinstance(segmentation, dict) and {"counts", "size"} <= set(segmentation):
        return
    raise DataError(f"{where}: 'segmentation' must be polygons (lists of at least 3 x, y "
                    "pairs) or an RLE {'counts', 'size'}; use masks=False to read boxes only")


def _coco_masks(record: ImageRecord, size: int) -> torch.Tensor:
    """Masks of a record's segmentations decoded at full size and resampled to ``size``."""
    from pycocotools import mask as mask_utils

    height, width = record.height, record.width
    decoded = np.zeros((len(record.segmentations), height, width), dtype=np.uint8)
    for k, segmentation in enumerate(record.segmentations):
        if isinstance(segmentation, list):  # polygons of one object: their union
            rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
        elif isinstance(segmentation["counts"], list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:  # compressed RLE
            counts = segmentation["counts"]
            rle = {"size": segmentation["size"],
                   "counts": counts.encode() if isinstance(counts, str) else counts}
        with warnings.catch_warnings():  # pycocotools 2.0 under NumPy 2: a harmless notice
            warnings.simplefilter("ignore", DeprecationWarning)
            decoded[k] = mask_utils.decode(rle)
    maps = torch.from_numpy(decoded)
    windows = torch.tensor([[0.0, 0.0, width, height]], dtype=torch.float64).expand(len(maps), 4)
    return sample_nearest(maps, windows, (size, size), 0)


def _coco_image_dir(folder: Path, split: str) -> Path:
    for candidate in (folder / "images" / f"{split}2017", folder / f"{split}2017"):
        if candidate.is_dir():
            return candidate
    raise DataError(f"coco images missing: neither {folder / 'images' / f'{split}2017'} nor "
                    f"{folder / f'{split}2017'} is a folder; put the {split}2017 images there")


@register_dataset("coco", section="14.3 Object Detection and Bounding Boxes",
                  files=("annotations/instances_train2017.json",
                         "annotations/instances_val2017.json"))
def coco(data_dir: str | None = None, image_size: int = DEFAULT_SIZE, masks: bool = False
         ) -> DataModule:
    """MS COCO 2017 detection: 80 classes, boxes with ``iscrowd``, optional instance masks.

    Read from ``coco/`` under the data folder (or ``coco-sample/``, the name of the small
    copy in the course's shared data): train2017 is the training split, val2017 the test
    split (COCO's test images have no public annotations).

    Args:
        data_dir: folder holding the ``coco/`` (or ``coco-sample/``) sub-folder.
        image_size: images (boxes, masks) are resized to ``image_size x image_size``.
        masks: decode polygon and RLE segmentations into ``masks`` ``(K, S, S)`` uint8.
    """
    check_size(image_size)
    if not isinstance(masks, bool):
        raise DivekitError(f"masks must be true or false, got {masks!r}")
    folder = _find_root(data_dir, ("coco", "coco-sample"))
    wanted = ("annotations/instances_train2017.json", "annotations/instances_val2017.json")
    missing = wanted if folder is None else [w for w in wanted if not (folder / w).is_file()]
    if missing:
        where = folder or data_root(data_dir) / "coco"
        raise DataError(f"coco files missing in {where}: {', '.join(missing)}. Put the "
                        "annotations_trainval2017.zip contents (annotations/) and the "
                        "train2017/ and val2017/ images from https://cocodataset.org there, or "
                        "point --data-dir / DIVEKIT_DATA at a folder that has a 'coco' "
                        "sub-folder.")
    splits, names = {}, {}
    for name, split in (("train", "train"), ("test", "val")):
        records, ids, names[name] = read_coco(
            folder / "annotations" / f"instances_{split}2017.json",
            _coco_image_dir(folder, split), masks)
        _check_images_exist(records)
        splits[name] = DetectionFiles(records, image_size)
    if names["train"] != names["test"]:
        raise DataError(f"the categories of {folder / wanted[0]} and {folder / wanted[1]} "
                        "differ; both files must list the same categories")
    return detection_data("coco", splits["train"], splits["test"], names["train"])
