"""The learning-rate range test (Smith 2017, "Cyclical Learning Rates for Training Neural
Networks", section 3.3; popularised as fastai's ``lr_find``): choosing the learning rate,
the hyperparameter the course's optimization chapter (12.x) shows matters most.

Train for at most a few hundred steps while the learning rate grows exponentially from
``min_lr`` to ``max_lr``, record the loss of every step, smooth it, stop once it diverges,
and suggest a rate by a stated rule (:func:`suggest_valley`, :func:`suggest_steep`).
Afterwards the model (parameters, buffers, gradients, ``requires_grad`` flags, train/eval
modes), the Trainer and every random generator are as they were, so a following ``fit``
gives exactly what it would have given without the search.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from divekit.engine.batch_limits import limited, set_epoch
from divekit.engine.checkpoint import rng_state, seed_everything, set_rng_state
from divekit.engine.device import autocast
from divekit.engine.task import to_device
from divekit.errors import DivekitError

__all__ = ["LRFinderResult", "lr_find", "suggest_steep", "suggest_valley"]

RULES = ("valley", "steep")
MIN_POINTS = 10  # fewer finite points than this: no suggestion (the curve says nothing yet)
GRACE_STEPS = 5  # no divergence test before this many steps (the first losses are noisy)
STEEP_SKIP_BEGIN = 10  # first points the steepest-descent rule ignores (the EMA settles)
STEEP_SKIP_END = 5  # last points it ignores (the turn into divergence)
STEEP_MIN_POINTS = STEEP_SKIP_BEGIN + STEEP_SKIP_END + 3
VALLEY_FRACTION = 2 / 3  # how far down the valley the valley rule picks


@dataclass
class LRFinderResult:
    """What :func:`lr_find` measured and suggests.

    Attributes:
        lrs: the base learning rate of each step taken.
        losses: the raw training loss of each step (the batch's mean, or the example-weighted
            mean of the ``accumulate`` batches of the step).
        smoothed: the bias-corrected exponential moving average of ``losses``.
        suggestion: the suggested base learning rate, or ``None`` (``reason`` says why).
        rule: the rule that made the suggestion, ``"valley"`` or ``"steep"``.
        stopped_early: the search stopped before ``num_steps`` because the loss diverged.
        reason: why there is no suggestion (``None`` when there is one).
    """

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float | None
    rule: str
    stopped_early: bool
    reason: str | None = None

    def plot(self, path: str | Path) -> Path:
        """Draw the smoothed loss against the learning rate (log scale) into the PNG ``path``,
        with the raw losses faintly behind it and a marker at the suggestion.

        Returns:
            ``path``.
        """
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt

        from divekit.engine.plots import save_png

        fig, axis = plt.subplots(figsize=(6, 4))
        losses, smoothed = _drawable(self.losses), _drawable(self.smoothed)
        axis.plot(self.lrs, losses, color="tab:blue", alpha=0.25, label="loss")
        axis.plot(self.lrs, smoothed, color="tab:blue", label="smoothed loss")
        finite = [value for value in smoothed if math.isfinite(value)]
        if len(finite) > 1 and max(finite) > min(finite):
            # From the bottom to a little above the start: the descent is what matters, and
            # the divergence at the end would flatten it.
            low, start = min(finite), finite[0]
            high = min(max(finite), start + 0.5 * (start - low)) if start > low else max(finite)
            margin = 0.05 * (high - low)
            axis.set_ylim(low - margin, high + margin)
        if self.suggestion is not None:
            index = min(range(len(self.lrs)),
                        key=lambda i: abs(math.log(self.lrs[i] / self.suggestion)))
            axis.plot([self.suggestion], [smoothed[index]], "o", color="tab:red",
                      markersize=8, label=f"suggestion {self.suggestion:.2g}")
            title = f"{self.rule} rule: suggested lr {self.suggestion:.2g}"
        else:
            title = f"{self.rule} rule: no suggestion ({self.reason})"
        axis.set_xscale("log")
        axis.set_xlabel("learning rate")
        axis.set_ylabel("training loss")
        axis.set_title(title)
        axis.grid(alpha=0.3)
        axis.legend()
        fig.tight_layout()
        return save_png(fig, Path(path))

    def summary(self) -> str:
        """One line: the suggestion (or why there is none), the steps taken and how it ended."""
        if self.suggestion is not None:
            head = f"suggested lr {self.suggestion:.1e} ({self.rule} rule)"
        else:
            head = f"no suggestion ({self.rule} rule): {self.reason}"
        last = f"{self.lrs[-1]:.2g}" if self.lrs else "-"
        if self.stopped_early:
            return f"{head}; {len(self.lrs)} steps, stopped at lr {last} on divergence"
        return f"{head}; {len(self.lrs)} steps, up to lr {last} without diverging"


def suggest_valley(lrs: Sequence[float], losses: Sequence[float]) -> float | None:
    """The valley rule: two thirds of the way down the longest valley of the loss curve.

    The rule, on the finite prefix of ``losses`` (the points before the first NaN/inf):

    1. the *valley* is the longest strictly decreasing subsequence of the losses (not
       necessarily contiguous, so a small bump does not split a long descent); where several
       are equally long, each point follows the latest possible earlier point (so a valley
       starts where the descent starts, not somewhere in a flat stretch before it) and the
       valley that ends first is taken;
    2. it spans the step indices ``start`` (its first point) to ``end`` (its last, lowest);
    3. the suggestion is the rate at index ``start + round(2/3 * (end - start))``: well into
       the descent, where the loss still falls fast, but short of its bottom, beyond which
       the loss soon rises.

    This follows the description of fastai's ``valley`` (which picks about half way along
    the same kind of valley); the points are equally spaced in log learning rate, so "two
    thirds of the way" is two thirds of the way in log rate.

    Args:
        lrs: learning rates in increasing order, one per loss.
        losses: the (smoothed) losses.

    Returns:
        The suggested rate, or ``None`` with fewer than 10 finite points or a loss that never
        decreases.
    """
    return _valley(lrs, losses)[0]


def suggest_steep(lrs: Sequence[float], losses: Sequence[float]) -> float | None:
    """The steepest-descent rule: the rate where the loss falls fastest per decade of rate.

    The rule, on the finite prefix of ``losses`` (the points before the first NaN/inf): drop
    its first 10 points (the bias-corrected average of the first few losses is still almost
    as noisy as they are, and a chance dip there would win) and its last 5 (the turn into
    divergence, where a one-sided difference misleads), compute ``numpy.gradient(losses,
    log10(lrs))`` (central differences inside, one-sided at the ends) over the rest and
    return the rate of its most negative value.

    Args:
        lrs: learning rates in increasing order, one per loss.
        losses: the (smoothed) losses.

    Returns:
        The suggested rate, or ``None`` with fewer than 18 finite points or a loss that never
        decreases in the part looked at.
    """
    return _steep(lrs, losses)[0]


def lr_find(
    trainer: Any, model: nn.Module, data: Any, *, min_lr: float = 1e-7, max_lr: float = 10.0,
    num_steps: int = 100, beta: float = 0.98, diverge: float = 4.0, rule: str = "valley",
) -> LRFinderResult:
    """Run the learning-rate range test with ``trainer``'s settings and suggest a rate.

    Step ``i`` (from 0) trains at the base rate ``min_lr * (max_lr / min_lr) ** (i /
    (num_steps - 1))``; every parameter group keeps its ratio to the Trainer's ``lr``
    (``lr_mult``), or to the first group's rate for an optimizer given as a callable. The
    optimizer (momentum, weight decay, Nesterov), task, device, ``amp`` (with a gradient
    scaler for fp16; ``auto`` measured as ``fit`` measures it), ``channels_last``,
    ``grad_clip``, ``limit_batches``/``overfit_batches`` and ``accumulate`` (a step takes
    ``accumulate`` consecutive batches) are the Trainer's; the loss is the training loss of
    each step, before its update. The training loader is
    read batch by batch, pass after pass if it is shorter than the search. Generators are
    seeded with the Trainer's ``seed`` first, so the search is reproducible; the model runs
    without ``compile`` and in one process.

    The search stops early when the loss is NaN/inf, or, after the first 5 steps, when the
    smoothed loss exceeds ``diverge`` times the lowest smoothed loss so far (for a loss that
    may be negative: exceeds it by ``diverge - 1`` times its magnitude).

    Afterwards the model's parameters and buffers (bitwise; the same tensor objects),
    gradients, ``requires_grad`` flags and each module's train/eval mode, the Trainer's
    attributes and the torch (CPU and CUDA), NumPy and Python random generators are restored,
    also when the search fails. The model stays on the Trainer's device, as after ``fit``.

    Args:
        trainer: a :class:`~divekit.engine.trainer.Trainer`.
        model: the network to train.
        data: what ``fit`` takes (a ``DataModule``).
        min_lr, max_lr: the range of base rates, ``0 < min_lr < max_lr``.
        num_steps: optimizer steps of the whole range (2 to 1000).
        beta: smoothing: ``avg = beta * avg + (1 - beta) * loss``, divided by ``1 - beta **
            (i + 1)`` (bias correction); ``0`` leaves the losses as they are.
        diverge: stop when the smoothed loss exceeds this multiple of its lowest value (> 1).
        rule: ``"valley"`` (:func:`suggest_valley`) or ``"steep"`` (:func:`suggest_steep`).

    Returns:
        The rates, raw and smoothed losses and the suggestion.
    """
    _validate(min_lr, max_lr, num_steps, beta, diverge, rule)
    if trainer.world_size > 1:
        raise DivekitError("lr_find runs in one process: run it without torchrun, then train "
                           "under torchrun with the rate it suggests")
    saved_trainer = dict(vars(trainer))
    saved_rng = rng_state()
    try:
        # amp/channels_last "auto": measured (or read from the cache) as fit would.
        trainer.task = trainer._task_for(data)
        trainer._resolve_auto(model.to(trainer.device), _train_loader(trainer, data), None)
        model = trainer._prepare(model)
        snapshot = _ModelSnapshot(model)
        try:
            seed_everything(trainer.seed)
            lrs, losses, smoothed, stopped = _search(trainer, model, data, min_lr, max_lr,
                                                     num_steps, beta, diverge)
        finally:
            snapshot.restore(model)
    finally:
        vars(trainer).clear()
        vars(trainer).update(saved_trainer)
        set_rng_state(saved_rng)
    suggestion, reason = (_valley if rule == "valley" else _steep)(lrs, smoothed)
    return LRFinderResult(lrs, losses, smoothed, suggestion, rule, stopped, reason)


def _search(trainer, model: nn.Module, data, min_lr: float, max_lr: float, num_steps: int,
            beta: float, diverge: float) -> tuple[list[float], list[float], list[float], bool]:
    task = trainer.task  # set by lr_find
    trainer.model = model  # what _build_optimizer reads
    optimizer = trainer._build_optimizer()
    base = optimizer.param_groups[0]["lr"] if callable(trainer.optimizer_spec) else trainer.lr
    ratios = [group["lr"] / base for group in optimizer.param_groups]
    scaler = torch.amp.GradScaler(trainer.device.type, enabled=trainer.amp == "fp16")
    batches = _endless(_train_loader(trainer, data))
    model.train()
    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    average, best = 0.0, math.inf
    for step in range(num_steps):
        lr = min_lr * (max_lr / min_lr) ** (step / (num_steps - 1))
        for group, ratio in zip(optimizer.param_groups, ratios, strict=True):
            group["lr"] = lr * ratio
        loss = _train_step(trainer, task, model, optimizer, scaler,
                           list(islice(batches, trainer.accumulate)))
        average = beta * average + (1 - beta) * loss
        smooth = average / (1 - beta ** (step + 1))
        lrs.append(lr)
        losses.append(loss)
        smoothed.append(smooth)
        if not math.isfinite(smooth):
            return lrs, losses, smoothed, True
        if step >= GRACE_STEPS and smooth > best + (diverge - 1) * abs(best):
            return lrs, losses, smoothed, True
        best = min(best, smooth)
    return lrs, losses, smoothed, False


def _train_step(trainer, task, model: nn.Module, optimizer: torch.optim.Optimizer,
                scaler: torch.amp.GradScaler, group: list) -> float:
    """One optimizer step over ``group`` (one batch, or ``accumulate`` of them) as ``fit``
    takes it; returns the step's example-weighted mean loss."""
    group = [to_device(batch, trainer.device, trainer.channels_last) for batch in group]
    counts = [task.count(batch) for batch in group]
    total = sum(counts)
    step_loss = 0.0
    for batch, count in zip(group, counts, strict=True):
        with autocast(trainer.device, trainer.amp):
            output = task.step(model, batch)
        scaler.scale(output.loss * trainer._weight(count, total, output)).backward()
        step_loss = step_loss + output.loss.detach().float() * (count / total)
    if trainer.grad_clip is not None:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), trainer.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return float(step_loss)


