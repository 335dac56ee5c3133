"""Linear regression from scratch (course 3.4): the model, squared loss, minibatch SGD, training."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from divekit.errors import DivekitError


def linreg(X: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The linear model ``X w + b``.

    Shape:
        X: ``(n, d)``; w: ``(d, 1)``; b: ``(1,)`` or scalar; output: ``(n, 1)``.
    """
    return X @ w + b


def squared_loss(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example squared loss ``(y_hat - y)^2 / 2``; the 1/2 makes its gradient ``y_hat - y``.

    Shape:
        y_hat: ``(n, 1)``; y: any shape with ``n`` elements (reshaped like ``y_hat``);
        output: ``(n, 1)``, not reduced.
    """
    return (y_hat - y.reshape(y_hat.shape)) ** 2 / 2


def sgd_step(params: Iterable[torch.Tensor], lr: float, batch_size: int) -> None:
    """One minibatch SGD step ``p -= lr * p.grad / batch_size``, then zero the gradients.

    The division turns the gradient of a loss *summed* over the batch into that of its mean.

    Args:
        params: leaf tensors holding gradients from ``backward()``; updated in place.
        lr: learning rate.
        batch_size: number of examples the loss was summed over.
    """
    # no_grad: the update itself must not become part of the graph.
    with torch.no_grad():
        for param in params:
            param -= lr * param.grad / batch_size
            param.grad.zero_()


def _minibatches(
    num_examples: int, batch_size: int, generator: torch.Generator
) -> Iterator[torch.Tensor]:
    # A fresh random order every epoch, so batches are not the same groups each time.
    order = torch.randperm(num_examples, generator=generator)
    for start in range(0, num_examples, batch_size):
        yield order[start : start + batch_size]


def train_linear_regression(
    X: torch.Tensor,
    y: torch.Tensor,
    lr: float = 0.03,
    batch_size: int = 10,
    epochs: int = 3,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Fit ``y = X w + b`` by minibatch SGD on the squared loss, as the course does.

    ``w`` starts from N(0, 0.01^2) and ``b`` from 0; ``seed`` fixes both that draw and the
    shuffling of the minibatches.

    Args:
        X: features.
        y: targets, one per example.
        lr: learning rate.
        batch_size: examples per minibatch (the last one may be smaller).
        epochs: passes over the data.
        seed: seed of the initial weights and the shuffle order.

    Returns:
        ``(w, b, losses)``: the learned ``(d, 1)`` weights and ``(1,)`` bias (detached), and
        the mean squared loss over all of ``X`` after each epoch.

    Shape:
        X: ``(n, d)``; y: ``(n,)`` or ``(n, 1)``.
    """
    if X.dim() != 2:
        raise DivekitError(f"X must be (examples, features), got shape {tuple(X.shape)}")
    if y.numel() != len(X):
        raise DivekitError(f"need one target per example: {len(X)} examples, {y.numel()} targets")
    if batch_size < 1:
        raise DivekitError(f"batch size must be a positive integer, got {batch_size}")
    y = y.reshape(-1, 1)
    generator = torch.Generator().manual_seed(seed)
    w = (0.01 * torch.randn(X.shape[1], 1, generator=generator, dtype=X.dtype)).requires_grad_()
    b = torch.zeros(1, dtype=X.dtype, requires_grad=True)
    losses = []
    for _ in range(epochs):
        for index in _minibatches(len(X), batch_size, generator):
            loss = squared_loss(linreg(X[index], w, b), y[index])
            loss.sum().backward()
            sgd_step([w, b], lr, len(index))
        with torch.no_grad():
            losses.append(squared_loss(linreg(X, w, b), y).mean().item())
    return w.detach(), b.detach(), losses
