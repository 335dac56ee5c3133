"""The course's experiments as named, runnable configurations (``divekit recipe run NAME``).

A recipe is a run config (see :mod:`divekit.experiment`) plus what the book reports for the same
experiment, so our result can be put next to it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from divekit.config import RunConfig, TrainerSettings
from divekit.registry import Registry


@dataclass(frozen=True)
class Recipe:
    """A named experiment: a training run (``config``) or a scripted one (``runner``).

    Attributes:
        name: registry name, e.g. ``"lenet-fashion-mnist"``.
        section: the course section it reproduces.
        description: one line.
        config: run config: model, data, batch size, options and Trainer settings.
        book: what the book reports for it (``""`` when the experiment is ours).
        target: the result our test suite or benchmark holds it to.
        runner: for experiments that are not one Trainer run (2-D optimizer paths, weight
            decay sweeps, ...): ``runner(out_dir) -> results`` writes its files (plots) into
            ``out_dir`` and returns a flat dict of JSON-able results.
        report: after a training run, ``report(run_dir) -> lines`` that ``recipe run`` prints
            (e.g. the book's example translations next to ours).
    """

    name: str
    section: str
    description: str
    config: RunConfig | None = None
    book: str = ""
    target: str = ""
    runner: Callable[[Path], dict[str, Any]] | None = None
    report: Callable[[Path], list[str]] | None = None

    def run_config(self) -> RunConfig:
        """A deep copy of the config, safe to modify."""
        return copy.deepcopy(self.config)


RECIPES: Registry[Recipe] = Registry("recipe")


def training_run(model: str, data: str, batch_size: int, *,
                 model_options: dict[str, Any] | None = None,
                 data_options: dict[str, Any] | None = None, **trainer: Any) -> RunConfig:
    """A run config: the model and data by name and options, and the Trainer's settings."""
    return RunConfig(model, data, batch_size, model_options=dict(model_options or {}),
                     data_options=dict(data_options or {}), trainer=TrainerSettings(**trainer))


def add_recipe(recipe: Recipe) -> Recipe:
    return RECIPES.add(recipe.name, recipe)


def list_recipes(pattern: str = "*") -> list[str]:
    return RECIPES.names(pattern)


def get_recipe(name: str) -> Recipe:
    return RECIPES[name]


from divekit.recipes import (  # noqa: E402, F401  (registration)
    attention,
    bert,
    classic,
    detection,
    finetune,
    kfold,
    language,
    scratch,
    segmentation,
    sequence,
    translation,
    zoo,
)
