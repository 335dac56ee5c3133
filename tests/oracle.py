"""Checking a from-scratch function against its PyTorch oracle: values and gradients."""

import torch

f64 = torch.float64


def randn(*shape, seed=0):
    """Seeded float64 standard normal tensor."""
    return torch.randn(shape, dtype=f64, generator=torch.Generator().manual_seed(seed))


def value_and_grads(fn, *inputs, seed=1):
    """``fn(*inputs)`` and the gradients of a random projection of it w.r.t. every input."""
    inputs = [x.detach().clone().requires_grad_() for x in inputs]
    out = fn(*inputs)
    grads = torch.autograd.grad((out * randn(*out.shape, seed=seed)).sum(), inputs)
    return out.detach(), grads


def assert_same(scratch, oracle, *inputs):
    """Equal outputs, and equal gradients with respect to every input."""
    out, grads = value_and_grads(scratch, *inputs)
    expected, expected_grads = value_and_grads(oracle, *inputs)
    torch.testing.assert_close(out, expected)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad)
