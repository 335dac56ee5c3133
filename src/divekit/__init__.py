"""divekit: the Dive into Deep Learning curriculum as tested, fast software on PyTorch.

>>> import divekit as dk
>>> data = dk.load_data("fashion-mnist", batch_size=256)
>>> model = dk.create_model("lenet", num_classes=data.num_classes)
>>> history = dk.Trainer(max_epochs=10, lr=0.9).fit(model, data)

The names below are imported on first use (PEP 562), so that ``import divekit`` does not load
PyTorch: the ``divekit`` command can then answer Ctrl-C during its start-up with one line
(:mod:`divekit.launch`).
"""

from __future__ import annotations

import importlib
import os
from typing import Any

__version__ = "0.1.0"

# PyTorch's CPU allocator gives large blocks back to the OS when they are freed, so every
# training step faults its activations and workspaces in again, 4 KiB at a time: measured on a
# 2-core AMD EPYC, that was a third of an LSTM language model's step time and a quarter of
# LeNet's. With transparent huge pages (PyTorch reads THP_MEM_ALLOC_ENABLE at its first
# allocation) blocks of 2 MiB and more fault in 2 MiB at a time. A value already set is kept:
# THP_MEM_ALLOC_ENABLE=0 turns it off. Child processes (loader workers, torchrun) inherit it.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

_HOMES = {
    "divekit.data": ("DataModule", "DatasetLoader", "TensorLoader", "list_datasets", "load_data"),
    "divekit.engine": ("Callback", "EarlyStopping", "History", "Output", "Task", "Trainer",
                       "create_task", "register_task", "seed_everything"),
    "divekit.errors": ("DataError", "DivekitError"),
    "divekit.models": ("count_parameters", "create_model", "list_models", "model_info"),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}

__all__ = sorted(_HOME_OF)


def __getattr__(name: str) -> Any:
    """The public names, and the subpackages (``dk.vision``), imported when first used."""
    if name in _HOME_OF:
        value = getattr(importlib.import_module(_HOME_OF[name]), name)
    else:
        try:
            value = importlib.import_module(f"divekit.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"divekit.{name}":
                raise
            raise AttributeError(f"module 'divekit' has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
