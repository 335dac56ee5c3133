"""Optimizers by name and learning-rate schedules stepped once per optimizer step."""

from divekit.optim.factory import OPTIMIZERS, build_optimizer
from divekit.optim.schedules import SCHEDULES, build_scheduler

__all__ = ["OPTIMIZERS", "SCHEDULES", "build_optimizer", "build_scheduler"]
