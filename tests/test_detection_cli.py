"""The detection commands: anchors (14.4-14.5), show-batch with boxes (14.6), train/eval/detect."""

import numpy as np
import pytest
from PIL import Image

from tests.conftest import real_data_dir
from tests.test_cli import cli, one_line_error


def picture(path, width=90, height=60):
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[10:40, 20:70] = (200, 180, 20)
    Image.fromarray(pixels).save(path)
    return path


def drawn_pixels(path):
    return np.asarray(Image.open(path).convert("RGB"))


def test_anchors_of_the_course_figure_on_catdog(capsys, tmp_path):
    image = real_data_dir("d2l-img") / "d2l-img" / "catdog.jpg"
    status, out, _ = cli(capsys, "anchors", image, "--out", tmp_path / "a.png", "--at", 250, 250)
    assert status == 0
    lines = out.splitlines()
    # d2l 14.4 prints boxes[250, 250, 0, :] = [0.06, 0.07, 0.63, 0.82] for this 728x561 image:
    # a square of side 0.75 * 561 = 420.75 pixels centred on pixel (250, 250)'s centre.
    assert lines[0] == "s=0.75, r=1.0: [40, 40, 461, 461]"
    assert [line.split(":")[0] for line in lines[:5]] == [
        "s=0.75, r=1.0", "s=0.5, r=1.0", "s=0.25, r=1.0", "s=0.75, r=2.0", "s=0.75, r=0.5"]
    assert drawn_pixels(tmp_path / "a.png").shape == (561, 728, 3)


def test_anchors_of_a_feature_map_cover_the_image(capsys, tmp_path):
    image = picture(tmp_path / "in.png")
    status, out, _ = cli(capsys, "anchors", image, "--out", tmp_path / "a.png", "--fmap", "2x3",
                         "--sizes", "0.5", "--ratios", "1")
    assert status == 0
    boxes = [line for line in out.splitlines() if line.startswith("s=")]
    assert len(boxes) == 6  # one anchor per cell of the 2x3 map
    # Cell (row 0, column 0) is centred at (15, 15) pixels; size 0.5 of the height = 30 px
    # high and 0.5 * 60 / 90 of the width = 30 px wide: a square, as the course's anchors are.
    assert boxes[0] == "s=0.5, r=1.0: [0, 0, 30, 30]"
    original, drawn = drawn_pixels(image), drawn_pixels(tmp_path / "a.png")
    assert drawn.shape == original.shape and (drawn != original).any()


@pytest.mark.parametrize("args, fragment", [
    (["--sizes", "1.5"], "sizes must be in (0, 1]"),
    (["--at", "500", "5"], "outside the 90x60 image"),
    (["--fmap", "2x2x2"], "--fmap takes HxW"),
])
def test_anchors_bad_input_is_one_line(capsys, tmp_path, args, fragment):
    image = picture(tmp_path / "in.png")
    status, _, err = cli(capsys, "anchors", image, "--out", tmp_path / "a.png", *args)
    one_line_error(status, err, fragment)


def test_anchors_of_a_file_that_is_not_an_image(capsys, tmp_path):
    (tmp_path / "notes.jpg").write_text("not a picture")
    status, _, err = cli(capsys, "anchors", tmp_path / "notes.jpg")
    one_line_error(status, err, "notes.jpg is not a readable image")


def test_show_batch_draws_ground_truth_boxes_of_generated_bananas(capsys, tmp_path):
    status, out, _ = cli(capsys, "show-batch", "bananas", "-n", 4, "--out", tmp_path / "b.png",
                         "--augment", "flip,crop=0.5", "-D", "num_train=8", "-D", "num_val=2")
    assert status == 0 and out.strip().endswith("b.png")
    assert drawn_pixels(tmp_path / "b.png").std() > 10


def test_train_eval_and_detect_with_a_mask_rcnn_run(capsys, tmp_path):
    run = tmp_path / "run"
    status, out, err = cli(capsys, "train", "mask-rcnn", "--data", "scenes", "-D", "num_train=16",
                           "-D", "num_test=4", "--batch-size", 4, "--epochs", 1, "--optimizer",
                           "adamw", "--lr", "1e-3", "-M", "width=8", "-M",
                           "representation_size=32", "-M", "mask_width=8", "--out", run,
                           "--quiet")
    assert status == 0, err
    final = out.strip().splitlines()[-1]
    for name in ("loss_objectness", "loss_classifier", "loss_mask", " map_50 ", "mask_map_50"):
        assert name in final
    status, out, _ = cli(capsys, "eval", run)
    assert status == 0
    # eval adds the AP of every class, named after it.
    assert all(f"map_50_{name} " in out for name in ("circle", "triangle", "cross"))
    image = picture(tmp_path / "photo.png", width=100, height=80)
    status, out, _ = cli(capsys, "detect", run, image, "--out", tmp_path / "boxes.png",
                         "--min-score", "0")
    assert status == 0 and out.startswith(f"{image}: ") and out.strip().endswith("boxes.png")
    assert drawn_pixels(tmp_path / "boxes.png").shape == (80, 100, 3)
    status, _, err = cli(capsys, "detect", run, image, image, "--out", tmp_path / "x.png")
    one_line_error(status, err, "names a file; give a folder for 2 images")
