"""The perceptron from scratch (course 5.1; Rosenblatt, 1958, "The Perceptron: A Probabilistic
Model for Information Storage and Organization in the Brain")."""

from __future__ import annotations

import torch

from divekit.errors import DivekitError


def train_perceptron(
    X: torch.Tensor, y: torch.Tensor, epochs: int = 100, lr: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Rosenblatt's mistake-driven rule: on a misclassified ``x_i``, ``w += lr y_i x_i``,
    ``b += lr y_i``.

    Examples are visited in order; an example counts as a mistake when ``y_i (x_i . w + b) <= 0``
    (a point on the boundary is not yet classified). Training stops after the first epoch
    without mistakes, which the convergence theorem guarantees for separable data.

    Args:
        X: inputs.
        y: labels, each -1 or +1.
        epochs: most passes over the data.
        lr: step size (with zero initial weights it only scales ``w`` and ``b``).

    Returns:
        ``(w, b, mistakes)``: weights ``(d,)``, bias ``()``, and the mistakes made in each
        epoch that ran.

    Shape:
        X: ``(n, d)``; y: ``(n,)``.
    """
    if X.dim() != 2:
        raise DivekitError(f"X must be (examples, features), got shape {tuple(X.shape)}")
    if y.shape != X.shape[:1]:
        raise DivekitError(f"y must have shape ({len(X)},), got {tuple(y.shape)}")
    if not bool(((y == 1) | (y == -1)).all()):
        raise DivekitError("perceptron labels must be -1 or +1")
    X = X.detach()
    y = y.detach().to(X.dtype)
    w = torch.zeros(X.shape[1], dtype=X.dtype)
    b = torch.zeros((), dtype=X.dtype)
    mistakes_per_epoch = []
    for _ in range(epochs):
        mistakes = 0
        for x_i, y_i in zip(X, y, strict=True):
            if y_i * (x_i @ w + b) <= 0:
                w += lr * y_i * x_i
                b += lr * y_i
                mistakes += 1
        mistakes_per_epoch.append(mistakes)
        if mistakes == 0:
            break
    return w, b, mistakes_per_epoch


def perceptron_predict(X: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Classify by the side of the hyperplane: +1 where ``X w + b > 0``, else -1.

    Shape:
        X: ``(n, d)``; w: ``(d,)``; b: ``()``; output: ``(n,)``.
    """
    return torch.where(X @ w + b > 0, 1.0, -1.0).to(X.dtype)
