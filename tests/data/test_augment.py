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
    RandomTranslate,
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
from divekit.data.targets import IGNORE, crop_targets
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
    ("flip,rotate", "unknown augmentation 'rotate'; valid names: flip, vflip, translate, crop"),
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


# Targets that move with the images: label maps and detection boxes.
#
# Oracles independent of the target code: images whose channels hold each pixel's own column
# and row index (bilinear resampling of a linear ramp returns the sampled coordinate, so the
# output image says where every output pixel came from), and boxes painted as filled
# rectangles into channels of the image, one channel per box (thresholded at 1/2, the
# resampled rectangle covers the pixels whose centres lie inside the moved box).


def coordinate_images(n, height, width):
    """Channel 0 = column index, channel 1 = row index of every pixel, float64."""
    rows, cols = torch.meshgrid(torch.arange(height, dtype=torch.float64),
                                torch.arange(width, dtype=torch.float64), indexing="ij")
    return torch.stack([cols, rows]).expand(n, 2, height, width).clone()


def coordinate_label(cols, rows, width):
    # Distinct class per pixel, all above IGNORE so that no pixel's class is mistaken for it.
    return 1000 + rows * width + cols


def label_map_from_coordinates(images, width, exact=True):
    """The label each output pixel must have: the class of the input pixel it came from."""
    cols, rows = images[:, 0], images[:, 1]
    if exact:  # a value exactly between two pixels would make the oracle ambiguous
        for values in (cols, rows):
            assert float(((values % 1) - 0.5).abs().min()) > 1e-6
    return coordinate_label((cols + 0.5).floor().long(), (rows + 0.5).floor().long(), width)


def coordinate_batch(n, height, width):
    images = coordinate_images(n, height, width)
    return images, label_map_from_coordinates(images, width, exact=False)


def box_batch(height=16, width=20, seed=0):
    """Images with one channel per box painted 1 inside it (box k has label k) and two
    coordinate channels after them; image 2 has no boxes.

    Returns:
        images ``(3, 6, H, W)`` and detection targets with masks.
    """
    g = generator(seed)
    images = torch.zeros(3, 6, height, width, dtype=torch.float64)
    images[:, 4:] = coordinate_images(3, height, width)
    targets = []
    for i, count in enumerate([4, 3, 0]):
        boxes, masks = [], torch.zeros(count, height, width, dtype=torch.uint8)
        for k in range(count):
            x1 = int(torch.randint(0, width - 4, (1,), generator=g))
            y1 = int(torch.randint(0, height - 4, (1,), generator=g))
            x2 = x1 + int(torch.randint(4, width - x1 + 1, (1,), generator=g))
            y2 = y1 + int(torch.randint(4, height - y1 + 1, (1,), generator=g))
            boxes.append([x1, y1, x2, y2])
            images[i, k, y1:y2, x1:x2] = 1
            masks[k, y1:y2, x1:x2] = 1
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32).view(-1, 4),
                        "labels": torch.arange(count), "masks": masks, "image_id": i})
    return images, targets


def support(region):
    """``(x1, y1, x2, y2)`` around the true pixels of a ``(H, W)`` bool image, None if none."""
    if not region.any():
        return None
    rows, cols = region.any(1).nonzero()[:, 0], region.any(0).nonzero()[:, 0]
    return torch.tensor([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1],
                        dtype=torch.float64)


def assert_boxes_follow_painted_rectangles(before, after, targets, exact_masks=True):
    """Check moved boxes against the painted rectangles of ``before`` moved to ``after``.

    Images hold one channel per box (box k painted 1 in channel k) and then the two
    coordinate channels. A kept box is within one pixel of its rectangle's pixels, taken
    nearest (through the coordinate channels) and bilinear (> 1/2); a dropped box's rectangle
    has no pixel left; masks, when there are any, are the rectangles taken nearest.

    Returns:
        the number of boxes dropped.
    """
    dropped = 0
    for image, source, target in zip(after, before, targets, strict=True):
        if exact_masks:  # no pixel exactly between two others: "nearest" is unambiguous
            assert float(((image[-2:] % 1) - 0.5).abs().min()) > 1e-6
        cols, rows = ((image[-2:] + 0.5).floor().long().unbind(0))  # where each pixel came from
        nearest = source[:-2, rows, cols] > 0.5
        bilinear = image[:-2] > 0.5
        boxes, labels = target["boxes"], target["labels"]
        assert boxes.shape == (len(labels), 4)
        for j, (box, label) in enumerate(zip(boxes.double(), labels.tolist(), strict=True)):
            if exact_masks and "masks" in target:
                assert torch.equal(target["masks"][j].bool(), nearest[label])
            for region in (nearest[label], bilinear[label]):
                pixels = support(region)
                if pixels is None:  # a sliver narrower than a pixel may cover no pixel centre
                    assert min(float(box[2] - box[0]), float(box[3] - box[1])) < 1
                else:
                    assert float((box - pixels).abs().max()) <= 1, (box, pixels)
        if "masks" in target:
            assert target["masks"].shape == (len(labels), *rows.shape)
        for label in set(range(len(nearest))) - set(labels.tolist()):
            dropped += bool(source[label].any())  # there was a box with this label
            assert not nearest[label].any() and not bilinear[label].any()
    return dropped


