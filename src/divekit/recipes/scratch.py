"""Recipes for the from-scratch chapters (3-5, 8.5) and the optimization chapter (12)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from divekit.data import DataModule
from divekit.data.synthetic import TRUE_B, TRUE_W, synthetic_regression
from divekit.engine import Trainer
from divekit.optim import course
from divekit.optim.compare import compare_optimizers, diabetes_regression, plot_loss_vs_time
from divekit.optim.trajectories import (
    f_2d,
    f_nonconvex,
    plot_path_1d,
    plot_trajectories,
    trajectory,
)
from divekit.recipes import Recipe, add_recipe, training_run
from divekit.recipes.kfold import cross_validate, load_tabular
from divekit.scratch.linear import train_linear_regression
from divekit.scratch.weight_decay import train_with_weight_decay


def _run(model: str, lr: float) -> dict:
    """The course's Fashion-MNIST setting: batch 256, 10 epochs of SGD."""
    return training_run(model, "fashion-mnist", 256, max_epochs=10, lr=lr)


def linear_regression_scratch(out_dir: Path) -> dict[str, Any]:
    X, y = synthetic_regression(torch.tensor(TRUE_W), TRUE_B, 1000, noise=0.01, seed=0)
    w, b, losses = train_linear_regression(X, y, lr=0.03, batch_size=10, epochs=3)
    return {"w": w.flatten().tolist(), "b": b.item(), "loss_per_epoch": losses,
            "w_error_norm": (w.flatten() - torch.tensor(TRUE_W)).norm().item(),
            "b_error": abs(b.item() - TRUE_B)}


