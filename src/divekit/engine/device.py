"""Device selection (CUDA, Apple MPS, CPU) and the mixed-precision switch."""

from __future__ import annotations

import contextlib

import torch

from divekit.errors import DivekitError

AMP_CHOICES = ("off", "bf16", "fp16")
# What ``--amp`` and ``Trainer(amp=...)`` accept: ``auto`` is measured (engine.autotune).
AMP_SETTINGS = (*AMP_CHOICES, "auto")


def select_device(name: str = "auto") -> torch.device:
    """``"auto"`` picks CUDA, then MPS, then CPU; an explicit name must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DivekitError(
            f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DivekitError(f"device {name!r} asked for, but CUDA is not available here; use cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise DivekitError(f"device {name!r} does not exist: {torch.cuda.device_count()} GPU(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DivekitError(f"device {name!r} asked for, but MPS is not available here; use cpu")
    if device.type not in {"cpu", "cuda", "mps"}:
        raise DivekitError(f"unsupported device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    return device


def autocast(device: torch.device, amp: str):
    """The autocast context for ``amp`` (``off``, ``bf16`` or ``fp16``) on ``device``."""
    if amp not in AMP_CHOICES:
        raise DivekitError(f"unknown amp mode {amp!r}; choose from: {', '.join(AMP_CHOICES)}")
    if amp == "off":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def cpu_name() -> str:
    """The CPU's model name from ``/proc/cpuinfo``, else what ``platform`` knows."""
    import platform
    from pathlib import Path

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"
