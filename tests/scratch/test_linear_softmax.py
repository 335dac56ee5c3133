import pytest
import torch
import torch.nn.functional as F

import divekit as dk
from divekit.data.synthetic import synthetic_regression
from divekit.scratch.linear import linreg, sgd_step, squared_loss, train_linear_regression
from divekit.scratch.softmax import (
    SoftmaxRegression,
    cross_entropy,
    log_softmax,
    logsumexp,
    softmax,
)
from tests.oracle import assert_same, f64, randn

# --- linear regression -------------------------------------------------------------------


def test_linreg_matches_f_linear():
    X, w, b = randn(7, 3), randn(3, 1, seed=1), randn(1, seed=2)
    assert_same(linreg, lambda X, w, b: F.linear(X, w.T, b), X, w, b)


@pytest.mark.parametrize("target_shape", [(6, 1), (6,)])
def test_squared_loss_is_half_the_mse_per_example(target_shape):
    y_hat, y = randn(6, 1), randn(*target_shape, seed=3)
    assert squared_loss(y_hat, y).shape == (6, 1)
    assert_same(
        lambda y_hat, y: squared_loss(y_hat, y).mean(),
        lambda y_hat, y: F.mse_loss(y_hat, y.reshape(y_hat.shape)) / 2,
        y_hat, y,
    )


def test_sgd_step_on_a_summed_loss_equals_torch_sgd_on_the_mean():
    X, y = randn(8, 3), randn(8, 1, seed=1)
    w0, b0 = randn(3, 1, seed=2), randn(1, seed=3)
    w, b = w0.clone().requires_grad_(), b0.clone().requires_grad_()
    squared_loss(linreg(X, w, b), y).sum().backward()
    sgd_step([w, b], lr=0.1, batch_size=len(X))

    w_ref, b_ref = w0.clone().requires_grad_(), b0.clone().requires_grad_()
    optimizer = torch.optim.SGD([w_ref, b_ref], lr=0.1)
    (F.mse_loss(F.linear(X, w_ref.T, b_ref), y) / 2).backward()
    optimizer.step()

    torch.testing.assert_close(w.detach(), w_ref.detach())
    torch.testing.assert_close(b.detach(), b_ref.detach())
    assert w.is_leaf and b.is_leaf and w.grad_fn is None
    assert not w.grad.any() and not b.grad.any()


def test_linear_regression_recovers_the_course_parameters():
    true_w, true_b = torch.tensor([2.0, -3.4]), 4.2
    X, y = synthetic_regression(true_w, true_b, 1000)
    w, b, losses = train_linear_regression(X, y, lr=0.03, batch_size=10, epochs=3, seed=0)
    assert w.shape == (2, 1) and b.shape == (1,)
    assert torch.linalg.vector_norm(w.reshape(-1) - true_w) < 0.01
    assert abs(b.item() - true_b) < 0.01
    assert len(losses) == 3 and losses[0] > losses[1] > losses[2]
    # The noise is 0.01, so the best achievable loss is about 0.01^2 / 2 = 5e-5.
    assert losses[-1] < 1e-4
    again = train_linear_regression(X, y, seed=0)
    assert torch.equal(again[0], w) and again[2] == losses


def test_linear_regression_rejects_bad_inputs():
    with pytest.raises(dk.DivekitError, match="examples, features"):
        train_linear_regression(torch.ones(5), torch.ones(5))
    with pytest.raises(dk.DivekitError, match="one target per example"):
        train_linear_regression(torch.ones(5, 2), torch.ones(4))
    with pytest.raises(dk.DivekitError, match="batch size"):
        train_linear_regression(torch.ones(5, 2), torch.ones(5), batch_size=0)


# --- softmax, log-sum-exp, cross-entropy ------------------------------------------------

LOGITS = {
    "random": (randn(4, 5), -1),
    "huge": (torch.tensor([[1000.0, -1000.0, 0.0], [-1000.0, -1000.0, -999.0]], dtype=f64), -1),
    "batch of 1": (randn(1, 6), -1),
    "dim 0": (randn(3, 4), 0),
    "3-d, middle dim": (randn(2, 3, 4), 1),
    "one class": (randn(3, 1), -1),
}


