"""Timing the book's loops for ``divekit bench``: warm-up steps first (not timed), then a fixed
number of timed steps (the Trainer's side is timed by a callback, in :mod:`.runner`)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from itertools import islice

import torch


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued kernels, so a clock reading covers them (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def book_rate(steps: Iterator[int], warmup: int, timed: int, device: torch.device) -> float:
    """Units per second of ``timed`` steps of a loop that yields each step's unit count
    (images, tokens), after ``warmup`` steps that are not timed."""
    for _ in islice(steps, warmup):
        pass
    synchronize(device)
    start = time.perf_counter()
    units = sum(islice(steps, timed))
    synchronize(device)
    return units / (time.perf_counter() - start)