def _train_loader(trainer, data):
    """The training batches ``fit`` would read, with ``overfit_batches``/``limit_batches``."""
    return limited(data.train_dataloader(), trainer.limit_batches, trainer.overfit_batches)


def _endless(loader) -> Iterator:
    """The batches of epoch 0, 1, 2, ... of ``loader`` one after another."""
    epoch = 0
    while True:
        set_epoch(loader, epoch)
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise DivekitError("the training loader yields no batches; give lr_find data with "
                               "at least one training batch")
        epoch += 1


class _ModelSnapshot:
    """Copies of everything training changes in a model, put back in place by :meth:`restore`
    (the parameter objects stay the same, so an optimizer built later still sees them)."""

    def __init__(self, model: nn.Module) -> None:
        self.state = {name: value.detach().clone() if isinstance(value, torch.Tensor) else value
                      for name, value in model.state_dict().items()}
        # Buffers registered with persistent=False are not in the state dict.
        self.buffers = {name: buffer.detach().clone() for name, buffer in model.named_buffers()
                        if name not in self.state}
        parameters = list(model.parameters())
        self.requires_grad = [(p, p.requires_grad) for p in parameters]
        self.grads = [(p, None if p.grad is None else p.grad.detach().clone())
                      for p in parameters]
        self.modes = [(module, module.training) for module in model.modules()]

    def restore(self, model: nn.Module) -> None:
        model.load_state_dict(self.state)
        buffers = dict(model.named_buffers())
        with torch.no_grad():
            for name, saved in self.buffers.items():
                buffers[name].copy_(saved)
        for parameter, flag in self.requires_grad:
            parameter.requires_grad_(flag)
        for parameter, grad in self.grads:
            parameter.grad = grad
        # Set the flag itself: a module's train() may be overridden (frozen batch norm).
        for module, training in self.modes:
            module.training = training


