"""K-fold split and per-fold standardisation (3.6.3 / 5.7) against scikit-learn."""

import pytest
import torch
from sklearn.preprocessing import StandardScaler

from divekit.errors import DivekitError
from divekit.scratch.kfold import kfold_indices, standardize

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- folds
@pytest.mark.parametrize("n, k", [(23, 5), (10, 2), (7, 7), (100, 10)])
def test_folds_partition_the_examples(n, k):
    folds = kfold_indices(n, k, seed=3)
    assert len(folds) == k
    valid = torch.cat([v for _, v in folds])
    assert sorted(valid.tolist()) == list(range(n))  # each example validates exactly once
    for train, v in folds:
        assert sorted(torch.cat([train, v]).tolist()) == list(range(n))  # disjoint, complete
    sizes = [len(v) for _, v in folds]
    assert max(sizes) - min(sizes) <= 1


def test_folds_are_seeded():
    def as_lists(folds):
        return [(t.tolist(), v.tolist()) for t, v in folds]

    assert as_lists(kfold_indices(50, 5, seed=1)) == as_lists(kfold_indices(50, 5, seed=1))
    assert as_lists(kfold_indices(50, 5, seed=1)) != as_lists(kfold_indices(50, 5, seed=2))
    assert kfold_indices(50, 5)[0][1].tolist() != list(range(10))  # shuffled, not cut in order


@pytest.mark.parametrize("n, k", [(10, 1), (10, 0), (10, 11), (10, 2.5), (10, True), (3.0, 2)])
def test_bad_k_raises(n, k):
    with pytest.raises(DivekitError):
        kfold_indices(n, k)


# ----------------------------------------------------------------------------- standardize
def test_standardize_equals_sklearn_standard_scaler():
    generator = torch.Generator().manual_seed(0)
    train = 3 + 5 * torch.randn(40, 4, generator=generator, dtype=torch.float64)
    other = torch.randn(9, 4, generator=generator, dtype=torch.float64)
    train[:, 2] = 7.0  # a constant feature: only shifted, as sklearn does
    scaler = StandardScaler().fit(train.numpy())
    ours_train, ours_other = standardize(train, other)
    torch.testing.assert_close(ours_train, torch.from_numpy(scaler.transform(train.numpy())))
    torch.testing.assert_close(ours_other, torch.from_numpy(scaler.transform(other.numpy())))
    with pytest.raises(DivekitError, match="feature shapes"):
        standardize(train, other[:, :3])


def test_standardizing_again_undoes_an_earlier_standardization():
    # Why per-fold standardisation of already standardised features leaks nothing.
    generator = torch.Generator().manual_seed(1)
    train, other = (torch.randn(n, 3, generator=generator, dtype=torch.float64) for n in (30, 8))
    scale, shift = torch.tensor([0.1, 2.0, 50.0], dtype=torch.float64), torch.tensor([-4, 0, 9])
    for ours, direct in zip(standardize(scale * train + shift, scale * other + shift),
                            standardize(train, other), strict=True):
        torch.testing.assert_close(ours, direct)
