"""One run configuration: what ``train``, ``recipe run``, ``config.json`` and ``--resume`` share.

A :class:`RunConfig` names the model and data by registry name with their options, and holds the
Trainer's settings as a :class:`TrainerSettings`, whose fields are exactly the Trainer's keyword
settings (a test keeps them equal). Recipes build one with :func:`divekit.recipes.training_run`,
the command line changes one with its flags, the run directory's ``config.json`` is one written
out, and ``--resume`` reads it back: every value is checked against the field's type on the way
in, so a hand-edited or foreign file is one clear error, not a traceback deep in a run.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from divekit.errors import DivekitError


@dataclass
class TrainerSettings:
    """The Trainer's settings recorded in a run (see :class:`divekit.Trainer` for each)."""

    max_epochs: int = 10
    max_steps: int | None = None
    lr: float = 0.1
    optimizer: str = "sgd"
    lr_mult: dict[str, float] | None = None
    momentum: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False
    schedule: str = "constant"
    warmup_epochs: float = 0.0
    grad_clip: float | None = None
    stop_on_divergence: bool = False
    accumulate: int = 1
    ema: float | None = None
    limit_batches: int | None = None
    overfit_batches: int | None = None
    early_stopping: int | None = None
    monitor: str | None = None
    mode: str | None = None
    device: str = "auto"
    amp: str = "off"
    channels_last: bool | str = False
    compile: bool | str = False
    seed: int = 0
    checkpoint_every: int | None = None
    tensorboard: bool = False

    def __post_init__(self) -> None:
        _check_fields(self, "trainer")


@dataclass
class FineTuneSettings:
    """Start from a weights file, skipping and freezing parameters by name pattern."""

    weights: str | None = None
    skip_weights: list[str] = field(default_factory=list)
    freeze: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check_fields(self, "finetune")


@dataclass
class RunConfig:
    """One training run: enough to rebuild it from its folder.

    Attributes:
        model, model_options: registry name and factory options (``-M``).
        data, data_options: dataset name and options (``-D``); ``data_dir`` where it lives.
        batch_size: examples per batch.
        val_size: held-out validation fraction (a float) or count (an int); 0 = none.
        augment: augmentation spec for training batches (``--augment``).
        task_options: options of the model's task, e.g. ``{"label_smoothing": 0.1}``.
        finetune: weights to start from, names to skip and to freeze.
        trainer: the Trainer's settings.
    """

    model: str
    data: str = "fashion-mnist"
    batch_size: int = 256
    model_options: dict[str, Any] = field(default_factory=dict)
    data_options: dict[str, Any] = field(default_factory=dict)
    data_dir: str | None = None
    val_size: float | int = 0
    augment: str | None = None
    task_options: dict[str, Any] = field(default_factory=dict)
    finetune: FineTuneSettings = field(default_factory=FineTuneSettings)
    trainer: TrainerSettings = field(default_factory=TrainerSettings)

    def __post_init__(self) -> None:
        if not isinstance(self.finetune, FineTuneSettings):
            self.finetune = _build(FineTuneSettings, self.finetune, "finetune")
        if not isinstance(self.trainer, TrainerSettings):
            self.trainer = _build(TrainerSettings, self.trainer, "trainer")
        _check_fields(self, "run config")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def changes(self) -> dict[str, Any]:
        """The settings that differ from the defaults (what a recipe chose), nested as in
        :meth:`to_dict`."""
        return _changes(self)

    @classmethod
    def from_dict(cls, values: Any, source: str = "run config") -> RunConfig:
        """A config from plain data (e.g. ``config.json``), every value checked."""
        if not isinstance(values, dict):
            raise DivekitError(f"{source} must hold a JSON object with model, data, batch_size "
                               f"and trainer, got {type(values).__name__} {values!r:.40}")
        values = dict(values)
        # Written beside the settings for people to read; not settings themselves.
        for informational in ("task", "data_summary", "autotune"):
            values.pop(informational, None)
        trainer, task_options = values.get("trainer"), values.get("task_options")
        if isinstance(trainer, dict) and "label_smoothing" in trainer and (
                task_options is None or isinstance(task_options, dict)):
            # Runs written before label smoothing became the classification task's option.
            trainer = dict(trainer)
            values["task_options"] = {"label_smoothing": trainer.pop("label_smoothing"),
                                      **(task_options or {})}
            values["trainer"] = trainer
        if values.get("finetune") is None:
            values.pop("finetune", None)
        return _build(cls, values, source)

    @classmethod
    def read(cls, run_dir: Path) -> RunConfig:
        """The config of a run directory (``RUN_DIR/config.json``)."""
        path = Path(run_dir) / "config.json"
        if not path.is_file():
            raise DivekitError(f"{run_dir} is not a run directory: it has no config.json")
        try:
            values = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DivekitError(f"{path} is not valid JSON ({e})") from e
        return cls.from_dict(values, source=str(path))


def _changes(instance: Any) -> dict[str, Any]:
    changed = {}
    for item in dataclasses.fields(instance):
        value = getattr(instance, item.name)
        if dataclasses.is_dataclass(value):
            if nested := _changes(value):
                changed[item.name] = nested
            continue
        default = item.default if item.default_factory is dataclasses.MISSING \
            else item.default_factory()
        if value != default:
            changed[item.name] = value
    return changed


def _build(cls, values: Any, source: str):
    if not isinstance(values, dict):
        raise DivekitError(f"{source} must be a JSON object, got {type(values).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise DivekitError(f"{source} has no setting {', '.join(map(repr, unknown))}; the "
                           f"settings are: {', '.join(names)}")
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in values]
    if missing:
        raise DivekitError(f"{source} lacks {', '.join(missing)}")
    try:
        return cls(**values)
    except DivekitError as e:
        raise DivekitError(f"{source}: {e}") from None


def _check_fields(instance: Any, where: str) -> None:
    hints = typing.get_type_hints(type(instance))
    for item in dataclasses.fields(instance):
        value = getattr(instance, item.name)
        if not _matches(value, hints[item.name]):
            raise DivekitError(f"{where} setting {item.name!r} must be "
                               f"{_describe(hints[item.name])}, got {value!r:.60}")


def _matches(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, option) for option in typing.get_args(annotation))
    if annotation is Any:
        return True
    if annotation is type(None):
        return value is None
    if annotation is float:  # JSON writes 1.0 as 1
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is dict:
        key_type, value_type = typing.get_args(annotation)
        return isinstance(value, dict) and all(
            _matches(k, key_type) and _matches(v, value_type) for k, v in value.items())
    if origin is list:
        (item_type,) = typing.get_args(annotation)
        return isinstance(value, list | tuple) and all(_matches(v, item_type) for v in value)
    return isinstance(value, annotation)


def _describe(annotation: Any) -> str:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " or ".join(_describe(option) for option in typing.get_args(annotation))
    if annotation is type(None):
        return "null"
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    if annotation in names:
        return names[annotation]
    if typing.get_origin(annotation) is dict:
        return "an object"
    if typing.get_origin(annotation) is list:
        return "a list"
    return getattr(annotation, "__name__", str(annotation))
