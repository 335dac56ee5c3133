"""Dataset registry and the ``DataModule`` every loader returns."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from divekit.data.loaders import TensorLoader
from divekit.errors import DivekitError
from divekit.registry import Registry


@dataclass
class DataModule:
    """Train / validation / test splits held as tensors, with their metadata.

    ``val`` is ``None`` unless a validation split was asked for (``val_size``); the Trainer
    then reports its per-epoch evaluation on the test split, as the course does.

    Attributes:
        name: registry name of the dataset.
        train, val, test: ``(inputs, targets)`` tensor pairs.
        batch_size: examples per batch of every loader.
        task: ``"classification"`` (integer targets, logits out) or ``"regression"``.
        class_names: one name per class (classification only).
        seed: shuffles the training loader, one permutation per epoch.
        device: where the loaders put the tensors (once, up front).
        transform: applied to every training batch (augmentation, see ``parse_augment``).
        resize: the loaders resize every image batch to ``resize x resize`` (bilinear, on the
            batch's device, before ``transform``), so 28x28 images can feed a 224x224 model
            without storing them at that size: 60,000 of them would take 12 GB.
    """

    name: str
    train: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    batch_size: int = 256
    val: tuple[torch.Tensor, torch.Tensor] | None = None
    task: str = "classification"
    class_names: list[str] = field(default_factory=list)
    seed: int = 0
    device: torch.device | str | None = None
    transform: Callable | None = None
    resize: int | None = None

    @property
    def num_classes(self) -> int | None:
        return len(self.class_names) if self.task == "classification" else None

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input example as the loaders give it, e.g. ``(1, 28, 28)``."""
        shape = tuple(self.train[0].shape[1:])
        return shape if self.resize is None else (shape[0], self.resize, self.resize)

    def resized(self, size: int) -> DataModule:
        """The same data (no copy) with loaders that resize every image batch to ``size``."""
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise DivekitError(f"resize must be a positive integer (pixels), got {size!r}")
        if self.train[0].ndim != 4:
            raise DivekitError(f"resizing needs image batches (N, C, H, W); {self.name!r} has "
                               f"inputs of shape {tuple(self.train[0].shape)}")
        return dataclasses.replace(self, resize=size)

    def train_dataloader(self) -> TensorLoader:
        transform = self.transform
        if self.resize is not None:
            transform = self._resize if transform is None else self._resize_then_transform
        return TensorLoader(
            *self.train, batch_size=self.batch_size, shuffle=True, seed=self.seed,
            device=self.device, transform=transform,
        )

    def val_dataloader(self) -> TensorLoader | None:
        return None if self.val is None else self._eval_loader(self.val)

    def test_dataloader(self) -> TensorLoader:
        return self._eval_loader(self.test)

    def _eval_loader(self, split: tuple[torch.Tensor, torch.Tensor]) -> TensorLoader:
        if self.resize is not None:  # 1024 images at 224x224 through a VGG would take tens of GB
            return TensorLoader(*split, batch_size=self.batch_size, device=self.device,
                                transform=self._resize)
        return TensorLoader(*split, batch_size=max(self.batch_size, 1024), device=self.device)

    def _resize(self, images: torch.Tensor, *rest: torch.Tensor) -> tuple[torch.Tensor, ...]:
        size = (self.resize, self.resize)
        return (F.interpolate(images, size=size, mode="bilinear", align_corners=False), *rest)

    def _resize_then_transform(self, *batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.transform(*self._resize(*batch))

    def __repr__(self) -> str:
        sizes = f"train={len(self.train[0])}, test={len(self.test[0])}"
        if self.val is not None:
            sizes += f", val={len(self.val[0])}"
        return (f"DataModule({self.name!r}, {sizes}, input_shape={self.input_shape}, "
                f"task={self.task})")


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
        data.train, data.val = _split(data.train, val_size, seed)
    return data if resize is None else data.resized(resize)


def _split(split: tuple[torch.Tensor, torch.Tensor], val_size: float | int, seed: int):
    n = len(split[0])
    count = round(val_size * n) if isinstance(val_size, float) else int(val_size)
    if isinstance(val_size, float) and not 0 < val_size < 1 or not 0 < count < n:
        raise DivekitError(
            f"val_size must be a fraction in (0, 1) or a count in [1, {n - 1}], got {val_size!r}"
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_index, train_index = order[:count], order[count:]
    return (
        tuple(t[train_index] for t in split),
        tuple(t[val_index] for t in split),
    )
