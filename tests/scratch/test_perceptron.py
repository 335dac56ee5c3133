import pytest
import torch

import divekit as dk
from divekit.scratch.linear import sgd_step
from divekit.scratch.mlp import MLPScratch
from divekit.scratch.perceptron import perceptron_predict, train_perceptron
from divekit.scratch.softmax import cross_entropy

f64 = torch.float64
XOR_X = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]], dtype=f64)
XOR_LABELS = torch.tensor([0, 1, 1, 0])


def separable_points(num_points=200, margin=0.1):
    """Random 2-D points labelled by the side of the line x1 - 2 x2 + 0.5 = 0, keeping only
    those at least ``margin`` away from it."""
    w, b = torch.tensor([1.0, -2.0], dtype=f64), 0.5
    X = 2 * torch.rand(num_points, 2, dtype=f64, generator=torch.Generator().manual_seed(0)) - 1
    scores = X @ w + b
    keep = scores.abs() / torch.linalg.vector_norm(w) >= margin
    return X[keep], torch.where(scores[keep] > 0, 1.0, -1.0).to(f64), w, b


def test_hand_traced_updates():
    # Epoch 1: x1 scores 0 (a mistake) -> w = (1, 0), b = 1; x2 scores 1 against label -1
    # -> w = (1, -1), b = 0. Epoch 2 classifies both correctly and stops.
    X = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=f64)
    y = torch.tensor([1.0, -1.0], dtype=f64)
    w, b, mistakes = train_perceptron(X, y, epochs=10, lr=0.5)
    assert mistakes == [2, 0]
    torch.testing.assert_close(w, torch.tensor([0.5, -0.5], dtype=f64))
    assert b.item() == 0.0


def test_separates_a_linearly_separable_set():
    X, y, true_w, true_b = separable_points()
    w, b, mistakes = train_perceptron(X, y, epochs=1000)
    assert mistakes[-1] == 0 and len(mistakes) < 1000
    assert torch.equal(perceptron_predict(X, w, b), y)
    # Novikoff's bound on the total number of updates, in the space of (x, 1) vectors:
    # (R / gamma)^2 with R the largest norm and gamma the margin of any separating (w, b).
    augmented = torch.cat([X, torch.ones(len(X), 1, dtype=f64)], dim=1)
    radius = torch.linalg.vector_norm(augmented, dim=1).max()
    gamma = (y * (X @ true_w + true_b)).min() / torch.linalg.vector_norm(
        torch.cat([true_w, torch.tensor([true_b], dtype=f64)])
    )
    assert sum(mistakes) <= (radius / gamma) ** 2


def test_never_separates_xor():
    y = XOR_LABELS.to(f64) * 2 - 1
    w, b, mistakes = train_perceptron(XOR_X, y, epochs=100)
    assert len(mistakes) == 100
    assert min(mistakes) > 0
    assert not torch.equal(perceptron_predict(XOR_X, w, b), y)


def test_a_hidden_layer_fits_xor():
    torch.manual_seed(1)
    model = MLPScratch(2, 8, 2, sigma=1.0, dtype=f64)
    for _ in range(500):
        cross_entropy(model(XOR_X), XOR_LABELS, reduction="sum").backward()
        sgd_step(model.parameters(), lr=0.5, batch_size=len(XOR_X))
    with torch.no_grad():
        assert torch.equal(model(XOR_X).argmax(1), XOR_LABELS)


def test_predict_returns_plus_or_minus_one():
    X = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 5.0]], dtype=f64)
    predictions = perceptron_predict(X, torch.tensor([1.0, 0.0], dtype=f64), torch.tensor(0.0))
    assert predictions.tolist() == [1.0, -1.0, -1.0]


@pytest.mark.parametrize(
    "X, y, message",
    [
        (torch.zeros(4), torch.ones(4), "examples, features"),
        (torch.zeros(4, 2), torch.ones(3), "shape"),
        (torch.zeros(4, 2), torch.tensor([0.0, 1.0, 1.0, 0.0]), "-1 or \\+1"),
    ],
)
def test_rejects_bad_inputs(X, y, message):
    with pytest.raises(dk.DivekitError, match=message):
        train_perceptron(X, y)
