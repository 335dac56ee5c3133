import inspect

import pytest
import torch
import torch.nn.functional as F

import divekit as dk
from divekit.scratch import activations
from divekit.scratch.activations import relu, sigmoid, tanh
from divekit.scratch.losses import huber_loss, l1_loss, l2_loss
from tests.oracle import assert_same, f64, randn


def residual_pairs(delta=1.0):
    """Predictions and targets whose residuals cover 0, +-delta exactly, and both Huber pieces."""
    target = randn(3, 7, seed=2)
    residual = 2.5 * delta * randn(3, 7, seed=3)
    residual[0, :3] = torch.tensor([0.0, delta, -delta])
    return target + residual, target


# --- losses ---------------------------------------------------------------------------------

REDUCTIONS = ["mean", "sum", "none"]


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_l2_loss_matches_mse_loss(reduction):
    assert_same(
        lambda p, t: l2_loss(p, t, reduction), lambda p, t: F.mse_loss(p, t, reduction=reduction),
        *residual_pairs(),
    )


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_l1_loss_matches_torch(reduction):
    assert_same(
        lambda p, t: l1_loss(p, t, reduction), lambda p, t: F.l1_loss(p, t, reduction=reduction),
        *residual_pairs(),
    )


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("delta", [0.5, 1.0, 2.0])
def test_huber_loss_matches_torch(delta, reduction):
    assert_same(
        lambda p, t: huber_loss(p, t, delta, reduction),
        lambda p, t: F.huber_loss(p, t, reduction=reduction, delta=delta),
        *residual_pairs(delta),
    )


@pytest.mark.parametrize("beta", [0.5, 1.0, 2.0])
def test_huber_over_delta_is_smooth_l1(beta):
    assert_same(
        lambda p, t: huber_loss(p, t, delta=beta) / beta,
        lambda p, t: F.smooth_l1_loss(p, t, beta=beta),
        *residual_pairs(beta),
    )


def test_losses_on_a_single_scalar_pair():
    pred, target = torch.tensor(3.0, dtype=f64), torch.tensor(0.5, dtype=f64)
    assert_same(l2_loss, F.mse_loss, pred, target)
    assert_same(l1_loss, F.l1_loss, pred, target)
    assert_same(huber_loss, F.huber_loss, pred, target)


@pytest.mark.parametrize("loss", [l2_loss, l1_loss, huber_loss])
def test_losses_reject_bad_arguments(loss):
    with pytest.raises(dk.DivekitError, match="shape"):
        loss(torch.zeros(4, 1), torch.zeros(4))
    with pytest.raises(dk.DivekitError, match="reduction"):
        loss(torch.zeros(4), torch.zeros(4), reduction="avg")


@pytest.mark.parametrize("delta", [0.0, -1.0, float("nan")])
def test_huber_rejects_non_positive_delta(delta):
    with pytest.raises(dk.DivekitError, match="delta"):
        huber_loss(torch.zeros(2), torch.ones(2), delta=delta)


# --- activations ---------------------------------------------------------------------------

EXTREMES = torch.tensor(
    [0.0, -0.0, 1e-8, -1e-8, 0.5, -0.5, 20.0, -20.0, 40.0, -40.0, 750.0, -750.0, 1000.0, -1000.0],
    dtype=f64,
)


@pytest.mark.parametrize(
    "scratch, oracle", [(relu, torch.relu), (sigmoid, torch.sigmoid), (tanh, torch.tanh)]
)
@pytest.mark.parametrize("inputs", ["random", "extremes", "3-d"])
def test_activation_matches_torch(scratch, oracle, inputs):
    X = {"random": 3 * randn(50), "extremes": EXTREMES, "3-d": randn(2, 3, 4)}[inputs]
    assert_same(scratch, oracle, X)


def test_sigmoid_and_tanh_saturate_cleanly_in_float32():
    X = torch.tensor([-1000.0, -100.0, 100.0, 1000.0], requires_grad=True)
    s, t = sigmoid(X), tanh(X)
    assert s[0].item() == 0.0 and s[-1].item() == 1.0
    assert t.tolist() == [-1.0, -1.0, 1.0, 1.0]
    torch.testing.assert_close(s, torch.sigmoid(X))
    grad, expected = (torch.autograd.grad(f(X).sum(), X)[0] for f in (sigmoid, torch.sigmoid))
    torch.testing.assert_close(grad, expected)
    (grad,) = torch.autograd.grad(t.sum(), X)
    assert grad.tolist() == [0.0, 0.0, 0.0, 0.0]


def test_activations_keep_float32():
    X = torch.randn(5)
    assert relu(X).dtype == sigmoid(X).dtype == tanh(X).dtype == torch.float32


def test_activations_are_written_from_scratch():
    source = inspect.getsource(activations)
    for builtin in ("relu", "sigmoid", "tanh"):
        assert f"torch.{builtin}(" not in source and f"F.{builtin}(" not in source
