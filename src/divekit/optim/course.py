"""Optimization algorithms (course chapter 12), written by hand as ``torch.optim`` optimizers.

Each class implements one update rule of the course, in the course's notation, and plugs
into any PyTorch loop or ``divekit.Trainer(optimizer=lambda params: Adam(params, lr=0.01))``.
``g`` is the minibatch gradient (plus ``weight_decay * x``, the L2 penalty's gradient, when
``weight_decay > 0``, as ``torch.optim`` does); every state tensor has the parameter's shape.

Where the course and ``torch.optim`` differ, the course's form is the default:

* AdaGrad and RMSProp: the course divides by ``sqrt(s + eps)``, ``torch.optim.Adagrad`` and
  ``torch.optim.RMSprop`` by ``sqrt(s) + eps``. ``eps_inside_sqrt=False`` matches torch exactly.
* Default hyperparameters are the course's (e.g. RMSProp ``gamma=0.9``, ``eps=1e-6``), not
  torch's (``alpha=0.99``, ``eps=1e-8``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from divekit.errors import DivekitError

__all__ = ["SGD", "AdaGrad", "Adadelta", "Adam", "Momentum", "RMSProp", "Yogi"]


class _CourseOptimizer(torch.optim.Optimizer):
    """The loop every rule shares: per parameter, hand its gradient to ``_update``."""

    def __init__(self, params: Iterable, lr: float, weight_decay: float, **hyper) -> None:
        _check("lr", lr, low=0.0, low_open=True)
        _check("weight_decay", weight_decay, low=0.0)
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, **hyper})

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """Update every parameter that has a gradient; returns ``closure()`` if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for x in group["params"]:
                if x.grad is None:
                    continue
                if x.grad.is_sparse:
                    raise DivekitError(f"{type(self).__name__} does not support sparse gradients")
                g = x.grad
                if group["weight_decay"]:
                    g = g + group["weight_decay"] * x
                self._update(x, g, self.state[x], group)
        return loss

    def _update(self, x: torch.Tensor, g: torch.Tensor, state: dict, group: dict) -> None:
        raise NotImplementedError


class SGD(_CourseOptimizer):
    """Gradient descent; on minibatch gradients, minibatch SGD (sections 12.3-12.5).

    ``x <- x - lr * g``. Robbins & Monro, "A Stochastic Approximation Method", 1951.
    """

    def __init__(self, params: Iterable, lr: float, weight_decay: float = 0.0) -> None:
        super().__init__(params, lr, weight_decay)

    def _update(self, x, g, state, group):
        x.sub_(group["lr"] * g)


class Momentum(_CourseOptimizer):
    """Heavy-ball momentum with the course's leaky average of gradients (section 12.6).

    ``v <- beta * v + g;  x <- x - lr * v`` with ``v`` starting at 0. This is
    ``torch.optim.SGD(momentum=beta)`` (dampening 0). Polyak, "Some methods of speeding up
    the convergence of iteration methods", 1964.
    """

    def __init__(
        self, params: Iterable, lr: float, beta: float = 0.9, weight_decay: float = 0.0
    ) -> None:
        _check("beta", beta, low=0.0, high=1.0)
        super().__init__(params, lr, weight_decay, beta=beta)

    def _update(self, x, g, state, group):
        if not state:
            state["v"] = torch.zeros_like(x)
        v = state["v"]
        v.mul_(group["beta"]).add_(g)
        x.sub_(group["lr"] * v)


class AdaGrad(_CourseOptimizer):
    """Per-coordinate learning rates from the sum of squared gradients (section 12.7).

    ``s <- s + g^2;  x <- x - lr * g / sqrt(s + eps)`` with ``s`` starting at 0. The step of a
    coordinate shrinks like ``1 / sqrt(t)``, faster where gradients are large.
    ``eps_inside_sqrt=False`` uses ``sqrt(s) + eps`` instead, as ``torch.optim.Adagrad`` does.
    Duchi, Hazan & Singer, "Adaptive Subgradient Methods for Online Learning and Stochastic
    Optimization", JMLR 2011.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 0.1,
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        eps_inside_sqrt: bool = True,
    ) -> None:
        _check("eps", eps, low=0.0, low_open=True)
        super().__init__(params, lr, weight_decay, eps=eps, eps_inside_sqrt=eps_inside_sqrt)

    def _update(self, x, g, state, group):
        if not state:
            state["s"] = torch.zeros_like(x)
        s = state["s"]
        s.add_(g * g)
        x.sub_(group["lr"] * g / _root(s, group["eps"], group["eps_inside_sqrt"]))


class RMSProp(_CourseOptimizer):
    """AdaGrad with a leaky average of squared gradients instead of their sum (section 12.8).

    ``s <- gamma * s + (1 - gamma) * g^2;  x <- x - lr * g / sqrt(s + eps)`` with ``s``
    starting at 0. ``eps_inside_sqrt=False`` uses ``sqrt(s) + eps``, which with
    ``gamma = alpha`` is exactly ``torch.optim.RMSprop``. Tieleman & Hinton, "Lecture 6.5 -
    RMSProp", COURSERA: Neural Networks for Machine Learning, 2012.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 0.01,
        gamma: float = 0.9,
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        eps_inside_sqrt: bool = True,
    ) -> None:
        _check("gamma", gamma, low=0.0, high=1.0)
        _check("eps", eps, low=0.0, low_open=True)
        super().__init__(params, lr, weight_decay, gamma=gamma, eps=eps,
                         eps_inside_sqrt=eps_inside_sqrt)

    def _update(self, x, g, state, group):
        if not state:
            state["s"] = torch.zeros_like(x)
        s, gamma = state["s"], group["gamma"]
        s.mul_(gamma).add_((1 - gamma) * g * g)
        x.sub_(group["lr"] * g / _root(s, group["eps"], group["eps_inside_sqrt"]))


