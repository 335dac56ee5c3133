"""K-fold cross-validation (course 3.6.3 and 5.7 "Predicting House Prices on Kaggle").

Cut the training set into k folds; train k fresh models, each on k - 1 folds, and evaluate
each on the fold it did not see. The mean validation score estimates how well the model
generalises without touching the test set.

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

TABULAR_DATASETS = ("breast-cancer",)


def kfold_indices(
    num_examples: int, k: int, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Split ``range(num_examples)`` into k folds: a seeded permutation cut into k pieces.

    The first ``num_examples % k`` folds hold one example more than the others, so sizes
    differ by at most one, and every example is in exactly one validation fold.

    Returns:
        ``[(train_index, valid_index), ...]``, one pair of int64 index tensors per fold.
    """
    for name, value in (("num_examples", num_examples), ("k", k)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise DivekitError(f"{name} must be an integer, got {value!r}")
    if not 2 <= k <= num_examples:
        raise DivekitError(f"k must be in [2, num_examples={num_examples}], got {k}")
    order = torch.randperm(num_examples, generator=torch.Generator().manual_seed(seed))
    folds = order.tensor_split(k)
    return [
        (torch.cat(folds[:i] + folds[i + 1:]), valid)
        for i, valid in enumerate(folds)
    ]


def standardize(
    train_x: torch.Tensor, other_x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shift and scale every feature to mean 0, variance 1 using training statistics only.

    ``z = (x - mean) / std`` with ``mean`` and ``std`` (the population standard deviation) of
    ``train_x`` along the example dimension; a feature that is constant in ``train_x`` is only
    shifted.

    Shape:
        train_x: ``(n, ...)``; other_x: ``(m, ...)`` with the same feature shape.
    """
    if train_x.shape[1:] != other_x.shape[1:]:
        raise DivekitError(f"feature shapes differ: train {tuple(train_x.shape[1:])}, "
                           f"other {tuple(other_x.shape[1:])}")
    if len(train_x) < 2:
        raise DivekitError(f"standardizing needs at least 2 training examples, got {len(train_x)}")
    mean = train_x.mean(dim=0)
    std = train_x.std(dim=0, correction=0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return (train_x - mean) / std, (other_x - mean) / std


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
