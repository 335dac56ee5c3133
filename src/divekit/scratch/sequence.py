"""9.1 Working with sequences: an autoregressive model of a noisy sine and k-step-ahead prediction.

An autoregressive model predicts ``x_t`` from the ``tau`` values before it,
``x_t ~ f(x_{t-tau}, ..., x_{t-1})`` (a ``tau``-th order Markov assumption). Trained on
one-step-ahead pairs it predicts the next value well, but forecasting further ahead means
feeding its own predictions back as inputs, so errors compound: the ``k``-step-ahead prediction
gets worse as ``k`` grows. The course shows this on ``x_t = sin(0.01 t) + noise`` with a
4-10-1 MLP trained on the first 600 windows (Adam, lr 0.01, batch 16, 5 epochs); the
``sine-autoregression`` recipe (:mod:`divekit.recipes.sequence`) runs it and plots it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from divekit.errors import DivekitError
from divekit.scratch.mlp import MLPScratch

Model = Callable[[torch.Tensor], torch.Tensor]


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DivekitError(f"{name} must be a positive integer, got {value!r}")


def _check_series(x: torch.Tensor, tau: int) -> None:
    _check_positive("tau", tau)
    if not isinstance(x, torch.Tensor) or x.ndim != 1:
        raise DivekitError(f"the series must be a 1-D tensor, got "
                           f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x)}")
    if len(x) <= tau:
        raise DivekitError(f"a series of {len(x)} values is too short for tau={tau}")


def sine_series(T: int = 1000, noise: float = 0.2, seed: int = 0) -> torch.Tensor:
    """The course's series ``x_t = sin(0.01 t) + eps_t``, ``eps_t ~ N(0, noise^2)``, t = 1..T.

    Args:
        T: number of time steps.
        noise: standard deviation of the Gaussian noise.
        seed: seed of the noise.

    Returns:
        ``x``, shape ``(T,)``, float32; ``x[i]`` is the value at time ``t = i + 1``.
    """
    _check_positive("T", T)
    if not noise >= 0:
        raise DivekitError(f"noise must be a non-negative standard deviation, got {noise!r}")
    time = torch.arange(1, T + 1, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    return torch.sin(0.01 * time) + noise * torch.randn(T, generator=generator)


def lagged_features(x: torch.Tensor, tau: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One-step-ahead examples: each value as the label of the ``tau`` values before it.

    Args:
        x: the series, shape ``(T,)``.
        tau: how many past values are the features.

    Returns:
        ``(features, labels)`` of shapes ``(T - tau, tau)`` and ``(T - tau,)`` with
        ``features[i] = x[i : i + tau]`` and ``labels[i] = x[i + tau]``.
    """
    _check_series(x, tau)
    return x.unfold(0, tau, 1)[:-1], x[tau:]


def _predict(model: Model, windows: torch.Tensor) -> torch.Tensor:
    """The model's prediction for each row of ``windows`` (shape ``(n, tau)``), shape ``(n,)``."""
    return model(windows).reshape(len(windows))


def _eval_mode(model: Model) -> bool:
    """Switch an ``nn.Module`` to eval mode (no dropout); return the mode to restore."""
    was_training = isinstance(model, nn.Module) and model.training
    if isinstance(model, nn.Module):
        model.eval()
    return was_training


@torch.no_grad()
def multistep_predict(model: Model, x: torch.Tensor, tau: int, start: int) -> torch.Tensor:
    """Observe ``x`` up to ``start``, then predict every later value from earlier predictions.

    Args:
        model: maps windows of shape ``(n, tau)`` to predictions of shape ``(n,)`` or ``(n, 1)``.
        x: the series, shape ``(T,)``.
        tau: window length the model was trained with.
        start: how many values are observed; at least ``tau``.

    Returns:
        ``preds``, shape ``(T,)``: ``preds[:start] = x[:start]`` and
        ``preds[i] = model(preds[i - tau : i])`` for ``i >= start``.
    """
    _check_series(x, tau)
    if isinstance(start, bool) or not isinstance(start, int) or not tau <= start <= len(x):
        raise DivekitError(f"start must be an integer in [tau, T] = [{tau}, {len(x)}], "
                           f"got {start!r}")
    was_training = _eval_mode(model)
    preds = x.clone()
    for i in range(start, len(x)):
        preds[i] = _predict(model, preds[i - tau : i].unsqueeze(0))[0]
    if was_training:
        model.train()
    return preds


