import numpy as np
import pytest
import torch
from PIL import Image

import divekit.data.folder as folder
from divekit import DataError, DivekitError, TensorLoader, load_data
from divekit.data.streaming import DatasetLoader

RED, BLUE, GREEN = (255, 0, 0), (0, 0, 255), (0, 200, 0)
ORANGE = (250, 120, 30)


def solid(path, colour, size=(10, 7), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format=fmt)


def make_layout(root, held_out="test"):
    """cat: 2 training PNGs, dog: a JPEG and a PNG; one image per class held out."""
    solid(root / "train" / "cat" / "a.png", ORANGE, (10, 7))
    solid(root / "train" / "cat" / "b.png", RED, (5, 20))
    solid(root / "train" / "dog" / "c.jpg", GREEN, (12, 12), "JPEG")
    solid(root / "train" / "dog" / "d.png", BLUE, (16, 16))
    solid(root / held_out / "cat" / "e.png", RED)
    solid(root / held_out / "dog" / "f.png", BLUE)
    # Hidden entries are skipped; loose files next to the class folders are ignored.
    (root / "train" / "cat" / ".DS_Store").write_bytes(b"\0\1 not an image")
    (root / "train" / ".ipynb_checkpoints").mkdir()
    (root / "train" / "README.txt").write_text("my pictures")
    return root


def expected_colour(colour, size):
    return (torch.tensor(colour, dtype=torch.float64) / 255).view(3, 1, 1).expand(3, size, size)


def test_loads_images_by_class_folder(tmp_path):
    data = folder.image_folder(path=str(make_layout(tmp_path)), size=16)
    (x, y), (x_test, y_test) = data.train, data.test
    assert data.class_names == ["cat", "dog"] and data.num_classes == 2
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32 and x.is_contiguous()
    assert y.tolist() == [0, 0, 1, 1] and y.dtype == torch.long
    assert x_test.shape == (2, 3, 16, 16) and y_test.tolist() == [0, 1]
    # Lossless solid colours come back exactly, whatever size they were resized from.
    for image, colour in ((x[0], ORANGE), (x[1], RED), (x[3], BLUE), (x_test[1], BLUE)):
        torch.testing.assert_close(image.double(), expected_colour(colour, 16), atol=1e-7, rtol=0)
    # JPEG is lossy: close to the colour, not exact.
    torch.testing.assert_close(x[2].double(), expected_colour(GREEN, 16), atol=6 / 255, rtol=0)


def test_rows_and_channels_keep_their_place(tmp_path):
    make_layout(tmp_path)
    pixels = np.zeros((8, 16, 3), dtype=np.uint8)  # 8 rows, 16 columns: only the width shrinks
    pixels[:4, :, 0] = 255  # top half red
    pixels[4:, :, 2] = 100  # bottom half dark blue
    Image.fromarray(pixels).save(tmp_path / "train" / "cat" / "a.png")
    x = folder.image_folder(path=str(tmp_path), size=8).train[0][0]
    expected = torch.from_numpy(pixels[:, ::2].copy()).permute(2, 0, 1).double() / 255
    torch.testing.assert_close(x.double(), expected, atol=1e-7, rtol=0)


def test_grayscale_uses_the_itu_r_601_luma(tmp_path):
    data = load_data("image-folder", batch_size=2, path=str(make_layout(tmp_path)), size=8,
                     grayscale=True)
    x = data.train[0]
    assert x.shape == (4, 1, 8, 8)
    # Pillow documents L = R * 299/1000 + G * 587/1000 + B * 114/1000.
    for image, (r, g, b) in ((x[0], ORANGE), (x[1], RED), (x[3], BLUE)):
        luma = (r * 299 + g * 587 + b * 114) / 1000 / 255
        torch.testing.assert_close(image.double(), torch.full((1, 8, 8), luma, dtype=torch.float64),
                                   atol=1 / 255, rtol=0)


def test_val_folder_stands_in_for_a_missing_test_folder(tmp_path):
    data = folder.image_folder(path=str(make_layout(tmp_path, held_out="val")), size=4)
    assert data.test[1].tolist() == [0, 1]


def test_class_folders_must_match(tmp_path):
    make_layout(tmp_path)
    solid(tmp_path / "test" / "bird" / "g.png", RED)
    with pytest.raises(DataError, match=r"only in train: none, only in test: \['bird'\]"):
        folder.image_folder(path=str(tmp_path))


@pytest.mark.parametrize("content", [b"this is not a png", "truncated"])
def test_unreadable_image_names_the_file(tmp_path, content):
    make_layout(tmp_path)
    bad = tmp_path / "train" / "dog" / "broken.jpg"
    if content == "truncated":
        content = (tmp_path / "train" / "dog" / "c.jpg").read_bytes()[:-40]
    bad.write_bytes(content)
    with pytest.raises(DataError, match=f"{bad} is not a readable image"):
        folder.image_folder(path=str(tmp_path))


def test_empty_class_folder(tmp_path):
    make_layout(tmp_path)
    (tmp_path / "test" / "dog" / "f.png").unlink()
    (tmp_path / "test" / "dog" / ".hidden.png").write_bytes(b"")
    with pytest.raises(DataError, match=f"class folder {tmp_path / 'test' / 'dog'} holds no"):
        folder.image_folder(path=str(tmp_path))


