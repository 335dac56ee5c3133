"""``resize``: image batches enlarged on the fly (the course's 224 / 96 px Fashion-MNIST)."""

import pytest
import torch
import torch.nn.functional as F

from divekit.data import DataModule
from divekit.data.augment import parse_augment
from divekit.data.collate import detection_collate
from divekit.errors import DivekitError
from tests.conftest import fake_fashion
from tests.data.test_augment import (
    assert_boxes_follow_painted_rectangles,
    coordinate_images,
    label_map_from_coordinates,
)


def test_resized_loaders_resize_every_split_and_keep_the_labels():
    data = fake_fashion(10, 7, batch_size=4)
    data.val = (data.train[0][:3], data.train[1][:3])
    big = data.resized(40)
    assert big.input_shape == (1, 40, 40) and data.input_shape == (1, 28, 28)
    assert big.num_classes == 10 and big.train is data.train  # no copy of the 28x28 tensors

    def expected(images):
        return F.interpolate(images, size=(40, 40), mode="bilinear", align_corners=False)

    for loader, (images, labels), sizes in ((big.test_dataloader(), data.test, [4, 3]),
                                            (big.val_dataloader(), data.val, [3])):
        batches = list(loader)
        assert [len(x) for x, _ in batches] == sizes  # evaluation batches of batch_size
        torch.testing.assert_close(torch.cat([x for x, _ in batches]), expected(images))
        assert torch.equal(torch.cat([y for _, y in batches]), labels)
    train = list(big.train_dataloader())
    assert [x.shape for x, _ in train] == [(4, 1, 40, 40)] * 2 + [(2, 1, 40, 40)]
    images = torch.cat([x for x, _ in train])
    labels = torch.cat([y for _, y in train])
    # Shuffled: find each resized image's source by its label and pixels.
    sources = expected(data.train[0])
    for image, label in zip(images, labels, strict=True):
        match = [i for i in range(10) if torch.allclose(sources[i], image)]
        assert len(match) == 1 and data.train[1][match[0]] == label


def test_augmentation_sees_resized_images():
    seen = []

    def augment(images, labels):
        seen.append(images.shape)
        return images.flip(-1), labels

    data = fake_fashion(4, 2, batch_size=4).resized(32)
    data.transform = augment
    (images, _), = list(data.train_dataloader())
    assert seen == [(4, 1, 32, 32)] and images.shape == (4, 1, 32, 32)
    list(data.test_dataloader())
    assert len(seen) == 1  # evaluation batches are resized, not augmented


@pytest.mark.parametrize("size", [0, -3, 2.5, True])
def test_bad_size(size):
    with pytest.raises(DivekitError, match="resize must be a positive integer"):
        fake_fashion(2, 2, batch_size=2).resized(size)


def test_only_images_can_be_resized():
    flat = DataModule("flat", train=(torch.zeros(4, 3), torch.zeros(4)),
                      test=(torch.zeros(2, 3), torch.zeros(2)), task="regression")
    with pytest.raises(DivekitError, match=r"image batches \(N, C, H, W\)"):
        flat.resized(32)


@pytest.mark.parametrize(("side", "size"), [(14, 40), (28, 12)])  # enlarged, shrunk
def test_label_maps_are_resized_by_the_nearest_pixel_like_the_images(side, size):
    # Pixels hold their own coordinates, so each resized pixel says which pixel it came from.
    images = coordinate_images(5, side, side)
    maps = label_map_from_coordinates(images, side, exact=False)
    data = DataModule("seg", train=(images, maps), test=(images, maps), batch_size=2,
                      task="segmentation").resized(size)
    batches = list(data.test_dataloader())
    out = torch.cat([x for x, _ in batches])
    out_maps = torch.cat([y for _, y in batches])
    assert out_maps.shape == (5, size, size) and out_maps.dtype == torch.int64
    assert torch.equal(out_maps, label_map_from_coordinates(out, side))
    assert set(out_maps.unique().tolist()) <= set(maps.unique().tolist())
    # Training batches: resized, then flipped with their maps.
    data.transform = parse_augment("flip,vflip", seed=0)
    for x, y in data.train_dataloader():
        assert torch.equal(y, label_map_from_coordinates(x, side))


class Boxes(torch.utils.data.Dataset):
    """12 x 20 images with box k painted in channel k and pixel coordinates in the last two
    channels; image i has the first i boxes (image 0 none)."""

    rectangles = [[0, 0, 20, 12], [3, 2, 9, 7], [11, 5, 20, 12]]

    def __len__(self):
        return 4

    def __getitem__(self, i):
        image = torch.zeros(5, 12, 20, dtype=torch.float64)
        image[3:] = coordinate_images(1, 12, 20)[0]
        masks = torch.zeros(i, 12, 20, dtype=torch.uint8)
        for k, (x1, y1, x2, y2) in enumerate(self.rectangles[:i]):
            image[k, y1:y2, x1:x2] = masks[k, y1:y2, x1:x2] = 1
        boxes = torch.tensor(self.rectangles[:i], dtype=torch.float32).view(-1, 4)
        return image, {"boxes": boxes, "labels": torch.arange(i), "masks": masks,
                       "image_id": i}


@pytest.mark.parametrize("size", [16, 32])  # no output pixel centre between two inputs
def test_detection_boxes_and_masks_are_resized_with_the_images(size):
    data = DataModule("boxes", train=Boxes(), test=Boxes(), batch_size=4, task="detection",
                      collate_fn=detection_collate).resized(size)
    (images, targets), = list(data.test_dataloader())
    assert images.shape == (4, 5, size, size) and [t["image_id"] for t in targets] == [0, 1, 2, 3]
    before = torch.stack([Boxes()[i][0] for i in range(4)])
    assert assert_boxes_follow_painted_rectangles(before, images, targets) == 0
    assert [t["labels"].tolist() for t in targets] == [[], [0], [0, 1], [0, 1, 2]]
    assert targets[1]["boxes"].tolist() == [[0, 0, size, size]]  # the whole image stays whole
