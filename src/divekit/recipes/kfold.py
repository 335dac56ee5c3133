"""The k-fold cross-validation experiment (course 3.6.3 and 5.7) run with the Trainer.

The folds and the standardisation are the from-scratch formulas of :mod:`divekit.scratch.kfold`;
this module trains on them: :func:`cross_validate` fits a fresh model per fold,
:func:`load_tabular` gives the small tabular data the ``kfold-breast-cancer`` recipe uses, and
:func:`kaggle_house_kfold` is the course's house-price experiment (``kaggle-house-kfold``).

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
from pathlib import Path
from typing import Any

import torch
from torch import nn

from divekit.config import RunConfig
from divekit.data import DataModule, load_data
from divekit.engine import Trainer, seed_everything
from divekit.errors import DivekitError
from divekit.experiment import train, trainer_for
from divekit.models import create_model
from divekit.recipes import Recipe, add_recipe, training_run
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
    model_factory: Callable[[DataModule], nn.Module],
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
        model_factory: ``fold -> model``: a new, untrained model for the fold's data (called
            once per fold; e.g. ``lambda fold: create_model("mlp-regression", fold)``).
        data: the training data; its batch size, task and class names carry over.
        k: number of folds, in ``[2, len(data.train[0])]``.
        trainer_factory: returns a configured Trainer (called once per fold; give it no
            ``out_dir`` or folds overwrite each other's run directory).
        seed: chooses the folds.
        preprocess: ``(train_x, valid_x) -> (train_x, valid_x)`` fitted on each fold's training
            part (default: :func:`standardize`); ``None`` keeps the inputs as they are. Data
            with a ``fold(train_index, valid_index)`` method (tabular data, which refits its
            preprocessing on each fold's raw training rows) builds its own folds instead.

    Returns:
        ``{"folds": [metrics, ...], "mean": metrics, "histories": [History, ...]}``: each
        fold's last-epoch metrics (e.g. ``train_loss``, ``valid_loss``, ``valid_acc``), their
        mean over the folds, and each fold's per-epoch history (its ``test_*`` columns are the
        validation fold's).
    """
    inputs, targets = data.train
    results, histories = [], []
    for i, (train_index, valid_index) in enumerate(kfold_indices(len(inputs), k, seed)):
        if hasattr(data, "fold"):  # data that refits its own preprocessing (tabular rows)
            fold = data.fold(train_index, valid_index)
        else:
            train_x, valid_x = inputs[train_index], inputs[valid_index]
            if preprocess is not None:
                train_x, valid_x = preprocess(train_x, valid_x)
            fold = dataclasses.replace(data, train=(train_x, targets[train_index]), val=None,
                                       test=(valid_x, targets[valid_index]))
        fold = dataclasses.replace(fold, name=f"{data.name}-fold{i + 1}of{k}")
        history = trainer_factory().fit(model_factory(fold), fold)
        histories.append(history)
        results.append({_rename(key): value for key, value in history[-1].items()})
    mean = {key: sum(r[key] for r in results) / len(results) for key in results[0]}
    return {"folds": results, "mean": mean, "histories": histories}


def _rename(key: str) -> str:
    return "valid_" + key.removeprefix("test_") if key.startswith("test_") else key


HOUSE_LINEAR = training_run(
    "linear-regression", "kaggle-house", 64, data_options={"test_size": 0}, max_epochs=100,
    lr=0.01, optimizer="adam")
HOUSE_MLP = training_run(
    "mlp-regression", "kaggle-house", 64, data_options={"test_size": 0},
    model_options={"hidden": 256, "dropout": 0.5}, max_epochs=100, lr=0.003,
    optimizer="adamw", weight_decay=0.05, schedule="cosine")
HOUSE_BOOK = {"train": 0.165, "valid": 0.170}  # zh 2.0.0 / en 0.17.5: 0.1655 / 0.1703


def kaggle_house_kfold(out_dir: Path, k: int = 5) -> dict[str, Any]:
    """The course's house-price experiment: k-fold log-RMSE of a linear model and of an MLP,
    then each trained on all 1,460 rows into ``out_dir/linear`` and ``out_dir/mlp``, run
    folders that ``divekit predict RUN --data kaggle-house --out submission.csv`` reads."""
    results: dict[str, Any] = {}
    first_folds = {}
    for label, config in (("linear", HOUSE_LINEAR), ("mlp", HOUSE_MLP)):
        data = load_data(config.data, config.batch_size, **config.data_options)

        def model_factory(fold: DataModule, config: RunConfig = config) -> nn.Module:
            seed_everything(config.trainer.seed)
            return create_model(config.model, fold, **config.model_options)

        folds = cross_validate(model_factory, data, k,
                               lambda config=config: trainer_for(config, progress=False))
        for i, fold in enumerate(folds["folds"], 1):
            print(f"{label} fold {i}: train log-rmse {fold['train_rmse']:.4f}, "
                  f"valid log-rmse {fold['valid_rmse']:.4f}", flush=True)
        first_folds[label] = folds["histories"][0]
        results[f"{label}_valid_log_rmse_per_fold"] = [f["valid_rmse"] for f in folds["folds"]]
        results[f"{label}_mean_train_log_rmse"] = folds["mean"]["train_rmse"]
        results[f"{label}_mean_valid_log_rmse"] = folds["mean"]["valid_rmse"]
        _, final = train(config, out_dir / label, progress=False)
        results[f"{label}_all_rows_train_log_rmse"] = final["test_rmse"]
        results[f"{label}_run"] = str(out_dir / label)
    results["book_linear_mean_train_valid_log_rmse"] = [HOUSE_BOOK["train"], HOUSE_BOOK["valid"]]
    results["curves"] = str(plot_first_fold(first_folds, out_dir / "kfold.png"))
    return results


def plot_first_fold(histories: dict[str, list[dict]], path: Path) -> Path:
    """The course's figure: train and validation log-RMSE of the first fold against epoch
    (log scale), one line pair per model."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from divekit.engine.plots import save_png

    fig, axis = plt.subplots(figsize=(6, 4))
    for (label, history), colour in zip(histories.items(), ("tab:blue", "tab:orange"),
                                        strict=False):
        epochs = [row["epoch"] for row in history]
        axis.plot(epochs, [row["train_rmse"] for row in history], color=colour,
                  linestyle="--", label=f"{label} train")
        axis.plot(epochs, [row["test_rmse"] for row in history], color=colour,
                  label=f"{label} valid")
    axis.set_yscale("log")
    axis.set_xlabel("epoch")
    axis.set_ylabel("log-RMSE (fold 1)")
    axis.grid(alpha=0.3, which="both")
    axis.legend()
    fig.tight_layout()
    return save_png(fig, path)


add_recipe(Recipe(
    "kaggle-house-kfold", "5.7 Predicting House Prices on Kaggle",
    "5-fold log-RMSE of linear regression (Adam, batch 64, 100 epochs) and of an MLP on the "
    "Kaggle house prices; final models for a submission",
    runner=kaggle_house_kfold,
    book="linear, Adam lr 5 on raw prices: mean train log-rmse 0.165, valid 0.170",
    target="linear mean valid log-rmse <= 0.17 (the book's); the MLP below the linear model",
))