def test_missing_folders(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        folder.image_folder(path=str(tmp_path / "nowhere"))
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match=r"has no test/ \(or val/\) folder"):
        folder.image_folder(path=str(tmp_path))
    (tmp_path / "test").mkdir()
    with pytest.raises(DataError, match="has no class folders"):
        folder.image_folder(path=str(tmp_path))
    solid(tmp_path / "other" / "cat" / "a.png", RED)
    (tmp_path / "train").rmdir()
    with pytest.raises(DataError, match=f"{tmp_path / 'train'} is not a folder"):
        folder.image_folder(path=str(tmp_path))


@pytest.mark.parametrize("options", [{}, {"path": ".", "size": 0}, {"path": ".", "size": 2.5}])
def test_bad_options(options):
    with pytest.raises(DivekitError, match="path=|size must be a positive integer"):
        folder.image_folder(**options)


def test_streamed_dataset_decodes_the_tensors_of_the_preloaded_split(tmp_path):
    classes = folder.list_classes(make_layout(tmp_path) / "train")
    images, labels = folder.load_split(classes, 16)
    dataset = folder.ImageFolderDataset.from_classes(classes, 16)
    assert len(dataset) == 4
    for i in range(4):
        image, label = dataset[i]
        assert image.shape == (3, 16, 16) and image.dtype == torch.float32
        assert torch.equal(image, images[i]) and image.is_contiguous()
        assert label.dtype == torch.long and label.ndim == 0 and label == labels[i]
    image, _ = folder.ImageFolderDataset.from_classes(classes, 8, grayscale=True)[1]
    assert torch.equal(image, folder.load_split(classes, 8, grayscale=True)[0][1])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_streamed_and_preloaded_give_the_same_batches(tmp_path, num_workers):
    make_layout(tmp_path)
    preloaded = folder.image_folder(path=str(tmp_path), size=16, stream=False)
    streamed = folder.image_folder(path=str(tmp_path), size=16, stream=True,
                                   num_workers=num_workers)
    assert isinstance(streamed.train, folder.ImageFolderDataset)
    assert isinstance(streamed.test, folder.ImageFolderDataset)
    assert streamed.num_workers == num_workers and streamed.class_names == ["cat", "dog"]
    for split in ("train", "test"):
        tensors = TensorLoader(*getattr(preloaded, split), batch_size=3, shuffle=True, seed=4)
        lazy = DatasetLoader(getattr(streamed, split), batch_size=3, shuffle=True, seed=4,
                             num_workers=streamed.num_workers)
        for loader in (tensors, lazy):
            loader.set_epoch(1)
        pairs = list(zip(lazy, tensors, strict=True))
        assert len(pairs) == len(tensors)
        for (x, y), (x_pre, y_pre) in pairs:
            assert torch.equal(x, x_pre) and torch.equal(y, y_pre)


def test_preloads_while_the_decoded_set_fits_the_limit(tmp_path, monkeypatch):
    make_layout(tmp_path)  # 6 images: 6 * 3 * 16 * 16 * 4 bytes decoded
    needed = folder.decoded_bytes(6, 16)
    assert needed == 18_432 and folder.decoded_bytes(6, 16, grayscale=True) == 6_144
    monkeypatch.setattr(folder, "PRELOAD_LIMIT_BYTES", needed)
    data = folder.image_folder(path=str(tmp_path), size=16)
    assert isinstance(data.train, tuple) and data.train[0].shape == (4, 3, 16, 16)
    monkeypatch.setattr(folder, "PRELOAD_LIMIT_BYTES", needed - 1)
    assert isinstance(folder.image_folder(path=str(tmp_path), size=16).train,
                      folder.ImageFolderDataset)
    assert isinstance(folder.image_folder(path=str(tmp_path), size=16, stream=False).train, tuple)


def test_a_broken_streamed_image_is_named_when_read(tmp_path):
    make_layout(tmp_path)
    (tmp_path / "test" / "dog" / "g.png").write_bytes(b"not a png")
    data = folder.image_folder(path=str(tmp_path), stream=True)  # nothing decoded yet
    assert data.test[1][1] == 1
    with pytest.raises(DataError, match="g.png is not a readable image"):
        data.test[2]


@pytest.mark.parametrize(("options", "message"), [
    ({"stream": "yes"}, "stream must be true, false or unset"),
    ({"num_workers": -1}, "num_workers must be an integer >= 0"),
])
def test_bad_streaming_options(tmp_path, options, message):
    with pytest.raises(DivekitError, match=message):
        folder.image_folder(path=str(tmp_path), **options)


def test_load_data_streams_through_the_data_module(tmp_path):
    make_layout(tmp_path)
    options = {"batch_size": 3, "seed": 2, "path": str(tmp_path), "size": 8}
    streamed = load_data("image-folder", stream=True, num_workers=2, **options)
    preloaded = load_data("image-folder", stream=False, **options)
    loaders = [streamed.train_dataloader(), preloaded.train_dataloader()]
    assert isinstance(loaders[0], DatasetLoader) and loaders[0].num_workers == 2
    for (x, y), (x_pre, y_pre) in zip(*loaders, strict=True):
        assert torch.equal(x, x_pre) and torch.equal(y, y_pre)