class Adadelta(_CourseOptimizer):
    """RMSProp whose step size comes from a leaky average of past updates (section 12.9).

    ``s <- rho * s + (1 - rho) * g^2;  g' <- sqrt(delta + eps) / sqrt(s + eps) * g;
    x <- x - lr * g';  delta <- rho * delta + (1 - rho) * g'^2`` with ``s`` and ``delta``
    starting at 0. The course has no learning rate (``lr = 1``, the default); ``delta`` is
    updated with the unscaled ``g'``, exactly as ``torch.optim.Adadelta``. Zeiler, "ADADELTA:
    An Adaptive Learning Rate Method", 2012.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1.0,
        rho: float = 0.9,
        eps: float = 1e-5,
        weight_decay: float = 0.0,
    ) -> None:
        _check("rho", rho, low=0.0, high=1.0)
        _check("eps", eps, low=0.0, low_open=True)
        super().__init__(params, lr, weight_decay, rho=rho, eps=eps)

    def _update(self, x, g, state, group):
        if not state:
            state["s"], state["delta"] = torch.zeros_like(x), torch.zeros_like(x)
        s, delta, rho, eps = state["s"], state["delta"], group["rho"], group["eps"]
        s.mul_(rho).add_((1 - rho) * g * g)
        g_rescaled = (delta + eps).sqrt() / (s + eps).sqrt() * g
        x.sub_(group["lr"] * g_rescaled)
        delta.mul_(rho).add_((1 - rho) * g_rescaled * g_rescaled)


class Adam(_CourseOptimizer):
    """Momentum and RMSProp combined, with bias correction (section 12.10).

    ``v <- beta1 * v + (1 - beta1) * g;  s <- beta2 * s + (1 - beta2) * g^2;
    v_hat = v / (1 - beta1^t);  s_hat = s / (1 - beta2^t);
    x <- x - lr * v_hat / (sqrt(s_hat) + eps)`` with ``v``, ``s`` starting at 0 and ``t`` the
    step count from 1. The correction undoes the pull of the zero start towards 0. The same
    update as ``torch.optim.Adam`` (L2 ``weight_decay``, not AdamW's decoupled decay). Kingma &
    Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
    ) -> None:
        _check("beta1", betas[0], low=0.0, high=1.0)
        _check("beta2", betas[1], low=0.0, high=1.0)
        _check("eps", eps, low=0.0, low_open=True)
        super().__init__(params, lr, weight_decay, betas=tuple(betas), eps=eps)

    def _second_moment(self, s: torch.Tensor, g: torch.Tensor, beta2: float) -> None:
        s.mul_(beta2).add_((1 - beta2) * g * g)

    def _update(self, x, g, state, group):
        if not state:
            state["t"], state["v"], state["s"] = 0, torch.zeros_like(x), torch.zeros_like(x)
        state["t"] += 1
        t, v, s = state["t"], state["v"], state["s"]
        beta1, beta2 = group["betas"]
        v.mul_(beta1).add_((1 - beta1) * g)
        self._second_moment(s, g, beta2)
        v_hat = v / (1 - beta1**t)
        s_hat = s / (1 - beta2**t)
        x.sub_(group["lr"] * v_hat / (s_hat.sqrt() + group["eps"]))


class Yogi(Adam):
    """Adam whose second moment moves by ``(1 - beta2) * g^2`` up or down (section 12.10).

    ``s <- s + (1 - beta2) * g^2 * sign(g^2 - s)``; everything else is :class:`Adam`. When
    gradients turn small, Adam's change ``(1 - beta2) * (g^2 - s)`` shrinks a large ``s`` by a
    fixed fraction per step, so the effective learning rate can jump; Yogi's change has size
    ``(1 - beta2) * g^2`` whatever ``s`` is. Zaheer, Reddi, Sachan, Kale & Kumar, "Adaptive
    Methods for Nonconvex Optimization", NeurIPS 2018 (whose default ``eps`` is 1e-3).
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-3,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, lr, betas, eps, weight_decay)

    def _second_moment(self, s: torch.Tensor, g: torch.Tensor, beta2: float) -> None:
        g2 = g * g
        s.add_((1 - beta2) * g2 * torch.sign(g2 - s))


def _root(s: torch.Tensor, eps: float, eps_inside_sqrt: bool) -> torch.Tensor:
    """``sqrt(s + eps)`` (the course) or ``sqrt(s) + eps`` (``torch.optim``)."""
    return (s + eps).sqrt() if eps_inside_sqrt else s.sqrt() + eps


def _check(
    name: str, value: float, low: float, high: float | None = None, low_open: bool = False
) -> None:
    """Raise unless ``low <= value < high`` (``low < value`` when ``low_open``)."""
    ok = (value > low if low_open else value >= low) and (high is None or value < high)
    if not ok:
        lower = f"> {low}" if low_open else f">= {low}"
        upper = f" and < {high}" if high is not None else ""
        raise DivekitError(f"{name} must be {lower}{upper}, got {value!r}")
