import itertools

import pytest
import torch
import torch.nn.functional as F

from divekit.errors import DivekitError
from divekit.scratch.conv import conv1x1_as_matmul, conv2d, corr2d, learn_edge_kernel


def grads(output, inputs, upstream):
    """Gradients of ``sum(output * upstream)`` w.r.t. ``inputs``."""
    return torch.autograd.grad(output, inputs, upstream)


def test_corr2d_course_example():
    X = torch.arange(9.0, dtype=torch.float64).reshape(3, 3)
    K = torch.tensor([[0.0, 1.0], [2.0, 3.0]], dtype=torch.float64)
    expected = torch.tensor([[19.0, 25.0], [37.0, 43.0]], dtype=torch.float64)  # the book's
    torch.testing.assert_close(corr2d(X, K), expected)
    torch.testing.assert_close(corr2d(X, K), F.conv2d(X[None, None], K[None, None])[0, 0])


@pytest.mark.parametrize("x_shape, k_shape", [((6, 8), (1, 2)), ((7, 5), (3, 2)), ((4, 4), (4, 4))])
def test_corr2d_matches_conv2d_on_random_inputs(x_shape, k_shape):
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(x_shape, generator=gen, dtype=torch.float64, requires_grad=True)
    K = torch.randn(k_shape, generator=gen, dtype=torch.float64, requires_grad=True)
    ours = corr2d(X, K)
    ref = F.conv2d(X[None, None], K[None, None])[0, 0]
    torch.testing.assert_close(ours, ref)
    upstream = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    for g, g_ref in zip(grads(ours, (X, K), upstream), grads(ref, (X, K), upstream), strict=True):
        torch.testing.assert_close(g, g_ref)


def _check_conv(N, C_in, C_out, H, W, kernel, stride, padding, use_bias, seed=0):
    gen = torch.Generator().manual_seed(seed)
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    X = torch.randn(N, C_in, H, W, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(C_out, C_in, kh, kw, generator=gen, dtype=torch.float64,
                         requires_grad=True)
    bias = (torch.randn(C_out, generator=gen, dtype=torch.float64, requires_grad=True)
            if use_bias else None)
    ours = conv2d(X, weight, bias, stride=stride, padding=padding)
    ref = F.conv2d(X, weight, bias, stride=stride, padding=padding)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref)
    inputs = (X, weight) + ((bias,) if use_bias else ())
    upstream = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    for g, g_ref in zip(grads(ours, inputs, upstream), grads(ref, inputs, upstream), strict=True):
        torch.testing.assert_close(g, g_ref)


@pytest.mark.parametrize("stride, padding, kernel", list(itertools.product(
    [1, 2, (2, 1)], [0, 1, (2, 1)], [1, 3, (3, 2)])))
def test_conv2d_matches_torch_over_stride_padding_kernel(stride, padding, kernel):
    _check_conv(N=2, C_in=3, C_out=4, H=7, W=5, kernel=kernel, stride=stride, padding=padding,
                use_bias=True)


@pytest.mark.parametrize("N, C_in, C_out, use_bias", [
    (1, 1, 1, False), (1, 3, 4, True), (2, 1, 4, True), (2, 3, 1, False), (1, 3, 4, False),
])
def test_conv2d_matches_torch_over_channels_batch_bias(N, C_in, C_out, use_bias):
    _check_conv(N, C_in, C_out, H=7, W=5, kernel=(3, 2), stride=(2, 1), padding=(2, 1),
                use_bias=use_bias, seed=1)


def test_conv2d_kernel_as_large_as_padded_input():
    _check_conv(N=1, C_in=2, C_out=3, H=3, W=2, kernel=(5, 4), stride=1, padding=1,
                use_bias=True)


@pytest.mark.parametrize("x_shape, w_shape, kwargs", [
    ((1, 2, 5, 5), (3, 1, 3, 3), {}),  # channel mismatch
    ((2, 5, 5), (3, 2, 3, 3), {}),  # X not 4-D
    ((1, 2, 3, 3), (3, 2, 4, 4), {}),  # kernel larger than input
    ((1, 2, 5, 5), (3, 2, 3, 3), {"stride": 0}),
    ((1, 2, 5, 5), (3, 2, 3, 3), {"padding": -1}),
    ((1, 2, 5, 5), (3, 2, 3, 3), {"stride": (1, 2, 3)}),
    ((1, 2, 5, 5), (3, 2, 3, 3), {"bias": torch.zeros(2)}),
])
def test_conv2d_rejects_bad_arguments(x_shape, w_shape, kwargs):
    with pytest.raises(DivekitError):
        conv2d(torch.zeros(x_shape), torch.zeros(w_shape), **kwargs)


def test_corr2d_rejects_bad_shapes():
    with pytest.raises(DivekitError):
        corr2d(torch.zeros(1, 3, 3), torch.zeros(2, 2))
    with pytest.raises(DivekitError):
        corr2d(torch.zeros(2, 2), torch.zeros(3, 1))


@pytest.mark.parametrize("N, C_in, C_out", [(1, 3, 2), (2, 1, 4), (3, 4, 1)])
def test_conv1x1_as_matmul_matches_torch(N, C_in, C_out):
    gen = torch.Generator().manual_seed(2)
    X = torch.randn(N, C_in, 3, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(C_out, C_in, 1, 1, generator=gen, dtype=torch.float64,
                         requires_grad=True)
    ours = conv1x1_as_matmul(X, weight)
    ref = F.conv2d(X, weight)
    torch.testing.assert_close(ours, ref)
    upstream = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    for g, g_ref in zip(grads(ours, (X, weight), upstream), grads(ref, (X, weight), upstream),
                        strict=True):
        torch.testing.assert_close(g, g_ref)


def test_conv1x1_as_matmul_rejects_larger_kernels():
    with pytest.raises(DivekitError):
        conv1x1_as_matmul(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 3))


def _edge_image() -> tuple[torch.Tensor, torch.Tensor]:
    X = torch.ones(6, 8, dtype=torch.float64)
    X[:, 2:6] = 0
    return X, corr2d(X, torch.tensor([[1.0, -1.0]], dtype=torch.float64))


def test_edge_target_marks_the_two_vertical_edges():
    _, Y = _edge_image()
    expected_row = torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(Y, expected_row.expand(6, 7))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_learn_edge_kernel_recovers_the_edge_detector(seed):
    X, Y = _edge_image()
    K = learn_edge_kernel(X, Y, seed=seed)
    assert K.shape == (1, 2)
    assert (K - torch.tensor([[1.0, -1.0]], dtype=torch.float64)).abs().max() < 0.05


def test_learn_edge_kernel_rejects_mismatched_target():
    X, Y = _edge_image()
    with pytest.raises(DivekitError):
        learn_edge_kernel(X, Y[:, :-1])