def _drawable(values: Sequence[float]) -> list[float]:
    """NaN for every infinite value: matplotlib leaves a gap there instead of failing."""
    return [value if math.isfinite(value) else math.nan for value in values]


def _validate(min_lr, max_lr, num_steps, beta, diverge, rule) -> None:
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or not (
            2 <= num_steps <= 1000):
        raise DivekitError(f"num_steps must be an integer from 2 to 1000, got {num_steps!r}")
    for name, value in (("min_lr", min_lr), ("max_lr", max_lr), ("beta", beta),
                        ("diverge", diverge)):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise DivekitError(f"{name} must be a number, got {value!r}")
    if not (0 < min_lr < max_lr and math.isfinite(max_lr)):
        raise DivekitError(f"need 0 < min_lr < max_lr (finite), got min_lr={min_lr} and "
                           f"max_lr={max_lr}")
    if not 0 <= beta < 1:
        raise DivekitError(f"beta (the smoothing factor) must be in [0, 1), got {beta}")
    if not diverge > 1:
        raise DivekitError(f"diverge must be greater than 1 (a multiple of the best loss), "
                           f"got {diverge}")
    if rule not in RULES:
        raise DivekitError(f"unknown suggestion rule {rule!r}; choose from: {', '.join(RULES)}")


