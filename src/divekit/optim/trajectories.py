"""Optimization trajectories on toy functions (course sections 12.3-12.10), and their plots.

The course's running example is the ill-conditioned quadratic ``f_2d(x1, x2) = 0.1 x1^2 +
2 x2^2`` started at ``(-5, -2)``: the curvature along ``x2`` is 20 times that along ``x1``, so
one learning rate is too small for ``x1`` or too large for ``x2``. Its non-convex example is
``f(x) = x cos(c x)`` with ``c = 0.15 pi`` (section 12.3), which has infinitely many local minima.

>>> from divekit.optim.course import Momentum
>>> path = trajectory(lambda params: Momentum(params, lr=0.6, beta=0.5), f_2d)
>>> plot_trajectories(f_2d, {"momentum": path}, "momentum.png")
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from divekit.errors import DivekitError

COURSE_START = (-5.0, -2.0)

Scalar = float | torch.Tensor


def f_2d(x1: Scalar, x2: Scalar) -> Scalar:
    """The course's ill-conditioned quadratic ``0.1 * x1**2 + 2 * x2**2`` (floats or tensors)."""
    return 0.1 * x1**2 + 2 * x2**2


def f_2d_grad(x1: Scalar, x2: Scalar) -> tuple[Scalar, Scalar]:
    """Gradient of :func:`f_2d`: ``(0.2 * x1, 4 * x2)``."""
    return 0.2 * x1, 4 * x2


def f_nonconvex(x: Scalar) -> Scalar:
    """The course's non-convex ``x * cos(0.15 * pi * x)`` (section 12.3; floats or tensors).

    Gradient descent from ``x = 10`` with learning rate 2 overshoots the nearby minimum and
    settles in a worse one near ``x = -1.5``.
    """
    c = 0.15 * math.pi
    return x * (torch.cos(c * x) if isinstance(x, torch.Tensor) else math.cos(c * x))


def train_2d(
    update: Callable[[float, float, float, float], tuple[float, float, float, float]],
    steps: int = 20,
    start: tuple[float, float] = COURSE_START,
) -> list[tuple[float, float]]:
    """Iterate a hand-written 2-D update rule, as the course's ``train_2d`` does.

    Args:
        update: ``(x1, x2, s1, s2) -> (x1, x2, s1, s2)``, where ``s1, s2`` is the rule's own
            state (e.g. the momentum ``v1, v2``), starting at 0; e.g. the course's
            ``gd_2d = lambda x1, x2, s1, s2: (x1 - eta * 0.2 * x1, x2 - eta * 4 * x2, 0, 0)``.
        steps: number of updates.
        start: ``(x1, x2)`` before the first update.

    Returns:
        The ``steps + 1`` points ``(x1, x2)`` visited, the start first.
    """
    _check_steps(steps)
    x1, x2 = start
    s1 = s2 = 0.0
    points = [(x1, x2)]
    for _ in range(steps):
        x1, x2, s1, s2 = update(x1, x2, s1, s2)
        points.append((x1, x2))
    return points


