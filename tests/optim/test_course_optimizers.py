"""The course's optimizers (chapter 12) against torch.optim and reference formulas, on float64."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import divekit as dk
from divekit.errors import DivekitError
from divekit.optim.compare import diabetes_regression
from divekit.optim.course import SGD, Adadelta, AdaGrad, Adam, Momentum, RMSProp, Yogi

STEPS = 10


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Linear(4, 3, dtype=torch.float64)


def batches(seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Ten different regression batches; the scale shrinks so that ``g^2 < s`` happens too."""
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(5, 4, generator=generator, dtype=torch.float64),
         (3.0 / (k + 1)) * torch.randn(5, 3, generator=generator, dtype=torch.float64))
        for k in range(STEPS)
    ]


def backward(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> None:
    model.zero_grad()
    ((model(X) - y) ** 2).mean().backward()


def assert_same_params(a: nn.Module, b: nn.Module, rtol: float = 1e-12) -> None:
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=rtol, atol=1e-14)


def run_side_by_side(ours, theirs, rtol: float = 1e-12) -> None:
    """Step both optimizers on identical copies and compare the parameters after every step."""
    model_a = make_model()
    model_b = copy.deepcopy(model_a)
    opt_a, opt_b = ours(model_a.parameters()), theirs(model_b.parameters())
    for X, y in batches():
        for model, opt in ((model_a, opt_a), (model_b, opt_b)):
            backward(model, X, y)
            opt.step()
        assert_same_params(model_a, model_b, rtol)


TORCH_PAIRS = {
    "sgd": (lambda p: SGD(p, lr=0.1), lambda p: torch.optim.SGD(p, lr=0.1)),
    "sgd-wd": (lambda p: SGD(p, lr=0.1, weight_decay=0.05),
               lambda p: torch.optim.SGD(p, lr=0.1, weight_decay=0.05)),
    "momentum": (lambda p: Momentum(p, lr=0.05, beta=0.9),
                 lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)),
    "momentum-wd": (lambda p: Momentum(p, lr=0.05, beta=0.5, weight_decay=0.05),
                    lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.5, weight_decay=0.05)),
    "adagrad": (lambda p: AdaGrad(p, lr=0.1, eps=1e-2, eps_inside_sqrt=False),
                lambda p: torch.optim.Adagrad(p, lr=0.1, eps=1e-2)),
    "adagrad-wd": (lambda p: AdaGrad(p, lr=0.1, eps=1e-10, weight_decay=0.05,
                                     eps_inside_sqrt=False),
                   lambda p: torch.optim.Adagrad(p, lr=0.1, eps=1e-10, weight_decay=0.05)),
    "rmsprop": (lambda p: RMSProp(p, lr=0.01, gamma=0.9, eps=1e-2, eps_inside_sqrt=False),
                lambda p: torch.optim.RMSprop(p, lr=0.01, alpha=0.9, eps=1e-2)),
    "rmsprop-wd": (lambda p: RMSProp(p, lr=0.01, gamma=0.99, eps=1e-8, weight_decay=0.05,
                                     eps_inside_sqrt=False),
                   lambda p: torch.optim.RMSprop(p, lr=0.01, alpha=0.99, eps=1e-8,
                                                 weight_decay=0.05)),
    "adadelta": (lambda p: Adadelta(p), lambda p: torch.optim.Adadelta(p, rho=0.9, eps=1e-5)),
    "adadelta-lr-wd": (lambda p: Adadelta(p, lr=0.5, rho=0.95, eps=1e-6, weight_decay=0.05),
                       lambda p: torch.optim.Adadelta(p, lr=0.5, rho=0.95, eps=1e-6,
                                                      weight_decay=0.05)),
    "adam": (lambda p: Adam(p, lr=0.01), lambda p: torch.optim.Adam(p, lr=0.01, eps=1e-6)),
    "adam-wd": (lambda p: Adam(p, lr=0.05, betas=(0.8, 0.99), eps=1e-8, weight_decay=0.05),
                lambda p: torch.optim.Adam(p, lr=0.05, betas=(0.8, 0.99), eps=1e-8,
                                           weight_decay=0.05)),
}


@pytest.mark.parametrize("name", TORCH_PAIRS)
def test_matches_torch_optim_step_by_step(name):
    run_side_by_side(*TORCH_PAIRS[name], rtol=1e-10 if name.startswith("adam") else 1e-12)


