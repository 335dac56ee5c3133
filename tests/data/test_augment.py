import colorsys

import pytest
import torch
import torch.nn.functional as F

from divekit.data import DataModule, TensorLoader
from divekit.data.augment import (
    ColorJitter,
    Compose,
    Mixup,
    Normalize,
    RandomErasing,
    RandomHorizontalFlip,
    RandomResizedCrop,
    RandomVerticalFlip,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    grayscale,
    hsv_to_rgb,
    parse_augment,
    rgb_to_hsv,
)
from divekit.errors import DivekitError


def images(n=4, channels=3, height=10, width=12, seed=0, dtype=torch.float64):
    return torch.rand(n, channels, height, width, generator=torch.Generator().manual_seed(seed),
                      dtype=dtype)


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


def test_flips_match_torch_flip_and_twice_is_identity():
    x = images()
    for flip, dim in [(RandomHorizontalFlip(p=1.0), -1), (RandomVerticalFlip(p=1.0), -2)]:
        assert torch.equal(flip(x), torch.flip(x, [dim]))
        assert torch.equal(flip(flip(x)), x)
    assert torch.equal(RandomHorizontalFlip(p=0.0)(x), x)


def test_flip_decisions_are_per_image():
    x = images(n=64, height=4, width=5)
    out = RandomHorizontalFlip(p=0.5)(x, generator(1))
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert bool((flipped ^ kept).all())  # each image is either mirrored or untouched
    # Binomial(64, 0.5): outside [16, 48] has probability below 1e-4.
    assert 16 <= int(flipped.sum()) <= 48


def test_whole_pipeline_keeps_values_in_unit_range_and_shapes():
    x, y = images(n=32, dtype=torch.float32), torch.randint(0, 5, (32,))
    aug = parse_augment("flip,vflip,crop=0.2,jitter=0.8,hue=0.5,erase=1,mixup=0.4",
                        num_classes=5, seed=0)
    out, soft = aug(x, y)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    assert soft.shape == (32, 5)
    torch.testing.assert_close(soft.sum(1), torch.ones(32))


@pytest.mark.parametrize("rgb", [
    (0.2, 0.5, 0.9), (0.9, 0.1, 0.4), (0.3, 0.3, 0.3), (0.0, 0.0, 0.0), (1.0, 1.0, 0.2),
    (0.7, 0.2, 0.7), (0.4, 0.8, 0.8), (0.9, 0.9, 0.1), (0.5, 0.2, 0.1),
])
def test_rgb_to_hsv_matches_colorsys_including_ties(rgb):
    pixel = torch.tensor(rgb, dtype=torch.float64).view(1, 3, 1, 1)
    hsv = rgb_to_hsv(pixel).flatten()
    torch.testing.assert_close(hsv, torch.tensor(colorsys.rgb_to_hsv(*rgb), dtype=torch.float64))
    torch.testing.assert_close(hsv_to_rgb(rgb_to_hsv(pixel)), pixel)


def test_hsv_round_trip_and_hsv_to_rgb_match_colorsys():
    x = images(n=2, height=6, width=7)
    torch.testing.assert_close(hsv_to_rgb(rgb_to_hsv(x)), x)
    hsv = images(n=1, height=5, width=5, seed=3)
    rgb = hsv_to_rgb(hsv)
    for row in range(5):
        for col in range(5):
            expected = colorsys.hsv_to_rgb(*hsv[0, :, row, col].tolist())
            torch.testing.assert_close(rgb[0, :, row, col], torch.tensor(expected,
                                                                         dtype=torch.float64))


def test_adjust_hue_matches_a_per_pixel_colorsys_loop():
    x = images(n=3, height=4, width=5)
    shifts = torch.tensor([0.13, -0.4, 0.5], dtype=torch.float64)
    out = adjust_hue(x, shifts)
    for i, shift in enumerate(shifts.tolist()):
        for row in range(4):
            for col in range(5):
                h, s, v = colorsys.rgb_to_hsv(*x[i, :, row, col].tolist())
                expected = colorsys.hsv_to_rgb((h + shift) % 1, s, v)
                torch.testing.assert_close(out[i, :, row, col],
                                           torch.tensor(expected, dtype=torch.float64))


