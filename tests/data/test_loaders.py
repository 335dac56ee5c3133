import pytest
import torch

from divekit import DivekitError, TensorLoader, load_data


def test_each_example_once_per_epoch_in_full_batches():
    x = torch.arange(103)
    loader = TensorLoader(x, x * 2, batch_size=10, shuffle=True, seed=3)
    batches = list(loader)
    assert len(loader) == len(batches) == 11
    assert [len(b[0]) for b in batches] == [10] * 10 + [3]
    seen = torch.cat([b[0] for b in batches])
    assert sorted(seen.tolist()) == list(range(103))
    assert all(torch.equal(b[1], b[0] * 2) for b in batches)  # tensors stay aligned


def test_drop_last_and_no_shuffle_keeps_order():
    x = torch.arange(25)
    loader = TensorLoader(x, batch_size=10, drop_last=True)
    assert len(loader) == 2
    assert torch.equal(torch.cat([b[0] for b in loader]), torch.arange(20))


def test_order_depends_only_on_seed_and_epoch():
    x = torch.arange(1000)

    def order(seed, epoch):
        loader = TensorLoader(x, batch_size=100, shuffle=True, seed=seed)
        loader.set_epoch(epoch)
        return torch.cat([b[0] for b in loader])

    assert torch.equal(order(0, 5), order(0, 5))
    assert not torch.equal(order(0, 5), order(0, 6))
    assert not torch.equal(order(0, 5), order(1, 5))
    assert not torch.equal(order(0, 0), x)


def test_transform_is_applied_to_each_batch():
    x = torch.ones(8, 2)
    loader = TensorLoader(x, torch.zeros(8), batch_size=4, transform=lambda a, b: (a * 3, b))
    assert all(torch.equal(b[0], torch.full((4, 2), 3.0)) for b in loader)


@pytest.mark.parametrize(
    ("tensors", "batch_size", "message"),
    [((torch.zeros(4), torch.zeros(5)), 2, "different lengths"),
     ((torch.zeros(4),), 0, "positive integer"),
     ((), 2, "at least one tensor")],
)
def test_bad_arguments_are_named(tensors, batch_size, message):
    with pytest.raises(DivekitError, match=message):
        TensorLoader(*tensors, batch_size=batch_size)


def test_validation_split_is_disjoint_seeded_and_sized():
    data = load_data("digits", batch_size=32, val_size=0.25, seed=7)
    assert data.val is not None
    n_train, n_val = len(data.train[0]), len(data.val[0])
    assert n_val == round(0.25 * (n_train + n_val))
    again = load_data("digits", batch_size=32, val_size=0.25, seed=7)
    assert torch.equal(again.val[0], data.val[0])
    # No validation image also sits in the training split.
    train = {tuple(row.tolist()) for row in data.train[0].flatten(1)[:, ::7]}
    assert not any(tuple(row.tolist()) in train for row in data.val[0].flatten(1)[:, ::7])
    assert len(data.val_dataloader().tensors[0]) == n_val


@pytest.mark.parametrize("val_size", [1.5, -0.1, 0.999999, 10**6])
def test_bad_validation_size(val_size):
    with pytest.raises(DivekitError, match="val_size"):
        load_data("digits", val_size=val_size)


def test_unknown_dataset_and_option():
    with pytest.raises(DivekitError, match="unknown dataset 'cifar-100'; choose from: .*digits"):
        load_data("cifar-100")
    with pytest.raises(DivekitError, match="has no option colour"):
        load_data("digits", colour=True)
    with pytest.raises(DivekitError, match="batch size"):
        load_data("digits", batch_size=0)


def test_digits_embedded_default():
    data = load_data("digits", batch_size=64)
    assert data.input_shape == (1, 28, 28) and data.num_classes == 10
    assert len(data.train[0]) + len(data.test[0]) == 1797
    assert data.train[0].min() >= 0.0 and data.train[0].max() <= 1.0
    assert set(data.test[1].tolist()) == set(range(10))
    normalized = load_data("digits", normalize=True)
    assert abs(normalized.train[0].mean().item()) < 1e-4
    assert abs(normalized.train[0].std().item() - 1) < 1e-4


def test_synthetic_regression_follows_its_formula():
    from divekit.data.synthetic import TRUE_B, TRUE_W

    data = load_data("synthetic-regression", batch_size=10)
    x, y = data.train
    residual = y.squeeze(1) - (x @ torch.tensor(TRUE_W) + TRUE_B)
    assert x.shape == (1000, 2) and data.task == "regression"
    assert 0.005 < residual.std().item() < 0.015  # noise sigma 0.01
