"""Checkpoints written atomically, and the random-number state needed for exact resume."""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from divekit.errors import DivekitError


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` so a crash at any moment leaves the old file intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_file(path, "wb", lambda f: torch.save(state, f))


def write_atomically(path: Path, text: str) -> None:
    """Replace the text file ``path`` so that a crash leaves either the old or the new file."""
    replace_file(path, "w", lambda f: f.write(text))


def replace_file(path: Path, mode: str, write: Callable[[Any], Any]) -> None:
    """Write through ``write(file)`` to a temporary file in the same folder, flush it to disk,
    then rename it over ``path`` (atomic on POSIX and Windows).

    The file gets the permissions a plain ``open(path, "w")`` would give it (``mkstemp``'s
    temporary files are private to their owner, which a checkpoint or picture need not be).
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (tensors and plain data only)."""
    if not path.is_file():
        raise DivekitError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise DivekitError(f"checkpoint {path} could not be read ({e}); it is not a divekit "
                           "checkpoint or it is damaged") from e


def inference_weights(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The weights to predict with from a training checkpoint: the moving average of the
    weights when the run kept one (``Trainer(ema=...)``), else the trained weights."""
    return state.get("ema", state["model"])


def rng_state() -> dict[str, Any]:
    """Every random generator the training loop may draw from."""
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": _numpy_state_to_tensors(np.random.get_state()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuples(state["python"]))
    np.random.set_state(_numpy_state_from_tensors(state["numpy"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# NumPy's state holds an ndarray, which ``torch.load(weights_only=True)`` refuses: store a tensor.
def _numpy_state_to_tensors(state: tuple) -> tuple:
    name, keys, pos, has_gauss, cached = state
    return name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached


def _numpy_state_from_tensors(state: tuple) -> tuple:
    name, keys, pos, has_gauss, cached = state
    return name, keys.numpy().astype(np.uint32), pos, has_gauss, cached


def _as_tuples(value: Any) -> Any:
    return tuple(_as_tuples(v) for v in value) if isinstance(value, list | tuple) else value
