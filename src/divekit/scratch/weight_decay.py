"""Weight decay (course 3.7): an explicit L2 penalty on an over-parameterised linear model.

With 200 features and only 20 training examples, plain least squares fits the noise; adding
``lambd * ||w||^2 / 2`` to the loss shrinks the weights and the test loss falls with them.
"""

from __future__ import annotations

import torch

from divekit.data.synthetic import synthetic_regression
from divekit.scratch.linear import linreg, sgd_step, squared_loss
from divekit.scratch.mlp import l2_penalty


def high_dimensional_data(
    num_train: int = 20, num_test: int = 100, num_inputs: int = 200, seed: int = 0
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """The course's data: ``y = 0.05 + sum_i 0.01 x_i + noise``, noise sigma 0.01.

    Returns:
        ``(X_train, y_train), (X_test, y_test)`` with X of shape ``(n, num_inputs)``.
    """
    X, y = synthetic_regression(torch.full((num_inputs,), 0.01), 0.05, num_train + num_test,
                                noise=0.01, seed=seed)
    return (X[:num_train], y[:num_train]), (X[num_train:], y[num_train:])


def train_with_weight_decay(
    lambd: float, num_epochs: int = 100, lr: float = 0.003, batch_size: int = 5, seed: int = 0
) -> dict[str, float]:
    """Minibatch SGD on ``squared_loss + lambd * l2_penalty(w)`` (the course's settings).

    Returns:
        ``{"lambda", "w_norm", "train_loss", "test_loss"}``: the L2 norm of the learned weights
        and the mean squared loss (``(y_hat - y)^2 / 2``) on each split after training.
    """
    (X, y), (X_test, y_test) = high_dimensional_data(seed=seed)
    # Not ``seed`` itself: that stream drew X, and w would start as a copy of X's first row.
    generator = torch.Generator().manual_seed(seed + 1)
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
