"""K-fold cross-validation with the Trainer (3.6.3 / 5.7) and its bundled tabular data."""

import pytest
import torch
from sklearn.datasets import load_breast_cancer
from torch import nn

from divekit import DataModule, Trainer
from divekit.errors import DivekitError
from divekit.recipes.kfold import cross_validate, load_tabular
from divekit.scratch.kfold import kfold_indices

pytestmark = pytest.mark.usefixtures("one_thread")


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

    def fit(self, model, data, *args, **kwargs):
        self.seen.append((model, data))
        return super().fit(model, data, *args, **kwargs)


def recording_factory(seen, **settings):
    def make():
        trainer = RecordingTrainer(progress=False, device="cpu", **settings)
        trainer.seen = seen
        return trainer

    return make


def test_cross_validate_logistic_regression_on_breast_cancer():
    data = load_tabular("breast-cancer")
    seen = []
    result = cross_validate(lambda fold: nn.Linear(30, 2), data, 5,
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
    result = cross_validate(lambda fold: nn.Linear(3, 2), data, 4,
                            recording_factory(seen, max_epochs=1),
                            seed=7, preprocess=None)
    assert len(result["folds"]) == 4
    for (train_index, valid_index), (_, fold) in zip(kfold_indices(40, 4, seed=7), seen,
                                                     strict=True):
        assert torch.equal(fold.train[0], x[train_index])
        assert torch.equal(fold.test[0], x[valid_index])
        assert torch.equal(fold.test[1], y[valid_index])
    with pytest.raises(DivekitError, match="k must be"):
        cross_validate(lambda fold: nn.Linear(3, 2), data, 41, recording_factory(seen))
