"""Neural style transfer (d2l 14.12): losses against direct formulas, the VGG-19 weight file
loader against a torchvision-layout network, the fallback extractor, the optimisation loop and
the file-level run, and a learning test on the book's images."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from divekit.errors import DataError, DivekitError
from divekit.vision.style import (
    content_loss,
    denormalize,
    gram,
    normalize,
    read_image,
    run_style_transfer,
    style_loss,
    style_transfer,
    tv_loss,
)
from divekit.vision.style_features import RandomFeatures, VGG19Features
from tests.conftest import real_data_dir

# torchvision's vgg19 ``features`` layout ("M" a 2x2 max-pool), written out independently.
VGG19_LAYOUT = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
                512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]


def torchvision_layout_features() -> nn.Sequential:
    layers, channels = [], 3
    for item in VGG19_LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, item, 3, padding=1), nn.ReLU(inplace=True)]
            channels = item
    return nn.Sequential(*layers)


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    """A torchvision-style VGG-19 state dict (random weights) saved to disk, and its network."""
    torch.manual_seed(0)
    features = torchvision_layout_features()
    state = {f"features.{key}": value for key, value in features.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(4, 8)  # a real file's head: ignored
    path = tmp_path_factory.mktemp("vgg") / "vgg19.pth"
    torch.save(state, path)
    return path, features.eval(), state


def test_gram_of_a_known_tensor_by_hand():
    x = torch.arange(12, dtype=torch.float64).reshape(2, 2, 3)  # rows 0..5 and 6..11
    expected = torch.tensor([[55.0, 145.0], [145.0, 451.0]], dtype=torch.float64) / 12
    torch.testing.assert_close(gram(x), expected)
    batch = torch.randn(3, 4, 5, 6, dtype=torch.float64)
    torch.testing.assert_close(gram(batch), torch.stack([gram(image) for image in batch]))
    with pytest.raises(DivekitError, match="gram takes"):
        gram(torch.zeros(4, 5))


def test_content_and_style_losses_equal_direct_formulas():
    generator = torch.Generator().manual_seed(1)
    y_hat, y = torch.randn(2, 1, 3, 4, 5, dtype=torch.float64, generator=generator)
    torch.testing.assert_close(content_loss(y_hat, y), ((y_hat - y) ** 2).sum() / 60)
    target = torch.randn(1, 3, 3, dtype=torch.float64, generator=generator)
    flat = y_hat[0].reshape(3, 20)
    direct = torch.tensor(0.0, dtype=torch.float64)
    for i in range(3):
        for j in range(3):
            direct += (sum(flat[i, k] * flat[j, k] for k in range(20)) / 60 - target[0, i, j]) ** 2
    torch.testing.assert_close(style_loss(y_hat, target), direct / 9)


def test_tv_of_a_ramp_image_is_half_the_two_slopes():
    rows = torch.arange(6, dtype=torch.float64).view(6, 1)
    cols = torch.arange(7, dtype=torch.float64).view(1, 7)
    ramp = (0.3 * rows - 0.8 * cols).expand(2, 3, 6, 7)
    torch.testing.assert_close(tv_loss(ramp), torch.tensor(0.5 * (0.3 + 0.8),
                                                           dtype=torch.float64))
    assert tv_loss(torch.ones(1, 3, 4, 4)) == 0


def test_gradients_of_the_summed_losses_pass_gradcheck_and_targets_get_none():
    generator = torch.Generator().manual_seed(2)
    image = torch.randn(1, 3, 5, 6, dtype=torch.float64, generator=generator, requires_grad=True)
    content_target = torch.randn(1, 3, 5, 6, dtype=torch.float64, generator=generator,
                                 requires_grad=True)
    style_target = torch.randn(1, 3, 3, dtype=torch.float64, generator=generator,
                               requires_grad=True)

    def total(x):
        return content_loss(x, content_target) + style_loss(x, style_target) + tv_loss(x)

    assert torch.autograd.gradcheck(total, (image,))
    total(image).backward()
    assert content_target.grad is None and style_target.grad is None  # fixed targets


def test_normalize_uses_imagenet_statistics_and_denormalize_inverts_it():
    image = torch.rand(1, 3, 4, 5, dtype=torch.float64)
    normalised = normalize(image)
    torch.testing.assert_close(normalised[0, 1, 2, 3], (image[0, 1, 2, 3] - 0.456) / 0.224)
    torch.testing.assert_close(denormalize(normalised), image)
    assert denormalize(torch.full((1, 3, 2, 2), 9.0)).max() == 1  # clamped for display


def test_vgg19_from_torchvision_keys_gives_the_networks_own_features(vgg_file):
    path, features, _ = vgg_file
    extractor = VGG19Features.from_file(path)
    images = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(3))
    content, style = extractor(images)
    taps, x = {}, images
    with torch.no_grad():
        for index, layer in enumerate(features):
            x = layer(x.clone())  # clone: the oracle's in-place ReLUs must not change a tap
            taps[index] = x
    assert len(content) == 1 and len(style) == 5
    torch.testing.assert_close(content[0], taps[25], rtol=0, atol=0)
    for got, index in zip(style, (0, 5, 10, 19, 28), strict=True):
        torch.testing.assert_close(got, taps[index], rtol=0, atol=0)
    assert len(extractor.layers) == 29  # cut after conv5_1
    assert not any(p.requires_grad for p in extractor.parameters())
    assert extractor.loss_weights == (1.0, 1e4, 10.0)


@pytest.mark.parametrize("change, message", [
    (lambda s: s.pop("features.10.weight"), r"missing, e\.g\. features\.10\.weight"),
    (lambda s: s.update({"features.5.bias": torch.zeros(7)}),
     r"features\.5\.bias has shape \(7,\), VGG-19 needs \(128,\)"),
], ids=["missing", "misshapen"])
def test_a_vgg_file_with_missing_or_misshapen_keys_is_named(vgg_file, tmp_path, change,
                                                            message):
    _, _, state = vgg_file
    state = dict(state)
    change(state)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(DivekitError, match=message) as error:
        VGG19Features.from_file(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_unreadable_or_absent_weight_files_get_one_line(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a weights file")
    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], listed)
    for path, message in ((tmp_path / "absent.pth", "no weights file at"),
                          (garbage, "could not be read as weights"),
                          (listed, "holds a list, not a state dict")):
        with pytest.raises(DivekitError, match=message) as error:
            VGG19Features.from_file(path)
        assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_random_features_are_seeded_multiscale_and_fixed():
    images = torch.randn(1, 3, 37, 50, generator=torch.Generator().manual_seed(4))
    content, style = RandomFeatures(seed=0)(images)
    again, _ = RandomFeatures(seed=0)(images)
    other, _ = RandomFeatures(seed=1)(images)
    torch.testing.assert_close(content[0], again[0], rtol=0, atol=0)
    assert not torch.allclose(content[0], other[0])
    # ceil_mode pooling keeps the odd last row and column at every scale.
    assert [tuple(f.shape) for f in style] == [(1, 16, 37, 50), (1, 64, 19, 25),
                                               (1, 128, 10, 13), (1, 256, 5, 7)]
    assert tuple(content[0].shape) == (1, 64, 19, 25)
    assert not any(p.requires_grad for p in RandomFeatures().parameters())


def test_history_records_weighted_losses_from_the_content_image_on():
    generator = torch.Generator().manual_seed(5)
    content = torch.rand(3, 16, 24, generator=generator)
    style = torch.rand(1, 3, 20, 30, generator=generator)  # another size: resized
    extractor = RandomFeatures(seed=0)
    calls = []
    image, history = style_transfer(content, style, extractor=extractor, steps=3,
                                    weights=(2.0, 100.0, 3.0),
                                    on_step=lambda step, losses, shown: calls.append(
                                        (step, shown.shape, float(shown.min()),
                                         float(shown.max()))))
    assert image.shape == (1, 3, 16, 24) and image.min() >= 0 and image.max() <= 1
    assert [row["step"] for row in history] == [0, 1, 2, 3]
    assert [call[0] for call in calls] == [0, 1, 2, 3]
    assert all(call[1] == (1, 3, 16, 24) and call[2] >= 0 and call[3] <= 1 for call in calls)
    # Step 0 is the content image: recompute its losses directly with the same extractor.
    resized = torch.nn.functional.interpolate(style, size=(16, 24), mode="bilinear",
                                              antialias=True)
    with torch.no_grad():
        _, style_targets = extractor(normalize(resized))
        _, style_now = extractor(normalize(content[None]))
    expected_style = 100.0 * sum(((gram(a) - gram(b)) ** 2).mean()
                                 for a, b in zip(style_now, style_targets, strict=True))
    first = history[0]
    assert first["content"] == 0
    assert first["style"] == pytest.approx(float(expected_style), rel=1e-5)
    assert first["tv"] == pytest.approx(3.0 * float(tv_loss(normalize(content[None]))),
                                        rel=1e-5)
    for row in history:
        assert row["total"] == pytest.approx(row["content"] + row["style"] + row["tv"],
                                             rel=1e-5)
    assert history[-1]["total"] < history[0]["total"]


def test_zero_steps_return_the_content_image_and_bad_input_is_refused():
    content = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    image, history = style_transfer(content, content, steps=0)
    torch.testing.assert_close(image, content)
    assert len(history) == 1 and history[0]["style"] == 0
    with pytest.raises(DivekitError, match="content image must be a float"):
        style_transfer(torch.rand(2, 3, 8, 8), content)
    with pytest.raises(DivekitError, match="style image must be a float"):
        style_transfer(content, torch.rand(1, 8, 8))
    with pytest.raises(DivekitError, match="steps >= 0"):
        style_transfer(content, content, steps=-1)


def write_picture(path, height, width, seed):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def test_run_writes_the_result_steps_and_curves_with_vgg_weights(vgg_file, tmp_path):
    content = write_picture(tmp_path / "content.png", 16, 24, 0)
    style = write_picture(tmp_path / "style.jpg", 30, 20, 1)
    lines = []
    summary = run_style_transfer(content, style, tmp_path / "out" / "result.png", size=(16, 24),
                                 steps=5, weights_file=vgg_file[0], save_every=2,
                                 run_dir=tmp_path / "run", device="cpu", log=lines.append)
    assert "style image resized from 30x20 to 16x24 (height x width)" in lines
    assert not any(line.startswith("content image resized") for line in lines)
    assert [line.split(":")[0] for line in lines if line.startswith("step")] == [
        "step 0/5", "step 2/5", "step 4/5", "step 5/5"]
    with Image.open(tmp_path / "out" / "result.png") as result:
        assert result.format == "PNG" and result.size == (24, 16)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "losses.csv", "losses.png", "step_0002.png", "step_0004.png", "step_0005.png"]
    rows = (tmp_path / "run" / "losses.csv").read_text().splitlines()
    assert rows[0] == "step,content,style,tv,total" and len(rows) == 7
    assert float(rows[-1].split(",")[2]) == pytest.approx(summary["end"]["style"], rel=1e-5)
    assert summary["extractor"] == "vgg19" and summary["start"]["content"] == 0


def test_run_names_a_missing_or_unreadable_image_and_a_non_png_output(tmp_path):
    good = write_picture(tmp_path / "good.png", 8, 8, 0)
    broken = tmp_path / "broken.jpg"
    broken.write_text("not an image")
    out = tmp_path / "out.png"
    for content, style, message in (
            (tmp_path / "absent.jpg", good, "content image .*absent.jpg does not exist"),
            (good, broken, "style image .*broken.jpg is not a readable image")):
        with pytest.raises(DataError, match=message) as error:
            run_style_transfer(content, style, out, size=(8, 8), steps=1, log=lambda _: None)
        assert "\n" not in str(error.value)
    with pytest.raises(DivekitError, match=r"name it \*\.png, not out\.jpg"):
        run_style_transfer(good, good, tmp_path / "out.jpg", size=(8, 8), steps=1)
    with pytest.raises(DivekitError, match="size HxW of at least 2x2, steps >= 0 and save_every"
                       " >= 1; got size 3x8x8"):
        run_style_transfer(good, good, out, size=(3, 8, 8), steps=1)
    assert not out.exists()


def test_fallback_transfers_the_autumn_style_onto_rainier(one_thread):
    """The book's pair at half size, 50 steps (~4 s): the style loss falls >= 10x (measured
    62x), the content loss paid stays under a fifth of the style loss removed (measured 0.08),
    the photograph's brightness pattern is still there (correlation measured 0.91), and the
    colour statistics move towards the painting's (distance measured 0.29 -> 0.17)."""
    root = real_data_dir("d2l-img") / "d2l-img"
    content, _ = read_image(root / "rainier.jpg", (150, 225), "content")
    style, _ = read_image(root / "autumn-oak.jpg", (150, 225), "style")
    image, history = style_transfer(content, style, steps=50)
    start, end = history[0], history[-1]
    assert end["style"] <= start["style"] / 10
    assert end["content"] <= 0.2 * (start["style"] - end["style"])

    def luminance(x):
        return (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]).flatten()

    result = image[0]
    assert torch.corrcoef(torch.stack([luminance(result), luminance(content)]))[0, 1] >= 0.8

    def colour(x):
        return torch.cat([x.mean((1, 2)), x.std((1, 2))])

    before = (colour(content) - colour(style)).norm()
    after = (colour(result) - colour(style)).norm()
    assert after <= 0.75 * before


def test_vgg_refuses_images_too_small_for_its_pools():
    with pytest.raises(DivekitError, match="at least 16x16 pixels, got 8x20"):
        VGG19Features()(torch.zeros(1, 3, 8, 20))
