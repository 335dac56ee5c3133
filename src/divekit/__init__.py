"""divekit: the Dive into Deep Learning curriculum as tested, fast software on PyTorch.

>>> import divekit as dk
>>> data = dk.load_data("fashion-mnist", batch_size=256)
>>> model = dk.create_model("lenet", num_classes=data.num_classes)
>>> history = dk.Trainer(max_epochs=10, lr=0.9).fit(model, data)
"""

from divekit.data import DataModule, TensorLoader, list_datasets, load_data
from divekit.engine import Callback, EarlyStopping, History, Trainer, seed_everything
from divekit.errors import DataError, DivekitError
from divekit.models import count_parameters, create_model, list_models, model_info

__version__ = "0.1.0"

__all__ = [
    "Callback", "DataError", "DataModule", "DivekitError", "EarlyStopping", "History",
    "TensorLoader", "Trainer", "count_parameters", "create_model", "list_datasets",
    "list_models", "load_data", "model_info", "seed_everything",
]