def test_flips_move_label_maps_with_the_pixels_and_twice_give_them_back():
    x, maps = coordinate_batch(16, 6, 7)
    for flip in (RandomHorizontalFlip(), RandomVerticalFlip()):
        out, out_maps = flip.apply(x, maps, generator(3))
        assert torch.equal(out_maps, label_map_from_coordinates(out, 7))
        changed = (out_maps != maps).flatten(1).any(1)
        assert 0 < int(changed.sum()) < 16  # both decisions occur
        assert torch.equal(flip.apply(out, out_maps, generator(3))[1], maps)


def test_flips_move_boxes_and_masks_and_twice_give_them_back():
    x, targets = box_batch()
    for flip in (RandomHorizontalFlip(p=1.0), RandomVerticalFlip(p=1.0)):
        out, moved = flip.apply(x, targets)
        assert assert_boxes_follow_painted_rectangles(x, out, moved) == 0
        assert not torch.equal(moved[0]["boxes"], targets[0]["boxes"])
        _, back = flip.apply(out, moved)
        for original, again in zip(targets, back, strict=True):
            assert original.keys() == again.keys() and again["image_id"] == original["image_id"]
            for key in ("boxes", "labels", "masks"):
                assert torch.equal(again[key], original[key])
    fresh = box_batch()[1]  # the inputs were not modified in place
    assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(targets, fresh, strict=True))


def test_translate_is_a_whole_pixel_shift_with_a_mirrored_border_and_moves_label_maps():
    x, maps = coordinate_batch(32, 9, 11)
    out, out_maps = RandomTranslate(2).apply(x, maps, generator(0))
    shifts = set()
    for image, label_map, moved, moved_map in zip(x, maps, out, out_maps, strict=True):
        # Read the shift off the centre pixel's coordinates (channel 0 column, 1 row).
        dx, dy = (round(float(moved[c, 4, 5] - image[c, 4, 5])) for c in (0, 1))
        assert -2 <= dx <= 2 and -2 <= dy <= 2
        shifts.add((dx, dy))
        padded = F.pad(image[None], (2, 2, 2, 2), mode="reflect")[0]
        assert torch.equal(moved, padded[:, 2 + dy:11 + dy, 2 + dx:13 + dx])
        ignored = F.pad(label_map, (2, 2, 2, 2), value=IGNORE)
        assert torch.equal(moved_map, ignored[2 + dy:11 + dy, 2 + dx:13 + dx])
    assert len(shifts) > 10  # of the 25 possible
    again = RandomTranslate(2).apply(x, maps, generator(0))
    assert torch.equal(again[0], out) and torch.equal(again[1], out_maps)


def test_translate_moves_boxes_by_the_shift_and_clips_them():
    x, targets = box_batch()
    out, moved = RandomTranslate(3).apply(x, targets, generator(1))
    for image, shifted, before, after in zip(x, out, targets, moved, strict=True):
        dx, dy = (round(float(shifted[c, 8, 10] - image[c, 8, 10])) for c in (4, 5))
        expected = before["boxes"] - torch.tensor([dx, dy, dx, dy], dtype=before["boxes"].dtype)
        expected[:, 0::2] = expected[:, 0::2].clamp(0, 20)
        expected[:, 1::2] = expected[:, 1::2].clamp(0, 16)
        kept = (expected[:, 2] > expected[:, 0]) & (expected[:, 3] > expected[:, 1])
        torch.testing.assert_close(after["boxes"], expected[kept])
        assert torch.equal(after["labels"], before["labels"][kept])


