"""divekit: the Dive into Deep Learning curriculum as tested, fast software on PyTorch.

>>> import divekit as dk
>>> data = dk.load_data("fashion-mnist", batch_size=256)
>>> model = dk.create_model("lenet", num_classes=data.num_classes)
>>> history = dk.Trainer(max_epochs=10, lr=0.9).fit(model, data)
"""

from divekit.data import DataModule, DatasetLoader, TensorLoader, list_datasets, load_data
from divekit.engine import (
    Callback,
    EarlyStopping,
    History,
    Output,
    Task,
    Trainer,
    create_task,
    register_task,
    seed_everything,
)
from divekit.errors import DataError, DivekitError
from divekit.models import count_parameters, create_model, list_models, model_info

__version__ = "0.1.0"

__all__ = [
    "Callback", "DataError", "DataModule", "DatasetLoader", "DivekitError", "EarlyStopping",
    "History", "Output", "Task", "TensorLoader", "Trainer", "count_parameters", "create_model",
    "create_task", "list_datasets", "list_models", "load_data", "model_info", "register_task",
    "seed_everything",
]