class CourseAdaGrad:
    """The course's ``s += g^2; x -= lr * g / sqrt(s + eps)`` on a list of tensors."""

    def __init__(self, params, lr, eps):
        self.params, self.lr, self.eps = list(params), lr, eps
        self.s = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def step(self):
        for p, s in zip(self.params, self.s, strict=True):
            s += p.grad**2
            p -= self.lr * p.grad / torch.sqrt(s + self.eps)


class CourseRMSProp(CourseAdaGrad):
    """The course's ``s = gamma s + (1 - gamma) g^2; x -= lr * g / sqrt(s + eps)``."""

    def __init__(self, params, lr, gamma, eps):
        super().__init__(params, lr, eps)
        self.gamma = gamma

    @torch.no_grad()
    def step(self):
        for p, s in zip(self.params, self.s, strict=True):
            s[:] = self.gamma * s + (1 - self.gamma) * p.grad**2
            p -= self.lr * p.grad / torch.sqrt(s + self.eps)


@pytest.mark.parametrize("ours, reference, torch_form", [
    (lambda p: AdaGrad(p, lr=0.1, eps=1e-2), lambda p: CourseAdaGrad(p, lr=0.1, eps=1e-2),
     lambda p: AdaGrad(p, lr=0.1, eps=1e-2, eps_inside_sqrt=False)),
    (lambda p: RMSProp(p, lr=0.01, gamma=0.9, eps=1e-2),
     lambda p: CourseRMSProp(p, lr=0.01, gamma=0.9, eps=1e-2),
     lambda p: RMSProp(p, lr=0.01, gamma=0.9, eps=1e-2, eps_inside_sqrt=False)),
], ids=["adagrad", "rmsprop"])
def test_course_eps_placement_is_the_default_and_differs_from_torch(ours, reference, torch_form):
    run_side_by_side(ours, reference)
    model_a, model_b = make_model(), make_model()
    opt_a, opt_b = ours(model_a.parameters()), torch_form(model_b.parameters())
    for X, y in batches()[:3]:
        for model, opt in ((model_a, opt_a), (model_b, opt_b)):
            backward(model, X, y)
            opt.step()
    # eps = 1e-2 is large enough that sqrt(s + eps) and sqrt(s) + eps visibly disagree
    gap = max((p - q).abs().max().item()
              for p, q in zip(model_a.parameters(), model_b.parameters(), strict=True))
    assert gap > 1e-4


