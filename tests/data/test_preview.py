import pytest
import torch
from PIL import Image

from divekit.data import DataModule
from divekit.data.augment import Normalize, parse_augment
from divekit.data.preview import CELL_INCHES, DPI, grid_shape, label_title, show_batch
from divekit.errors import DivekitError


def image_data(channels: int, n: int = 40, size: int = 12) -> DataModule:
    generator = torch.Generator().manual_seed(channels)
    x = torch.rand(n, channels, size, size, generator=generator)
    y = torch.randint(0, 3, (n,), generator=generator)
    return DataModule(f"tiny-{channels}", train=(x, y), test=(x[:5], y[:5]), batch_size=8,
                      class_names=["cat", "dog", "owl"])


def png_size(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()
        return image.size


@pytest.mark.parametrize(("channels", "augment", "n"), [
    (1, None, 32), (3, "flip,crop=0.5,jitter,hue,erase,mixup", 12), (3, None, 3),
])
def test_writes_a_png_grid_of_the_right_size(tmp_path, channels, augment, n):
    path = show_batch(image_data(channels), tmp_path / "out" / "batch.png", augment=augment, n=n)
    assert path == tmp_path / "out" / "batch.png" and path.stat().st_size > 0
    rows, columns = grid_shape(n)
    assert rows * columns >= n > (rows - 1) * columns
    assert png_size(path) == (round(columns * CELL_INCHES[0] * DPI),
                              round(rows * CELL_INCHES[1] * DPI))


def test_callable_augment_and_small_split(tmp_path):
    data = image_data(3)
    data.test = (data.test[0] * 4 - 2, data.test[1])  # outside [0, 1]: rescaled for display
    path = show_batch(data, tmp_path / "test.png", augment=parse_augment("flip", seed=1),
                      n=32, split="test")
    assert png_size(path) == (round(5 * CELL_INCHES[0] * DPI), round(CELL_INCHES[1] * DPI))
    normalize = Normalize([0.5] * 3, [0.2] * 3)
    show_batch(data, tmp_path / "norm.png", augment=lambda x, y: (normalize(x), y), n=4)


def test_titles_name_the_class_or_the_top_mixed_class():
    names = ["cat", "dog", "owl"]
    assert label_title(torch.tensor(2), names) == "owl"
    assert label_title(torch.tensor([0.25, 0.7, 0.05]), names) == "dog 0.70"
    assert label_title(torch.tensor(1.5), []) == "1.5"


def test_bad_arguments(tmp_path):
    data = image_data(1)
    for n in (0, -3, 2.5):
        with pytest.raises(DivekitError, match="n must be a positive integer"):
            show_batch(data, tmp_path / "x.png", n=n)
    with pytest.raises(DivekitError, match="has no split 'val'; choose train, test"):
        show_batch(data, tmp_path / "x.png", split="val")
    flat = DataModule("flat", train=(torch.rand(4, 6), torch.zeros(4, dtype=torch.long)),
                      test=(torch.rand(4, 6), torch.zeros(4, dtype=torch.long)),
                      class_names=["a"])
    with pytest.raises(DivekitError, match="needs images"):
        show_batch(flat, tmp_path / "x.png")
    with pytest.raises(DivekitError, match="unknown augmentation 'spin'"):
        show_batch(data, tmp_path / "x.png", augment="spin")
    assert not (tmp_path / "x.png").exists()
