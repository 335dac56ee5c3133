"""`divekit style-transfer` (d2l 14.12): a result image, progress lines, one-line errors."""

import numpy as np
from PIL import Image

from tests.test_cli import cli, one_line_error


def stripes(path, horizontal):
    pixels = np.zeros((40, 60, 3), dtype=np.uint8)
    if horizontal:
        pixels[::4] = (230, 120, 20)
    else:
        pixels[:, ::4] = (20, 60, 220)
    Image.fromarray(pixels).save(path)
    return path


def test_style_transfer_writes_the_image_its_run_folder_and_progress(capsys, tmp_path):
    content, style = stripes(tmp_path / "c.png", True), stripes(tmp_path / "s.jpg", False)
    status, out, err = cli(capsys, "style-transfer", content, style, "--out", tmp_path / "o.png",
                           "--size", "32x48", "--steps", 4, "--save-every", 2, "--run-dir",
                           tmp_path / "run")
    assert status == 0, err
    assert "content image resized from 40x60 to 32x48" in out
    assert [line.split(":")[0] for line in out.splitlines() if line.startswith("step")] == [
        "step 0/4", "step 2/4", "step 4/4"]
    with Image.open(tmp_path / "o.png") as image:
        assert image.size == (48, 32)
    assert {p.name for p in (tmp_path / "run").iterdir()} >= {
        "step_0002.png", "step_0004.png", "losses.csv", "losses.png"}


def test_style_transfer_of_a_missing_image_is_one_line(capsys, tmp_path):
    style = stripes(tmp_path / "s.png", False)
    status, _, err = cli(capsys, "style-transfer", tmp_path / "nope.jpg", style, "--out",
                         tmp_path / "o.png", "--steps", 1)
    one_line_error(status, err, "nope.jpg")
    assert not (tmp_path / "o.png").exists()