def test_hue_and_saturation_leave_grey_images_alone():
    grey_rgb = images(channels=1).expand(-1, 3, -1, -1)
    torch.testing.assert_close(adjust_hue(grey_rgb, 0.3), grey_rgb)
    one_channel = images(channels=1)
    jitter = ColorJitter(saturation=0.9, hue=0.5)
    assert torch.equal(jitter(one_channel, generator()), one_channel)
    assert torch.equal(adjust_saturation(one_channel, 0.0), one_channel)


def test_saturation_zero_gives_itu_601_grey():
    x = images()
    out = adjust_saturation(x, 0.0)
    luma = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    for channel in range(3):
        torch.testing.assert_close(out[:, channel], luma)
    assert torch.equal(grayscale(x), luma.unsqueeze(1))


def test_brightness_and_contrast_follow_their_definitions():
    x = images()
    factors = torch.tensor([0.0, 0.5, 1.0, 1.7], dtype=torch.float64)
    f = factors.view(-1, 1, 1, 1)
    torch.testing.assert_close(adjust_brightness(x, factors), (f * x).clamp(0, 1))
    luma = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    mean = luma.mean((1, 2)).view(-1, 1, 1, 1)
    torch.testing.assert_close(adjust_contrast(x, factors), (f * x + (1 - f) * mean).clamp(0, 1))
    grey = images(channels=1)
    torch.testing.assert_close(adjust_contrast(grey, 0.0),
                               grey.mean((1, 2, 3), keepdim=True).expand_as(grey))


def test_color_jitter_brightness_factor_is_drawn_per_image_in_range():
    x = 0.1 + 0.5 * images(n=64)  # no pixel reaches 1 even at factor 1.5: no clamping
    out = ColorJitter(brightness=0.5)(x, generator(2))
    ratio = out / x
    per_image = ratio.flatten(1)
    torch.testing.assert_close(per_image.min(1).values, per_image.max(1).values)
    factors = per_image[:, 0]
    assert float(factors.min()) >= 0.5 and float(factors.max()) <= 1.5
    assert float(factors.std()) > 0.2  # uniform on [0.5, 1.5] has std 0.29


def test_crop_with_full_scale_and_square_ratio_is_identity():
    x = images(height=9, width=9)
    crop = RandomResizedCrop(scale=(1.0, 1.0), ratio=(1.0, 1.0))
    torch.testing.assert_close(crop(x, generator()), x)


@pytest.mark.parametrize("size", [(17, 5), (4, 4), 12, (7, 30), 1])
def test_crop_of_the_whole_image_equals_antialiased_bilinear_resize(size):
    x = images(height=12, width=12)
    out = RandomResizedCrop(size, scale=(1.0, 1.0), ratio=(1.0, 1.0))(x, generator())
    expected_size = (size, size) if isinstance(size, int) else size
    assert out.shape == (4, 3, *expected_size)
    torch.testing.assert_close(out, F.interpolate(x, size=expected_size, mode="bilinear",
                                                  align_corners=False, antialias=True))
    if min(expected_size) >= 12:  # enlarging: plain bilinear
        torch.testing.assert_close(out, F.interpolate(x, size=expected_size, mode="bilinear",
                                                      align_corners=False))


def test_crop_of_a_box_equals_grid_sample_of_that_box():
    x = images(n=6, height=16, width=20)
    crop = RandomResizedCrop((24, 22), scale=(0.05, 0.5))
    out = crop(x, generator(8))
    left, top, width, height = crop.boxes(6, 16, 20, generator(8)).unbind(1)
    # Enlarging a box = sampling the image at the box's pixel centres, edge pixels repeated.
    theta = torch.zeros(6, 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 2] = width / 20, (2 * left + width) / 20 - 1
    theta[:, 1, 1], theta[:, 1, 2] = height / 16, (2 * top + height) / 16 - 1
    grid = F.affine_grid(theta, [6, 3, 24, 22], align_corners=False)
    torch.testing.assert_close(out, F.grid_sample(x, grid, mode="bilinear",
                                                  padding_mode="border", align_corners=False))


def test_crop_falls_back_to_the_centre_square():
    x = images(height=8, width=12)
    out = RandomResizedCrop(scale=(1.0, 1.0), ratio=(1.0, 1.0))(x, generator())
    assert out.shape == (4, 3, 8, 12)  # size=None keeps the input size
    centre = RandomResizedCrop((8, 8), scale=(1.0, 1.0), ratio=(1.0, 1.0))(x, generator())
    torch.testing.assert_close(centre, x[..., 2:10])


