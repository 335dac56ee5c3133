"""Activation functions from scratch (course 5.1): ReLU, sigmoid and tanh from ``exp``/``where``."""

from __future__ import annotations

import torch


def relu(X: torch.Tensor) -> torch.Tensor:
    """Rectified linear unit ``max(x, 0)``; its gradient is 1 for ``x > 0`` and 0 otherwise."""
    return torch.where(X > 0, X, 0.0)


def _minus_abs(X: torch.Tensor) -> torch.Tensor:
    # -|x|, written with where so that its slope at 0 is -1 (from the x >= 0 side):
    # abs() has slope 0 there, which would zero the gradients of sigmoid and tanh at 0.
    return torch.where(X >= 0, -X, X)


def sigmoid(X: torch.Tensor) -> torch.Tensor:
    """Logistic sigmoid ``1 / (1 + exp(-x))``, stable for inputs of any size.

    ``exp`` only ever sees ``-|x| <= 0``, so it never overflows: for ``x < 0`` the equivalent
    form ``exp(x) / (1 + exp(x))`` is used, giving exactly 0 (not nan) at ``x = -1000``.
    """
    e = torch.exp(_minus_abs(X))
    return torch.where(X >= 0, 1 / (1 + e), e / (1 + e))


def tanh(X: torch.Tensor) -> torch.Tensor:
    """Hyperbolic tangent ``(1 - exp(-2x)) / (1 + exp(-2x))``, stable for inputs of any size.

    Computed for ``|x|`` and given the sign of ``x`` (tanh is odd); ``expm1`` keeps full
    precision near 0, where ``1 - exp(-2|x|)`` would cancel.
    """
    m = torch.expm1(2 * _minus_abs(X))
    t = -m / (2 + m)
    return torch.where(X >= 0, t, -t)