@pytest.mark.parametrize("case", LOGITS)
def test_softmax_family_matches_torch(case):
    X, dim = LOGITS[case]
    assert_same(lambda X: softmax(X, dim), lambda X: torch.softmax(X, dim), X)
    assert_same(lambda X: log_softmax(X, dim), lambda X: torch.log_softmax(X, dim), X)
    assert_same(lambda X: logsumexp(X, dim), lambda X: torch.logsumexp(X, dim), X)
    assert_same(
        lambda X: logsumexp(X, dim, keepdim=True),
        lambda X: torch.logsumexp(X, dim, keepdim=True),
        X,
    )


def test_softmax_of_huge_logits_is_finite_in_float32():
    X = torch.tensor([[1000.0, 999.0, -1000.0]])
    probabilities = softmax(X)
    assert torch.isfinite(probabilities).all()
    torch.testing.assert_close(probabilities, torch.softmax(X, -1))
    assert torch.isfinite(log_softmax(X)).all()


def test_logsumexp_of_a_fully_masked_row_is_minus_infinity():
    X = torch.tensor([[float("-inf")] * 3, [0.0, 1.0, float("-inf")]], dtype=f64)
    torch.testing.assert_close(logsumexp(X), torch.logsumexp(X, -1))


CROSS_ENTROPY_CASES = {
    "random": (randn(6, 4), torch.tensor([0, 3, 1, 1, 2, 3])),
    "huge": (torch.tensor([[1000.0, -1000.0, 0.0], [0.0, 0.0, -1000.0]], dtype=f64),
             torch.tensor([1, 2])),
    "batch of 1": (randn(1, 5), torch.tensor([4])),
}


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("case", CROSS_ENTROPY_CASES)
def test_cross_entropy_matches_torch(case, reduction):
    logits, labels = CROSS_ENTROPY_CASES[case]
    assert_same(
        lambda o: cross_entropy(o, labels, reduction=reduction),
        lambda o: F.cross_entropy(o, labels, reduction=reduction),
        logits,
    )


def test_cross_entropy_default_is_the_mean():
    logits, labels = CROSS_ENTROPY_CASES["random"]
    torch.testing.assert_close(cross_entropy(logits, labels), F.cross_entropy(logits, labels))


@pytest.mark.parametrize(
    "logits, labels, message",
    [
        (torch.zeros(3), torch.tensor([0, 1, 2]), "examples, classes"),
        (torch.zeros(3, 2), torch.tensor([0, 1]), "labels must have shape"),
        (torch.zeros(2, 2), torch.tensor([0.0, 1.0]), "integer"),
        (torch.zeros(2, 2), torch.tensor([0, 2]), r"lie in \[0, 2\)"),
        (torch.zeros(2, 2), torch.tensor([-1, 0]), r"lie in \[0, 2\)"),
        (torch.zeros(2, 2), torch.tensor([0, 1]), "reduction"),
    ],
)
def test_cross_entropy_rejects_bad_inputs(logits, labels, message):
    with pytest.raises(dk.DivekitError, match=message):
        cross_entropy(logits, labels, reduction="average" if message == "reduction" else "mean")


# --- softmax regression ----------------------------------------------------------------


def test_softmax_regression_parameters_and_forward():
    torch.manual_seed(0)
    model = SoftmaxRegression(784, 10)
    W, b = model.parameters()
    assert W is model.W and b is model.b
    assert W.shape == (784, 10) and b.shape == (10,)
    assert all(p.is_leaf and p.requires_grad for p in (W, b))
    assert not b.any()
    # 7840 draws: the sample std of N(0, 0.01^2) is within 5% of 0.01 (about 4 sigma).
    assert abs(W.std().item() - 0.01) < 0.0005

    model = SoftmaxRegression(12, 3, dtype=f64)
    X = randn(5, 1, 3, 4)
    with torch.no_grad():
        model.b += randn(3, seed=1)
    torch.testing.assert_close(model(X), F.linear(X.flatten(1), model.W.T, model.b))
    with pytest.raises(dk.DivekitError, match="expected 12 features"):
        model(randn(5, 10))


def test_softmax_regression_learns_digits():
    data = dk.load_data("digits")
    (X, y), (X_test, y_test) = data.train, data.test
    torch.manual_seed(0)
    model = SoftmaxRegression(784, 10)
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):
        for index in torch.randperm(len(X), generator=generator).split(32):
            cross_entropy(model(X[index]), y[index], reduction="sum").backward()
            sgd_step(model.parameters(), lr=0.1, batch_size=len(index))
    with torch.no_grad():
        accuracy = (model(X_test).argmax(1) == y_test).double().mean().item()
    assert accuracy >= 0.85