def test_crop_boxes_respect_scale_ratio_and_bounds_and_differ_per_image():
    crop = RandomResizedCrop(16, scale=(0.1, 0.6), ratio=(0.5, 2.0))
    left, top, width, height = crop.boxes(500, 20, 30, generator(4)).unbind(1)
    area = width * height / (20 * 30)
    assert float(area.min()) >= 0.1 - 1e-9 and float(area.max()) <= 0.6 + 1e-9
    aspect = width / height
    assert float(aspect.min()) >= 0.5 - 1e-9 and float(aspect.max()) <= 2.0 + 1e-9
    assert float(left.min()) >= 0 and float((left + width).max()) <= 30
    assert float(top.min()) >= 0 and float((top + height).max()) <= 20
    assert len(torch.unique(left)) == 500


def test_erasing_matches_a_per_image_loop_and_touches_only_a_rectangle():
    x = images(n=16, height=12, width=14)
    erase = RandomErasing(p=0.7, value=(2.0, 3.0, 4.0))
    out = erase(x, generator(5))
    expected = x.clone()
    for i, (top, left, h, w) in enumerate(erase.rectangles(16, 12, 14, generator(5)).tolist()):
        for channel, value in enumerate((2.0, 3.0, 4.0)):
            expected[i, channel, top : top + h, left : left + w] = value
    assert torch.equal(out, expected)
    erased = 0
    for i in range(16):
        changed = (out[i] != x[i]).all(0)  # every channel filled where anything changed
        assert torch.equal(changed, (out[i] != x[i]).any(0))
        if changed.any():
            erased += 1
            rows, cols = changed.any(1).nonzero()[:, 0], changed.any(0).nonzero()[:, 0]
            box = changed[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
            assert bool(box.all()) and int(changed.sum()) == box.numel()
    assert 0 < erased < 16


def test_erasing_with_p_zero_is_identity():
    x = images()
    assert torch.equal(RandomErasing(p=0.0)(x, generator()), x)


def test_mixup_is_the_matching_convex_combination():
    n = 6
    x = images(n=n)
    labels = torch.randperm(n, generator=generator(6))  # distinct classes reveal the partner
    out, soft = Mixup(alpha=1.0, num_classes=n)(x, labels, generator(7))
    torch.testing.assert_close(soft.sum(1), torch.ones(n, dtype=torch.float64))
    assert bool((soft >= 0).all())
    for i in range(n):
        lam = float(soft[i, labels[i]])
        others = [c for c in range(n) if c != labels[i] and soft[i, c] > 0]
        if not others:  # paired with itself
            torch.testing.assert_close(out[i], x[i])
            continue
        (partner_class,) = others
        partner = int((labels == partner_class).nonzero())
        torch.testing.assert_close(soft[i, partner_class], torch.tensor(1 - lam,
                                                                        dtype=torch.float64))
        torch.testing.assert_close(out[i], lam * x[i] + (1 - lam) * x[partner])


def test_mixup_accepts_soft_labels_and_rejects_bad_ones():
    x = images(n=8)
    mixup = Mixup(alpha=0.4, num_classes=3)
    _, soft = mixup(x, torch.randint(0, 3, (8,), generator=generator()), generator(1))
    _, twice = mixup(x, soft, generator(2))
    torch.testing.assert_close(twice.sum(1), torch.ones(8, dtype=torch.float64))
    with pytest.raises(DivekitError, match=r"labels must lie in \[0, 3\)"):
        mixup(x, torch.full((8,), 3))
    with pytest.raises(DivekitError, match="labels of shape"):
        mixup(x, torch.zeros(8, 4))
    with pytest.raises(DivekitError, match="num_classes"):
        Mixup(0.2)
    with pytest.raises(DivekitError, match="needs labels"):
        Compose(mixup)(x)


def test_normalize_per_channel():
    x = images()
    mean, std = [0.1, 0.2, 0.3], [0.5, 2.0, 1.0]
    out = Normalize(mean, std)(x)
    for c in range(3):
        torch.testing.assert_close(out[:, c], (x[:, c] - mean[c]) / std[c])
    with pytest.raises(DivekitError, match="3 channel statistics"):
        Normalize(mean, std)(images(channels=1))
    with pytest.raises(DivekitError, match="positive std"):
        Normalize([0.0], [0.0])


def test_same_seed_same_batch_other_seed_other_batch():
    x, y = images(n=16, dtype=torch.float32), torch.randint(0, 4, (16,))
    spec = "flip,crop,jitter,hue,erase,mixup"

    def run(seed):
        return parse_augment(spec, num_classes=4, seed=seed)(x, y)

    first, again, other = run(3), run(3), run(4)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], other[0]) and not torch.equal(first[1], other[1])
    # Without a seed the global generator decides, so torch.manual_seed reproduces a batch.
    unseeded = parse_augment(spec, num_classes=4)
    torch.manual_seed(0)
    a = unseeded(x, y)
    torch.manual_seed(0)
    b = unseeded(x, y)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))


