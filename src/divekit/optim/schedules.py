"""Learning-rate schedules (course section 12.11), all stepped once per optimizer step.

``constant`` (optionally after warm-up), ``cosine`` (warm-up then cosine decay to
``final_lr_fraction`` of the peak; Loshchilov & Hutter 2017), ``onecycle`` (Smith & Topin 2019)
and ``step`` (multiply by ``gamma`` at fractions of the run).
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR

from divekit.errors import DivekitError

SCHEDULES = ("constant", "cosine", "onecycle", "step")


def build_scheduler(
    name: str,
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    *,
    warmup_steps: int = 0,
    final_lr_fraction: float = 0.0,
    milestones: tuple[float, ...] = (0.5, 0.75),
    gamma: float = 0.1,
) -> LRScheduler:
    """A scheduler over ``total_steps`` optimizer steps."""
    if name not in SCHEDULES:
        raise DivekitError(f"unknown schedule {name!r}; choose from: {', '.join(SCHEDULES)}")
    if total_steps < 1 or not 0 <= warmup_steps < max(total_steps, 1) + (name == "constant"):
        raise DivekitError(
            f"warm-up of {warmup_steps} steps does not fit a run of {total_steps} steps"
        )
    if name == "onecycle":
        peaks = [group["lr"] for group in optimizer.param_groups]
        pct_start = warmup_steps / total_steps if warmup_steps else 0.25
        return OneCycleLR(optimizer, max_lr=peaks, total_steps=total_steps, pct_start=pct_start,
                          cycle_momentum=False)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if name == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
        if name == "cosine":
            cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
            return final_lr_fraction + (1 - final_lr_fraction) * cosine
        return gamma ** sum(progress >= m for m in milestones)

    return LambdaLR(optimizer, factor)
