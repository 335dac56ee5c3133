"""Weight decay (course 3.7): an explicit L2 penalty on an over-parameterised linear model.

With 200 features and only 20 training examples, plain least squares fits the noise; adding
``lambd * ||w||^2 / 2`` to the loss shrinks the weights and the test loss falls with them.
The course's data (``high_dimensional_data``) and the sweep over ``lambd`` are the
``weight-decay-scratch`` recipe in :mod:`divekit.recipes.scratch`.
"""

from __future__ import annotations

import torch

from divekit.scratch.linear import linreg, sgd_step, squared_loss
from divekit.scratch.mlp import l2_penalty

Split = tuple[torch.Tensor, torch.Tensor]


def train_with_weight_decay(
    train: Split, test: Split, lambd: float, num_epochs: int = 100, lr: float = 0.003,
    batch_size: int = 5, seed: int = 1,
) -> dict[str, float]:
    """Minibatch SGD on ``squared_loss + lambd * l2_penalty(w)`` (the course's settings).

    Args:
        train, test: ``(X, y)`` with X of shape ``(n, num_inputs)`` and y of shape ``(n, 1)``.
        lambd: weight of the L2 penalty.
        num_epochs, lr, batch_size: the SGD settings.
        seed: seeds the initial ``w ~ N(0, 1)`` and the shuffling. Give it a stream other
            than the one that drew X, or w starts as a copy of X's first row.

    Returns:
        ``{"lambda", "w_norm", "train_loss", "test_loss"}``: the L2 norm of the learned weights
        and the mean squared loss (``(y_hat - y)^2 / 2``) on each split after training.
    """
    (X, y), (X_test, y_test) = train, test
    generator = torch.Generator().manual_seed(seed)
    w = torch.randn(X.shape[1], 1, generator=generator).requires_grad_()
    b = torch.zeros(1, requires_grad=True)
    for _ in range(num_epochs):
        order = torch.randperm(len(X), generator=generator)
        for start in range(0, len(X), batch_size):
            index = order[start : start + batch_size]
            # The penalty is added to every example's loss, so sgd_step's division by the
            # batch size leaves exactly lambd * w in the gradient.
            loss = squared_loss(linreg(X[index], w, b), y[index]) + lambd * l2_penalty(w)
            loss.sum().backward()
            sgd_step([w, b], lr, len(index))
    with torch.no_grad():
        return {
            "lambda": lambd,
            "w_norm": w.norm().item(),
            "train_loss": squared_loss(linreg(X, w, b), y).mean().item(),
            "test_loss": squared_loss(linreg(X_test, w, b), y_test).mean().item(),
        }
