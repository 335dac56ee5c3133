import pytest
import torch
import torch.nn.functional as F
from torch import nn

import divekit as dk
from divekit.scratch.dropout import dropout
from divekit.scratch.linear import linreg, sgd_step, squared_loss
from divekit.scratch.mlp import MLPScratch, l2_penalty
from tests.oracle import f64, randn


def sequential_copy(model: MLPScratch) -> nn.Sequential:
    """The same network built from torch.nn, with the scratch weights copied in."""
    layers: list[nn.Module] = [nn.Flatten()]
    for W, b, p in zip(model.weights[:-1], model.biases[:-1], model.dropout, strict=True):
        layers += [linear_copy(W, b), nn.ReLU(), nn.Dropout(p)]
    layers.append(linear_copy(model.weights[-1], model.biases[-1]))
    return nn.Sequential(*layers)


def linear_copy(W: torch.Tensor, b: torch.Tensor) -> nn.Linear:
    linear = nn.Linear(*W.shape, dtype=W.dtype)
    with torch.no_grad():
        linear.weight.copy_(W.T)  # nn.Linear stores (fan_out, fan_in)
        linear.bias.copy_(b)
    return linear


# --- MLPScratch ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "hiddens, rates, batch",
    [(5, 0.0, 3), ((6, 4), 0.0, 3), ((6, 4), (0.2, 0.5), 3), (7, 0.3, 1), ((), 0.0, 2)],
)
def test_mlp_matches_nn_sequential(hiddens, rates, batch):
    torch.manual_seed(0)
    model = MLPScratch(8, hiddens, 3, dropout=rates, sigma=0.5, dtype=f64)
    with torch.no_grad():
        for b in model.biases:
            b.copy_(0.1 * torch.randn(b.shape))
    reference = sequential_copy(model)
    if rates:  # dropout is random in training mode; compare the deterministic eval networks
        model.eval()
        reference.eval()
    X = randn(batch, 2, 2, 2).requires_grad_()
    out, expected = model(X), reference(X)
    torch.testing.assert_close(out, expected)

    upstream = randn(*out.shape, seed=1)
    grads = torch.autograd.grad((out * upstream).sum(), [X, *model.parameters()])
    expected_grads = torch.autograd.grad((expected * upstream).sum(), [X, *reference.parameters()])
    torch.testing.assert_close(grads[0], expected_grads[0])
    for i, (grad, expected_grad) in enumerate(zip(grads[1:], expected_grads[1:], strict=True)):
        torch.testing.assert_close(grad, expected_grad.T if i % 2 == 0 else expected_grad)


def test_mlp_parameters_and_initialisation():
    torch.manual_seed(0)
    model = MLPScratch(784, (256, 64), 10)
    params = list(model.parameters())
    shapes = [(784, 256), (256,), (256, 64), (64,), (64, 10), (10,)]
    assert [tuple(p.shape) for p in params] == shapes
    assert all(p.is_leaf and p.requires_grad and p.dtype == torch.float32 for p in params)
    assert not any(b.any() for b in model.biases)
    # 200k draws: the sample std of N(0, 0.01^2) is within 2% of 0.01 (over 10 sigma).
    assert abs(model.weights[0].std().item() - 0.01) < 0.0002
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_mlp_drops_after_each_hidden_layer_only_in_training():
    torch.manual_seed(0)
    model = MLPScratch(6, (5, 4), 2, dropout=(0.5, 0.25), sigma=1.0, dtype=f64)
    X = randn(16, 6)
    assert model.training
    torch.manual_seed(7)
    out = model(X)
    # Same masks (same seed, same draws in the same order) applied by hand with torch.nn ops.
    torch.manual_seed(7)
    (W1, W2, W3), (b1, b2, b3) = model.weights, model.biases
    H = dropout(F.relu(F.linear(X, W1.T, b1)), 0.5)
    H = dropout(F.relu(F.linear(H, W2.T, b2)), 0.25)
    torch.testing.assert_close(out, F.linear(H, W3.T, b3))

    assert model.eval() is model and not model.training
    evaluated = model(X)
    torch.testing.assert_close(evaluated, sequential_copy(model).eval()(X))
    assert not torch.allclose(out, evaluated)
    assert model.train() is model and model.training


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_hiddens": (4, 4), "dropout": (0.1,)}, "1 dropout rates for 2 hidden layers"),
        ({"num_hiddens": 4, "dropout": 1.5}, r"\[0, 1\]"),
        ({"num_hiddens": (4, 0)}, "positive integers"),
    ],
)
def test_mlp_rejects_bad_configuration(kwargs, message):
    with pytest.raises(dk.DivekitError, match=message):
        MLPScratch(3, num_outputs=2, **kwargs)


def test_mlp_rejects_inputs_of_the_wrong_size():
    with pytest.raises(dk.DivekitError, match="expected 8 features"):
        MLPScratch(8, 4, 2)(torch.zeros(2, 9))


