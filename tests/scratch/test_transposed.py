"""The from-scratch transposed convolution of course 14.10 against PyTorch (float64, values and
gradients), the book's worked examples, the matrix view and the shape rule."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from divekit.errors import DivekitError
from divekit.scratch.transposed import conv_matrix, conv_transpose2d, trans_conv
from tests.oracle import assert_same, f64, randn

BOOK_X = torch.tensor([[0.0, 1.0], [2.0, 3.0]], dtype=f64)
BOOK_K = torch.tensor([[0.0, 1.0], [2.0, 3.0]], dtype=f64)


def examples(count: int) -> settings:
    """Reproducible runs (CI never meets a new example) that write no example database."""
    return settings(max_examples=count, deadline=None, derandomize=True, database=None)


# --- the book's examples ----------------------------------------------------------------------

def test_trans_conv_book_example():
    expected = torch.tensor([[0.0, 0.0, 1.0], [0.0, 4.0, 6.0], [4.0, 12.0, 9.0]], dtype=f64)
    torch.testing.assert_close(trans_conv(BOOK_X, BOOK_K), expected)
    torch.testing.assert_close(conv_transpose2d(BOOK_X[None, None], BOOK_K[None, None])[0, 0],
                               expected)


def test_book_padding_and_stride_examples():
    x, k = BOOK_X[None, None], BOOK_K[None, None]
    # padding=1 crops one row and column from each side of the 3x3 result above
    torch.testing.assert_close(conv_transpose2d(x, k, padding=1),
                               torch.tensor([[[[4.0]]]], dtype=f64))
    # stride=2 paints the four scaled kernels 2 pixels apart, without overlap
    expected = torch.tensor([[0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 2.0, 3.0],
                             [0.0, 2.0, 0.0, 3.0], [4.0, 6.0, 6.0, 9.0]], dtype=f64)
    torch.testing.assert_close(conv_transpose2d(x, k, stride=2)[0, 0], expected)


@pytest.mark.parametrize("x_shape, k_shape", [((2, 2), (2, 2)), ((3, 5), (2, 3)), ((1, 4), (3, 1))])
def test_trans_conv_matches_torch_values_and_grads(x_shape, k_shape):
    assert_same(trans_conv, lambda X, K: F.conv_transpose2d(X[None, None], K[None, None])[0, 0],
                randn(*x_shape), randn(*k_shape, seed=2))


# --- conv_transpose2d against F.conv_transpose2d ----------------------------------------------

def _check(N, C_in, C_out, H, W, kernel, stride, padding, use_bias, seed=0):
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    inputs = [randn(N, C_in, H, W, seed=seed), randn(C_in, C_out, kh, kw, seed=seed + 1)]
    if use_bias:
        inputs.append(randn(C_out, seed=seed + 2))
    assert_same(lambda *a: conv_transpose2d(*a, stride=stride, padding=padding),
                lambda *a: F.conv_transpose2d(*a, stride=stride, padding=padding), *inputs)


@pytest.mark.parametrize("stride, padding, kernel",
                         list(itertools.product([1, 2, 3], [0, 1, 2], [2, 3, 4])))
def test_conv_transpose2d_matches_torch_over_stride_padding_kernel(stride, padding, kernel):
    _check(N=2, C_in=3, C_out=2, H=5, W=4, kernel=kernel, stride=stride, padding=padding,
           use_bias=True)


@pytest.mark.parametrize("N, C_in, C_out, use_bias", [
    (1, 1, 1, False), (1, 4, 3, True), (2, 1, 5, True), (3, 2, 1, False),
])
def test_conv_transpose2d_matches_torch_over_channels_batch_bias(N, C_in, C_out, use_bias):
    _check(N, C_in, C_out, H=3, W=4, kernel=(3, 2), stride=(2, 3), padding=(1, 0),
           use_bias=use_bias, seed=3)


@examples(40)
@given(N=st.integers(1, 2), C_in=st.integers(1, 3), C_out=st.integers(1, 3),
       H=st.integers(1, 5), W=st.integers(1, 5), kh=st.integers(1, 4), kw=st.integers(1, 4),
       sh=st.integers(1, 3), sw=st.integers(1, 3), ph=st.integers(0, 2), pw=st.integers(0, 2),
       use_bias=st.booleans())
def test_conv_transpose2d_matches_torch_on_random_configurations(N, C_in, C_out, H, W, kh, kw,
                                                                 sh, sw, ph, pw, use_bias):
    full_h, full_w = (H - 1) * sh + kh, (W - 1) * sw + kw
    if full_h - 2 * ph < 1 or full_w - 2 * pw < 1:  # PyTorch refuses these too
        with pytest.raises(DivekitError, match="crops away"):
            conv_transpose2d(randn(N, C_in, H, W), randn(C_in, C_out, kh, kw),
                             stride=(sh, sw), padding=(ph, pw))
        with pytest.raises(RuntimeError):
            F.conv_transpose2d(randn(N, C_in, H, W), randn(C_in, C_out, kh, kw),
                               stride=(sh, sw), padding=(ph, pw))
        return
    _check(N, C_in, C_out, H, W, (kh, kw), (sh, sw), (ph, pw), use_bias, seed=H * 7 + W)


def test_conv_transpose2d_is_the_gradient_of_conv2d_with_respect_to_its_input():
    x, weight, upstream = randn(2, 3, 7, 6), randn(4, 3, 3, 2, seed=1), randn(2, 4, 4, 4, seed=2)
    x.requires_grad_()
    (grad_x,) = torch.autograd.grad(F.conv2d(x, weight, stride=2, padding=1), x, upstream)
    torch.testing.assert_close(conv_transpose2d(upstream, weight, stride=2, padding=1), grad_x)


# --- the matrix view --------------------------------------------------------------------------

def test_conv_matrix_book_example():
    K = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=f64)
    expected = torch.tensor([[1, 2, 0, 3, 4, 0, 0, 0, 0], [0, 1, 2, 0, 3, 4, 0, 0, 0],
                             [0, 0, 0, 1, 2, 0, 3, 4, 0], [0, 0, 0, 0, 1, 2, 0, 3, 4]],
                            dtype=f64)
    torch.testing.assert_close(conv_matrix(K, (3, 3)), expected)


@pytest.mark.parametrize("x_shape, k_shape", [((3, 3), (2, 2)), ((5, 4), (3, 2)), ((4, 6), (1, 3)),
                                              ((3, 3), (3, 3))])
def test_conv_matrix_times_x_is_conv2d(x_shape, k_shape):
    assert_same(lambda K, X: conv_matrix(K, x_shape) @ X.flatten(),
                lambda K, X: F.conv2d(X[None, None], K[None, None]).flatten(),
                randn(*k_shape, seed=4), randn(*x_shape, seed=5))


@pytest.mark.parametrize("x_shape, k_shape", [((3, 3), (2, 2)), ((5, 4), (3, 2)), ((4, 6), (1, 3))])
def test_conv_matrix_transposed_times_y_is_conv_transpose2d(x_shape, k_shape):
    y_shape = (x_shape[0] - k_shape[0] + 1, x_shape[1] - k_shape[1] + 1)
    assert_same(lambda K, Y: (conv_matrix(K, x_shape).T @ Y.flatten()).reshape(x_shape),
                lambda K, Y: F.conv_transpose2d(Y[None, None], K[None, None])[0, 0],
                randn(*k_shape, seed=6), randn(*y_shape, seed=7))
    K, Y = randn(*k_shape, seed=6), randn(*y_shape, seed=7)
    torch.testing.assert_close((conv_matrix(K, x_shape).T @ Y.flatten()).reshape(x_shape),
                               trans_conv(Y, K))


# --- the shape rule ---------------------------------------------------------------------------

@pytest.mark.parametrize("kernel, stride, padding",
                         list(itertools.product([1, 2, 3, 5], [1, 2, 3], [0, 1, 2])))
def test_transposed_conv_maps_the_conv_output_shape_back(kernel, stride, padding):
    checked = 0
    for h in range(max(kernel - 2 * padding, 1), 12):
        y = F.conv2d(randn(1, 1, h, h), randn(1, 1, kernel, kernel), stride=stride,
                     padding=padding)
        # the conv never reads the last (h + 2p - k) mod s rows, so the way back misses them
        expected = h - (h + 2 * padding - kernel) % stride
        if expected < 1:  # so much padding that nothing is left: PyTorch refuses it too
            with pytest.raises(DivekitError, match="crops away"):
                conv_transpose2d(y, randn(1, 1, kernel, kernel), stride=stride, padding=padding)
            continue
        back = conv_transpose2d(y, randn(1, 1, kernel, kernel), stride=stride, padding=padding)
        assert back.shape[2:] == (expected, expected)
        checked += (h + 2 * padding - kernel) % stride == 0
    assert checked >= 3  # the exact round trip was seen, not only the shortened one


def test_book_conv_and_transposed_conv_round_trip_the_shape():
    torch.manual_seed(0)
    X = torch.rand(1, 10, 16, 16, dtype=f64)
    conv = nn.Conv2d(10, 20, kernel_size=5, padding=2, stride=3).double()
    tconv = nn.ConvTranspose2d(20, 10, kernel_size=5, padding=2, stride=3).double()
    Y = conv(X)
    assert Y.shape == (1, 20, 6, 6)
    assert tconv(Y).shape == X.shape
    ours = conv_transpose2d(Y, tconv.weight, tconv.bias, stride=3, padding=2)
    torch.testing.assert_close(ours, tconv(Y))


# --- bad input --------------------------------------------------------------------------------

@pytest.mark.parametrize("x_shape, w_shape, kwargs", [
    ((1, 2, 3, 3), (3, 1, 2, 2), {}),  # channel mismatch: weight is (C_in, C_out, kh, kw)
    ((2, 3, 3), (2, 1, 2, 2), {}),  # x not 4-D
    ((1, 2, 3, 3), (2, 1, 2), {}),  # weight not 4-D
    ((1, 2, 3, 3), (2, 1, 2, 2), {"stride": 0}),
    ((1, 2, 3, 3), (2, 1, 2, 2), {"padding": -1}),
    ((1, 2, 3, 3), (2, 1, 2, 2), {"padding": 2}),  # crops the whole 4x4 output
    ((1, 2, 3, 3), (2, 1, 2, 2), {"stride": (1, 2, 3)}),
    ((1, 2, 3, 3), (2, 1, 2, 2), {"bias": torch.zeros(2)}),
])
def test_conv_transpose2d_rejects_bad_arguments(x_shape, w_shape, kwargs):
    with pytest.raises(DivekitError):
        conv_transpose2d(torch.zeros(x_shape), torch.zeros(w_shape), **kwargs)


def test_trans_conv_and_conv_matrix_reject_bad_shapes():
    with pytest.raises(DivekitError, match="2-D"):
        trans_conv(torch.zeros(1, 2, 2), torch.zeros(2, 2))
    with pytest.raises(DivekitError, match="2-D"):
        conv_matrix(torch.zeros(1, 2, 2), (3, 3))
    with pytest.raises(DivekitError, match="larger than the input"):
        conv_matrix(torch.zeros(3, 2), (2, 4))
    with pytest.raises(DivekitError, match="input_shape"):
        conv_matrix(torch.zeros(2, 2), (3, 3, 3))
