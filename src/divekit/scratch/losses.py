"""Regression losses from scratch (course 3.1 and 3.5): squared (L2), absolute (L1) and Huber."""

from __future__ import annotations

import torch

from divekit.errors import DivekitError

REDUCTIONS = ("mean", "sum", "none")


def reduce_loss(loss: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Collapse per-element losses to one number, or keep them.

    Args:
        loss: per-element losses.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (return ``loss`` unchanged).
    """
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise DivekitError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")


def _residual(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # Silent broadcasting of (n, 1) against (n,) gives an (n, n) loss that still trains, badly.
    if pred.shape != target.shape:
        raise DivekitError(
            f"prediction shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}"
        )
    return pred - target


def l2_loss(pred: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Squared error ``(pred - target)^2``, averaged by default (mean squared error).

    Args:
        pred, target: tensors of the same shape.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
    """
    return reduce_loss(_residual(pred, target) ** 2, reduction)


def l1_loss(pred: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Absolute error ``|pred - target|``, averaged by default (mean absolute error).

    Args:
        pred, target: tensors of the same shape.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
    """
    return reduce_loss(_residual(pred, target).abs(), reduction)


def huber_loss(
    pred: torch.Tensor, target: torch.Tensor, delta: float = 1.0, reduction: str = "mean"
) -> torch.Tensor:
    """Huber loss: quadratic for small residuals, linear (robust to outliers) for large ones.

    With ``r = pred - target``: ``0.5 r^2`` if ``|r| <= delta``, else ``delta (|r| - delta / 2)``.
    The two pieces meet with equal value and slope at ``|r| = delta``.

    Args:
        pred, target: tensors of the same shape.
        delta: where the loss turns from quadratic to linear; must be positive.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
    """
    if not delta > 0:
        raise DivekitError(f"huber delta must be positive, got {delta!r}")
    r = _residual(pred, target)
    size = r.abs()
    loss = torch.where(size <= delta, 0.5 * r**2, delta * (size - 0.5 * delta))
    return reduce_loss(loss, reduction)