def _finite_prefix(lrs: Sequence[float], losses: Sequence[float]) -> tuple[list, list]:
    if len(lrs) != len(losses):
        raise DivekitError(f"got {len(lrs)} learning rates for {len(losses)} losses; give "
                           f"one loss per rate")
    count = next((i for i, loss in enumerate(losses) if not math.isfinite(loss)), len(losses))
    return [float(lr) for lr in lrs[:count]], [float(loss) for loss in losses[:count]]


def _too_few(count: int, needed: int) -> str:
    return f"only {count} finite points, the rule needs {needed}"


def _valley(lrs: Sequence[float], losses: Sequence[float]) -> tuple[float | None, str | None]:
    lrs, losses = _finite_prefix(lrs, losses)
    if len(losses) < MIN_POINTS:
        return None, _too_few(len(losses), MIN_POINTS)
    # length[i], start[i]: the longest strictly decreasing subsequence ending at point i and
    # where it starts; ties go to the latest predecessor, so the valley starts late.
    length = [1] * len(losses)
    start = list(range(len(losses)))
    for i in range(len(losses)):
        for j in range(i):
            if losses[j] > losses[i] and length[j] + 1 >= length[i]:
                length[i], start[i] = length[j] + 1, start[j]
    end = max(range(len(losses)), key=lambda i: (length[i], -i))  # earliest of the longest
    if length[end] < 2:
        return None, "the loss never decreased"
    index = start[end] + round(VALLEY_FRACTION * (end - start[end]))
    return lrs[index], None


def _steep(lrs: Sequence[float], losses: Sequence[float]) -> tuple[float | None, str | None]:
    lrs, losses = _finite_prefix(lrs, losses)
    if len(losses) < STEEP_MIN_POINTS:
        return None, _too_few(len(losses), STEEP_MIN_POINTS)
    lrs = lrs[STEEP_SKIP_BEGIN:-STEEP_SKIP_END]
    losses = losses[STEEP_SKIP_BEGIN:-STEEP_SKIP_END]
    slopes = np.gradient(np.asarray(losses), np.log10(np.asarray(lrs)))
    index = int(np.argmin(slopes))
    if not slopes[index] < 0:
        return None, "the loss never decreased"
    return lrs[index], None
