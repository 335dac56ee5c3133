"""``resize``: image batches enlarged on the fly (the course's 224 / 96 px Fashion-MNIST)."""

import pytest
import torch
import torch.nn.functional as F

from divekit.data import DataModule
from divekit.errors import DivekitError
from tests.conftest import fake_fashion


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
