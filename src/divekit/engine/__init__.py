"""The training engine: Trainer, callbacks, checkpoints, metrics history, progress, plots."""

from divekit import tasks  # noqa: E402, F401, I001  (registers the built-in tasks)
from divekit.engine.callbacks import Callback, EarlyStopping
from divekit.engine.checkpoint import load_checkpoint, save_checkpoint, seed_everything
from divekit.engine.device import select_device
from divekit.engine.ema import WeightAverage
from divekit.engine.history import History
from divekit.engine.progress import ProgressReporter
from divekit.engine.task import Output, Task, create_task, register_task
from divekit.engine.signals import TrainingInterrupted
from divekit.engine.trainer import Trainer, TrainingDiverged

__all__ = [
    "Callback", "EarlyStopping", "History", "Output", "ProgressReporter", "Task", "Trainer",
    "TrainingDiverged", "TrainingInterrupted", "create_task", "load_checkpoint", "register_task",
    "WeightAverage", "save_checkpoint", "seed_everything", "select_device",
]
