"""Polyak averaging: evaluate an exponential moving average of the weights, not the weights.

After every optimizer step ``avg = d * avg + (1 - d) * weights`` with the decay warmed up as
``d = min(decay, (1 + step) / (10 + step))``, so the first steps do not drag the average back
to the initial weights. At a high constant learning rate SGD's weights swing from epoch to
epoch; their average does not (Polyak & Juditsky 1992).
"""

from __future__ import annotations

import copy

import torch

from divekit.engine.callbacks import Callback
from divekit.errors import DivekitError


class WeightAverage(Callback):
    """Keep the average and make it what the Trainer evaluates, checkpoints as ``"ema"``
    (next to the raw weights, so resume is exact) and leaves in the model after ``fit``.

    Args:
        decay: e.g. 0.99 or 0.999, in ``(0, 1)``.
    """

    def __init__(self, decay: float) -> None:
        if not 0 < decay < 1:
            raise DivekitError(f"ema is the decay of the weight average and must be in [0, 1), "
                               f"e.g. 0.99 or 0.999 (0 = no average); got {decay}")
        self.decay = decay

    def on_fit_start(self, trainer) -> None:
        self.average = copy.deepcopy(trainer.model).requires_grad_(False).eval()
        # Each shared (tied) tensor once: parameters() and buffers() skip repeats.
        self.pairs = [(average.data, current.data) for average, current in zip(
            [*self.average.parameters(), *self.average.buffers()],
            [*trainer.model.parameters(), *trainer.model.buffers()], strict=True)]
        trainer.eval_model = self.average

    @torch.no_grad()
    def on_step_end(self, trainer) -> None:
        decay = min(self.decay, trainer.global_step / (trainer.global_step + 9))
        for average, current in self.pairs:
            if average.is_floating_point():
                average.lerp_(current, 1 - decay)
            else:  # counters such as BatchNorm's num_batches_tracked
                average.copy_(current)

    def on_fit_end(self, trainer) -> None:
        trainer.model.load_state_dict(self.average.state_dict())
