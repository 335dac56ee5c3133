"""Dropout from scratch (course 5.6; Srivastava et al., 2014, "Dropout: A Simple Way to Prevent
Neural Networks from Overfitting")."""

from __future__ import annotations

import torch

from divekit.errors import DivekitError


def dropout(
    X: torch.Tensor, p: float, training: bool = True, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Zero each element with probability ``p`` and scale the survivors by ``1 / (1 - p)``.

    The scaling keeps the expected value of every element unchanged, so at test time
    (``training=False``) the layer is simply the identity.

    Args:
        X: any tensor of floats.
        p: drop probability in [0, 1]; 1 drops everything.
        training: apply dropout; when False return ``X`` unchanged.
        generator: random source of the mask (default: torch's global one).

    Returns:
        A tensor shaped like ``X``.
    """
    if not 0.0 <= p <= 1.0:
        raise DivekitError(f"dropout probability must be in [0, 1], got {p!r}")
    if not training or p == 0:
        return X
    if p == 1:
        return torch.zeros_like(X)
    keep = torch.rand(X.shape, generator=generator, dtype=X.dtype, device=X.device) > p
    return torch.where(keep, X / (1 - p), 0.0)
