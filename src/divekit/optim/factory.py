"""Build a ``torch.optim`` optimizer from a name and the usual hyperparameters."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from divekit.errors import DivekitError

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adagrad")


def build_optimizer(
    name: str,
    params: Iterable,
    lr: float,
    *,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
) -> torch.optim.Optimizer:
    """``sgd`` (optionally momentum / Nesterov), ``adam``, ``adamw``, ``rmsprop``, ``adagrad``."""
    if not lr > 0:
        raise DivekitError(f"learning rate must be positive, got {lr}")
    if weight_decay < 0 or not 0 <= momentum < 1:
        raise DivekitError(
            f"need weight_decay >= 0 and 0 <= momentum < 1, got {weight_decay} and {momentum}"
        )
    params = list(params)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                               nesterov=nesterov and momentum > 0)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=weight_decay)
    raise DivekitError(f"unknown optimizer {name!r}; choose from: {', '.join(OPTIMIZERS)}")
