"""The segmentation commands: show-batch with label maps (14.9), train/eval/segment (14.11)."""

import numpy as np

from tests.test_cli import cli, one_line_error
from tests.test_detection_cli import drawn_pixels, picture


def test_show_batch_draws_images_beside_their_label_maps(capsys, tmp_path):
    status, out, _ = cli(capsys, "show-batch", "scenes-segmentation", "-n", 4, "--out",
                         tmp_path / "b.png", "--augment", "flip", "-D", "num_train=8",
                         "-D", "num_test=2")
    assert status == 0 and out.strip().endswith("b.png")
    assert drawn_pixels(tmp_path / "b.png").std() > 10


def test_train_eval_and_segment_with_an_fcn_run(capsys, tmp_path):
    run = tmp_path / "run"
    status, out, err = cli(capsys, "train", "fcn-cpu", "--data", "scenes-segmentation", "-D",
                           "num_train=16", "-D", "num_test=4", "--batch-size", 8, "--epochs", 1,
                           "-M", "widths=[8, 8, 8]", "--out", run, "--quiet")
    assert status == 0, err
    final = out.strip().splitlines()[-1]
    assert " pixel_acc " in final and " miou " in final
    status, out, _ = cli(capsys, "eval", run)
    assert status == 0 and "iou_background " in out  # eval adds every class's IoU
    image = picture(tmp_path / "photo.png", width=100, height=80)
    status, out, _ = cli(capsys, "segment", run, image, "--out", tmp_path / "labels.png")
    assert status == 0 and out.startswith(f"{image}: ") and out.strip().endswith("labels.png")
    shares = out.split(": ", 1)[1].split(" -> ")[0]
    assert sum(float(part.split()[-1].rstrip("%")) for part in shares.split(", ")) <= 100.05
    assert drawn_pixels(tmp_path / "labels.png").shape == (80, 100, 3)
    status, out, _ = cli(capsys, "segment", run, image, image, "--out", tmp_path / "many")
    assert status == 0 and len(out.splitlines()) == 2 and (tmp_path / "many" / "photo.png").exists()
    status, _, err = cli(capsys, "segment", run, image, image, "--out", tmp_path / "x.png")
    one_line_error(status, err, "names a file; give a folder for 2 images")
    status, _, err = cli(capsys, "segment", run, tmp_path / "missing.png")
    one_line_error(status, err, "missing.png is not a readable image")


def test_segment_refuses_a_run_of_another_task(capsys, tmp_path):
    run = tmp_path / "run"
    status, _, err = cli(capsys, "train", "mlp", "--data", "digits", "--epochs", 1, "--out", run,
                         "--quiet")
    assert status == 0, err
    status, _, err = cli(capsys, "segment", run, picture(tmp_path / "p.png"))
    one_line_error(status, err, "needs a segmentation run")


def test_draw_segmentation_paints_classes_and_leaves_background_clear():
    import torch

    from divekit.vision.draw import draw_segmentation

    image = np.full((20, 30, 3), 100, dtype=np.uint8)
    labels = torch.zeros(20, 30, dtype=torch.long)
    labels[10:, 20:] = 2
    labels[0:2, 28:] = 255  # void: not drawn
    colors = [(0, 0, 0), (255, 0, 0), (0, 0, 255)]
    drawn = draw_segmentation(image, labels, colors, ["bg", "a", "b"], opacity=0.5)
    assert (drawn[15, 25] == (50, 50, 178)).all()  # (100 + 255) / 2 rounded in blue
    assert (drawn[5, 15] == 100).all() and (drawn[0, 29] == 100).all()
    assert (drawn[:8, :8] != 100).any()  # the legend tag of class "b"


def test_train_on_voc_files_with_random_crops_then_segment(capsys, tmp_path):
    # The book's pipeline end to end on VOC2012-layout files the test writes: random 16x24
    # training crops of larger images, centre crops to evaluate, 255 ignored.
    from tests.data.test_segmentation_data import random_pair, voc_layout

    rng = np.random.default_rng(0)
    splits = {"train": {f"t{i}": random_pair(rng, 20 + i, 30 + i) for i in range(6)},
              "val": {f"v{i}": random_pair(rng, 18, 26) for i in range(2)}}
    voc = voc_layout(tmp_path / "data", splits)
    run = tmp_path / "run"
    status, out, err = cli(capsys, "train", "fcn-cpu", "--data", "voc-segmentation", "--data-dir",
                           tmp_path / "data", "-D", "crop=16x24",
                           "-M", "widths=[8, 8, 8]", "--batch-size", 3, "--epochs", 2, "--out",
                           run, "--quiet")
    assert status == 0, err
    assert " miou " in out.strip().splitlines()[-1]
    status, out, _ = cli(capsys, "segment", run, voc / "JPEGImages" / "v0.jpg", "--out",
                         tmp_path / "v0.png", "--data-dir", tmp_path / "data")
    assert status == 0 and drawn_pixels(tmp_path / "v0.png").shape == (18, 26, 3)
