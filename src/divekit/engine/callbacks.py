"""Callbacks: hooks the Trainer calls during ``fit``, and early stopping."""

from __future__ import annotations

import math
from typing import Any


class Callback:
    """Override any hook. ``trainer`` exposes ``model``, ``optimizer``, ``history``, ``epoch``.

    ``state_dict``/``load_state_dict`` make a callback's state part of the checkpoint, so a
    resumed run continues it exactly; it is stored under ``state_key`` (default: the class
    name), so adding or reordering callbacks does not hand one callback's state to another.
    """

    def on_fit_start(self, trainer) -> None: ...

    def on_epoch_start(self, trainer) -> None: ...

    def on_step_end(self, trainer) -> None: ...

    def on_epoch_end(self, trainer, metrics: dict[str, float]) -> None: ...

    def on_fit_end(self, trainer) -> None: ...

    def on_exception(self, trainer, error: BaseException) -> None:
        """``fit`` is leaving because of ``error`` (a failure, an interrupt); it re-raises."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs.

    Args:
        monitor: metric name, e.g. ``"val_loss"``; default: the Trainer's monitored metric.
        mode: ``"min"`` or ``"max"``; default: the metric's own direction (the Trainer's
            ``mode`` for its monitored metric; losses are minimised).
    """

    def __init__(self, patience: int = 3, monitor: str | None = None, mode: str | None = None,
                 min_delta: float = 0.0) -> None:
        self.patience, self.monitor, self.mode, self.min_delta = patience, monitor, mode, min_delta
        self.best = math.nan
        self.bad_epochs = 0

    def on_fit_start(self, trainer) -> None:
        self.monitor = self.monitor or trainer.monitor

    def on_epoch_end(self, trainer, metrics: dict[str, float]) -> None:
        # The direction is known once the metrics have been computed.
        self.mode = self.mode or ("max" if trainer.higher_is_better(self.monitor) else "min")
        value = metrics[self.monitor]
        sign = 1 if self.mode == "max" else -1
        if math.isnan(self.best) or sign * (value - self.best) > self.min_delta:
            self.best, self.bad_epochs = value, 0
            return
        self.bad_epochs += 1
        if self.bad_epochs >= self.patience:
            trainer.stop(f"early stopping: {self.monitor} did not improve for "
                         f"{self.patience} epochs (best {self.best:.4f})")

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.bad_epochs = state["best"], state["bad_epochs"]
