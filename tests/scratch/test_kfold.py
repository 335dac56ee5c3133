import pytest
import torch
from sklearn.datasets import load_breast_cancer
from sklearn.preprocessing import StandardScaler
from torch import nn

from divekit import DataModule, Trainer
from divekit.errors import DivekitError
from divekit.scratch.kfold import cross_validate, kfold_indices, load_tabular, standardize

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


# ----------------------------------------------------------------------------- data
def test_load_tabular_breast_cancer():
    data = load_tabular("breast-cancer", batch_size=16, seed=0)
    raw = load_breast_cancer()
    assert data.train[0].shape == (455, 30) and data.test[0].shape == (114, 30)
    assert data.task == "classification" and data.class_names == ["malignant", "benign"]
    assert data.batch_size == 16
    labels = torch.cat([data.train[1], data.test[1]])
    assert torch.bincount(labels).tolist() == torch.bincount(torch.tensor(raw.target)).tolist()
    torch.testing.assert_close(data.train[0].mean(0), torch.zeros(30), atol=1e-5, rtol=0)
    torch.testing.assert_close(data.train[0].std(0, correction=0), torch.ones(30))
    # Train and test went through one per-feature increasing affine map (the training
    # statistics): sorted standardised values are that map applied to the sorted raw values.
    z = torch.cat([data.train[0], data.test[0]]).double().sort(0).values
    x = torch.tensor(raw.data).sort(0).values
    slope = (z[-1] - z[0]) / (x[-1] - x[0])
    torch.testing.assert_close(z, z[0] + slope * (x - x[0]), atol=1e-5, rtol=0)
    again, other = load_tabular("breast-cancer", seed=0), load_tabular("breast-cancer", seed=1)
    assert torch.equal(again.test[0], data.test[0])
    assert not torch.equal(other.test[1], data.test[1])
    with pytest.raises(DivekitError, match="unknown tabular dataset 'iris'"):
        load_tabular("iris")


# ----------------------------------------------------------------------------- cross-validation
class RecordingTrainer(Trainer):
    """A Trainer that keeps every model and fold it was given."""

    seen: list

    def fit(self, model, data, resume=False):
        self.seen.append((model, data))
        return super().fit(model, data, resume)


def recording_factory(seen, **settings):
    def make():
        trainer = RecordingTrainer(progress=False, device="cpu", **settings)
        trainer.seen = seen
        return trainer

    return make


def test_cross_validate_logistic_regression_on_breast_cancer():
    data = load_tabular("breast-cancer")
    seen = []
    result = cross_validate(lambda: nn.Linear(30, 2), data, 5,
                            recording_factory(seen, max_epochs=5, lr=0.1))
    folds = result["folds"]
    assert len(folds) == len(seen) == 5
    assert len({id(model) for model, _ in seen}) == 5  # a fresh model per fold
    for metrics, (model, fold) in zip(folds, seen, strict=True):
        assert not any(key.startswith("test_") for key in metrics)
        assert len(fold.train[0]) == 364 and len(fold.test[0]) == 91 and fold.val is None
        # Standardised with the fold's own training statistics.
        torch.testing.assert_close(fold.train[0].mean(0), torch.zeros(30), atol=1e-5, rtol=0)
        with torch.no_grad():
            accuracy = (model(fold.test[0]).argmax(1) == fold.test[1]).double().mean().item()
        assert metrics["valid_acc"] == pytest.approx(accuracy)
        assert metrics["valid_acc"] >= 0.9
    for key in ("valid_acc", "valid_loss", "train_loss"):
        assert result["mean"][key] == pytest.approx(sum(f[key] for f in folds) / 5)
    assert result["mean"]["valid_acc"] >= 0.94


def test_cross_validate_without_preprocessing_uses_the_fold_rows():
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 3, generator=generator), torch.randint(0, 2, (40,), generator=generator)
    data = DataModule("tiny", train=(x, y), test=(x[:4], y[:4]), batch_size=8,
                      class_names=["a", "b"])
    seen = []
    result = cross_validate(lambda: nn.Linear(3, 2), data, 4, recording_factory(seen, max_epochs=1),
                            seed=7, preprocess=None)
    assert len(result["folds"]) == 4
    for (train_index, valid_index), (_, fold) in zip(kfold_indices(40, 4, seed=7), seen,
                                                     strict=True):
        assert torch.equal(fold.train[0], x[train_index])
        assert torch.equal(fold.test[0], x[valid_index])
        assert torch.equal(fold.test[1], y[valid_index])
    with pytest.raises(DivekitError, match="k must be"):
        cross_validate(lambda: nn.Linear(3, 2), data, 41, recording_factory(seen))
