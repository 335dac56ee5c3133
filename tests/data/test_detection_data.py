import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from PIL import Image

import divekit.data.detection as detection
from divekit.data.collate import detection_collate
from divekit.data.registry import load_data
from divekit.errors import DataError, DivekitError
from tests.conftest import real_data_dir

HEADER = "img_name,label,xmin,ymin,xmax,ymax"


def write_image(path, size=(32, 32), colour=(200, 180, 20), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format=fmt)


def banana_layout(root, train_rows, val_rows=("0.png,0,1,2,10,12",), size=(32, 32)):
    """banana-detection/ with the given label rows; every image the rows name is written."""
    folder = root / "banana-detection"
    for split, rows in (("bananas_train", train_rows), ("bananas_val", val_rows)):
        (folder / split / "images").mkdir(parents=True, exist_ok=True)
        (folder / split / "label.csv").write_text("\n".join([HEADER, *rows]) + "\n")
        for row in rows:
            name = row.split(",")[0]
            if name and not (folder / split / "images" / name).exists():
                write_image(folder / split / "images" / name, size)
    return folder


# ---------------------------------------------------------------- banana-detection

def test_banana_reader_reads_boxes_and_scales_them(tmp_path):
    banana_layout(tmp_path, ["0.png,0,4,2,20,30", "1.png,0,0,0,32,32", "0.png,0,1,1,3,3"])
    data = detection.banana_detection(data_dir=str(tmp_path), image_size=16)
    assert data.task == "detection" and data.class_names == ["banana"] and data.num_classes == 1
    assert len(data.train) == 2 and len(data.test) == 1
    image, target = data.train[0]
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32
    # Two rows name 0.png: one image with two boxes, halved with the image.
    assert target["boxes"].tolist() == [[2, 1, 10, 15], [0.5, 0.5, 1.5, 1.5]]
    assert target["labels"].tolist() == [0, 0]
    assert data.train[1][1]["boxes"].tolist() == [[0, 0, 16, 16]]
    torch.testing.assert_close(image[:, 0, 0], torch.tensor([200, 180, 20]) / 255)


def test_banana_box_within_a_pixel_of_the_border_is_clipped(tmp_path):
    banana_layout(tmp_path, ["0.png,0,-1,0,33,32.5"])
    data = detection.banana_detection(data_dir=str(tmp_path), image_size=32)
    assert data.train[0][1]["boxes"].tolist() == [[0, 0, 32, 32]]


@pytest.mark.parametrize("rows, message", [
    (["0.png,0,1,2,10"], "line 2: 5 fields, expected 6"),
    (["0.png,zero,1,2,10,12"], "line 2: label and coordinates must be numbers"),
    (["0.png,-1,1,2,10,12"], "line 2: needs an image name, a label >= 0"),
    (["0.png,0,1,2,10,12", "0.png,0,10,2,4,12"], "line 3: box .* has x2 < x1"),
    (["0.png,0,5,5,5,9"], "line 2: box .* has no area"),
    (["0.png,0,1,2,40,12"], r"line 2: box .* outside the 32x32 image by more than 1 pixel"),
])
def test_banana_reader_names_file_and_row_of_bad_rows(tmp_path, rows, message):
    banana_layout(tmp_path, rows)
    with pytest.raises(DataError, match=r"bananas_train/label.csv, " + message):
        detection.banana_detection(data_dir=str(tmp_path))


def test_banana_reader_reports_header_missing_and_unreadable_images(tmp_path):
    folder = banana_layout(tmp_path, ["0.png,0,1,2,10,12"])
    (folder / "bananas_train" / "label.csv").write_text("name,label,x0,y0,x1,y1\n")
    with pytest.raises(DataError, match="line 1: expected the header img_name,label"):
        detection.banana_detection(data_dir=str(tmp_path))
    (folder / "bananas_train" / "label.csv").write_text(HEADER + "\n7.png,0,1,2,10,12\n")
    with pytest.raises(DataError, match=r"label.csv, line 2: image .*7.png does not exist"):
        detection.banana_detection(data_dir=str(tmp_path))
    (folder / "bananas_train" / "images" / "7.png").write_text("not an image")
    with pytest.raises(DataError, match=r"label.csv, line 2: .*7.png is not a readable image"):
        detection.banana_detection(data_dir=str(tmp_path))


