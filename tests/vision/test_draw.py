import numpy as np
import pytest
import torch
from PIL import Image

from divekit.errors import DivekitError
from divekit.vision.draw import PALETTE, blend_masks, draw_detections, save_image, to_pixels

GREY = 100


def grey(height=40, width=60):
    return torch.full((3, height, width), GREY, dtype=torch.uint8)


def test_outline_covers_the_pixels_just_inside_the_box():
    picture = draw_detections(grey(), [[10, 5, 30, 25]], width=1, colors=["red"])
    assert picture.shape == (40, 60, 3) and picture.dtype == np.uint8
    red = np.array([255, 0, 0])
    drawn = (picture == red).all(-1)
    expected = np.zeros((40, 60), dtype=bool)
    for i in range(40):
        for j in range(60):
            on_edge = (i in (5, 24) and 10 <= j <= 29) or (j in (10, 29) and 5 <= i <= 24)
            expected[i, j] = on_edge
    assert np.array_equal(drawn, expected)
    assert (picture[~drawn] == GREY).all()


def test_whole_image_box_is_the_border_and_anchors_leaving_it_are_cut():
    picture = draw_detections(grey(), torch.tensor([[0.0, 0, 60, 40], [-20, -20, 100, 100]]),
                              width=1)
    first = np.array(PALETTE[0])
    assert (picture[0] == first).all() and (picture[:, 59] == first).all()
    assert (picture[1:-1, 1:-1] == GREY).all()


def test_colours_by_class_in_turn_and_d2l_short_names():
    image = grey()
    by_class = draw_detections(image, [[0, 0, 10, 10], [20, 0, 30, 10]], labels=[3, 3],
                               width=1)
    assert (by_class[5, 0] == PALETTE[3]).all() and (by_class[5, 20] == PALETTE[3]).all()
    cycled = draw_detections(image, [[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]],
                             colors=["b", "g"], width=1)
    assert (cycled[5, 0] == [0, 0, 255]).all() and (cycled[5, 40] == [0, 0, 255]).all()
    assert (cycled[5, 20] == [0, 128, 0]).all()


def test_caption_sits_above_the_box_with_the_class_name_and_score():
    plain = draw_detections(grey(80, 80), [[20, 40, 60, 70]], labels=[1], width=1)
    captioned = draw_detections(grey(80, 80), [[20, 40, 60, 70]], labels=[1], scores=[0.9],
                                class_names=["cat", "dog"], width=1)
    tag = (captioned[:40] != GREY).any(-1)
    assert tag[25:40, 20:40].mean() > 0.5  # a filled tag just above the corner
    # Text pixels differ from the tag colour; a longer caption makes a wider tag.
    assert not (captioned[:40][tag] == PALETTE[1]).all()
    assert tag.sum() > (plain[:40] != GREY).any(-1).sum()


def test_masks_blend_as_a_loop_computes():
    pixels = np.random.default_rng(0).integers(0, 256, (12, 14, 3), dtype=np.uint8)
    masks = torch.rand(2, 12, 14, generator=torch.Generator().manual_seed(0))
    colours = [(255, 0, 0), (0, 0, 200)]
    blended = blend_masks(pixels, masks, colours, opacity=0.4)
    expected = pixels.astype(np.float64)
    for k in range(2):
        for i in range(12):
            for j in range(14):
                if masks[k, i, j] > 0.5:
                    expected[i, j] = 0.6 * expected[i, j] + 0.4 * np.array(colours[k])
    assert np.abs(blended.astype(np.float64) - expected).max() <= 0.5 + 1e-6
    assert np.array_equal(pixels, pixels.copy())  # the input is unchanged


def test_float_and_uint8_images_draw_alike():
    image = torch.rand(3, 20, 30, generator=torch.Generator().manual_seed(1))
    as_bytes = (image * 255 + 0.5).to(torch.uint8)
    boxes, masks = [[2, 3, 12, 15]], torch.zeros(1, 20, 30, dtype=torch.bool)
    masks[0, 5:8, 4:9] = True
    a = draw_detections(image, boxes, labels=[0], masks=masks)
    b = draw_detections(as_bytes, boxes, labels=[0], masks=masks)
    assert np.array_equal(a, b)
    assert np.array_equal(to_pixels(as_bytes), as_bytes.permute(1, 2, 0).numpy())


def test_bad_arguments():
    with pytest.raises(DivekitError, match="2 boxes but 1 labels"):
        draw_detections(grey(), [[0, 0, 5, 5], [1, 1, 4, 4]], labels=[0])
    with pytest.raises(DivekitError, match=r"\(3, H, W\)"):
        draw_detections(torch.zeros(4, 5, 5), [])
    with pytest.raises(DivekitError, match="masks must be"):
        draw_detections(grey(), [[0, 0, 5, 5]], masks=torch.zeros(1, 3, 3))
    with pytest.raises(DivekitError, match="unknown colour"):
        draw_detections(grey(), [[0, 0, 5, 5]], colors=["no-such-colour"])
    assert (draw_detections(grey(), []) == GREY).all()


def test_save_image_writes_png_atomically(tmp_path):
    picture = draw_detections(grey(), [[10, 5, 30, 25]], labels=[0], scores=[0.5])
    path = save_image(picture, tmp_path / "out" / "boxes.png")
    with Image.open(path) as written:
        assert written.format == "PNG" and np.array_equal(np.asarray(written), picture)
    assert sorted(p.name for p in path.parent.iterdir()) == ["boxes.png"]
    save_image(torch.zeros(3, 4, 5), path)  # replaces it; a (3, H, W) tensor works too
    with Image.open(path) as written:
        assert written.size == (5, 4)
    with pytest.raises(DivekitError):
        save_image(np.zeros((4, 5, 2), dtype=np.uint8), tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()
