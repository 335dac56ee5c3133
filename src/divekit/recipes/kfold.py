"""The k-fold cross-validation experiment (course 3.6.3 and 5.7) run with the Trainer.

The folds and the standardisation are the from-scratch formulas of :mod:`divekit.scratch.kfold`;
this module trains on them: :func:`cross_validate` fits a fresh model per fold, and
:func:`load_tabular` gives the small tabular data the ``kfold-breast-cancer`` recipe uses.

Standardisation: :func:`load_tabular` standardises its features with statistics of its
training split only, so the hold-out test set never leaks into the inputs. During
cross-validation the validation fold is part of that training split, so
:func:`cross_validate` standardises again in every fold with that fold's training statistics.
Standardising undoes any earlier per-feature shift and scale, so the result equals
standardising the raw features with the fold's statistics: no validation statistics leak.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from divekit.data import DataModule
from divekit.engine import Trainer
from divekit.errors import DivekitError
from divekit.scratch.kfold import kfold_indices, standardize

TABULAR_DATASETS = ("breast-cancer",)


def load_tabular(name: str, batch_size: int = 32, seed: int = 0) -> DataModule:
    """A small tabular dataset bundled with scikit-learn (no download) as a DataModule.

    ``"breast-cancer"``: Wisconsin diagnostic breast cancer, 569 examples of 30 features,
    classes ``malignant`` (0) and ``benign`` (1). A seeded 20% of the examples (114) is held
    out as the test split; features are standardised with training-split statistics.

    Args:
        name: one of ``TABULAR_DATASETS``.
        batch_size: examples per training batch.
        seed: chooses the hold-out split and seeds the training shuffle.
    """
    if name != "breast-cancer":
        raise DivekitError(f"unknown tabular dataset {name!r}; choose from {TABULAR_DATASETS}")
    from sklearn.datasets import load_breast_cancer  # imported here: sklearn loads slowly

    bunch = load_breast_cancer()
    features = torch.tensor(bunch.data, dtype=torch.float32)
    labels = torch.tensor(bunch.target, dtype=torch.int64)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    num_test = round(0.2 * len(labels))
    test_index, train_index = order[:num_test], order[num_test:]
    train_x, test_x = standardize(features[train_index], features[test_index])
    return DataModule(
        name, train=(train_x, labels[train_index]), test=(test_x, labels[test_index]),
        batch_size=batch_size, task="classification",
        class_names=[str(c) for c in bunch.target_names], seed=seed,
    )


def cross_validate(
    model_factory: Callable[[], nn.Module],
    data: DataModule,
    k: int,
    trainer_factory: Callable[[], Trainer],
    seed: int = 0,
    preprocess: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    | None = standardize,
) -> dict:
    """Train and evaluate a fresh model on each of k folds of ``data.train``.

    Each fold's DataModule trains on the other k - 1 folds and uses the held-out fold as its
    test split, so the Trainer's per-epoch evaluation measures it; its ``test_*`` metrics are
    reported as ``valid_*``. ``data.val`` and ``data.test`` are not used.

    Args:
        model_factory: returns a new, untrained model (called once per fold).
        data: the training data; its batch size, task and class names carry over.
        k: number of folds, in ``[2, len(data.train[0])]``.
        trainer_factory: returns a configured Trainer (called once per fold; give it no
            ``out_dir`` or folds overwrite each other's run directory).
        seed: chooses the folds.
        preprocess: ``(train_x, valid_x) -> (train_x, valid_x)`` fitted on each fold's training
            part (default: :func:`standardize`); ``None`` keeps the inputs as they are.

    Returns:
        ``{"folds": [metrics, ...], "mean": metrics}``: each fold's last-epoch metrics (e.g.
        ``train_loss``, ``valid_loss``, ``valid_acc``) and their mean over the folds.
    """
    inputs, targets = data.train
    results = []
    for i, (train_index, valid_index) in enumerate(kfold_indices(len(inputs), k, seed)):
        train_x, valid_x = inputs[train_index], inputs[valid_index]
        if preprocess is not None:
            train_x, valid_x = preprocess(train_x, valid_x)
        fold = dataclasses.replace(
            data, name=f"{data.name}-fold{i + 1}of{k}", train=(train_x, targets[train_index]),
            val=None, test=(valid_x, targets[valid_index]),
        )
        history = trainer_factory().fit(model_factory(), fold)
        results.append({_rename(key): value for key, value in history[-1].items()})
    mean = {key: sum(r[key] for r in results) / len(results) for key in results[0]}
    return {"folds": results, "mean": mean}


def _rename(key: str) -> str:
    return "valid_" + key.removeprefix("test_") if key.startswith("test_") else key
