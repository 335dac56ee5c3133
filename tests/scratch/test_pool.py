import itertools

import pytest
import torch
import torch.nn.functional as F

from divekit.errors import DivekitError
from divekit.scratch.pool import pool2d

TORCH_POOL = {"max": F.max_pool2d, "avg": F.avg_pool2d}


@pytest.mark.parametrize("mode, kernel, stride, padding", list(itertools.product(
    ["max", "avg"], [2, 3, (2, 3)], [None, 1, 2], [0, 1])))
def test_pool2d_matches_torch(mode, kernel, stride, padding):
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(2, 3, 7, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    ours = pool2d(X, kernel, stride=stride, padding=padding, mode=mode)
    ref = TORCH_POOL[mode](X, kernel, stride=stride, padding=padding)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref)
    upstream = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    (grad,) = torch.autograd.grad(ours, X, upstream)
    (grad_ref,) = torch.autograd.grad(ref, X, upstream)
    torch.testing.assert_close(grad, grad_ref)


@pytest.mark.parametrize("mode", ["max", "avg"])
def test_padding_never_wins_a_max_and_counts_as_zero_in_an_average(mode):
    # All-negative input: a padded zero would win every border max if padding were zeros.
    X = -1.0 - torch.rand(1, 2, 4, 3, generator=torch.Generator().manual_seed(3),
                          dtype=torch.float64)
    ours = pool2d(X, 3, stride=1, padding=1, mode=mode)
    torch.testing.assert_close(ours, TORCH_POOL[mode](X, 3, stride=1, padding=1))
    assert (ours < 0).all()


def test_default_stride_is_the_window():
    X = torch.randn(1, 2, 7, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for mode in ("max", "avg"):
        default = pool2d(X, (3, 2), mode=mode)
        assert default.shape == (1, 2, 2, 3)
        torch.testing.assert_close(default, pool2d(X, (3, 2), stride=(3, 2), mode=mode))


def test_course_example():
    X = torch.arange(9.0, dtype=torch.float64).reshape(1, 1, 3, 3)
    torch.testing.assert_close(pool2d(X, 2, stride=1),
                               torch.tensor([[[[4.0, 5.0], [7.0, 8.0]]]], dtype=torch.float64))
    torch.testing.assert_close(pool2d(X, 2, stride=1, mode="avg"),
                               torch.tensor([[[[2.0, 3.0], [5.0, 6.0]]]], dtype=torch.float64))


def test_batch_of_one_single_channel():
    X = torch.randn(1, 1, 5, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(pool2d(X, 3, stride=2, padding=1),
                               F.max_pool2d(X, 3, stride=2, padding=1))


@pytest.mark.parametrize("shape, kwargs", [
    ((1, 1, 5, 5), {"kernel_size": 2, "padding": 2}),  # padding above half the kernel
    ((1, 1, 5, 5), {"kernel_size": (3, 2), "padding": (1, 2)}),
    ((1, 1, 5, 5), {"kernel_size": 3, "padding": -1}),
    ((1, 1, 3, 3), {"kernel_size": 4}),  # kernel larger than the input
    ((1, 1, 3, 3), {"kernel_size": (5, 2), "padding": (0, 1)}),  # larger than the padded input
    ((1, 1, 5, 5), {"kernel_size": 0}),
    ((1, 1, 5, 5), {"kernel_size": 2, "stride": 0}),
    ((1, 1, 5, 5), {"kernel_size": 2, "mode": "min"}),
    ((1, 5, 5), {"kernel_size": 2}),  # not 4-D
    ((1, 1, 5, 5), {"kernel_size": (2, 2, 2)}),
])
def test_invalid_arguments_raise(shape, kwargs):
    with pytest.raises(DivekitError):
        pool2d(torch.zeros(shape), **kwargs)
