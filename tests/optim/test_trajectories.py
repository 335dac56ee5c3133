"""The course's 2-D optimization experiments and the optimizer comparison (chapter 12).

Expected end points are the values the course prints (d2l.ai, sections 12.3, 12.6-12.8),
all from the start ``(-5, -2)`` after 20 steps on ``f_2d = 0.1 x1^2 + 2 x2^2``.
"""

from __future__ import annotations

import math

import pytest
import torch

from divekit.errors import DivekitError
from divekit.optim.compare import compare_optimizers, diabetes_regression, plot_loss_vs_time
from divekit.optim.course import SGD, Adadelta, AdaGrad, Adam, Momentum, RMSProp, Yogi
from divekit.optim.trajectories import (
    f_2d,
    f_2d_grad,
    f_nonconvex,
    plot_trajectories,
    train_2d,
    trajectory,
)
from tests.optim.test_course_optimizers import ALL

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("factory, printed", [
    (lambda p: SGD(p, lr=0.4), (-0.943467, -0.000073)),
    (lambda p: SGD(p, lr=0.6), (-0.387814, -1673.365109)),
    (lambda p: Momentum(p, lr=0.6, beta=0.5), (0.007188, 0.002553)),
    (lambda p: Momentum(p, lr=0.6, beta=0.25), (-0.126340, -0.186632)),
    (lambda p: AdaGrad(p, lr=0.4, eps=1e-6), (-2.382563, -0.158591)),
    (lambda p: AdaGrad(p, lr=2.0, eps=1e-6), (-0.002295, -0.000000)),
    (lambda p: RMSProp(p, lr=0.4, gamma=0.9, eps=1e-6), (-0.010599, 0.000000)),
], ids=["gd-0.4", "gd-0.6", "momentum-0.5", "momentum-0.25", "adagrad-0.4", "adagrad-2",
        "rmsprop-0.4"])
def test_end_points_match_the_course_printout(factory, printed):
    path = trajectory(factory, f_2d, start=(-5.0, -2.0), steps=20)
    assert path.shape == (21, 2) and path.dtype == torch.float64
    assert path[0].tolist() == [-5.0, -2.0]
    # the course prints six decimals
    assert path[-1].tolist() == pytest.approx(printed, abs=5e-7)


def test_hand_written_update_rules_give_the_same_numbers():
    eta = 0.4

    def gd_2d(x1, x2, s1, s2):
        g1, g2 = f_2d_grad(x1, x2)
        return x1 - eta * g1, x2 - eta * g2, 0, 0

    points = train_2d(gd_2d, steps=20, start=(-5.0, -2.0))
    assert len(points) == 21 and points[0] == (-5.0, -2.0)
    assert points[-1] == pytest.approx((-0.943467, -0.000073), abs=1e-6)
    # the closed form: each coordinate shrinks by (1 - eta * curvature) per step
    assert points[-1] == pytest.approx((-5 * 0.92**20, -2 * (-0.6) ** 20), rel=1e-12)
    torch.testing.assert_close(
        torch.tensor(points, dtype=torch.float64),
        trajectory(lambda p: SGD(p, lr=eta), f_2d), rtol=1e-12, atol=1e-15,
    )


def test_momentum_rule_with_state_matches_the_optimizer():
    eta, beta = 0.6, 0.5

    def momentum_2d(x1, x2, v1, v2):
        g1, g2 = f_2d_grad(x1, x2)
        v1, v2 = beta * v1 + g1, beta * v2 + g2
        return x1 - eta * v1, x2 - eta * v2, v1, v2

    torch.testing.assert_close(
        torch.tensor(train_2d(momentum_2d), dtype=torch.float64),
        trajectory(lambda p: Momentum(p, lr=eta, beta=beta), f_2d), rtol=1e-12, atol=1e-15,
    )


def test_gradient_descent_on_f_2d_descends_for_small_lr_and_diverges_in_x2_for_lr_06():
    small = trajectory(lambda p: SGD(p, lr=0.1), f_2d, steps=30)
    values = f_2d(small[:, 0], small[:, 1])
    assert bool((values[1:] < values[:-1]).all())
    large = trajectory(lambda p: SGD(p, lr=0.6), f_2d, steps=20)
    # x2 is multiplied by 1 - 0.6 * 4 = -1.4 each step: it flips sign and grows
    assert bool((large[1:, 1].abs() > large[:-1, 1].abs()).all())
    assert bool((large[1:, 1] * large[:-1, 1] < 0).all())


def test_gradient_descent_on_the_nonconvex_example_stops_in_the_courses_local_minimum():
    path = trajectory(lambda p: SGD(p, lr=2.0), f_nonconvex, start=(10.0,), steps=10)
    assert path.shape == (11, 1)
    assert path[-1].item() == pytest.approx(-1.528166, abs=5e-7)  # the course's printout
    assert f_nonconvex(10.0) == pytest.approx(10 * math.cos(1.5 * math.pi))
    x = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(f_nonconvex(x), x)
    c = 0.15 * math.pi
    assert grad.item() == pytest.approx(math.cos(c * 0.5) - c * 0.5 * math.sin(c * 0.5))


