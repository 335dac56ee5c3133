"""Datasets, loaders and downloads. Importing this package registers every dataset."""

from divekit.data import (  # noqa: F401  (registration)
    bert,
    cifar,
    detection,
    folder,
    glue,
    scenes,
    segmentation,
    squad,
    synthetic,
    tabular,
    tagging,
    text,
    translation,
    vision,
)
from divekit.data.augment import Compose, parse_augment
from divekit.data.loaders import TensorLoader
from divekit.data.paths import data_root
from divekit.data.preview import show_batch
from divekit.data.registry import DATASETS, DataModule, list_datasets, load_data, register_dataset
from divekit.data.streaming import DatasetLoader

__all__ = [
    "DATASETS", "Compose", "DataModule", "DatasetLoader", "TensorLoader", "data_root",
    "list_datasets", "load_data", "parse_augment", "register_dataset", "show_batch",
]
