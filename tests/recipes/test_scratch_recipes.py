"""The scripted from-scratch and optimization recipes reach the course's results (CLI level)."""

import json

import pytest

from divekit.cli import main


def run(capsys, name, tmp_path):
    assert main(["recipe", "run", name, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    results = json.loads((tmp_path / "results.json").read_text())
    return results, out


def test_linear_regression_from_scratch(capsys, tmp_path):
    results, _ = run(capsys, "linear-regression-scratch", tmp_path)
    assert results["w_error_norm"] < 0.01 and results["b_error"] < 0.01
    assert results["loss_per_epoch"][-1] < results["loss_per_epoch"][0]


def test_weight_decay_shrinks_weights_and_test_loss(capsys, tmp_path):
    results, _ = run(capsys, "weight-decay-scratch", tmp_path)
    assert 11 < results["lambda_0_w_norm"] < 16  # the book prints 12.96-14.19
    assert results["lambda_3_w_norm"] < 0.5
    assert results["lambda_3_test_loss"] < results["lambda_0_test_loss"] / 100


def test_gradient_descent_paths_end_where_the_book_says(capsys, tmp_path):
    results, out = run(capsys, "gd-trajectories", tmp_path)
    assert results["gd, lr 0.4 end"] == pytest.approx([-0.943467, -0.000073], abs=1e-6)
    assert results["momentum, lr 0.6, beta 0.5 end"] == pytest.approx([0.007188, 0.002553],
                                                                       abs=1e-6)
    assert results["nonconvex gd, lr 2.0 end"] == pytest.approx(-1.528166, abs=1e-6)
    for png in ("trajectories.png", "nonconvex.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    assert "gd, lr 0.4 end: [-0.943467, -7.3e-05]" in out


def test_optimizer_comparison_plots_every_optimizer(capsys, tmp_path):
    results, _ = run(capsys, "optimizer-comparison", tmp_path)
    names = {"sgd", "momentum", "adagrad", "rmsprop", "adadelta", "adam", "yogi"}
    assert {key.removesuffix("_final_loss") for key in results} == names
    # Standardised targets start at mean squared error ~1; linear regression explains about half.
    assert all(0.4 < loss < 0.6 for loss in results.values())
    assert (tmp_path / "loss_vs_time.png").read_bytes()[:4] == b"\x89PNG"


def test_kfold_cross_validation_on_a_bundled_tabular_set(capsys, tmp_path):
    results, _ = run(capsys, "kfold-breast-cancer", tmp_path)
    assert len(results["valid_acc_per_fold"]) == 5
    assert results["mean_valid_acc"] >= 0.94


def test_scripted_recipes_refuse_training_flags(capsys, tmp_path):
    assert main(["recipe", "run", "weight-decay-scratch", "--lr", "0.1"]) == 2
    assert "takes only --out and --data-dir, not --lr" in capsys.readouterr().err