def test_translate_refuses_shifts_it_cannot_make():
    with pytest.raises(DivekitError, match="max_shift must be a positive whole number"):
        RandomTranslate(1.5)
    with pytest.raises(DivekitError, match="max_shift 8 must be under the image size 8x8"):
        RandomTranslate(8)(torch.zeros(2, 1, 8, 8))
    assert isinstance(parse_augment("translate=3").transforms[0], RandomTranslate)


@pytest.mark.parametrize(("size", "scale"), [(None, (0.05, 0.6)), ((23, 31), (0.2, 1.0))])
def test_crop_moves_label_maps_as_the_image_by_the_nearest_pixel(size, scale):
    x, maps = coordinate_batch(24, 12, 14)
    crop = RandomResizedCrop(size, scale=scale, ratio=(0.5, 2.0))
    out, out_maps = crop.apply(x, maps, generator(11))
    assert out_maps.dtype == torch.int64 and out_maps.shape == (24, *out.shape[-2:])
    assert torch.equal(out_maps, label_map_from_coordinates(out, 14))
    assert set(out_maps.unique().tolist()) <= set(maps.unique().tolist())


def test_shrinking_crop_keeps_label_maps_within_a_pixel_of_the_image():
    # Antialiasing averages over the edge, so the image's coordinates there are off a little.
    x, maps = coordinate_batch(8, 24, 24)
    out, out_maps = RandomResizedCrop(7, scale=(0.5, 1.0)).apply(x, maps, generator(2))
    near = label_map_from_coordinates(out, 24, exact=False)

    def row_and_column(labels):
        return torch.stack([(labels - 1000) // 24, (labels - 1000) % 24])

    assert int((row_and_column(out_maps) - row_and_column(near)).abs().max()) <= 1
    interior = (slice(None), slice(2, -2), slice(2, -2))
    assert torch.equal(out_maps[interior], near[interior])


def test_label_maps_take_only_classes_present_and_ignore_outside_the_image():
    classes = torch.tensor([0, 3, 7, IGNORE])
    maps = classes[torch.randint(0, 4, (6, 10, 9), generator=generator(1))]
    x = images(n=6, height=10, width=9)
    aug = Compose(RandomHorizontalFlip(), RandomVerticalFlip(),
                  RandomResizedCrop((13, 8), scale=(0.1, 1.0)), seed=5)
    _, out = aug(x, maps)
    assert out.dtype == maps.dtype and set(out.unique().tolist()) <= set(classes.tolist())
    # A window reaching past the image on every side: outside pixels are IGNORE.
    window = torch.tensor([[-2.0, -3.0, 9 + 4, 10 + 6]]).expand(6, 4)
    padded = crop_targets(maps, window, (16, 13))
    assert torch.equal(padded, F.pad(maps, (2, 2, 3, 3), value=IGNORE))


def test_crop_moves_boxes_with_their_painted_rectangles_and_drops_cropped_ones():
    x, targets = box_batch()
    crop = RandomResizedCrop(scale=(0.1, 0.5))
    dropped = 0
    for seed in range(6):
        out, moved = crop.apply(x, targets, generator(seed))
        dropped += assert_boxes_follow_painted_rectangles(x, out, moved)
        assert [t["image_id"] for t in moved] == [0, 1, 2]
        assert moved[2]["boxes"].shape == (0, 4) and moved[2]["labels"].shape == (0,)
        for target in moved:
            box = target["boxes"]
            assert bool((box[:, :2] >= 0).all() & (box[:, 2] <= 20).all() & (box[:, 3] <= 16).all())
            assert bool(((box[:, 2:] - box[:, :2]) > 0).all())
    assert dropped > 0


def test_shrinking_crop_boxes_follow_their_rectangles_within_a_pixel():
    x, targets = box_batch(height=32, width=40, seed=3)
    crop = RandomResizedCrop((10, 12), scale=(0.3, 1.0))
    for seed in range(4):
        out, moved = crop.apply(x, targets, generator(seed))
        assert_boxes_follow_painted_rectangles(x, out, moved, exact_masks=False)


def test_min_visible_drops_boxes_mostly_cut_off():
    target = {"boxes": torch.tensor([[5.0, 0, 15, 10], [8, 0, 18, 10], [20, 0, 30, 10],
                                     [2, 2, 4, 4]]),
              "labels": torch.tensor([1, 2, 3, 4]), "iscrowd": torch.tensor([0, 1, 0, 0])}
    window = torch.tensor([[0.0, 0.0, 10.0, 10.0]])  # half, a fifth, none, all of them inside
    kept = crop_targets([target], window, (20, 20))[0]
    assert kept["labels"].tolist() == [1, 2, 4] and kept["iscrowd"].tolist() == [0, 1, 0]
    assert kept["boxes"].tolist() == [[10, 0, 20, 20], [16, 0, 20, 20], [4, 4, 8, 8]]
    strict = crop_targets([target], window, (20, 20), min_visible=0.25)[0]
    assert strict["labels"].tolist() == [1, 4]
    with pytest.raises(DivekitError, match="min_visible"):
        RandomResizedCrop(min_visible=1.5)


def test_class_labels_pass_through_and_the_images_and_draws_are_unchanged():
    x = images(n=12, dtype=torch.float32)
    for labels in (torch.randint(0, 5, (12,)), torch.rand(12, 5)):
        for op in (RandomHorizontalFlip(), RandomVerticalFlip(), RandomResizedCrop(7)):
            alone, with_labels = generator(4), generator(4)
            out, same = op.apply(x, labels, with_labels)
            assert same is labels
            assert torch.equal(out, op(x, alone))
            assert torch.equal(alone.get_state(), with_labels.get_state())  # same draws
        spec = "flip,vflip,crop=0.3,jitter,erase"
        images_only = parse_augment(spec, seed=7)(x)
        out, same = parse_augment(spec, seed=7)(x, labels)
        assert torch.equal(out, images_only) and same is labels


def test_flip_and_crop_draw_exactly_what_they_drew_before():
    x = images(n=20)
    flip = torch.rand(20, generator=generator(9)) < 0.5
    expected = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    assert torch.equal(RandomHorizontalFlip().apply(x, torch.zeros(20), generator(9))[0],
                       expected)
    crop, g, reference = RandomResizedCrop(), generator(9), generator(9)
    crop.apply(x, torch.zeros(20), g)
    crop.boxes(20, 10, 12, reference)  # the crop consumes exactly its boxes' draws
    assert torch.equal(g.get_state(), reference.get_state())


def test_photometric_transforms_leave_targets_alone_and_mixup_refuses_them():
    x, targets = box_batch()
    _, maps = coordinate_batch(3, 16, 20)
    photometric = Compose(ColorJitter(0.3, 0.3), RandomErasing(p=1.0), Normalize([0.5], [0.2]),
                          seed=0)
    for target in (maps, targets):
        assert photometric(x[:, :1], target)[1] is target
        with pytest.raises(DivekitError, match="cannot mix label maps or detection targets"):
            Compose(RandomHorizontalFlip(), Mixup(0.2, num_classes=4))(x, target)


def test_bad_targets_are_named():
    x = images(n=2, height=5, width=6)
    flip = RandomHorizontalFlip()
    with pytest.raises(DivekitError, match=r"integer label maps \(2, 5, 6\).*int64 tensor of "
                                           r"shape \(2, 6, 5\)"):
        flip.apply(x, torch.zeros(2, 6, 5, dtype=torch.long))
    with pytest.raises(DivekitError, match="float32 tensor"):
        flip.apply(x, torch.zeros(2, 5, 6))
    with pytest.raises(DivekitError, match="1 detection targets for 2 images"):
        flip.apply(x, [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}])
    with pytest.raises(DivekitError, match=r"target 1 needs float 'boxes' of shape \(K, 4\)"):
        RandomResizedCrop().apply(x, [{"boxes": torch.zeros(0, 4)},
                                      {"boxes": torch.zeros(1, 4, dtype=torch.long)}])


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


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_targets_move_as_on_cpu():
    x, targets = box_batch()
    _, maps = coordinate_batch(3, 16, 20)
    aug = "flip,vflip,crop=0.3"
    for target in (maps, targets):
        cpu_images, cpu = parse_augment(aug, seed=4)(x, target)
        on_cuda = (target.cuda() if isinstance(target, torch.Tensor)
                   else [{k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in t.items()}
                         for t in target])
        cuda_images, cuda = parse_augment(aug, seed=4)(x.cuda(), on_cuda)
        torch.testing.assert_close(cuda_images.cpu(), cpu_images)
        if isinstance(cpu, torch.Tensor):
            assert cuda.is_cuda and torch.equal(cuda.cpu(), cpu)
            continue
        for a, b in zip(cpu, cuda, strict=True):
            assert b["boxes"].is_cuda and b["masks"].is_cuda
            for key in ("boxes", "labels", "masks"):
                torch.testing.assert_close(b[key].cpu(), a[key])
