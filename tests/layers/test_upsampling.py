"""Bilinear upsampling as a transposed convolution (d2l 14.11): the kernel worked by hand, and
the layer against ``F.interpolate(mode="bilinear")`` as the oracle."""

import pytest
import torch
import torch.nn.functional as F

from divekit.errors import DivekitError
from divekit.layers.upsampling import bilinear_kernel, bilinear_upsampling
from tests.oracle import f64, randn


def test_bilinear_kernel_size_4_by_hand():
    profile = torch.tensor([0.25, 0.75, 0.75, 0.25])
    weight = bilinear_kernel(3, 3, 4)
    assert weight.shape == (3, 3, 4, 4)
    for i in range(3):
        for j in range(3):
            expected = torch.outer(profile, profile) if i == j else torch.zeros(4, 4)
            torch.testing.assert_close(weight[i, j], expected, rtol=0, atol=0)
    torch.testing.assert_close(weight[0, 0, 1], torch.tensor([0.1875, 0.5625, 0.5625, 0.1875]))


def test_bilinear_kernel_odd_sizes_by_hand():
    # size 3 (factor 2, centre 1): 1 - |t - 1| / 2; size 5 (factor 3, centre 2): 1 - |t - 2| / 3
    torch.testing.assert_close(bilinear_kernel(1, 1, 3)[0, 0, 1], torch.tensor([0.5, 1.0, 0.5]))
    torch.testing.assert_close(bilinear_kernel(1, 1, 5)[0, 0, 2],
                               torch.tensor([1 / 3, 2 / 3, 1.0, 2 / 3, 1 / 3]))
    torch.testing.assert_close(bilinear_kernel(1, 1, 1), torch.ones(1, 1, 1, 1))


def test_bilinear_kernel_unequal_channels_keep_the_diagonal():
    weight = bilinear_kernel(2, 3, 4)
    assert weight.shape == (2, 3, 4, 4)
    nonzero = weight.flatten(2).abs().sum(-1) > 0
    assert nonzero.tolist() == [[True, False, False], [False, True, False]]


@pytest.mark.parametrize("factor", [1, 2, 3, 4, 5])
def test_layer_equals_bilinear_interpolation_away_from_the_border(factor):
    layer = bilinear_upsampling(3, factor).double()
    x = randn(2, 3, 5, 7)
    with torch.no_grad():
        ours = layer(x)
    ref = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    assert ours.shape == ref.shape == (2, 3, 5 * factor, 7 * factor)
    inner = (..., slice(factor, -factor), slice(factor, -factor))
    # the weight is made in float32: exact for even factors (tents of multiples of 1 / 2f),
    # rounded for odd ones (thirds, fifths)
    tolerance = 1e-12 if factor % 2 == 0 else 1e-6
    torch.testing.assert_close(ours[inner], ref[inner], rtol=0, atol=tolerance)
    # and the border really differs for factor > 1 (zeros outside the image), so the crop matters
    if factor > 1:
        assert not torch.allclose(ours, ref, rtol=0, atol=1e-3)


@pytest.mark.parametrize("factor", [2, 4])
def test_default_float32_layer_equals_interpolation_to_1e_6(factor):
    layer = bilinear_upsampling(4, factor)
    x = randn(1, 4, 6, 6).float()
    with torch.no_grad():
        ours = layer(x)
    ref = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    inner = (..., slice(factor, -factor), slice(factor, -factor))
    torch.testing.assert_close(ours[inner], ref[inner], rtol=0, atol=1e-6)


@pytest.mark.parametrize("factor, size", [(1, (3, 4)), (2, (5, 3)), (3, (4, 4)), (4, (1, 2)),
                                          (5, (2, 3)), (8, (3, 1)), (32, (2, 3))])
def test_output_is_exactly_factor_times_the_input(factor, size):
    layer = bilinear_upsampling(2, factor)
    with torch.no_grad():
        out = layer(torch.zeros(1, 2, *size))
    assert out.shape == (1, 2, size[0] * factor, size[1] * factor)


def test_fcn_head_is_the_courses_layer():
    layer = bilinear_upsampling(21, 32)
    assert (layer.kernel_size, layer.stride, layer.padding) == ((64, 64), (32, 32), (16, 16))
    torch.testing.assert_close(layer.weight, bilinear_kernel(21, 21, 64))
    assert layer.weight.requires_grad
    assert layer.bias is not None and not layer.bias.any()
    assert bilinear_upsampling(21, 32, bias=False).bias is None


def test_interpolation_of_a_constant_image_is_constant_inside():
    # the tents of neighbouring pixels sum to one: a partition of unity
    layer = bilinear_upsampling(1, 4).double()
    with torch.no_grad():
        out = layer(torch.full((1, 1, 4, 4), 2.5, dtype=f64))
    torch.testing.assert_close(out[..., 2:-2, 2:-2], torch.full((1, 1, 12, 12), 2.5, dtype=f64))


@pytest.mark.parametrize("channels, factor", [(3, 0), (3, -2), (3, 1.5), (3, True), (0, 2)])
def test_bilinear_upsampling_rejects_bad_arguments(channels, factor):
    with pytest.raises(DivekitError):
        bilinear_upsampling(channels, factor)


@pytest.mark.parametrize("args", [(0, 1, 4), (1, 0, 4), (1, 1, 0)])
def test_bilinear_kernel_rejects_bad_arguments(args):
    with pytest.raises(DivekitError):
        bilinear_kernel(*args)
