"""The training engine: Trainer, callbacks, checkpoints, metrics history, progress, plots."""

from divekit.engine.callbacks import Callback, EarlyStopping
from divekit.engine.checkpoint import load_checkpoint, save_checkpoint, seed_everything
from divekit.engine.device import select_device
from divekit.engine.history import History
from divekit.engine.progress import ProgressReporter
from divekit.engine.trainer import Trainer, TrainingDiverged

__all__ = [
    "Callback", "EarlyStopping", "History", "ProgressReporter", "Trainer", "TrainingDiverged",
    "load_checkpoint", "save_checkpoint", "seed_everything", "select_device",
]
