"""Softmax regression from scratch (course 4.1 and 4.4): a stable softmax, cross-entropy via
log-sum-exp, and a one-layer classifier."""

from __future__ import annotations

import torch
from torch import nn

from divekit.errors import DivekitError
from divekit.scratch.losses import reduce_loss


def _max_shift(X: torch.Tensor, dim: int) -> torch.Tensor:
    # Subtracting the row maximum leaves softmax unchanged but keeps every exp() <= 1, so
    # logits like 1000 do not overflow. It is a constant shift, hence detached. A row that is
    # all -inf (fully masked) gets shift 0 instead of -inf, which would make (-inf) - (-inf) nan.
    shift = X.detach().amax(dim=dim, keepdim=True)
    return torch.where(torch.isfinite(shift), shift, 0.0)


def softmax(X: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax ``exp(x_i) / sum_j exp(x_j)`` along ``dim``, computed without overflow.

    Args:
        X: logits of any shape.
        dim: the dimension that sums to 1.

    Returns:
        Probabilities shaped like ``X``.
    """
    e = torch.exp(X - _max_shift(X, dim))
    return e / e.sum(dim=dim, keepdim=True)


def logsumexp(X: torch.Tensor, dim: int = -1, keepdim: bool = False) -> torch.Tensor:
    """``log(sum_j exp(x_j))`` along ``dim``, as ``m + log(sum_j exp(x_j - m))`` with ``m = max x``.

    Args:
        X: tensor of any shape.
        dim: the dimension summed over.
        keepdim: keep ``dim`` with size 1.

    Returns:
        ``X`` with ``dim`` removed (or of size 1 with ``keepdim``).
    """
    shift = _max_shift(X, dim)
    out = shift + torch.log(torch.exp(X - shift).sum(dim=dim, keepdim=True))
    return out if keepdim else out.squeeze(dim)


def log_softmax(X: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``log softmax(X) = X - logsumexp(X)`` along ``dim``: finite even where softmax underflows.

    Args:
        X: logits of any shape.
        dim: the dimension normalised over.

    Returns:
        Log-probabilities shaped like ``X``.
    """
    return X - logsumexp(X, dim=dim, keepdim=True)


def cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Cross-entropy of integer labels under ``softmax(logits)``.

    Per example ``-log softmax(o)_y = logsumexp(o) - o_y``, never forming the probabilities,
    so a confident wrong prediction costs a large finite loss instead of ``-log(0) = inf``.

    Args:
        logits: unnormalised class scores.
        labels: the class index of each example.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.

    Shape:
        logits: ``(n, q)``; labels: ``(n,)`` with values in ``[0, q)``; output: ``()`` or ``(n,)``.
    """
    if logits.dim() != 2:
        raise DivekitError(f"logits must be (examples, classes), got shape {tuple(logits.shape)}")
    if labels.shape != logits.shape[:1]:
        raise DivekitError(
            f"labels must have shape ({len(logits)},) to match logits, got {tuple(labels.shape)}"
        )
    if labels.is_floating_point() or labels.is_complex():
        raise DivekitError(f"labels must be integer class indices, got dtype {labels.dtype}")
    if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < logits.shape[1]:
        raise DivekitError(
            f"labels must lie in [0, {logits.shape[1]}), got values from {int(labels.min())} "
            f"to {int(labels.max())}"
        )
    picked = logits.gather(1, labels.reshape(-1, 1)).squeeze(1)
    return reduce_loss(logsumexp(logits, dim=1) - picked, reduction)


class SoftmaxRegression(nn.Module):
    """Softmax regression ``o = x W + b`` on flattened inputs (softmax lives in the loss).

    An ``nn.Module`` only to hold its two tensors as parameters (so optimizers, ``state_dict``
    and the Trainer work with it); the computation is the one matrix product below.

    Args:
        num_inputs: features per example after flattening (784 for 28x28 images).
        num_classes: number of outputs ``q``.
        dtype: dtype of the parameters.

    Attributes:
        W: ``(num_inputs, num_classes)`` weights drawn from N(0, 0.01^2).
        b: ``(num_classes,)`` biases, zero.
    """

    def __init__(self, num_inputs: int, num_classes: int, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.W = nn.Parameter(0.01 * torch.randn(num_inputs, num_classes, dtype=dtype))
        self.b = nn.Parameter(torch.zeros(num_classes, dtype=dtype))

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """Class logits of a batch.

        Shape:
            X: ``(n, ...)`` with ``num_inputs`` elements per example; output: ``(n, num_classes)``.
        """
        flat = X.reshape(len(X), -1)
        if flat.shape[1] != self.W.shape[0]:
            raise DivekitError(
                f"expected {self.W.shape[0]} features per example, got {flat.shape[1]} "
                f"(input shape {tuple(X.shape)})"
            )
        return flat @ self.W + self.b
