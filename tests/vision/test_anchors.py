"""14.4.1 / 14.5 anchor boxes: the course's printed values, a naive per-pixel loop, the order of
the n + m - 1 anchors, multiscale concatenation, the TinySSD sizes and bad input."""

import math

import pytest
import torch

from divekit.errors import DivekitError
from divekit.vision import multibox_prior, multiscale_anchors, ssd_anchor_sizes


def naive_prior(height: int, width: int, sizes, ratios) -> torch.Tensor:
    """The course's anchors pixel by pixel, anchor by anchor, in float64."""
    pairs = [(s, ratios[0]) for s in sizes] + [(sizes[0], r) for r in ratios[1:]]
    rows = []
    for i in range(height):
        for j in range(width):
            cx, cy = (j + 0.5) / width, (i + 0.5) / height
            for s, r in pairs:
                w = s * math.sqrt(r) * height / width
                h = s / math.sqrt(r)
                rows.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    return torch.tensor(rows, dtype=torch.float64)


def test_course_example():
    # d2l 14.4.1: a 561 x 728 image, sizes (0.75, 0.5, 0.25), ratios (1, 2, 0.5): 5 anchors per
    # pixel, 2,042,040 in all; the first anchor at pixel (250, 250) is printed as
    # [0.06, 0.07, 0.63, 0.82]. By hand: centre (250.5 / 728, 250.5 / 561) =
    # (0.34409, 0.44652), width 0.75 * 561 / 728 = 0.57796, height 0.75.
    data = torch.rand(1, 3, 561, 728)
    anchors = multibox_prior(data, sizes=[0.75, 0.5, 0.25], ratios=[1, 2, 0.5])
    assert anchors.shape == (1, 2_042_040, 4)
    first = anchors.reshape(561, 728, 5, 4)[250, 250, 0]
    torch.testing.assert_close(first, torch.tensor([0.05511, 0.07152, 0.63307, 0.82152]),
                               atol=1e-5, rtol=0)
    # The fourth anchor there: size 0.75 (sizes[0]) with ratio 2.
    w, h = 0.75 * math.sqrt(2) * 561 / 728, 0.75 / math.sqrt(2)
    cx, cy = 250.5 / 728, 250.5 / 561
    torch.testing.assert_close(anchors.reshape(561, 728, 5, 4)[250, 250, 3],
                               torch.tensor([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]))


@pytest.mark.parametrize(("height", "width", "sizes", "ratios"), [
    (3, 5, [0.75, 0.5, 0.25], [1, 2, 0.5]),
    (4, 4, [0.15], [1, 2, 0.5]),
    (2, 7, [0.2, 0.272], [1]),
    (1, 1, [0.9], [0.5, 3.0, 1.0]),
])
def test_multibox_prior_matches_naive_loop(height, width, sizes, ratios):
    data = torch.zeros(2, 8, height, width, dtype=torch.float64)
    anchors = multibox_prior(data, sizes, ratios)
    assert anchors.dtype == torch.float64
    assert anchors.shape == (1, height * width * (len(sizes) + len(ratios) - 1), 4)
    torch.testing.assert_close(anchors[0], naive_prior(height, width, sizes, ratios),
                               rtol=1e-12, atol=1e-12)


def test_multiscale_anchors_concatenate_scales():
    sizes = ssd_anchor_sizes()
    maps = [torch.zeros(1, 4, s, s) for s in (8, 4, 2, 1)]
    anchors = multiscale_anchors(maps, sizes[:4], [[1, 2, 0.5]] * 4)
    assert anchors.shape == (1, 4 * (64 + 16 + 4 + 1), 4)
    expected = torch.cat([multibox_prior(m, s, [1, 2, 0.5]) for m, s in zip(maps, sizes[:4],
                                                                           strict=True)], dim=1)
    torch.testing.assert_close(anchors, expected)
    # (h, w) tuples stand for feature maps; one flat ratio list is reused for every scale.
    torch.testing.assert_close(multiscale_anchors([(8, 8), (4, 4), (2, 2), (1, 1)], sizes[:4],
                                                  [1, 2, 0.5]), expected)


def test_ssd_anchor_sizes_are_the_books():
    book = [[0.2, 0.272], [0.37, 0.447], [0.54, 0.619], [0.71, 0.79], [0.88, 0.961]]
    sizes = ssd_anchor_sizes()
    assert len(sizes) == 5
    for mine, theirs in zip(sizes, book, strict=True):
        assert mine == pytest.approx(theirs, abs=5e-4)


@pytest.mark.parametrize(("sizes", "ratios"), [([], [1]), ([0.5], []), ([0.5, -0.1], [1]),
                                               ([0.5], [0.0])])
def test_bad_sizes_and_ratios(sizes, ratios):
    with pytest.raises(DivekitError, match="non-empty list of positive numbers") as error:
        multibox_prior(torch.zeros(1, 1, 2, 2), sizes, ratios)
    assert "\n" not in str(error.value)


def test_bad_feature_maps():
    with pytest.raises(DivekitError, match="feature map"):
        multibox_prior(torch.zeros(3), [0.5], [1])
    with pytest.raises(DivekitError, match="positive size"):
        multibox_prior(torch.zeros(1, 1, 0, 3), [0.5], [1])
    with pytest.raises(DivekitError, match="one sizes list and one ratios list per feature map"):
        multiscale_anchors([(2, 2), (1, 1)], [[0.5]], [[1]])