def test_banana_detection_missing_names_the_folder_and_the_generated_set(tmp_path):
    with pytest.raises(DataError, match=r"banana-detection files missing in .*use the "
                                        r"generated dataset 'bananas'"):
        load_data("banana-detection", data_dir=str(tmp_path))


# ---------------------------------------------------------------- Pascal VOC

VOC_XML = """<annotation><folder>VOC2007</folder><filename>{id}.jpg</filename>
<size><width>40</width><height>20</height><depth>3</depth></size>
<object><name>dog</name><difficult>0</difficult>
  <bndbox><xmin>1</xmin><ymin>1</ymin><xmax>40</xmax><ymax>20</ymax></bndbox></object>
<object><name>person</name><difficult>1</difficult>
  <bndbox><xmin>11</xmin><ymin>5</ymin><xmax>20</xmax><ymax>15</ymax></bndbox>
  <part><name>head</name><bndbox><xmin>12</xmin><ymin>5</ymin><xmax>14</xmax><ymax>7</ymax>
  </bndbox></part></object>
</annotation>"""


def voc_layout(root, xml=VOC_XML, ids=("a", "b"), folder="pascal-voc"):
    year = root / folder / "VOCdevkit" / "VOC2007"
    (year / "ImageSets" / "Main").mkdir(parents=True)
    (year / "Annotations").mkdir()
    for split in ("trainval", "test"):
        (year / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    for image_id in ids:
        (year / "Annotations" / f"{image_id}.xml").write_text(xml.format(id=image_id))
        write_image(year / "JPEGImages" / f"{image_id}.jpg", (40, 20), fmt="JPEG")
    return year


def test_voc_reader_converts_one_based_corners_and_keeps_difficult(tmp_path):
    voc_layout(tmp_path)
    data = detection.pascal_voc(data_dir=str(tmp_path), train_sets="2007-trainval",
                                image_size=20)
    assert data.num_classes == 20 and data.class_names[11] == "dog" and len(data.train) == 2
    image, target = data.train[0]
    assert image.shape == (3, 20, 20)
    # (xmin - 1, ymin - 1, xmax, ymax), then x halved (40 -> 20); the <part> box is no object.
    assert target["boxes"].tolist() == [[0, 0, 20, 20], [5, 4, 10, 15]]
    assert target["labels"].tolist() == [11, 14]
    assert target["difficult"].tolist() == [False, True]
    assert detection_collate([data.train[0], data.test[1]])[0].shape == (2, 3, 20, 20)


@pytest.mark.parametrize("edit, message", [
    (("<name>dog</name>", "<name>wolf</name>"), "object 1: class 'wolf' is not one of"),
    (("<xmin>11</xmin>", "<xmin>x</xmin>"), "object 2: <bndbox> needs numeric"),
    (("<xmin>11</xmin>", "<xmin>25</xmin>"), r"object 2: box .* has x2 < x1"),
    (("<ymax>20</ymax>", "<ymax>23</ymax>"), r"object 1: box .* outside the 40x20 image"),
    (("<width>40</width>", ""), "<size> needs numeric <width>"),
    (("</annotation>", ""), "is not a readable VOC XML annotation"),
])
def test_voc_reader_names_file_and_object_of_bad_annotations(tmp_path, edit, message):
    voc_layout(tmp_path, VOC_XML.replace(*edit), ids=("a",))
    with pytest.raises(DataError, match=r"a.xml.*" + message):
        detection.pascal_voc(data_dir=str(tmp_path), train_sets="2007-trainval")


def test_voc_missing_lists_images_and_folder(tmp_path):
    with pytest.raises(DataError, match="pascal-voc files missing"):
        detection.pascal_voc(data_dir=str(tmp_path))
    year = voc_layout(tmp_path, ids=("a",))
    with pytest.raises(DataError, match=r"image list .*VOC2012/ImageSets/Main/trainval.txt"):
        detection.pascal_voc(data_dir=str(tmp_path))  # default also reads 2012-trainval
    with pytest.raises(DivekitError, match="not YEAR-SPLIT"):
        detection.pascal_voc(data_dir=str(tmp_path), train_sets="2007")
    (year / "JPEGImages" / "a.jpg").unlink()
    with pytest.raises(DataError, match=r"a.xml: image .*a.jpg does not exist"):
        detection.pascal_voc(data_dir=str(tmp_path), train_sets="2007-trainval")


def test_voc_an_image_unlike_its_annotation_is_reported_when_read(tmp_path):
    year = voc_layout(tmp_path, ids=("a",))
    write_image(year / "JPEGImages" / "a.jpg", (30, 20), fmt="JPEG")
    data = detection.pascal_voc(data_dir=str(tmp_path), train_sets="2007-trainval")
    with pytest.raises(DataError, match="says a.jpg is 40x20, the file is 30x20"):
        data.train[0]


def test_voc_real_files_read_every_object():
    root = real_data_dir("pascal-voc-mini")
    data = load_data("pascal-voc", data_dir=str(root), image_size=100)
    devkit = root / "pascal-voc-mini" / "VOCdevkit"
    ids = [("VOC2007", i) for i in (devkit / "VOC2007/ImageSets/Main/trainval.txt").read_text()
           .split()] + [("VOC2012", i) for i in (devkit / "VOC2012/ImageSets/Main/trainval.txt")
                        .read_text().split()]
    assert len(data.train) == len(ids) == 10 and len(data.test) == 5
    total = 0
    for (year, image_id), (image, target) in zip(ids, data.train, strict=True):
        tree = ET.parse(devkit / year / "Annotations" / f"{image_id}.xml").getroot()
        objects = tree.findall("object")
        names = [o.findtext("name") for o in objects]
        assert [data.class_names[k] for k in target["labels"].tolist()] == names
        assert target["difficult"].tolist() == [o.findtext("difficult") == "1" for o in objects]
        assert image.shape == (3, 100, 100) and (target["boxes"] <= 100).all()
        total += len(names)
    assert total == 2 + 1 + 2 + 7 + 5 + 1 + 4 + 3 + 1 + 2  # SOURCE.md's object counts
    # VOC2007 000001.xml, by eye: dog 48 240 195 371 in a 353x500 image.
    dog = data.train[0][1]["boxes"][0].tolist()
    expected = [47 * 100 / 353, 239 * 100 / 500, 195 * 100 / 353, 371 * 100 / 500]
    assert dog == pytest.approx(expected, abs=1e-4)


# ---------------------------------------------------------------- COCO

def square_polygon(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def coco_layout(root, annotations, folder="coco", image_dir="images/{split}2017"):
    base = root / folder
    (base / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        images = [{"id": 7, "file_name": "seven.jpg", "width": 40, "height": 20},
                  {"id": 9, "file_name": "nine.png", "width": 16, "height": 16}]
        categories = [{"id": 5, "name": "cat"}, {"id": 1, "name": "person"},
                      {"id": 3, "name": "car"}]
        (base / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(
            {"images": images, "annotations": annotations, "categories": categories}))
        write_image(base / image_dir.format(split=split) / "seven.jpg", (40, 20), fmt="JPEG")
        write_image(base / image_dir.format(split=split) / "nine.png", (16, 16))
    return base


def test_coco_reader_maps_ids_converts_boxes_and_decodes_masks(tmp_path):
    annotations = [
        {"id": 1, "image_id": 7, "category_id": 5, "bbox": [4, 2, 10, 6], "iscrowd": 0,
         "segmentation": square_polygon(4, 2, 14, 8)},
        {"id": 2, "image_id": 7, "category_id": 1, "bbox": [20, 0, 20, 20], "iscrowd": 1,
         "segmentation": {"size": [20, 40], "counts": [20 * 20, 20 * 20]}},
        {"id": 3, "image_id": 7, "category_id": 3, "bbox": [1, 1, 0, 5], "iscrowd": 0,
         "segmentation": square_polygon(1, 1, 2, 6)},  # no width: dropped
    ]
    coco_layout(tmp_path, annotations)
    data = detection.coco(data_dir=str(tmp_path), image_size=20, masks=True)
    assert data.class_names == ["person", "car", "cat"]  # ids 1, 3, 5 in id order
    assert len(data.train) == 2 and len(data.test) == 2
    image, target = data.train[0]
    assert image.shape == (3, 20, 20)
    assert target["boxes"].tolist() == [[2, 2, 7, 8], [10, 0, 20, 20]]  # x halved
    assert target["labels"].tolist() == [2, 0] and target["iscrowd"].tolist() == [0, 1]
    masks = target["masks"]
    assert masks.shape == (2, 20, 20) and masks.dtype == torch.uint8
    # The polygon square (4, 2)-(14, 8) covers columns 4..13 and rows 2..7 of the 40x20
    # image; the RLE (column-major runs) covers columns 20..39; x is halved by the resize.
    expected = np.zeros((2, 20, 40), dtype=np.uint8)
    expected[0, 2:8, 4:14] = 1
    expected[1, :, 20:] = 1
    assert np.array_equal(masks.numpy(), expected[:, :, 1::2])
    # An image without annotations is kept with no boxes.
    empty = data.train[1][1]
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, 20, 20)
    boxes_only = detection.coco(data_dir=str(tmp_path), image_size=20)
    assert "masks" not in boxes_only.train[0][1]


def test_coco_accepts_the_official_image_folders(tmp_path):
    coco_layout(tmp_path, [], image_dir="{split}2017")
    assert len(detection.coco(data_dir=str(tmp_path)).test) == 2


@pytest.mark.parametrize("change, message", [
    ({"bbox": [1, 1, -2, 3]}, "annotation 1: bbox .* negative width"),
    ({"category_id": 2}, "annotation 1: category_id 2 is not among"),
    ({"image_id": 8}, "annotation 1: image_id 8 is not among"),
    ({"bbox": [1, 1, 3]}, "annotation 1: needs 'image_id', 'category_id' and a 'bbox'"),
    ({"bbox": [30, 1, 15, 3]}, r"annotation 1: box .* outside the 40x20 image"),
    ({"segmentation": [[1, 2, 3, 4]]}, "annotation 1: 'segmentation' must be polygons"),
])
def test_coco_reader_names_file_and_annotation_of_bad_entries(tmp_path, change, message):
    annotation = {"id": 1, "image_id": 7, "category_id": 5, "bbox": [4, 2, 10, 6],
                  "segmentation": square_polygon(4, 2, 14, 8), **change}
    coco_layout(tmp_path, [annotation])
    with pytest.raises(DataError, match=r"instances_train2017.json, " + message):
        detection.coco(data_dir=str(tmp_path), masks=True)


def test_coco_missing_files(tmp_path):
    with pytest.raises(DataError, match=r"coco files missing in .*instances_train2017.json"):
        detection.coco(data_dir=str(tmp_path))
    base = coco_layout(tmp_path, [])
    (base / "annotations" / "instances_val2017.json").write_text("{not json")
    with pytest.raises(DataError, match="instances_val2017.json is not a readable JSON"):
        detection.coco(data_dir=str(tmp_path))


def test_coco_real_sample():
    root = real_data_dir("coco-sample")
    data = load_data("coco", data_dir=str(root), image_size=64, masks=True)
    assert data.num_classes == 80 and data.class_names[0] == "person"
    for split, dataset in (("train", data.train), ("val", data.test)):
        raw = json.loads((root / "coco-sample" / "annotations" /
                          f"instances_{split}2017.json").read_text())
        image, target = dataset[0]
        assert len(dataset) == len(raw["images"]) == 1 and image.shape == (3, 64, 64)
        assert len(target["boxes"]) == len(raw["annotations"]) == (4 if split == "train" else 19)
        ids = sorted(c["id"] for c in raw["categories"])
        assert target["labels"].tolist() == [ids.index(a["category_id"])
                                             for a in raw["annotations"]]
        assert target["masks"].shape == (len(target["boxes"]), 64, 64)
    # Annotation 82445 of val image 397133 (640x427), per SOURCE.md: a bottle at
    # [217.62, 240.54, 38.99, 57.75].
    raw = json.loads((root / "coco-sample/annotations/instances_val2017.json").read_text())
    index = [a["id"] for a in raw["annotations"]].index(82445)
    bottle = data.test[0][1]
    assert data.class_names[int(bottle["labels"][index])] == "bottle"
    expected = [217.62 * 64 / 640, 240.54 * 64 / 427, (217.62 + 38.99) * 64 / 640,
                (240.54 + 57.75) * 64 / 427]
    assert bottle["boxes"][index].tolist() == pytest.approx(expected, abs=1e-4)
    # At full width every polygon mask has pixels, nearly all inside its box.
    _, full = detection.coco(data_dir=str(root), image_size=640, masks=True).test[0]
    for mask, box in zip(full["masks"].bool(), full["boxes"].tolist(), strict=True):
        x1, y1, x2, y2 = int(box[0]) - 1, int(box[1]) - 1, int(box[2]) + 2, int(box[3]) + 2
        inside = mask[max(y1, 0):y2, max(x1, 0):x2].sum()
        assert mask.sum() > 0 and inside >= 0.97 * mask.sum()