def naive_yogi(values: list[list[float]], grads: list[list[float]], state: dict, lr: float,
               beta1: float, beta2: float, eps: float, weight_decay: float) -> None:
    """Yogi element by element in plain Python floats (Zaheer et al. 2018, course form)."""
    state["t"] = state.get("t", 0) + 1
    t = state["t"]
    for k, (x, g) in enumerate(zip(values, grads, strict=True)):
        v = state.setdefault(("v", k), [0.0] * len(x))
        s = state.setdefault(("s", k), [0.0] * len(x))
        for i in range(len(x)):
            gi = g[i] + weight_decay * x[i]
            v[i] = beta1 * v[i] + (1 - beta1) * gi
            diff = gi * gi - s[i]
            sign = (diff > 0) - (diff < 0)
            state["shrinks"] = state.get("shrinks", 0) + (sign < 0)
            s[i] = s[i] + (1 - beta2) * gi * gi * sign
            v_hat, s_hat = v[i] / (1 - beta1**t), s[i] / (1 - beta2**t)
            x[i] -= lr * v_hat / (math.sqrt(s_hat) + eps)


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_yogi_matches_a_naive_per_element_loop(weight_decay):
    lr, betas, eps = 0.05, (0.9, 0.9), 1e-3  # beta2 = 0.9 makes s react within ten steps
    model = make_model()
    optimizer = Yogi(model.parameters(), lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    values = [p.detach().flatten().tolist() for p in model.parameters()]
    state: dict = {}
    for X, y in batches():
        backward(model, X, y)
        grads = [p.grad.flatten().tolist() for p in model.parameters()]
        optimizer.step()
        naive_yogi(values, grads, state, lr, *betas, eps, weight_decay)
        for p, expected in zip(model.parameters(), values, strict=True):
            torch.testing.assert_close(p.detach().flatten(),
                                       torch.tensor(expected, dtype=torch.float64),
                                       rtol=1e-12, atol=1e-14)
    # the sign(g^2 - s) = -1 branch, where Yogi and Adam part ways, was exercised
    assert state["shrinks"] > 0


def test_yogi_differs_from_adam_once_gradients_shrink():
    model_a, model_b = make_model(), make_model()
    yogi = Yogi(model_a.parameters(), lr=0.05, betas=(0.9, 0.9))
    adam = Adam(model_b.parameters(), lr=0.05, betas=(0.9, 0.9), eps=1e-3)
    for X, y in batches():
        for model, opt in ((model_a, yogi), (model_b, adam)):
            backward(model, X, y)
            opt.step()
    gap = max((p - q).abs().max().item()
              for p, q in zip(model_a.parameters(), model_b.parameters(), strict=True))
    assert gap > 1e-4


ALL = {
    "sgd": lambda p: SGD(p, lr=0.05),
    "momentum": lambda p: Momentum(p, lr=0.02, beta=0.5),
    "adagrad": lambda p: AdaGrad(p, lr=0.1),
    "rmsprop": lambda p: RMSProp(p, lr=0.01),
    "adadelta": lambda p: Adadelta(p),
    "adam": lambda p: Adam(p, lr=0.01),
    "yogi": lambda p: Yogi(p, lr=0.01),
}


@pytest.fixture(scope="module")
def diabetes():
    return diabetes_regression(32)


@pytest.mark.parametrize("name", ALL)
def test_trains_linear_regression_on_diabetes_with_the_trainer(name, diabetes):
    torch.manual_seed(0)
    model = nn.Linear(10, 1)
    trainer = dk.Trainer(max_epochs=2, optimizer=ALL[name], progress=False)
    before = trainer.evaluate(model, diabetes.test_dataloader(), task="regression")["test_loss"]
    history = trainer.fit(model, diabetes)
    # the untrained model's test loss is 1.63; the least-squares fit's is about 0.5
    assert history[-1]["test_loss"] < 0.6 * before
    assert history[-1]["train_loss"] < history[0]["train_loss"]


@pytest.mark.parametrize("name", ALL)
def test_state_dict_round_trip_resumes_exactly(name):
    model_a = make_model()
    opt_a = ALL[name](model_a.parameters())
    data = batches()
    for X, y in data[:4]:
        backward(model_a, X, y)
        opt_a.step()
    model_b = copy.deepcopy(model_a)
    opt_b = ALL[name](model_b.parameters())
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))
    for X, y in data[4:]:
        for model, opt in ((model_a, opt_a), (model_b, opt_b)):
            backward(model, X, y)
            opt.step()
    assert_same_params(model_a, model_b, rtol=0)


def test_skips_parameters_without_gradient_and_returns_closure_loss():
    model = make_model()
    frozen = nn.Parameter(torch.ones(3, dtype=torch.float64))
    optimizer = Adam([*model.parameters(), frozen], lr=0.1)
    X, y = batches()[0]

    def closure():
        backward(model, X, y)
        return ((model(X) - y) ** 2).mean()

    loss = optimizer.step(closure)
    assert loss.item() > 0
    torch.testing.assert_close(frozen.detach(), torch.ones(3, dtype=torch.float64))
    assert frozen not in optimizer.state


def test_sparse_gradients_are_refused():
    embedding = nn.Embedding(5, 2, sparse=True)
    embedding(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(DivekitError, match="sparse"):
        AdaGrad(embedding.parameters()).step()


@pytest.mark.parametrize("build, message", [
    (lambda p: SGD(p, lr=0.0), "lr"),
    (lambda p: SGD(p, lr=0.1, weight_decay=-1.0), "weight_decay"),
    (lambda p: Momentum(p, lr=0.1, beta=1.0), "beta"),
    (lambda p: AdaGrad(p, eps=0.0), "eps"),
    (lambda p: RMSProp(p, gamma=-0.1), "gamma"),
    (lambda p: Adadelta(p, rho=1.5), "rho"),
    (lambda p: Adam(p, betas=(0.9, 1.0)), "beta2"),
    (lambda p: Yogi(p, betas=(1.0, 0.999)), "beta1"),
])
def test_bad_hyperparameters_raise(build, message):
    with pytest.raises(DivekitError, match=message):
        build(make_model().parameters())
