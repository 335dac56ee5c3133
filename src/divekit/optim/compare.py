"""Comparing optimizers by training loss against wall-clock time (course sections 12.4-12.10).

The course trains one linear-regression model on the NASA airfoil data with each optimizer
and plots the loss against time. The airfoil file is not bundled, so this uses scikit-learn's
bundled diabetes data (442 patients, 10 features, a disease-progression target), standardised.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from divekit.data import DataModule, TensorLoader
from divekit.errors import DivekitError

OptimizerFactory = Callable[[Iterable[torch.Tensor]], torch.optim.Optimizer]


def diabetes_regression(batch_size: int = 10, seed: int = 0) -> DataModule:
    """scikit-learn's diabetes data as a regression ``DataModule`` with a fixed 80/20 split.

    Features and target are standardised with the training split's mean and standard
    deviation, so a model that predicts 0 has a training loss of about 1.

    Args:
        batch_size: examples per training batch.
        seed: chooses the split and the training shuffle.

    Shape:
        train: ``(354, 10)`` inputs, ``(354, 1)`` targets; test: ``(88, 10)``, ``(88, 1)``.
    """
    from sklearn.datasets import load_diabetes

    features, targets = load_diabetes(return_X_y=True)
    features = torch.tensor(features, dtype=torch.float32)
    targets = torch.tensor(targets, dtype=torch.float32).reshape(-1, 1)
    order = torch.randperm(len(features), generator=torch.Generator().manual_seed(seed))
    train, test = order[: round(0.8 * len(order))], order[round(0.8 * len(order)) :]

    def standardise(t: torch.Tensor) -> torch.Tensor:
        return (t - t[train].mean(0)) / t[train].std(0)

    features, targets = standardise(features), standardise(targets)
    return DataModule(
        "diabetes", train=(features[train], targets[train]), test=(features[test], targets[test]),
        batch_size=batch_size, task="regression", seed=seed,
    )


def compare_optimizers(
    factories: dict[str, OptimizerFactory],
    data: DataModule | tuple[torch.Tensor, torch.Tensor],
    epochs: int = 2,
    batch_size: int = 10,
    record_every: int = 200,
    seed: int = 0,
) -> dict[str, list[tuple[float, float]]]:
    """Train one linear-regression model per optimizer and record loss against time.

    Every run starts from the same weights (``w ~ N(0, 0.01^2)``, ``b = 0``, as the course)
    and sees the same batches. The loss is the mean squared error over the whole training
    set, evaluated at the start, every ``record_every`` examples, and at the end; the clock
    counts optimizer steps only (forward, backward, update), not these evaluations.

    Args:
        factories: name -> ``params -> optimizer``, e.g. ``{"adam": lambda p: Adam(p, lr=0.01)}``.
        data: a regression ``DataModule`` (its training split is used) or ``(X, y)``.
        epochs: passes over the training data.
        batch_size: examples per minibatch.
        record_every: examples between two recorded points.
        seed: the initial weights and the batch order.

    Returns:
        name -> ``[(seconds, loss), ...]``, seconds non-decreasing and starting at 0.

    Shape:
        X: ``(num_examples, num_features)``; y: ``(num_examples,)`` or ``(num_examples, 1)``.
    """
    if not factories:
        raise DivekitError("compare_optimizers needs at least one optimizer factory")
    for name, value in (("epochs", epochs), ("batch_size", batch_size),
                        ("record_every", record_every)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DivekitError(f"{name} must be a positive integer, got {value!r}")
    features, targets = data.train if isinstance(data, DataModule) else data
    if features.ndim != 2 or len(targets) != len(features) or targets.numel() != len(features):
        raise DivekitError(
            f"need X of shape (n, d) and y of n values, got {tuple(features.shape)} and "
            f"{tuple(targets.shape)}"
        )
    features, targets = features.float(), targets.float().reshape(-1, 1)
    loader = TensorLoader(features, targets, batch_size=batch_size, shuffle=True, seed=seed)
    steps_between = math.ceil(record_every / batch_size)
    results = {}
    for name, factory in factories.items():
        generator = torch.Generator().manual_seed(seed)
        w = (0.01 * torch.randn(features.shape[1], 1, generator=generator)).requires_grad_()
        b = torch.zeros(1, requires_grad=True)
        optimizer = factory([w, b])
        points = [(0.0, _mse(features, targets, w, b))]
        seconds, step, last = 0.0, 0, len(loader) * epochs
        for epoch in range(epochs):
            loader.set_epoch(epoch)
            for X, y in loader:
                tick = time.perf_counter()
                optimizer.zero_grad()
                ((X @ w + b - y) ** 2).mean().backward()
                optimizer.step()
                seconds += time.perf_counter() - tick
                step += 1
                if step % steps_between == 0 or step == last:
                    points.append((seconds, _mse(features, targets, w, b)))
        results[name] = points
    return results


@torch.no_grad()
def _mse(X: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> float:
    return ((X @ w + b - y) ** 2).mean().item()


def plot_loss_vs_time(results: dict[str, list[tuple[float, float]]], path: str | Path) -> Path:
    """Draw each optimizer's training loss (log scale) against seconds into a PNG at ``path``.

    Args:
        results: the output of :func:`compare_optimizers`.
        path: the PNG to write (replaced atomically).
    """
    if not results or any(not points for points in results.values()):
        raise DivekitError("plot_loss_vs_time needs at least one non-empty list of points")
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(5.5, 3.6))
    for name, points in results.items():
        seconds, losses = zip(*points, strict=True)
        axis.plot(seconds, losses, label=name)
    axis.set_yscale("log")
    axis.set_xlabel("training time (s)")
    axis.set_ylabel("training loss")
    axis.grid(alpha=0.3)
    axis.legend()
    fig.tight_layout()
    from divekit.engine.plots import save_png

    return save_png(fig, Path(path))