@torch.no_grad()
def k_step_predictions(
    model: Model, x: torch.Tensor, tau: int, ks: Sequence[int] = (1, 4, 16, 64)
) -> dict[int, torch.Tensor]:
    """Predict ``k`` steps ahead from every window of observed values, for each ``k`` in ``ks``.

    All windows are advanced together: step ``j`` feeds the last ``tau`` columns (observed
    values, then the model's own predictions) to the model, so ``max(ks)`` calls suffice.

    Args:
        model: maps windows of shape ``(n, tau)`` to predictions of shape ``(n,)`` or ``(n, 1)``.
        x: the series, shape ``(T,)``.
        tau: window length the model was trained with.
        ks: the horizons, positive integers.

    Returns:
        ``{k: preds}`` with ``preds`` of shape ``(N,)``, ``N = T - tau - max(ks) + 1``, the same
        starts for every ``k``: ``preds[i]`` predicts ``x[i + tau + k - 1]`` from the observed
        ``x[i : i + tau]`` alone.
    """
    _check_series(x, tau)
    if not ks:
        raise DivekitError("ks must name at least one horizon")
    for k in ks:
        _check_positive("every k in ks", k)
    horizon = max(ks)
    num_windows = len(x) - tau - horizon + 1
    if num_windows < 1:
        raise DivekitError(f"a series of {len(x)} values is too short for tau={tau} and "
                           f"k={horizon}; it needs at least {tau + horizon}")
    was_training = _eval_mode(model)
    columns = [x[i : i + num_windows] for i in range(tau)]
    for step in range(horizon):
        columns.append(_predict(model, torch.stack(columns[step : step + tau], dim=1)))
    if was_training:
        model.train()
    return {k: columns[tau + k - 1] for k in ks}


def train_autoregressive(
    x: torch.Tensor,
    tau: int = 4,
    num_train: int = 600,
    hidden: int = 10,
    lr: float = 0.01,
    batch_size: int = 16,
    epochs: int = 5,
    seed: int = 0,
) -> tuple[MLPScratch, list[float]]:
    """Fit a ``tau``-``hidden``-1 ReLU MLP to the first ``num_train`` one-step examples.

    Squared loss, Adam, shuffled minibatches: the course's setting by default, except that
    the weights start as N(0, 0.01^2) (:class:`MLPScratch`) rather than Xavier; both reach the
    same loss within the 5 epochs.

    Args:
        x: the series, shape ``(T,)``.
        tau: past values per example.
        num_train: examples (windows) to train on; the rest are for evaluation.
        hidden: width of the hidden layer.
        lr: Adam learning rate.
        batch_size: examples per minibatch.
        epochs: passes over the training examples.
        seed: seed of the initial weights and of the shuffling.

    Returns:
        ``(model, losses)``: the trained model and the mean squared error on the training
        examples after each epoch.
    """
    features, labels = lagged_features(x, tau)
    _check_positive("num_train", num_train)
    if num_train > len(features):
        raise DivekitError(f"num_train={num_train} is more than the {len(features)} examples")
    features, labels = features[:num_train], labels[:num_train]
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = MLPScratch(tau, hidden, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(epochs):
        for batch in torch.randperm(num_train, generator=generator).split(batch_size):
            loss = ((_predict(model, features[batch]) - labels[batch]) ** 2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            losses.append(((_predict(model, features) - labels) ** 2).mean().item())
    return model, losses


def k_step_errors(
    x: torch.Tensor, preds: dict[int, torch.Tensor], tau: int
) -> dict[int, float]:
    """Mean squared error of each k-step prediction against the values it predicts.

    Args:
        x: the series, shape ``(T,)``.
        preds: the result of :func:`k_step_predictions` with the same ``tau``.
        tau: window length.

    Returns:
        ``{k: mean((preds[k][i] - x[i + tau + k - 1]) ** 2)}``.
    """
    return {k: ((pred - x[tau + k - 1 : tau + k - 1 + len(pred)]) ** 2).mean().item()
            for k, pred in preds.items()}
