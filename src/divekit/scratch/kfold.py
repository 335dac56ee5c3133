"""K-fold cross-validation (course 3.6.3 and 5.7): the split and the per-fold standardisation.

Cut the training set into k folds; train k fresh models, each on k - 1 folds, and evaluate
each on the fold it did not see. The mean validation score estimates how well the model
generalises without touching the test set. The experiment that trains with these folds
(``cross_validate``, and the bundled tabular data) is in :mod:`divekit.recipes.kfold`.

Standardisation: fit :func:`standardize` on each fold's training part only, so no statistic of
the validation fold leaks into the inputs. Standardising undoes any earlier per-feature shift
and scale, so standardising already standardised features with a fold's statistics equals
standardising the raw features with them.
"""

from __future__ import annotations

import torch

from divekit.errors import DivekitError


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
