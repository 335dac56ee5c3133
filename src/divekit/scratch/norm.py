"""Batch normalization (course section 8.5; Ioffe & Szegedy, 2015) and layer normalization.

Batch norm standardises each feature (fully connected) or each channel (convolutional) with
the statistics of the current minibatch while training, and with running averages of those
statistics at evaluation time. Layer norm standardises each example over its own features, so
it behaves the same in training and evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from divekit.errors import DivekitError


def batch_norm(X: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor,
               running_mean: torch.Tensor, running_var: torch.Tensor, training: bool,
               momentum: float = 0.1, eps: float = 1e-5) -> torch.Tensor:
    """Batch normalization of a fully connected (N, D) or convolutional (N, C, H, W) input.

    In training the running statistics are updated in place, with PyTorch's convention
    ``running = (1 - momentum) * running + momentum * batch_stat``, where the variance that
    enters the running average is the unbiased one (divided by m - 1).

    Args:
        X: input of shape (N, D) or (N, C, H, W).
        gamma, beta: scale and shift of shape (D,) or (C,).
        running_mean, running_var: running statistics of shape (D,) or (C,).
        training: use (and record) the batch statistics, else use the running ones.
        momentum: weight of the new batch statistic in the running average.
        eps: added to the variance so a constant feature does not divide by zero.

    Returns:
        Same shape as ``X``: ``gamma * (X - mean) / sqrt(var + eps) + beta``, with mean and
        (biased) variance per feature over N, or per channel over N, H and W (m values each).
    """
    if X.dim() not in (2, 4):
        raise DivekitError(f"batch_norm takes X of shape (N, D) or (N, C, H, W), "
                           f"got {tuple(X.shape)}")
    num_features = X.shape[1]
    for name, tensor in (("gamma", gamma), ("beta", beta), ("running_mean", running_mean),
                         ("running_var", running_var)):
        if tensor.shape != (num_features,):
            raise DivekitError(f"{name} must have shape ({num_features},), "
                               f"got {tuple(tensor.shape)}")
    dims = (0,) if X.dim() == 2 else (0, 2, 3)
    # Broadcast per-feature vectors along the batch (and spatial) dimensions.
    shape = (1, num_features) + (1,) * (X.dim() - 2)
    if training:
        m = X.numel() // num_features
        if m < 2:
            raise DivekitError(f"batch_norm needs more than one value per feature in training, "
                               f"got input of shape {tuple(X.shape)}")
        mean = X.mean(dim=dims)
        var = ((X - mean.reshape(shape)) ** 2).mean(dim=dims)
        with torch.no_grad():
            running_mean.mul_(1 - momentum).add_(momentum * mean)
            running_var.mul_(1 - momentum).add_(momentum * var * m / (m - 1))
    else:
        mean, var = running_mean, running_var
    X_hat = (X - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + eps)
    return gamma.reshape(shape) * X_hat + beta.reshape(shape)


class BatchNorm(nn.Module):
    """Batch normalization layer: learnable ``gamma``/``beta`` plus running statistics.

    Args:
        num_features: D for fully connected inputs, C for convolutional ones.
        num_dims: 2 for (N, D) inputs, 4 for (N, C, H, W) inputs.
        momentum, eps: as in :func:`batch_norm`.

    Shape:
        Input and output: (N, num_features) or (N, num_features, H, W).
    """

    def __init__(self, num_features: int, num_dims: int, momentum: float = 0.1,
                 eps: float = 1e-5) -> None:
        super().__init__()
        if num_dims not in (2, 4):
            raise DivekitError(f"num_dims must be 2 or 4, got {num_dims!r}")
        self.num_dims, self.momentum, self.eps = num_dims, momentum, eps
        self.gamma = nn.Parameter(torch.ones(num_features))
        self.beta = nn.Parameter(torch.zeros(num_features))
        # Buffers follow the module across devices and into checkpoints, but are not trained.
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """Normalise ``X`` with batch statistics in training mode, running ones in eval mode."""
        if X.dim() != self.num_dims:
            raise DivekitError(f"BatchNorm(num_dims={self.num_dims}) got input of shape "
                               f"{tuple(X.shape)}")
        return batch_norm(X, self.gamma, self.beta, self.running_mean, self.running_var,
                          self.training, self.momentum, self.eps)


def layer_norm(X: torch.Tensor, normalized_shape: int | Sequence[int],
               weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
               eps: float = 1e-5) -> torch.Tensor:
    """Layer normalization: standardise each example over its trailing dimensions.

    Args:
        X: input of shape (*, *normalized_shape).
        normalized_shape: the trailing dimensions to normalise over.
        weight, bias: optional elementwise scale and shift of shape ``normalized_shape``.
        eps: added to the variance for numerical stability.

    Returns:
        Same shape as ``X``: ``weight * (X - mean) / sqrt(var + eps) + bias`` with mean and
        biased variance over the trailing dimensions of each example.
    """
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if not shape or tuple(X.shape[X.dim() - len(shape):]) != shape:
        raise DivekitError(f"normalized_shape {shape} must be non-empty and match the trailing "
                           f"dimensions of X, got X of shape {tuple(X.shape)}")
    for name, tensor in (("weight", weight), ("bias", bias)):
        if tensor is not None and tuple(tensor.shape) != shape:
            raise DivekitError(f"{name} must have shape {shape}, got {tuple(tensor.shape)}")
    dims = tuple(range(-len(shape), 0))
    mean = X.mean(dim=dims, keepdim=True)
    var = ((X - mean) ** 2).mean(dim=dims, keepdim=True)
    Y = (X - mean) / torch.sqrt(var + eps)
    if weight is not None:
        Y = Y * weight
    if bias is not None:
        Y = Y + bias
    return Y
