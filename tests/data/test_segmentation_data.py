import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import divekit.data.segmentation as seg
from divekit.data.augment import Compose, RandomHorizontalFlip
from divekit.data.registry import load_data
from divekit.data.scenes import SCENE_CLASSES, semantic_maps
from divekit.errors import DataError, DivekitError

# The book's VOC_COLORMAP (d2l 14.9), written out: the facts the palette must reproduce.
BOOK_COLORMAP = [
    [0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128], [128, 0, 128],
    [0, 128, 128], [128, 128, 128], [64, 0, 0], [192, 0, 0], [64, 128, 0], [192, 128, 0],
    [64, 0, 128], [192, 0, 128], [64, 128, 128], [192, 128, 128], [0, 64, 0], [128, 64, 0],
    [0, 192, 0], [128, 192, 0], [0, 64, 128],
]
VOID = [224, 224, 192]
CROP = (16, 24)


def random_pair(rng, height, width):
    """Noise image and per-pixel random labels (classes 0-20 and some 255)."""
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    label = rng.integers(0, 21, (height, width)).astype(np.uint8)
    label[rng.random((height, width)) < 0.1] = 255
    return image, label


def write_label(path, label, mode="P"):
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "P":
        picture = Image.fromarray(label, mode="P")
        picture.putpalette(sum(BOOK_COLORMAP, []) + [0, 0, 0] * (255 - 21) + VOID)
    else:  # RGB in the book's colours
        palette = np.zeros((256, 3), dtype=np.uint8)
        palette[:21], palette[255] = BOOK_COLORMAP, VOID
        picture = Image.fromarray(palette[label])
    picture.save(path)


