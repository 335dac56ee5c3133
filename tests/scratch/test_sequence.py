"""Autoregressive modelling of a noisy sine (9.1): features, feeding predictions back, k steps."""

import math

import pytest
import torch

from divekit.errors import DivekitError
from divekit.scratch.mlp import MLPScratch
from divekit.scratch.sequence import (
    k_step_errors,
    k_step_predictions,
    lagged_features,
    multistep_predict,
    sine_series,
    train_autoregressive,
)

OMEGA = 0.01


def sine_recurrence(windows):
    """sin(w t) = 2 cos(w) sin(w (t-1)) - sin(w (t-2)): an exact linear recurrence of order 2."""
    return 2 * math.cos(OMEGA) * windows[:, -1] - windows[:, -2]


def clean_sine(T):
    return torch.sin(OMEGA * torch.arange(1, T + 1, dtype=torch.float64))


def random_mlp(tau, seed=0):
    torch.manual_seed(seed)
    return MLPScratch(tau, 8, 1, sigma=0.5, dtype=torch.float64)


def test_sine_series_is_the_course_series():
    x = sine_series(1000, 0.2, seed=0)
    assert x.shape == (1000,) and x.dtype == torch.float32
    assert torch.equal(x, sine_series(1000, 0.2, seed=0))
    assert not torch.equal(x, sine_series(1000, 0.2, seed=1))
    clean = torch.sin(0.01 * torch.arange(1, 1001, dtype=torch.float32))
    assert torch.equal(sine_series(1000, 0.0), clean)
    # The sample std of 1000 N(0, 0.04) draws has a standard error of 0.0045.
    assert 0.18 < (x - clean).std().item() < 0.22


@pytest.mark.parametrize("T, tau", [(10, 1), (10, 4), (10, 9), (1000, 4)])
def test_lagged_features_are_the_previous_tau_values(T, tau):
    x = torch.arange(T, dtype=torch.float64) ** 2
    features, labels = lagged_features(x, tau)
    assert features.shape == (T - tau, tau) and labels.shape == (T - tau,)
    for i in range(T - tau):
        assert features[i].tolist() == [float((i + j) ** 2) for j in range(tau)]
        assert labels[i].item() == float((i + tau) ** 2)


def test_multistep_prediction_reproduces_a_known_recurrence():
    x = clean_sine(1000)
    preds = multistep_predict(sine_recurrence, x, tau=4, start=4)
    assert (preds - x).abs().max() < 1e-10
    # With noise in the observed part only, predictions continue the recurrence from there.
    noisy = x + 0.1 * torch.randn(1000, dtype=torch.float64, generator=torch.Generator()
                                  .manual_seed(0))
    preds = multistep_predict(sine_recurrence, noisy, tau=4, start=604)
    assert torch.equal(preds[:604], noisy[:604])
    expected = noisy[:604].tolist()
    for _ in range(604, 1000):
        expected.append(2 * math.cos(OMEGA) * expected[-1] - expected[-2])
    assert torch.allclose(preds, torch.tensor(expected, dtype=torch.float64), rtol=1e-12,
                          atol=1e-12)


def test_k_step_predictions_equal_feeding_each_window_back_one_at_a_time():
    tau, ks = 3, (1, 2, 5)
    x = torch.randn(30, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    model = random_mlp(tau)
    preds = k_step_predictions(model, x, tau, ks)
    assert list(preds) == list(ks)
    num_windows = len(x) - tau - max(ks) + 1
    for k in ks:
        assert preds[k].shape == (num_windows,)
        for i in range(num_windows):
            # Observe x[i : i + tau] only, then predict k values; the last is the k-step one.
            expected = multistep_predict(model, x[i : i + tau + k], tau, start=tau)[-1]
            assert torch.allclose(preds[k][i], expected, rtol=1e-14, atol=1e-14)
    features, _ = lagged_features(x, tau)
    with torch.no_grad():
        one_step = model(features[:num_windows]).reshape(-1)
    assert torch.allclose(preds[1], one_step, rtol=1e-14, atol=1e-14)


def test_k_step_predictions_of_an_exact_model_have_no_error():
    x = clean_sine(300)
    errors = k_step_errors(x, k_step_predictions(sine_recurrence, x, 4, (1, 4, 16, 64)), 4)
    assert max(errors.values()) < 1e-20


def test_prediction_uses_eval_mode_and_restores_the_mode():
    model = MLPScratch(4, 16, 1, dropout=0.5)
    x = sine_series(100, 0.2, seed=0)
    first = k_step_predictions(model, x, 4, (1, 8))
    second = k_step_predictions(model, x, 4, (1, 8))
    assert all(torch.equal(first[k], second[k]) for k in (1, 8))
    assert torch.equal(multistep_predict(model, x, 4, 50), multistep_predict(model, x, 4, 50))
    assert model.training


def test_trained_model_predicts_one_step_at_the_noise_level_and_degrades_with_k(one_thread):
    x = sine_series(1000, 0.2, seed=0)
    model, losses = train_autoregressive(x, tau=4, num_train=600, epochs=5, seed=0)
    assert len(losses) == 5 and losses[-1] < 0.07
    features, labels = lagged_features(x, 4)
    with torch.no_grad():
        test_mse = ((model(features[600:]).reshape(-1) - labels[600:]) ** 2).mean().item()
    # The noise of the target (variance 0.04) cannot be predicted: that is the floor; 396 test
    # points put the noise's own sample MSE within 0.04 +- 0.0085 (3 standard errors).
    assert 0.03 < test_mse < 0.07
    errors = k_step_errors(x, k_step_predictions(model, x, 4, (1, 4, 16, 64)), 4)
    assert 0.03 < errors[1] < 0.07
    assert errors[1] < errors[4] < errors[16] < errors[64]
    assert errors[64] > 3 * errors[1]
    # Feeding predictions back from t = 604 on drifts away from the data as well.
    preds = multistep_predict(model, x, 4, start=604)
    assert ((preds[604:] - x[604:]) ** 2).mean() > 2 * test_mse


@pytest.mark.parametrize("call, message", [
    (lambda: lagged_features(torch.zeros(10), 0), "tau must be a positive integer"),
    (lambda: lagged_features(torch.zeros(2, 10), 2), "1-D tensor"),
    (lambda: lagged_features(torch.zeros(4), 4), "too short for tau=4"),
    (lambda: multistep_predict(sine_recurrence, torch.zeros(10), 4, 3), "start must be"),
    (lambda: k_step_predictions(sine_recurrence, torch.zeros(10), 4, ()), "at least one"),
    (lambda: k_step_predictions(sine_recurrence, torch.zeros(10), 4, (0,)), "every k in ks"),
    (lambda: k_step_predictions(sine_recurrence, torch.zeros(10), 4, (8,)), "at least 12"),
    (lambda: train_autoregressive(torch.zeros(100), num_train=97), "more than the 96"),
    (lambda: sine_series(100, -1.0), "noise"),
])
def test_bad_arguments_are_named(call, message):
    with pytest.raises(DivekitError, match=message):
        call()