# --- weight decay ----------------------------------------------------------------------------


def test_l2_penalty_is_half_the_squared_norm_with_gradient_w():
    w = randn(4, 3).requires_grad_()
    penalty = l2_penalty(w)
    torch.testing.assert_close(penalty, torch.linalg.vector_norm(w) ** 2 / 2)
    (grad,) = torch.autograd.grad(penalty, w)
    torch.testing.assert_close(grad, w.detach())


def test_penalised_sgd_step_equals_torch_weight_decay():
    lambd, lr = 3.0, 0.1
    X, y = randn(10, 4), randn(10, 1, seed=1)
    w0, b0 = randn(4, 1, seed=2), randn(1, seed=3)

    w, b = w0.clone().requires_grad_(), b0.clone().requires_grad_()
    # The course adds the penalty to every example's loss, so the batch mean carries it once.
    (squared_loss(linreg(X, w, b), y) + lambd * l2_penalty(w)).sum().backward()
    sgd_step([w, b], lr, batch_size=len(X))

    w_ref, b_ref = w0.clone().requires_grad_(), b0.clone().requires_grad_()
    # The course decays only w, so the bias goes in a group without weight decay.
    optimizer = torch.optim.SGD(
        [{"params": [w_ref], "weight_decay": lambd}, {"params": [b_ref]}], lr=lr
    )
    (F.mse_loss(F.linear(X, w_ref.T, b_ref), y) / 2).backward()
    optimizer.step()

    torch.testing.assert_close(w.detach(), w_ref.detach())
    torch.testing.assert_close(b.detach(), b_ref.detach())


def test_penalised_mlp_step_equals_torch_weight_decay():
    lambd, lr = 0.5, 0.2
    torch.manual_seed(0)
    model = MLPScratch(5, (6, 4), 3, sigma=0.5, dtype=f64)
    reference = sequential_copy(model)
    X, labels = randn(7, 5), torch.tensor([0, 1, 2, 2, 1, 0, 1])

    loss = F.cross_entropy(model(X), labels, reduction="sum")
    (loss + len(X) * lambd * sum(l2_penalty(W) for W in model.weights)).backward()
    sgd_step(model.parameters(), lr, batch_size=len(X))

    linears = [m for m in reference if isinstance(m, nn.Linear)]
    optimizer = torch.optim.SGD(
        [
            {"params": [m.weight for m in linears], "weight_decay": lambd},
            {"params": [m.bias for m in linears]},
        ],
        lr=lr,
    )
    F.cross_entropy(reference(X), labels).backward()
    optimizer.step()

    for W, b, linear in zip(model.weights, model.biases, linears, strict=True):
        torch.testing.assert_close(W.detach(), linear.weight.detach().T)
        torch.testing.assert_close(b.detach(), linear.bias.detach())


# --- dropout ---------------------------------------------------------------------------------


def test_dropout_is_the_identity_in_eval_and_for_p_zero():
    X = randn(3, 4)
    assert torch.equal(dropout(X, 0.5, training=False), X)
    assert torch.equal(dropout(X, 0.0), X)


def test_dropout_with_p_one_returns_zeros():
    X = randn(3, 4)
    out = dropout(X, 1.0)
    assert torch.equal(out, torch.zeros_like(X)) and out.dtype == f64


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan")])
@pytest.mark.parametrize("training", [True, False])
def test_dropout_rejects_bad_probabilities(p, training):
    with pytest.raises(dk.DivekitError, match="dropout probability"):
        dropout(torch.ones(3), p, training=training)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_scales_kept_elements_and_their_gradient(p):
    X = (randn(20, 50) + 3).requires_grad_()  # no element is 0, so zeros mark dropped ones
    out = dropout(X, p, generator=torch.Generator().manual_seed(0))
    kept = out != 0
    assert 0 < kept.sum() < kept.numel()
    assert torch.equal(out[kept], X[kept] / (1 - p))
    (grad,) = torch.autograd.grad(out.sum(), X)
    # The oracle: the same mask applied as a multiplication.
    (expected,) = torch.autograd.grad((X * kept.to(f64) / (1 - p)).sum(), X)
    torch.testing.assert_close(grad, expected)


def test_dropout_generator_makes_it_reproducible():
    X = torch.ones(100)
    first = dropout(X, 0.5, generator=torch.Generator().manual_seed(3))
    second = dropout(X, 0.5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first, second)


def test_dropout_statistics():
    X = torch.ones(1_000_000)
    out = dropout(X, 0.3, generator=torch.Generator().manual_seed(0))
    # Standard deviations: sqrt(0.3 * 0.7 / 1e6) = 0.00046 for the fraction of zeros and
    # sqrt(0.3 / 0.7 / 1e6) = 0.00065 for the mean, so both bounds are over 10 sigma wide.
    assert abs((out == 0).double().mean().item() - 0.3) < 0.005
    assert abs(out.double().mean().item() - 1.0) < 0.01
