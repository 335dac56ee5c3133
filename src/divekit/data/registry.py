"""Dataset registry and the ``DataModule`` every loader returns."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

from divekit.data.loaders import TensorLoader
from divekit.data.streaming import DatasetLoader
from divekit.data.targets import Targets, resize_targets
from divekit.errors import DivekitError
from divekit.registry import Registry

Split = tuple[torch.Tensor, ...] | Dataset


@dataclass
class DataModule:
    """Train / validation / test splits with their metadata and loaders.

    A split is either a tuple of aligned tensors, held in memory and batched by index (the
    fast path for data that fits: :class:`~divekit.data.loaders.TensorLoader`), or a map-style
    ``torch.utils.data.Dataset`` read lazily through worker processes and collated by
    ``collate_fn`` (:class:`~divekit.data.streaming.DatasetLoader`: data too large for memory,
    or examples of varying size). Both shuffle by ``(seed, epoch)`` alone, so resume is exact.

    ``val`` is ``None`` unless a validation split was asked for (``val_size``); the Trainer
    then reports its per-epoch evaluation on the test split, as the course does.

    Attributes:
        name: registry name of the dataset.
        train, val, test: ``(inputs, targets)`` tensor tuples, or datasets.
        batch_size: examples per batch of every loader.
        task: the registered task that reads these batches (see :mod:`divekit.engine.task`):
            ``"classification"`` (integer targets, logits out), ``"regression"``,
            ``"language-model"``, ``"detection"`` (per-image target dicts), ...
        class_names: one name per class (classification; the object classes of detection).
        seed: shuffles the training loader, one permutation per epoch.
        device: where the loaders put in-memory tensors (once, up front).
        transform: applied to every training batch (augmentation, see ``parse_augment``).
        resize: the loaders resize every image batch to ``resize x resize`` (bilinear, on the
            batch's device, before ``transform``), so 28x28 images can feed a 224x224 model
            without storing them at that size: 60,000 of them would take 12 GB.
        num_workers: worker processes reading a dataset split (0: the main process).
        collate_fn: turns a list of a dataset split's examples into a batch (default:
            PyTorch's, which stacks equal-sized tensors; see :mod:`divekit.data.collate`).
        normalization: ``(mean, std)`` the stored images were standardised with, so that a
            new image can be given to a model the same way (:meth:`read_input`).
    """

    name: str
    train: Split
    test: Split
    batch_size: int = 256
    val: Split | None = None
    task: str = "classification"
    class_names: list[str] = field(default_factory=list)
    seed: int = 0
    device: torch.device | str | None = None
    transform: Callable | None = None
    resize: int | None = None
    num_workers: int = 0
    collate_fn: Callable | None = None
    normalization: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def num_classes(self) -> int | None:
        """Classes a model must tell apart: the image classes, the object classes of a
        detection set (without background) or the pixel classes of a segmentation set (with
        it); ``None`` for other tasks."""
        counted = ("classification", "detection", "segmentation")
        return len(self.class_names) if self.task in counted else None

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input example as the loaders give it, e.g. ``(1, 28, 28)``."""
        if isinstance(self.train, Dataset):
            example = self.train[0]
            first = example[0] if isinstance(example, list | tuple) else example
            shape = tuple(first.shape) if isinstance(first, torch.Tensor) else ()
        else:
            shape = tuple(self.train[0].shape[1:])
        return shape if self.resize is None else (shape[0], self.resize, self.resize)

    def resized(self, size: int) -> DataModule:
        """The same data (no copy) with loaders that resize every image batch to ``size``."""
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise DivekitError(f"resize must be a positive integer (pixels), got {size!r}")
        shape = self.input_shape
        if len(shape) != 3:
            raise DivekitError(f"resizing needs image batches (N, C, H, W); {self.name!r} has "
                               f"examples of shape {shape}")
        return dataclasses.replace(self, resize=size)

    def read_input(self, path: Path) -> torch.Tensor:
        """An image file as this data's models take it: decoded, converted to the data's
        channels, resized to its input size, scaled to [0, 1] and standardised as the data is.

        Returns:
            float tensor of shape :attr:`input_shape` ``(C, H, W)``.
        """
        from divekit.data.folder import read_image, to_tensor

        shape = self.input_shape
        if len(shape) != 3 or shape[1] != shape[2] or shape[0] not in (1, 3):
            raise DivekitError(f"dataset {self.name!r} has inputs of shape {shape}; only square "
                               f"grey or RGB image data takes image files")
        image = to_tensor(read_image(Path(path), shape[1], grayscale=shape[0] == 1))
        if self.normalization is not None:
            mean, std = self.normalization
            image = (image - mean.reshape(-1, 1, 1)) / std.reshape(-1, 1, 1)
        return image

    @property
    def model_options(self) -> dict[str, int]:
        """Sizes a model takes from this data beyond the input shape and classes (e.g. the
        vocabulary sizes of a translation model): see :func:`~divekit.models.create_model`."""
        return {}

    def save_artifacts(self, folder: Path) -> None:
        """Write what a run needs besides its weights to use the model later: the data's
        tokenizer (``tokenizer.json``) when it has one, so that ``--weights RUN`` fine-tunes on
        the same word pieces."""
        tokenizer = getattr(self, "tokenizer", None)
        if tokenizer is not None:
            tokenizer.save(Path(folder) / "tokenizer.json")

    def hold_out(self, val_size: float | int, seed: int) -> None:
        """Move ``val_size`` training examples (a count, or a fraction in (0, 1)), chosen by
        ``seed``, into a new validation split."""
        self.train, self.val = _split(self.train, val_size, seed)

    def train_dataloader(self) -> TensorLoader | DatasetLoader:
        transform = self.transform
        if self.resize is not None:
            transform = self._resize if transform is None else self._resize_then_transform
        return self._loader(self.train, self.batch_size, shuffle=True, transform=transform)

    def val_dataloader(self) -> TensorLoader | DatasetLoader | None:
        return None if self.val is None else self._eval_loader(self.val)

    def test_dataloader(self) -> TensorLoader | DatasetLoader:
        return self._eval_loader(self.test)

    def _eval_loader(self, split: Split) -> TensorLoader | DatasetLoader:
        if self.resize is not None:  # 1024 images at 224x224 through a VGG would take tens of GB
            return self._loader(split, self.batch_size, transform=self._resize)
        batch_size = self.batch_size if isinstance(split, Dataset) else max(self.batch_size, 1024)
        return self._loader(split, batch_size)

    def _loader(self, split: Split, batch_size: int, shuffle: bool = False,
                transform: Callable | None = None) -> TensorLoader | DatasetLoader:
        if isinstance(split, Dataset):
            return DatasetLoader(split, batch_size=batch_size, shuffle=shuffle, seed=self.seed,
                                 collate_fn=self.collate_fn, num_workers=self.num_workers,
                                 transform=transform)
        return TensorLoader(*split, batch_size=batch_size, shuffle=shuffle, seed=self.seed,
                            device=self.device, transform=transform)

    def _resize(self, images: torch.Tensor, *targets: Targets) -> tuple[Any, ...]:
        """Images resized bilinearly to ``resize x resize``, their targets with them: label
        maps by the nearest pixel, boxes scaled, class labels as they are
        (:func:`~divekit.data.targets.resize_targets`)."""
        size = (self.resize, self.resize)
        resized = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        return (resized, *(resize_targets(target, images, size) for target in targets))

    def _resize_then_transform(self, *batch: Any) -> Any:
        return self.transform(*self._resize(*batch))

    def __repr__(self) -> str:
        sizes = f"train={_length(self.train)}, test={_length(self.test)}"
        if self.val is not None:
            sizes += f", val={_length(self.val)}"
        return (f"DataModule({self.name!r}, {sizes}, input_shape={self.input_shape}, "
                f"task={self.task})")


def _length(split: Split) -> int:
    return len(split) if isinstance(split, Dataset) else len(split[0])


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    build: Callable[..., DataModule]
    section: str
    description: str
    files: tuple[str, ...] = ()


DATASETS: Registry[DatasetInfo] = Registry("dataset")


def register_dataset(name: str, *, section: str, files: tuple[str, ...] = ()):
    """Register ``fn(batch_size, data_dir, seed, **options) -> DataModule`` under ``name``."""

    def decorator(fn: Callable[..., DataModule]) -> Callable[..., DataModule]:
        description = (inspect.getdoc(fn) or "").splitlines()[0] if fn.__doc__ else ""
        DATASETS.add(name, DatasetInfo(name, fn, section, description, files))
        return fn

    return decorator


def list_datasets(pattern: str = "*") -> list[str]:
    return DATASETS.names(pattern)


def load_data(
    name: str,
    batch_size: int = 256,
    *,
    data_dir: str | None = None,
    val_size: float | int = 0,
    seed: int = 0,
    device: torch.device | str | None = None,
    resize: int | None = None,
    **options,
) -> DataModule:
    """Load a registered dataset as a :class:`DataModule`.

    Args:
        name: registry name, e.g. ``"fashion-mnist"`` (see ``list_datasets()``).
        batch_size: examples per training batch.
        data_dir: folder holding one sub-folder per dataset; default ``$DIVEKIT_DATA`` or
            ``~/.cache/divekit``.
        val_size: hold out this many training examples (an int) or this fraction (a float
            in (0, 1)) as a validation split, chosen by ``seed``.
        seed: seeds the validation split and the training shuffle.
        device: keep the tensors on this device (e.g. ``"cuda"``) so batches need no copy.
        resize: give image batches at ``resize x resize`` (e.g. the course's 224 for AlexNet),
            resized per batch on the device; see :meth:`DataModule.resized`.
        options: dataset-specific options (e.g. ``normalize=True``).
    """
    info = DATASETS[name]
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DivekitError(f"batch size must be a positive integer, got {batch_size!r}")
    check_val_size(val_size)
    accepted = set(inspect.signature(info.build).parameters) - {"data_dir"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise DivekitError(
            f"dataset {name!r} has no option {', '.join(unknown)}; "
            f"its options are: {', '.join(sorted(accepted)) or 'none'}"
        )
    data = info.build(data_dir=data_dir, **options)
    data.batch_size, data.seed, data.device = batch_size, seed, device
    if val_size:
        data.hold_out(val_size, seed)
    return data if resize is None else data.resized(resize)


def check_val_size(val_size: float | int) -> None:
    """The one rule for ``val_size`` (``load_data``, ``--val-size``, ``config.json``): 0 for
    none, a fraction in (0, 1), or a whole count of examples; whether a count leaves training
    examples is checked once the data is loaded."""
    number = isinstance(val_size, int | float) and not isinstance(val_size, bool)
    if not number or not (val_size == 0 or 0 < val_size < 1
                          or isinstance(val_size, int) and val_size > 0):
        raise DivekitError(f"val_size must be 0 (none), a fraction in (0, 1) or a whole count "
                           f"of examples, got {val_size!r}")


def _split(split: Split, val_size: float | int, seed: int) -> tuple[Split, Split]:
    n = _length(split)
    count = round(val_size * n) if isinstance(val_size, float) else int(val_size)
    if isinstance(val_size, float) and not 0 < val_size < 1 or not 0 < count < n:
        raise DivekitError(
            f"val_size must be a fraction in (0, 1) or a count in [1, {n - 1}], got {val_size!r}"
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_index, train_index = order[:count], order[count:]
    if isinstance(split, Dataset):
        return Subset(split, train_index.tolist()), Subset(split, val_index.tolist())
    return (
        tuple(t[train_index] for t in split),
        tuple(t[val_index] for t in split),
    )
