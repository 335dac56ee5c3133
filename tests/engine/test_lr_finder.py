"""The learning-rate range test: its rates, smoothing, stopping, rules, plot, and above all
that it leaves model, Trainer and random generators exactly as they were."""

import copy
import math
import random
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import divekit as dk
from divekit.data import DataModule
from divekit.engine import autotune
from divekit.engine.lr_finder import LRFinderResult, lr_find, suggest_steep, suggest_valley
from divekit.errors import DivekitError

NOISY_KEYS = ("train_time", "examples_per_s")  # wall-clock measurements, never equal


def toy_data(num_examples: int = 256, batch_size: int = 32) -> DataModule:
    """Two linearly separable classes in 10 dimensions: 8 training batches of 32."""
    generator = torch.Generator().manual_seed(7)
    inputs = torch.randn(num_examples, 10, generator=generator)
    labels = (inputs[:, 0] + inputs[:, 1] > 0).long()
    return DataModule("toy", train=(inputs, labels), test=(inputs, labels),
                      batch_size=batch_size, class_names=["neg", "pos"])


class CallCounter(nn.Module):
    """Counts forward calls in a buffer left out of the state dict."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros(()), persistent=False)

    def forward(self, x):
        self.calls += 1
        return x


def mlp(dropout: float = 0.2) -> nn.Sequential:
    """An MLP with batch norm (running stats, a batch counter) and dropout (random masks)."""
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(10, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(dropout),
                         CallCounter(), nn.Linear(16, 2))


def trainer(**settings) -> dk.Trainer:
    settings.setdefault("progress", False)
    settings.setdefault("device", "cpu")
    return dk.Trainer(**settings)


def geometric(min_lr: float, max_lr: float, num_steps: int) -> np.ndarray:
    return np.exp(np.linspace(math.log(min_lr), math.log(max_lr), num_steps))


def test_rates_are_geometric_from_min_to_max(one_thread):
    result = lr_find(trainer(), mlp(), toy_data(), min_lr=1e-4, max_lr=1.0, num_steps=20)
    assert not result.stopped_early and len(result.lrs) == len(result.losses) == 20
    assert result.lrs == pytest.approx(geometric(1e-4, 1.0, 20), rel=1e-12)
    assert result.lrs[0] == pytest.approx(1e-4) and result.lrs[-1] == pytest.approx(1.0)


def test_smoothed_is_the_bias_corrected_moving_average(one_thread):
    result = lr_find(trainer(), mlp(), toy_data(), num_steps=25, beta=0.9)
    average, expected = 0.0, []
    for i, loss in enumerate(result.losses):
        average = 0.9 * average + 0.1 * loss
        expected.append(average / (1 - 0.9 ** (i + 1)))
    assert result.smoothed == pytest.approx(expected, rel=1e-12)
    assert result.smoothed[0] == pytest.approx(result.losses[0])  # the correction's point
    unsmoothed = lr_find(trainer(), mlp(), toy_data(), num_steps=10, beta=0.0)
    assert unsmoothed.smoothed == pytest.approx(unsmoothed.losses, rel=1e-12)


@pytest.mark.parametrize("grad_clip", [None, 0.05])
def test_losses_are_those_of_plain_sgd_steps_at_the_recorded_rates(one_thread, grad_clip):
    # Oracle: a hand-written PyTorch loop over the same batches (no dropout: no masks to match).
    data = toy_data()
    result = lr_find(trainer(momentum=0.9, weight_decay=1e-3, grad_clip=grad_clip),
                     mlp(dropout=0.0), data, min_lr=1e-3, max_lr=1.0, num_steps=12)
    model = mlp(dropout=0.0).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.9, weight_decay=1e-3)
    loader = data.train_dataloader()
    batches = [batch for epoch in (0, 1) for batch in _epoch(loader, epoch)]  # 8 a pass
    expected = []
    for lr, (inputs, labels) in zip(geometric(1e-3, 1.0, 12), batches, strict=False):
        optimizer.param_groups[0]["lr"] = lr
        loss = F.cross_entropy(model(inputs), labels)
        expected.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        if grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
    assert result.losses == pytest.approx(expected, rel=1e-5)


def _epoch(loader, epoch):
    loader.set_epoch(epoch)
    return list(loader)


def test_the_search_is_reproducible_whatever_the_global_generators(one_thread):
    # Seeded from Trainer(seed=...) like fit: the dropout masks do not depend on earlier draws.
    torch.manual_seed(5)
    first = lr_find(trainer(seed=3), mlp(), toy_data(), num_steps=20)
    torch.manual_seed(99)
    torch.rand(10)
    second = lr_find(trainer(seed=3), mlp(), toy_data(), num_steps=20)
    assert first.losses == second.losses
    other_seed = lr_find(trainer(seed=4), mlp(), toy_data(), num_steps=20)
    assert other_seed.losses != first.losses


def test_stops_when_the_smoothed_loss_diverges(one_thread):
    result = lr_find(trainer(), mlp(), toy_data(), min_lr=1e-3, max_lr=1e3, num_steps=200,
                     beta=0.5)
    assert result.stopped_early and len(result.lrs) < 200
    assert result.lrs == pytest.approx(geometric(1e-3, 1e3, 200)[: len(result.lrs)], rel=1e-12)
    last, before = result.smoothed[-1], result.smoothed[:-1]
    assert not math.isfinite(last) or last > 4 * min(before)
    # ... and it did not stop at an earlier point that already met the rule.
    for i in range(5, len(before)):
        assert before[i] <= 4 * min(before[:i])
    assert "on divergence" in result.summary()


def test_a_full_range_is_not_stopped_early(one_thread):
    result = lr_find(trainer(), mlp(), toy_data(), min_lr=1e-6, max_lr=1e-4, num_steps=15)
    assert not result.stopped_early and len(result.lrs) == 15
    assert "15 steps, up to lr 0.0001 without diverging" in result.summary()


def test_model_generators_and_trainer_are_restored_bitwise(one_thread):
    model = mlp()
    model[0].bias.requires_grad_(False)
    model.train()
    model[1].eval()  # a mixed state: one module held in evaluation mode
    model[5].weight.grad = torch.full_like(model[5].weight, 0.25)  # a pending gradient
    with torch.no_grad():
        model[4].calls.fill_(3)
    states = {name: value.clone() for name, value in model.state_dict().items()}
    parameters = list(model.parameters())
    flags = [p.requires_grad for p in parameters]
    modes = [m.training for m in model.modules()]
    random.seed(11)
    np.random.seed(12)
    torch.manual_seed(13)
    torch_rng, numpy_rng, python_rng = torch.get_rng_state(), np.random.get_state(), \
        random.getstate()
    t = trainer(lr=0.3, momentum=0.9)
    attributes = dict(vars(t))

    result = lr_find(t, model, toy_data(), num_steps=30)

    assert len(result.lrs) > 5  # it trained: BN statistics and weights did move meanwhile
    after = model.state_dict()
    assert list(after) == list(states)
    for name, value in states.items():
        assert after[name].dtype == value.dtype and torch.equal(after[name], value), name
    assert model[1].num_batches_tracked.item() == 0
    assert model[4].calls.item() == 3  # the non-persistent buffer too
    assert all(a is b for a, b in zip(model.parameters(), parameters, strict=True))
    assert [p.requires_grad for p in parameters] == flags
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(model[5].weight.grad, torch.full_like(model[5].weight, 0.25))
    assert all(p.grad is None for p in parameters if p is not model[5].weight)
    assert torch.equal(torch.get_rng_state(), torch_rng)
    after_numpy = np.random.get_state()
    assert after_numpy[0] == numpy_rng[0] and np.array_equal(after_numpy[1], numpy_rng[1])
    assert after_numpy[2:] == numpy_rng[2:]
    assert random.getstate() == python_rng
    assert vars(t).keys() == attributes.keys()
    assert all(vars(t)[key] is value for key, value in attributes.items())


def test_restored_when_the_search_fails(one_thread):
    class FailsOnThirdCall(nn.Module):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            if self.calls == 3:
                raise RuntimeError("boom")
            return x

    model = nn.Sequential(mlp(), FailsOnThirdCall())
    states = {name: value.clone() for name, value in model.state_dict().items()}
    torch_rng = torch.get_rng_state()
    t = trainer()
    with pytest.raises(RuntimeError, match="boom"):
        lr_find(t, model, toy_data(), num_steps=10)
    assert all(torch.equal(model.state_dict()[name], value) for name, value in states.items())
    assert torch.equal(torch.get_rng_state(), torch_rng)
    assert not hasattr(t, "model") and t.task is None


SETTINGS = [
    {"optimizer": "sgd", "lr": 0.1},
    {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3},
    {"optimizer": "adam", "lr": 0.01, "grad_clip": 0.5},
    {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "lr_mult": {"5.*": 10},
     "accumulate": 2},
]


@pytest.mark.parametrize("settings", SETTINGS, ids=["sgd", "momentum", "adam", "lr_mult"])
def test_fit_after_the_search_equals_fit_without_it(one_thread, settings):
    data = toy_data()
    model_a, model_b = mlp(), mlp()
    history_a = trainer(max_epochs=2, **settings).fit(model_a, data)

    t = trainer(max_epochs=2, **settings)
    result = lr_find(t, model_b, data, num_steps=40)
    assert len(result.lrs) > 10  # it did train model_b
    history_b = t.fit(model_b, data)

    assert len(history_a) == len(history_b) == 2
    for row_a, row_b in zip(history_a, history_b, strict=True):
        assert {k: v for k, v in row_a.items() if k not in NOISY_KEYS} == \
            {k: v for k, v in row_b.items() if k not in NOISY_KEYS}
    for name, value in model_a.state_dict().items():
        assert torch.equal(value, model_b.state_dict()[name]), name


def test_a_trainer_that_already_fitted_keeps_its_run(one_thread):
    data = toy_data()
    t = trainer(max_epochs=1)
    model = mlp()
    history = t.fit(model, data)
    optimizer, task = t.optimizer, t.task
    lr_find(t, mlp(), data, num_steps=10)
    assert t.model is model and t.history is history
    assert t.optimizer is optimizer and t.task is task


def test_parameter_groups_keep_their_ratio_and_accumulate_is_honoured(one_thread, monkeypatch):
    t = trainer(lr=0.5, lr_mult={"5.*": 10}, accumulate=3)
    seen_lrs = []
    build = t._build_optimizer

    def spying_build():
        optimizer = build()
        step = optimizer.step

        def recording_step(*args, **kwargs):
            seen_lrs.append([group["lr"] for group in optimizer.param_groups])
            return step(*args, **kwargs)

        optimizer.step = recording_step
        return optimizer

    monkeypatch.setattr(t, "_build_optimizer", spying_build)
    calls = []
    model = mlp()
    model.register_forward_hook(lambda module, inputs, output: calls.append(len(inputs[0])))
    result = lr_find(t, model, toy_data(), min_lr=1e-5, max_lr=1e-2, num_steps=6)
    expected = geometric(1e-5, 1e-2, 6)
    assert [body for body, _ in seen_lrs] == pytest.approx(expected, rel=1e-12)
    assert [head for _, head in seen_lrs] == pytest.approx(10 * expected, rel=1e-12)
    assert result.lrs == pytest.approx(expected, rel=1e-12)
    assert calls == [32] * 18  # three batches of 32 per step, across the second pass


def curve() -> tuple[np.ndarray, list[float]]:
    """60 rates, one every 0.1 decade: a plateau at 2.0 (points 0-19), a straight descent in
    log rate to 0.5 (points 20-44), then a sharp rise (45-59)."""
    lrs = 10.0 ** np.linspace(-5, 0.9, 60)
    losses = [2.0] * 20 + [2.0 - 1.5 * (i - 19) / 25 for i in range(20, 45)] + \
        [0.5 + 0.5 * (i - 44) for i in range(45, 60)]
    return lrs, losses


def test_valley_rule_by_hand():
    lrs, losses = curve()
    # The longest strictly decreasing run: the last plateau point (19) down to the bottom (44),
    # 25 steps; two thirds of the way is 19 + round(16.67) = point 36.
    assert suggest_valley(lrs, losses) == lrs[36]
    assert losses[36] < (losses[19] + losses[44]) / 2  # in the valley's lower part
    # A bump in the descent does not split the valley, and a NaN tail is ignored.
    bumped = list(losses)
    bumped[30] = bumped[28]
    pick = suggest_valley([*lrs, 10.0], [*bumped, math.nan])
    assert pick in lrs[30:45] and bumped[list(lrs).index(pick)] < 1.25


def test_steep_rule_picks_the_descent():
    lrs, losses = curve()
    pick = suggest_steep(lrs, losses)
    assert pick in lrs[20:45]
    # A smooth descent steepest at 1e-2 exactly: the rule finds it to the grid's spacing.
    x = np.linspace(-5, 0.9, 60)
    smooth = 1.5 - np.tanh(2 * (x + 2)) + 10 * np.clip(x + 0.5, 0, None) ** 2
    assert abs(math.log10(suggest_steep(10.0 ** x, list(smooth))) + 2) <= 0.06


def test_rules_give_none_for_short_or_rising_curves():
    lrs = list(10.0 ** np.linspace(-5, 0, 40))
    assert suggest_valley(lrs[:5], [3, 2, 1, 0.5, 0.4]) is None
    assert suggest_steep(lrs[:12], list(np.linspace(3, 1, 12))) is None
    rising = list(np.linspace(1, 3, 40))
    assert suggest_valley(lrs, rising) is None and suggest_steep(lrs, rising) is None
    with pytest.raises(DivekitError, match="one loss per rate"):
        suggest_valley(lrs, rising[:-1])


def test_too_few_points_say_why(one_thread):
    result = lr_find(trainer(), mlp(), toy_data(), num_steps=4)
    assert result.suggestion is None and len(result.lrs) == 4
    assert "no suggestion (valley rule): only 4 finite points" in result.summary()


def test_suggested_rate_trains_a_logistic_regression_well(one_thread):
    data = toy_data()

    def logistic():
        torch.manual_seed(3)
        return nn.Linear(10, 2)

    result = lr_find(trainer(), logistic(), data, min_lr=1e-5, max_lr=100.0, num_steps=100)
    assert result.suggestion is not None and 1e-5 < result.suggestion < 100
    inputs, labels = data.train

    def loss_after_one_epoch(lr):
        model = logistic()
        trainer(max_epochs=1, lr=lr).fit(model, data)
        with torch.no_grad():
            return F.cross_entropy(model(inputs), labels).item()

    with torch.no_grad():
        start = F.cross_entropy(logistic()(inputs), labels).item()
    suggested, tiny = loss_after_one_epoch(result.suggestion), loss_after_one_epoch(1e-6)
    assert math.isfinite(suggested) and suggested < tiny < start + 1e-3
    assert suggested < 0.8 * start


def test_plot_writes_a_png(one_thread, tmp_path):
    result = lr_find(trainer(), mlp(), toy_data(), num_steps=30, max_lr=1e3)
    path = result.plot(tmp_path / "plots" / "lr.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    empty = LRFinderResult([1e-3, 1e-2], [1.0, math.inf], [1.0, math.inf], None, "steep", True,
                           "only 1 finite points, the rule needs 18")
    assert empty.plot(tmp_path / "none.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("options, message", [
    ({"num_steps": 1}, "num_steps"), ({"num_steps": 1001}, "num_steps"),
    ({"num_steps": 10.0}, "num_steps"), ({"num_steps": True}, "num_steps"),
    ({"min_lr": 0.0}, "min_lr"), ({"min_lr": 1.0, "max_lr": 1.0}, "min_lr < max_lr"),
    ({"max_lr": math.inf}, "max_lr"), ({"min_lr": "1e-3"}, "min_lr must be a number"),
    ({"beta": 1.0}, "beta"), ({"beta": -0.1}, "beta"),
    ({"diverge": 1.0}, "diverge"), ({"diverge": math.nan}, "diverge"),
    ({"rule": "fastest"}, "rule"),
])
def test_bad_options_are_divekit_errors(options, message):
    model = mlp()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(DivekitError, match=message):
        lr_find(trainer(), model, toy_data(), **options)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_data_without_batches_is_a_divekit_error(one_thread):
    empty = types.SimpleNamespace(task="classification", num_classes=2,
                                  train_dataloader=lambda: [])
    with pytest.raises(DivekitError, match="no batches"):
        lr_find(trainer(), mlp(), empty, num_steps=5)


def device_rng_states(device: str) -> list[torch.Tensor]:
    return torch.cuda.get_rng_state_all() if device == "cuda" else [torch.get_rng_state()]


@pytest.mark.parametrize("device", [
    "cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs CUDA")])])
def test_fp16_search_restores_the_generator_and_the_following_fit(device, one_thread):
    data = toy_data()
    settings = {"device": device, "amp": "fp16", "lr": 0.1, "momentum": 0.9, "max_epochs": 2}
    model_a, model_b = mlp(), mlp()
    history_a = trainer(**settings).fit(model_a, data)
    rng = device_rng_states(device)
    t = trainer(**settings)
    result = lr_find(t, model_b, data, num_steps=40)
    assert len(result.lrs) > 10 and all(math.isfinite(v) for v in result.losses[:10])
    assert all(torch.equal(a, b) for a, b in zip(device_rng_states(device), rng, strict=True))
    history_b = t.fit(model_b, data)
    for row_a, row_b in zip(history_a, history_b, strict=True):
        assert {k: v for k, v in row_a.items() if k not in NOISY_KEYS} == \
            {k: v for k, v in row_b.items() if k not in NOISY_KEYS}
    for name, value in model_a.state_dict().items():
        assert torch.equal(value, model_b.state_dict()[name]), name


def test_auto_precision_is_measured_and_used_by_the_search(one_thread, monkeypatch, tmp_path):
    monkeypatch.setenv("DIVEKIT_CACHE", str(tmp_path))
    calls = []

    def probe(model, batch, task, device, options, **kwargs):  # bf16 measured 2x faster
        calls.append(options)
        return autotune.choose({options[0]: 1.0, ("bf16", False): 0.5})

    monkeypatch.setattr(autotune, "probe", probe)
    search = trainer(amp="auto")
    auto = lr_find(search, mlp(), toy_data(), num_steps=20)
    assert len(calls) == 1 and search.amp == "off"  # the Trainer's attributes restored
    bf16 = lr_find(trainer(amp="bf16"), mlp(), toy_data(), num_steps=20)
    fp32 = lr_find(trainer(), mlp(), toy_data(), num_steps=20)
    assert auto.losses == bf16.losses != fp32.losses
    lr_find(trainer(compile="auto"), mlp(), toy_data(), num_steps=20)
    assert len(calls) == 1  # the search runs uncompiled: nothing to measure


def test_trainer_method_and_command_line(one_thread, tmp_path, capsys):
    search = trainer(lr=0.1, momentum=0.9)
    direct = lr_find(trainer(lr=0.1, momentum=0.9), mlp(), toy_data(), num_steps=40)
    assert search.lr_find(mlp(), toy_data(), num_steps=40).losses == direct.losses

    from divekit.cli import main

    plot = tmp_path / "lr.png"
    assert main(["lr-find", "lenet-bn", "--data", "digits", "--batch-size", "32",
                 "--momentum", "0.9", "--steps", "60", "--plot", str(plot)]) == 0
    printed = capsys.readouterr().out
    suggested = float(printed.split("suggested lr ")[1].split()[0])
    assert 1e-7 < suggested < 10 and plot.read_bytes()[:4] == b"\x89PNG"
    assert main(["lr-find", "lenet-bn", "--data", "digits", "--out", str(tmp_path)]) == 2
    assert "--plot PNG" in capsys.readouterr().err
