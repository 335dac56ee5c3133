"""Pooling (course section 7.5): maximum and average over windows, with padding and stride.

Pooling has no parameters: it summarises each window of each channel on its own, which makes
the output less sensitive to where exactly a feature sits.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from divekit.errors import DivekitError
from divekit.scratch.conv import IntPair, _pair, pad2d, patches2d


def pool2d(X: torch.Tensor, kernel_size: IntPair, stride: IntPair | None = None,
           padding: IntPair = 0, mode: str = "max") -> torch.Tensor:
    """Max or average pooling of every channel of a batch of images.

    Matches ``F.max_pool2d`` / ``F.avg_pool2d`` with their defaults: padded positions never win
    a maximum (they hold -inf) and count as zeros in an average (``count_include_pad=True``).

    Args:
        X: input of shape (N, C, H, W).
        kernel_size: window (kh, kw), int or pair.
        stride: step between windows; ``None`` means the window size (non-overlapping windows).
        padding: added on each side, int or (ph, pw); at most half the window.
        mode: ``"max"`` or ``"avg"``.

    Returns:
        Shape (N, C, H_out, W_out) with ``H_out = (H + 2 * ph - kh) // sh + 1`` (same for W) and
        ``Y[n, c, i, j] = max`` (or mean) of ``Xpad[n, c, i*sh : i*sh + kh, j*sw : j*sw + kw]``.
    """
    if X.dim() != 4:
        raise DivekitError(f"pool2d takes X of shape (N, C, H, W), got {tuple(X.shape)}")
    if mode not in ("max", "avg"):
        raise DivekitError(f"mode must be 'max' or 'avg', got {mode!r}")
    kh, kw = _check_positive(kernel_size, "kernel_size")
    sh, sw = (kh, kw) if stride is None else _check_positive(stride, "stride")
    ph, pw = _pair(padding, "padding")
    # PyTorch's rule: a window must always hold at least one real (unpadded) position.
    if not (0 <= ph <= kh // 2 and 0 <= pw <= kw // 2):
        raise DivekitError(f"padding {padding!r} must be non-negative and at most half the "
                           f"kernel size ({kh}, {kw})")
    X = pad2d(X, (ph, pw), value=float("-inf") if mode == "max" else 0.0)
    if kh > X.shape[2] or kw > X.shape[3]:
        raise DivekitError(f"kernel ({kh}, {kw}) is larger than the padded input "
                           f"({X.shape[2]}, {X.shape[3]})")
    windows = patches2d(X, (kh, kw), (sh, sw)).flatten(-2)
    if mode == "max":
        # .max sends each window's gradient to a single winner, as max_pool2d does.
        return windows.max(dim=-1).values
    return windows.mean(dim=-1)


def _check_positive(value: int | Sequence[int], name: str) -> tuple[int, int]:
    """``value`` as a pair of positive ints."""
    pair = _pair(value, name)
    if min(pair) < 1:
        raise DivekitError(f"{name} must be positive, got {value!r}")
    return pair