@pytest.mark.parametrize("factory, bound", [
    (lambda p: Yogi(p, lr=0.1), 1e-9), (lambda p: Adam(p, lr=0.1), 1e-9),
    (lambda p: Adadelta(p), 1.0),  # starts with steps of about sqrt(eps): slow, but descends
], ids=["yogi", "adam", "adadelta"])
def test_adaptive_methods_converge_on_the_quadratic(factory, bound):
    path = trajectory(factory, f_2d, steps=300)
    assert f_2d(*path[0]).item() == pytest.approx(10.5)
    assert f_2d(*path[-1]).item() < bound


def test_trajectory_rejects_bad_arguments():
    with pytest.raises(DivekitError, match="steps"):
        trajectory(lambda p: SGD(p, lr=0.1), f_2d, steps=-1)
    with pytest.raises(DivekitError, match="start"):
        trajectory(lambda p: SGD(p, lr=0.1), f_2d, start=())
    with pytest.raises(DivekitError, match="steps"):
        train_2d(lambda *a: a, steps=2.5)


def test_plot_trajectories_writes_a_png(tmp_path):
    paths = {
        "gd": train_2d(lambda x1, x2, s1, s2: (0.92 * x1, -0.6 * x2, 0, 0)),
        "momentum": trajectory(lambda p: Momentum(p, lr=0.6, beta=0.5), f_2d),
    }
    out = plot_trajectories(f_2d, paths, tmp_path / "plots" / "traces.png")
    assert out == tmp_path / "plots" / "traces.png"
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    assert sorted(p.name for p in out.parent.iterdir()) == ["traces.png"]


def test_plot_trajectories_rejects_bad_shapes(tmp_path):
    with pytest.raises(DivekitError, match="shape"):
        plot_trajectories(f_2d, {"1-d": torch.zeros(5, 1)}, tmp_path / "x.png")
    with pytest.raises(DivekitError, match="at least one"):
        plot_trajectories(f_2d, {}, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


@pytest.fixture(scope="module")
def diabetes():
    return diabetes_regression(batch_size=10)


def test_diabetes_data_is_standardised_with_a_fixed_split(diabetes):
    X, y = diabetes.train
    assert X.shape == (354, 10) and y.shape == (354, 1) and diabetes.test[0].shape == (88, 10)
    assert diabetes.task == "regression"
    torch.testing.assert_close(X.mean(0), torch.zeros(10), atol=1e-5, rtol=0)
    torch.testing.assert_close(X.std(0), torch.ones(10), atol=1e-5, rtol=0)
    again = diabetes_regression(batch_size=10)
    assert torch.equal(again.train[0], X) and torch.equal(again.test[1], diabetes.test[1])


def test_compare_optimizers_records_decreasing_loss_on_a_monotone_clock(diabetes, tmp_path):
    X, y = diabetes.train
    design = torch.cat([X, torch.ones(len(X), 1)], 1).double()
    solution = torch.linalg.lstsq(design, y.double()).solution
    best = ((design @ solution - y.double()) ** 2).mean().item()

    results = compare_optimizers(ALL, diabetes, epochs=2, batch_size=10)
    assert list(results) == list(ALL)
    starts = {points[0] for points in results.values()}
    assert len(starts) == 1  # the same seeded initial weights for every optimizer
    for name, points in results.items():
        # 2 epochs of 36 batches, a point every 20 batches and at the end, plus the start
        assert len(points) == 1 + 3 + 1, name
        seconds = [s for s, _ in points]
        assert seconds[0] == 0.0
        assert all(b > a for a, b in zip(seconds, seconds[1:], strict=False)), name
        initial, final = points[0][1], points[-1][1]
        # most of the gap to the least-squares optimum is closed
        assert final - best < 0.1 * (initial - best), name

    out = plot_loss_vs_time(results, tmp_path / "loss.png")
    assert out.read_bytes()[:8] == PNG_SIGNATURE


def test_compare_optimizers_accepts_tensors_and_rejects_bad_arguments(diabetes):
    X, y = diabetes.train
    results = compare_optimizers({"sgd": ALL["sgd"]}, (X, y.flatten()), epochs=1,
                                 batch_size=50, record_every=100)
    assert len(results["sgd"]) == 1 + 4  # start, batches 2, 4, 6, and the last (8)
    with pytest.raises(DivekitError, match="at least one"):
        compare_optimizers({}, diabetes)
    with pytest.raises(DivekitError, match="batch_size"):
        compare_optimizers(ALL, diabetes, batch_size=0)
    with pytest.raises(DivekitError, match="shape"):
        compare_optimizers(ALL, (X[:, 0], y))
    with pytest.raises(DivekitError, match="non-empty"):
        plot_loss_vs_time({"sgd": []}, "unused.png")
