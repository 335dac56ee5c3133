"""Checkpoints written atomically, and the random-number state needed for exact resume."""

from __future__ import annotations

import errno
import os
import pickle
import random
import re
import tempfile
import warnings
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
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if _disk_full(e):
            raise DivekitError(f"no space left on device writing {path}; free space and "
                               f"{_how_to_continue(path)}") from e
        raise


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu", *,
                    mmap: bool = False) -> dict[str, Any]:
    """Load a training checkpoint written by the Trainer (tensors and plain data only).

    Args:
        path: the ``.pt`` file.
        map_location: where tensors go.
        mmap: memory-map the file, so that reading its epoch reads no weights.

    Raises:
        DivekitError: one line naming the file and the fix, when the file is missing,
            damaged, holds Python objects that unpickling would run, or is not a training
            checkpoint (a bare tensor, a plain state dict, a dict missing entries).
    """
    path = Path(path)
    if not path.is_file():
        raise DivekitError(f"no checkpoint at {path}")
    state = read_tensors(path, map_location, "a checkpoint", mmap=mmap)
    if not isinstance(state, dict):
        raise DivekitError(f"{path} holds a {type(state).__name__}, not a divekit checkpoint "
                           "(a dict of weights, optimizer state and progress); use a run's "
                           "checkpoints/last.pt or best.pt")
    if state and all(isinstance(value, torch.Tensor) for value in state.values()):
        raise DivekitError(f"{path} is a plain state dict (weights only), not a divekit "
                           f"checkpoint; start a run from it with `divekit train MODEL "
                           f"--weights {path}`")
    missing = [key for key in CHECKPOINT_KEYS if key not in state]
    if missing:
        raise DivekitError(f"{path} is not a complete divekit checkpoint: it lacks "
                           f"{', '.join(missing)}; use the run's other checkpoint "
                           "(last.pt or best.pt) or train again")
    weights = state["model"]
    if not isinstance(weights, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()):
        raise DivekitError(f"{path} is damaged: its 'model' entry is not a dict of named "
                           "tensors; use the run's other checkpoint (last.pt or best.pt)")
    return state


def load_weights_checked(model: torch.nn.Module, weights: dict[str, torch.Tensor],
                         path: Path) -> None:
    """Copy ``weights`` (from checkpoint ``path``) into ``model`` after checking every key
    and shape, so that a checkpoint of another model is one clear error.

    Raises:
        DivekitError: when the names or shapes differ from the model's.
    """
    own = model.state_dict()
    problems = [f"size mismatch for {key}: file {tuple(value.shape)}, model "
                f"{tuple(own[key].shape)}" for key, value in weights.items()
                if key in own and value.shape != own[key].shape]
    if missing := [key for key in own if key not in weights]:
        problems.append(f"{len(missing)} weights missing ({', '.join(missing[:3])})")
    if unexpected := [key for key in weights if key not in own]:
        problems.append(f"{len(unexpected)} unknown weights ({', '.join(unexpected[:3])})")
    if problems:
        shown = "; ".join(problems[:3]) + (f"; ... ({len(problems) - 3} more)"
                                           if len(problems) > 3 else "")
        raise DivekitError(f"{path} holds the weights of another model ({shown}); use the "
                           "checkpoint of this run, or start a new run from it with "
                           f"`divekit train MODEL --weights {path}`")
    model.load_state_dict(weights)


# What the Trainer writes and needs to resume (``ema``, ``step_in_epoch`` and ``meters`` are
# optional: runs without a weight average, and runs from before mid-epoch checkpoints).
CHECKPOINT_KEYS = ("format", "model", "optimizer", "scheduler", "scaler", "rng", "epoch",
                   "global_step", "history", "best", "stop_reason", "callbacks")


def read_tensors(path: Path, map_location: str | torch.device, what: str, *,
                 mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` with its failures as one line.

    Args:
        path: the file.
        map_location: where tensors go.
        what: what the file should be, for messages: ``"a checkpoint"``, ``"weights"``.
        mmap: memory-map the file instead of reading it.
    """
    try:
        with warnings.catch_warnings():  # torch warns over several lines about pickle protocols
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        found = f"the Python object {unsafe.group(1)}" if unsafe else "pickled Python code"
        raise DivekitError(f"{path} could not be read as {what}: it holds {found}, not only "
                           "tensors and plain data, and unpickling that could run code from "
                           "the file; if you trust it, load it with torch.load(..., "
                           "weights_only=False) and save its tensors") from None
    except Exception as e:
        reason = " ".join(f"{type(e).__name__}: {e}".split())[:200]
        raise DivekitError(f"{path} could not be read as {what} ({reason}); it is damaged "
                           "(e.g. cut short) or not a PyTorch file: use another copy") from e


def _disk_full(error: BaseException) -> bool:
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    # torch.save reports a failed write of its zip archive as this RuntimeError.
    return isinstance(error, RuntimeError) and "inline_container" in str(error)


def _how_to_continue(path: Path) -> str:
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    if (run_dir / "config.json").is_file():
        return f"resume with `divekit train --resume {run_dir}`"
    return "try again"


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