def high_dimensional_data(
    num_train: int = 20, num_test: int = 100, num_inputs: int = 200, seed: int = 0
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """The course's weight-decay data: ``y = 0.05 + sum_i 0.01 x_i + noise``, sigma 0.01.

    Returns:
        ``(X_train, y_train), (X_test, y_test)`` with X of shape ``(n, num_inputs)``.
    """
    X, y = synthetic_regression(torch.full((num_inputs,), 0.01), 0.05, num_train + num_test,
                                noise=0.01, seed=seed)
    return (X[:num_train], y[:num_train]), (X[num_train:], y[num_train:])


def weight_decay_scratch(out_dir: Path) -> dict[str, Any]:
    train, test = high_dimensional_data(seed=0)
    results = {}
    for lambd in (0, 3):
        run = train_with_weight_decay(train, test, lambd, seed=1)
        results[f"lambda_{lambd}_w_norm"] = run["w_norm"]
        results[f"lambda_{lambd}_test_loss"] = run["test_loss"]
    return results


COMPARED = {
    "sgd": lambda p: course.SGD(p, lr=0.01),
    "momentum": lambda p: course.Momentum(p, lr=0.01, beta=0.9),
    "adagrad": lambda p: course.AdaGrad(p, lr=0.1),
    "rmsprop": lambda p: course.RMSProp(p, lr=0.01, gamma=0.9),
    "adadelta": lambda p: course.Adadelta(p, rho=0.9),
    "adam": lambda p: course.Adam(p, lr=0.01),
    "yogi": lambda p: course.Yogi(p, lr=0.01),
}


def optimizer_comparison(out_dir: Path) -> dict[str, Any]:
    curves = compare_optimizers(COMPARED, diabetes_regression(10), epochs=2, batch_size=10,
                                record_every=40)
    plot_loss_vs_time(curves, out_dir / "loss_vs_time.png")
    return {f"{name}_final_loss": points[-1][1] for name, points in curves.items()}


PATHS = {
    "gd, lr 0.4": lambda p: course.SGD(p, lr=0.4),
    "momentum, lr 0.6, beta 0.5": lambda p: course.Momentum(p, lr=0.6, beta=0.5),
    "adagrad, lr 0.4": lambda p: course.AdaGrad(p, lr=0.4),
    "rmsprop, lr 0.4, gamma 0.9": lambda p: course.RMSProp(p, lr=0.4, gamma=0.9),
    "adam, lr 0.4": lambda p: course.Adam(p, lr=0.4),
}


def gd_trajectories(out_dir: Path) -> dict[str, Any]:
    paths = {name: trajectory(factory, f_2d, steps=20) for name, factory in PATHS.items()}
    plot_trajectories(f_2d, paths, out_dir / "trajectories.png")
    results = {f"{name} end": [round(v, 6) for v in points[-1].tolist()]
               for name, points in paths.items()}
    # The non-convex example: a large step jumps past the nearby minimum into a worse one.
    nonconvex = {f"gd, lr {lr}": trajectory(lambda p, lr=lr: course.SGD(p, lr=lr), f_nonconvex,
                                            start=(10.0,), steps=10) for lr in (0.3, 2.0)}
    plot_path_1d(f_nonconvex, nonconvex, out_dir / "nonconvex.png")
    results |= {f"nonconvex {name} end": round(points[-1].item(), 6)
                for name, points in nonconvex.items()}
    return results


def kfold_breast_cancer(out_dir: Path) -> dict[str, Any]:
    data = load_tabular("breast-cancer", batch_size=32)

    def logistic_regression(fold: DataModule) -> torch.nn.Module:
        return torch.nn.Linear(data.input_shape[0], 2)

    result = cross_validate(logistic_regression, data, k=5,
                            trainer_factory=lambda: Trainer(max_epochs=5, lr=0.1, progress=False))
    return {"valid_acc_per_fold": [fold["valid_acc"] for fold in result["folds"]],
            "mean_valid_acc": result["mean"]["valid_acc"],
            "mean_valid_loss": result["mean"]["valid_loss"]}


add_recipe(Recipe(
    "linear-regression-scratch", "3.4 Linear Regression Implementation from Scratch",
    "Hand-written linear regression and minibatch SGD on 1,000 synthetic examples, 3 epochs",
    runner=linear_regression_scratch,
    book="w error ~1e-4, b error ~6e-4", target="||w - w_true|| < 0.01, |b - b_true| < 0.01",
))
add_recipe(Recipe(
    "softmax-scratch-fashion-mnist", "4.4 Softmax Regression Implementation from Scratch",
    "Softmax regression on raw tensors, log-sum-exp cross-entropy, SGD lr 0.1, 10 epochs",
    _run("softmax-regression-scratch", 0.1), book="test acc 0.828 / 0.836",
    target="test acc >= 0.82",
))
add_recipe(Recipe(
    "mlp-scratch-fashion-mnist", "5.2 Implementation of Multilayer Perceptrons",
    "784-256-10 MLP on explicit weight matrices, SGD lr 0.1, 10 epochs",
    _run("mlp-scratch", 0.1), book="test acc 0.823 / 0.837", target="test acc >= 0.83",
))
add_recipe(Recipe(
    "mlp-dropout-scratch-fashion-mnist", "5.6 Dropout",
    "784-256-256-10 MLP with hand-written dropout 0.2 / 0.5, SGD lr 0.5, 10 epochs",
    _run("mlp-dropout-scratch", 0.5), book="test acc 0.857 / 0.836", target="test acc >= 0.84",
))
add_recipe(Recipe(
    "lenet-bn-scratch-fashion-mnist", "8.5 Batch Normalization",
    "BN-LeNet with the hand-written batch norm, SGD lr 1.0, batch 256, 10 epochs",
    _run("lenet-bn-scratch", 1.0), book="test acc 0.807 / 0.838", target="test acc >= 0.85",
))
add_recipe(Recipe(
    "weight-decay-scratch", "3.7 Weight Decay",
    "20 examples, 200 features: the L2 penalty at lambda 0 and 3 (batch 5, lr 0.003, 100 epochs)",
    runner=weight_decay_scratch,
    book="||w|| 12.96-14.19 at lambda 0, 0.35-0.44 at lambda 3; test loss ~73-98 vs ~0.08-0.09",
    target="||w|| ~13 at lambda 0 falls below 0.5 at lambda 3; test loss falls",
))
add_recipe(Recipe(
    "optimizer-comparison", "12.4-12.10 Optimization Algorithms",
    "The course's optimizers on one linear regression (scikit-learn's diabetes data): loss vs time",
    runner=optimizer_comparison, target="every optimizer lowers the loss; loss_vs_time.png",
))
add_recipe(Recipe(
    "gd-trajectories", "12.3-12.10 Optimization Algorithms",
    "Paths of GD, momentum, AdaGrad, RMSProp, Adam on 0.1 x1^2 + 2 x2^2; GD on x cos(0.15 pi x)",
    runner=gd_trajectories,
    book="gd, lr 0.4 ends at x1 -0.943467, x2 -0.000073; non-convex gd, lr 2 ends at -1.528166",
    target="the book's end points; trajectories.png and nonconvex.png",
))
add_recipe(Recipe(
    "kfold-breast-cancer", "3.6.3 / 5.7 K-fold cross-validation",
    "5-fold cross-validation of logistic regression on scikit-learn's bundled breast-cancer set",
    runner=kfold_breast_cancer, target="mean validation accuracy >= 0.94",
))