def voc_layout(root, splits, folder="voc2012", label_mode="P"):
    """``root/folder/VOCdevkit/VOC2012`` with ``splits = {split: {id: (image, label)}}``."""
    voc = root / folder / "VOCdevkit" / "VOC2012"
    (voc / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    for split, examples in splits.items():
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text(
            "".join(f"{name}\n" for name in examples))
        for name, (image, label) in examples.items():
            Image.fromarray(image).save(voc / "JPEGImages" / f"{name}.jpg", quality=90)
            write_label(voc / "SegmentationClass" / f"{name}.png", label, label_mode)
    return voc


def decoded(voc, name):
    """The JPEG as Pillow decodes it, independently of the reader."""
    return np.array(Image.open(voc / "JPEGImages" / f"{name}.jpg").convert("RGB"))


@pytest.fixture
def voc(tmp_path):
    rng = np.random.default_rng(0)
    splits = {"train": {f"t{i}": random_pair(rng, 30 + i, 40 + 2 * i) for i in range(4)},
              "val": {"v0": random_pair(rng, *CROP), "v1": random_pair(rng, 21, 33)}}
    return voc_layout(tmp_path, splits), splits


def load_voc(root, **options):
    options.setdefault("crop", "16x24")
    return load_data("voc-segmentation", data_dir=str(root), **options)


def find_window(full, crop):
    """Every (top, left) where ``crop`` equals a window of ``full``."""
    h, w = crop.shape
    return [(top, left) for top in range(full.shape[0] - h + 1)
            for left in range(full.shape[1] - w + 1)
            if np.array_equal(full[top:top + h, left:left + w], crop)]


# ---------------------------------------------------------------- colours

def test_colormap_is_the_books_and_void_is_224_224_192():
    colormap = seg.voc_colormap()
    assert colormap.dtype == torch.uint8 and colormap.shape == (256, 3)
    assert colormap[:21].tolist() == BOOK_COLORMAP
    assert colormap[255].tolist() == VOID
    assert len({tuple(c) for c in colormap.tolist()}) == 256  # every index its own colour


def test_colorize_and_decolorize_round_trip_all_classes_and_void():
    labels = torch.tensor([*range(21), 255], dtype=torch.uint8).repeat(3, 2, 1)  # (3, 2, 22)
    rgb = seg.colorize(labels)
    assert rgb.shape == (3, 2, 22, 3) and rgb.dtype == torch.uint8
    assert rgb[0, 0, :21].tolist() == BOOK_COLORMAP and rgb[0, 0, 21].tolist() == VOID
    back = seg.decolorize(rgb)
    assert back.dtype == torch.uint8 and torch.equal(back, labels)


def test_decolorize_names_an_unknown_colour_and_where():
    rgb = seg.colorize(torch.zeros(4, 5, dtype=torch.long))
    rgb[2, 3] = torch.tensor([1, 2, 3])
    with pytest.raises(DataError, match=r"mask.png: colour \(1, 2, 3\) at row 2, column 3"):
        seg.decolorize(rgb, source="mask.png")


def test_colorize_refuses_float_and_out_of_range_labels():
    with pytest.raises(DivekitError, match="integer label maps"):
        seg.colorize(torch.zeros(2, 2))
    with pytest.raises(DivekitError, match="outside the colormap's 0..20"):
        seg.colorize(torch.tensor([[0, 21]]), seg.voc_colormap(21))


# ---------------------------------------------------------------- VOC reader

@pytest.mark.parametrize("folder", ["voc2012", "pascal-voc"])
def test_voc_reads_palette_labels_as_written_with_void_kept(tmp_path, folder):
    rng = np.random.default_rng(1)
    splits = {"train": {"a": random_pair(rng, *CROP)}, "val": {"b": random_pair(rng, *CROP)}}
    voc = voc_layout(tmp_path, splits, folder=folder)
    data = load_voc(tmp_path, batch_size=2)
    assert data.task == "segmentation" and len(data.class_names) == 21
    assert data.class_names[0] == "background" and data.class_names[-1] == "tvmonitor"
    assert data.colormap[:21].tolist() == BOOK_COLORMAP
    assert data.input_shape == (3, *CROP)
    for split, name in ((data.train, "a"), (data.test, "b")):
        image, label = split[0]
        assert label.dtype == torch.uint8 and image.dtype == torch.float32
        assert np.array_equal(label.numpy(), splits["train" if name == "a" else "val"][name][1])
        assert (label == 255).any()
        torch.testing.assert_close(image, torch.from_numpy(decoded(voc, name)).permute(2, 0, 1)
                                   .float() / 255, atol=0, rtol=0)


def test_voc_reads_rgb_labels_through_the_colormap(tmp_path):
    rng = np.random.default_rng(2)
    splits = {"train": {"a": random_pair(rng, *CROP)}, "val": {"b": random_pair(rng, *CROP)}}
    voc_layout(tmp_path, splits, label_mode="RGB")
    data = load_voc(tmp_path)
    assert np.array_equal(data.train[0][1].numpy(), splits["train"]["a"][1])


def test_voc_evaluation_takes_the_centre_crop(voc, tmp_path):
    root, splits = voc
    data = load_voc(tmp_path)
    image, label = data.test[1]  # v1 is 21 x 33: top (21 - 16) // 2 = 2, left (33 - 24) // 2 = 4
    assert np.array_equal(label.numpy(), splits["val"]["v1"][1][2:18, 4:28])
    expected = torch.from_numpy(decoded(root, "v1")[2:18, 4:28]).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(image, expected, atol=0, rtol=0)
    assert torch.equal(data.test[1][0], image)  # the same every time


def test_voc_training_crops_move_image_and_label_together(voc, tmp_path):
    root, splits = voc
    data = load_voc(tmp_path, batch_size=4, seed=3)
    loader = data.train_dataloader()
    windows = {name: set() for name in splits["train"]}
    for epoch in range(3):
        loader.set_epoch(epoch)
        order = list(loader.sampler())
        images, labels = next(iter(loader))
        assert images.shape == (4, 3, *CROP) and labels.shape == (4, *CROP)
        for image, label, index in zip(images, labels, order, strict=True):
            name = f"t{index}"
            # Random labels make the window unique; the image must come from the same one.
            (top, left), = find_window(splits["train"][name][1], label.numpy())
            windows[name].add((top, left))
            pixels = decoded(root, name)[top:top + CROP[0], left:left + CROP[1]]
            assert torch.equal(image, torch.from_numpy(pixels).permute(2, 0, 1).float() / 255)
    # Each image is cut at a new place in each epoch.
    assert all(len(places) == 3 for places in windows.values())


def epoch_batches(loader, epoch):
    loader.set_epoch(epoch)
    return [tuple(t.clone() for t in batch) for batch in loader]


def crops_by_example(loader, epoch):
    """Label crop of each training example (by its index in the split) in one epoch."""
    loader.set_epoch(epoch)
    order = list(loader.sampler())
    labels = torch.cat([batch[1] for batch in loader])
    return dict(zip(order, labels, strict=True))


def same(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for p, q in zip(a, b, strict=True)
                                    for x, y in zip(p, q, strict=True))


def test_voc_training_crops_follow_seed_and_epoch_and_resume_exactly(voc, tmp_path):
    data = load_voc(tmp_path, batch_size=2, seed=5, val_size=1)  # train is then a Subset
    loader = data.train_dataloader()
    first = epoch_batches(loader, 0)
    assert len(first) == 2 and same(first, epoch_batches(loader, 0))
    second = epoch_batches(loader, 1)
    assert not same(first, second)
    # Another seed cuts the same example elsewhere, not only in another order.
    other = load_voc(tmp_path, batch_size=2, seed=6, val_size=1).train_dataloader()
    crops, other_crops = crops_by_example(loader, 0), crops_by_example(other, 0)
    assert crops.keys() == other_crops.keys()
    assert all(not torch.equal(crops[i], other_crops[i]) for i in crops)
    loader.set_epoch(1)
    loader.skip_batches(1)
    assert same(list(loader), second[1:])
    # The held-out image is evaluated by its centre crop.
    image, label = next(iter(data.val_dataloader()))
    index = data.val.indices[0]
    assert torch.equal(label[0], data.train.dataset[index][1])


def test_voc_training_crops_do_not_depend_on_the_workers(voc, tmp_path):
    serial = load_voc(tmp_path, batch_size=2, seed=1).train_dataloader()
    parallel = load_voc(tmp_path, batch_size=2, seed=1, num_workers=2).train_dataloader()
    assert same(epoch_batches(serial, 2), epoch_batches(parallel, 2))


def test_voc_leaves_out_images_smaller_than_the_crop_and_says_how_many(tmp_path):
    rng = np.random.default_rng(3)
    splits = {"train": {"big": random_pair(rng, 20, 30), "narrow": random_pair(rng, 20, 23),
                        "low": random_pair(rng, 15, 30)},
              "val": {"v": random_pair(rng, *CROP)}}
    voc_layout(tmp_path, splits)
    with pytest.warns(UserWarning, match="voc-segmentation: 2 of 3 train images smaller than "
                                         "16x24 left out"):
        data = load_voc(tmp_path, crop=[16, 24])
    assert len(data.train) == 1 and data.left_out == {"train": 2, "val": 0}
    with pytest.raises(DataError, match="train.txt has no image of at least 21x24"):
        load_voc(tmp_path, crop=(21, 24))


def test_voc_warns_nothing_when_no_image_is_left_out(voc, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_voc(tmp_path)


def test_voc_without_its_files_says_where_and_how_to_get_them(tmp_path):
    with pytest.raises(DataError) as error:
        load_voc(tmp_path)
    message = str(error.value)
    assert str(tmp_path / "voc2012") in message and "VOCtrainval_11-May-2012.tar" in message
    assert "4e443f8a2eca6b1dac8a6c57641b67dd40621a49" in message and "\n" not in message


@pytest.mark.parametrize("crop", ["16by24", "16x", (16,), (0, 24), (16.0, 24), True])
def test_voc_refuses_a_bad_crop(voc, tmp_path, crop):
    with pytest.raises(DivekitError, match="crop must be HEIGHTxWIDTH"):
        load_voc(tmp_path, crop=crop)


def break_file(voc, kind):
    """Spoil one training example of the ``voc`` fixture; returns the file named in errors."""
    if kind == "missing label":
        (voc / "SegmentationClass" / "t1.png").unlink()
        return voc / "SegmentationClass" / "t1.png"
    if kind == "undecodable image":
        (voc / "JPEGImages" / "t1.jpg").write_bytes(b"not a jpeg at all")
        return voc / "JPEGImages" / "t1.jpg"
    if kind == "label size":
        write_label(voc / "SegmentationClass" / "t1.png", np.zeros((31, 40), dtype=np.uint8))
        return voc / "SegmentationClass" / "t1.png"
    if kind == "label mode":
        Image.new("RGBA", (42, 31)).save(voc / "SegmentationClass" / "t1.png")
        return voc / "SegmentationClass" / "t1.png"
    (voc / "ImageSets" / "Segmentation" / "val.txt").unlink()
    return voc / "ImageSets" / "Segmentation" / "val.txt"


@pytest.mark.parametrize("kind, message", [
    ("missing label", "train.txt, line 2: .* does not exist"),
    ("undecodable image", "train.txt, line 2: .* is not a readable image"),
    ("label size", "train.txt, line 2: label .* is 40x31 but its image t1.jpg is 42x31"),
    ("label mode", "train.txt, line 2: .* is a RGBA image"),
    ("missing list", "image list .* does not exist"),
])
def test_voc_bad_files_are_named_when_loading(voc, tmp_path, kind, message):
    path = break_file(voc[0], kind)
    with pytest.raises(DataError, match=message) as error:
        load_voc(tmp_path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_voc_bad_pixels_are_named_when_read(voc, tmp_path):
    root, splits = voc
    label = splits["train"]["t0"][1].copy()
    label[3, 5] = 30
    write_label(root / "SegmentationClass" / "t0.png", label)
    rgb = seg.colorize(torch.from_numpy(splits["train"]["t1"][1])).numpy()
    rgb[4, 6] = (9, 9, 9)
    Image.fromarray(rgb).save(root / "SegmentationClass" / "t1.png")
    jpeg = (root / "JPEGImages" / "t2.jpg").read_bytes()
    (root / "JPEGImages" / "t2.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    data = load_voc(tmp_path)
    with pytest.raises(DataError, match=r"t0.png: class index 30 at row 3, column 5; VOC "
                                        r"labels are 0-20 \(255: void\)"):
        data.train[0]
    with pytest.raises(DataError, match=r"t1.png: colour \(9, 9, 9\) at row 4, column 6"):
        data.train[1]
    with pytest.raises(DataError, match="t2.jpg is not a readable image"):
        data.train[2]


# ---------------------------------------------------------------- generated scenes

SMALL = {"num_train": 6, "num_test": 3, "image_size": 32, "data_seed": 4}


@pytest.fixture(scope="module")
def scenes():
    return load_data("scenes-segmentation", batch_size=6, **SMALL)


def test_scenes_segmentation_shapes_dtypes_and_classes(scenes):
    assert scenes.task == "segmentation"
    assert scenes.class_names == ["background", *SCENE_CLASSES] and len(scenes.class_names) == 7
    images, labels = scenes.train
    assert images.shape == (6, 3, 32, 32) and images.dtype == torch.float32
    assert labels.shape == (6, 32, 32) and labels.dtype == torch.uint8
    assert float(images.min()) >= 0 and float(images.max()) <= 1
    assert int(labels.max()) <= 6 and (labels > 0).any() and (labels == 0).any()
    assert scenes.test[0].shape == (3, 3, 32, 32) and scenes.colormap.shape == (256, 3)


def test_scenes_segmentation_labels_are_the_detection_scenes_masks(scenes):
    detection = load_data("scenes", **SMALL)
    for split in ("train", "test"):
        examples = getattr(detection, split)
        targets = [examples[i][1] for i in range(len(examples))]
        images, labels = getattr(scenes, split)
        assert torch.equal(labels, semantic_maps(targets, 32))
        assert torch.equal(images, torch.stack([examples[i][0] for i in range(len(examples))]))


def test_scenes_segmentation_is_determined_by_its_seed(scenes):
    again = load_data("scenes-segmentation", **SMALL)
    other = load_data("scenes-segmentation", **{**SMALL, "data_seed": 5})
    assert all(torch.equal(a, b) for a, b in zip(scenes.train, again.train, strict=True))
    assert not torch.equal(scenes.train[1], other.train[1])


def test_scenes_segmentation_flips_move_labels_with_pixels(scenes):
    plain = next(iter(scenes.train_dataloader()))
    scenes.transform = Compose(RandomHorizontalFlip(0.5), seed=0)
    try:
        images, labels = next(iter(scenes.train_dataloader()))
    finally:
        scenes.transform = None
    flipped = []
    for image, label, original, original_label in zip(images, labels, *plain, strict=True):
        if torch.equal(image, original):
            assert torch.equal(label, original_label)
        else:
            assert torch.equal(image, original.flip(-1))
            assert torch.equal(label, original_label.flip(-1))
            flipped.append(True)
    assert 0 < len(flipped) < len(images)



def test_the_shared_voc_folder_has_no_masks_and_the_error_says_how_to_get_them():
    # ../shared/data's VOC2012 holds detection files only (no SegmentationClass); the loader
    # must say where the segmentation files go and where they come from, in one line.
    from tests.conftest import real_data_dir

    root = real_data_dir("pascal-voc-mini")
    with pytest.raises(DataError) as error:
        load_data("voc-segmentation", data_dir=str(root))
    message = str(error.value)
    assert "\n" not in message and "VOCtrainval_11-May-2012.tar" in message
    assert str(root / "voc2012") in message