def test_pipeline_plugs_into_tensor_loader_and_data_module():
    x, y = images(n=20, channels=1, dtype=torch.float32), torch.randint(0, 3, (20,))
    aug = parse_augment("flip,crop=0.5,mixup", num_classes=3, seed=0)
    batches = list(TensorLoader(x, y, batch_size=8, transform=aug))
    assert [tuple(b[0].shape) for b in batches] == [(8, 1, 10, 12)] * 2 + [(4, 1, 10, 12)]
    assert all(b[1].shape == (len(b[0]), 3) for b in batches)
    data = DataModule("tiny", train=(x, y), test=(x, y), batch_size=5, class_names=list("abc"),
                      transform=parse_augment("flip,erase", seed=0))
    train_batch = next(iter(data.train_dataloader()))
    assert train_batch[0].shape == (5, 1, 10, 12) and train_batch[1].dtype == torch.int64
    assert torch.equal(next(iter(data.test_dataloader()))[0], x)  # evaluation is not augmented


def test_parse_augment_builds_the_named_transforms():
    aug = parse_augment(" flip=0.3, vflip, crop=0.5 ,jitter=0.2,hue,erase=1,mixup=0.4",
                        num_classes=10)
    kinds = [type(t) for t in aug.transforms]
    assert kinds == [RandomHorizontalFlip, RandomVerticalFlip, RandomResizedCrop, ColorJitter,
                     ColorJitter, RandomErasing, Mixup]
    flip, vflip, crop, jitter, hue, erase, mixup = aug.transforms
    assert flip.p == 0.3 and vflip.p == 0.5 and crop.scale == (0.5, 1.0)
    assert (jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue) == (0.2,) * 3 + (0,)
    assert hue.hue == 0.1 and erase.p == 1.0 and (mixup.alpha, mixup.num_classes) == (0.4, 10)


@pytest.mark.parametrize(("spec", "message"), [
    ("flip,rotate", "unknown augmentation 'rotate'; valid names: flip, vflip, crop"),
    ("flip,,crop", "empty item"),
    ("", "empty item"),
    ("crop=big", "'big' is not a number"),
    ("flip=1.5", r"p must be a probability in \[0, 1\]"),
    ("crop=0", "scale must be"),
    ("hue=0.7", r"hue must be in \[0, 0.5\]"),
    ("mixup", "mixup needs the number of classes"),
])
def test_parse_augment_errors_name_the_problem(spec, message):
    with pytest.raises(DivekitError, match=message):
        parse_augment(spec)


def test_bad_inputs_are_named():
    with pytest.raises(DivekitError, match=r"float images \(N, C, H, W\)"):
        RandomHorizontalFlip()(torch.zeros(3, 8, 8))
    with pytest.raises(DivekitError, match="float images"):
        ColorJitter(0.1)(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(DivekitError, match="1 \\(grey\\) or 3 \\(RGB\\) channels"):
        ColorJitter(0.1)(torch.zeros(1, 4, 8, 8))
    with pytest.raises(DivekitError, match="value has 2 entries"):
        RandomErasing(p=1, value=(0.0, 1.0))(images())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batch_gets_the_same_augmentation_as_on_cpu():
    x, y = images(n=32, dtype=torch.float32), torch.randint(0, 4, (32,))
    spec = "flip,vflip,crop=0.3,jitter,hue=0.3,erase=1,mixup"
    cpu = parse_augment(spec, num_classes=4, seed=9)(x, y)
    cuda = parse_augment(spec, num_classes=4, seed=9)(x.cuda(), y.cuda())
    assert all(t.device.type == "cuda" for t in cuda)
    for a, b in zip(cpu, cuda, strict=True):
        torch.testing.assert_close(b.cpu(), a, atol=1e-5, rtol=1e-5)