def trajectory(
    optimizer_factory: Callable[[Iterable[torch.Tensor]], torch.optim.Optimizer],
    f: Callable[..., torch.Tensor] = f_2d,
    start: tuple[float, ...] = COURSE_START,
    steps: int = 20,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Minimise ``f`` with any optimizer and return the points it visits.

    The point is one parameter tensor; its gradient comes from autograd, so ``f`` needs no
    hand-written derivative.

    Args:
        optimizer_factory: ``params -> optimizer``, e.g. ``lambda p: Adam(p, lr=0.1)``.
        f: takes the coordinates as separate arguments, ``f(x1, x2)`` (or ``f(x)`` in 1-D).
        start: the first point; its length is the dimension.
        steps: number of optimizer steps.
        dtype: float64 by default, like the course's Python floats.

    Returns:
        The points visited, the start first.

    Shape:
        ``(steps + 1, len(start))``.
    """
    _check_steps(steps)
    if len(start) == 0:
        raise DivekitError("start must have at least one coordinate")
    x = torch.tensor(start, dtype=dtype, requires_grad=True)
    optimizer = optimizer_factory([x])
    points = [x.detach().clone()]
    for _ in range(steps):
        optimizer.zero_grad()
        f(*x).backward()
        optimizer.step()
        points.append(x.detach().clone())
    return torch.stack(points)


def plot_trajectories(
    f: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    named_trajectories: dict[str, torch.Tensor],
    path: str | Path,
) -> Path:
    """Draw contour lines of a 2-D ``f`` and each trajectory into a PNG at ``path``.

    The view is the box around every point (with a margin), so a diverging run stays visible.

    Args:
        f: evaluated elementwise on grids of ``x1`` and ``x2`` tensors.
        named_trajectories: legend label -> points, from :func:`trajectory` or
            :func:`train_2d`.
        path: the PNG to write (replaced atomically).

    Shape:
        each trajectory: ``(num_points, 2)``.
    """
    if not named_trajectories:
        raise DivekitError("plot_trajectories needs at least one trajectory")
    paths = {}
    for name, points in named_trajectories.items():
        points = torch.as_tensor(points, dtype=torch.float64).detach().cpu()
        if points.ndim != 2 or points.shape[1] != 2 or len(points) == 0:
            raise DivekitError(
                f"trajectory {name!r} must have shape (num_points, 2), got {tuple(points.shape)}"
            )
        paths[name] = points
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    every = torch.cat(list(paths.values()))
    low, high = every.min(0).values, every.max(0).values
    margin = 0.1 * (high - low).clamp(min=1.0)
    grid = [torch.linspace(low[i] - margin[i], high[i] + margin[i], 200, dtype=torch.float64)
            for i in range(2)]
    x1, x2 = torch.meshgrid(*grid, indexing="xy")
    fig, axis = plt.subplots(figsize=(5.5, 4))
    axis.contour(x1.numpy(), x2.numpy(), f(x1, x2).numpy(), levels=20, colors="#1f77b4",
                 linewidths=0.6)
    for name, points in paths.items():
        axis.plot(points[:, 0].numpy(), points[:, 1].numpy(), "-o", markersize=3, label=name)
    axis.set_xlabel("x1")
    axis.set_ylabel("x2")
    axis.legend()
    fig.tight_layout()
    from divekit.engine.plots import save_png

    return save_png(fig, Path(path))


def plot_path_1d(
    f: Callable[[torch.Tensor], torch.Tensor],
    named_paths: dict[str, torch.Tensor],
    path: str | Path,
) -> Path:
    """Draw a 1-D ``f`` and the points each optimizer visited on it into a PNG at ``path``.

    Shape:
        each path: ``(num_points, 1)`` or ``(num_points,)``, from :func:`trajectory`.
    """
    if not named_paths:
        raise DivekitError("plot_path_1d needs at least one path")
    paths = {name: torch.as_tensor(p, dtype=torch.float64).detach().reshape(-1)
             for name, p in named_paths.items()}
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    every = torch.cat(list(paths.values()))
    margin = 0.1 * float((every.max() - every.min()).clamp(min=1.0))
    x = torch.linspace(float(every.min()) - margin, float(every.max()) + margin, 400,
                       dtype=torch.float64)
    fig, axis = plt.subplots(figsize=(5.5, 4))
    axis.plot(x.numpy(), f(x).numpy(), color="0.6", linewidth=1)
    for name, points in paths.items():
        axis.plot(points.numpy(), f(points).numpy(), "-o", markersize=3, label=name)
    axis.set_xlabel("x")
    axis.set_ylabel("f(x)")
    axis.legend()
    fig.tight_layout()
    from divekit.engine.plots import save_png

    return save_png(fig, Path(path))


def _check_steps(steps: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise DivekitError(f"steps must be a non-negative integer, got {steps!r}")
