"""Learning tests: each recipe reaches its stated result on real (or embedded) data."""

import dataclasses

import pytest
import torch

from divekit import experiment
from divekit.data.synthetic import TRUE_B, TRUE_W
from divekit.recipes import get_recipe
from tests.conftest import real_data_dir


def run_recipe(name, tmp_path, **trainer_overrides):
    config = get_recipe(name).run_config()
    config.trainer = dataclasses.replace(config.trainer, **trainer_overrides)
    if config.data in ("fashion-mnist", "mnist"):
        config.data_dir = str(real_data_dir(config.data))
    return experiment.train(config, tmp_path, progress=False)


def test_embedded_demo_reaches_95_percent(tmp_path):
    _, test = run_recipe("digits-lenet", tmp_path)
    assert test["test_acc"] >= 0.95


def test_linear_regression_recovers_the_true_parameters(tmp_path):
    run_recipe("linear-regression-synthetic", tmp_path)
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert (state["weight"].flatten() - torch.tensor(TRUE_W)).norm() < 0.01
    assert abs(state["bias"].item() - TRUE_B) < 0.01


@pytest.mark.slow
@pytest.mark.parametrize(
    ("recipe", "target"),
    [("softmax-fashion-mnist", 0.82),
     ("mlp-fashion-mnist", 0.82),
     ("mlp-dropout-fashion-mnist", 0.83),
     ("lenet-fashion-mnist", 0.76),
     ("fashion-mnist-fast", 0.91),
     ("softmax-scratch-fashion-mnist", 0.82),
     ("mlp-scratch-fashion-mnist", 0.83),
     ("mlp-dropout-scratch-fashion-mnist", 0.84)],
)
def test_fashion_mnist_recipe_reaches_its_target(recipe, target, tmp_path):
    history, test = run_recipe(recipe, tmp_path)
    assert test["test_acc"] >= target, history


@pytest.mark.slow
def test_batch_norm_lenets_learn_in_two_epochs_and_the_hand_written_one_as_pytorchs(tmp_path):
    # 2 of their 10 epochs at the recipes' constant rate (measured 0.823 for both); the whole
    # runs' targets (>= 0.80, >= 0.85) are checked by benchmarks/recipes.py.
    accuracy = {}
    for recipe in ("lenet-bn-fashion-mnist", "lenet-bn-scratch-fashion-mnist"):
        history, test = run_recipe(recipe, tmp_path / recipe, max_epochs=2)
        assert test["test_acc"] >= 0.78, (recipe, history)
        accuracy[recipe] = test["test_acc"]
    assert abs(accuracy["lenet-bn-fashion-mnist"]
               - accuracy["lenet-bn-scratch-fashion-mnist"]) < 0.01, accuracy


@pytest.mark.slow
def test_speed_run_recipe_learns_on_a_quarter_of_its_budget(tmp_path):
    # 3 of its 12 epochs; the whole run (>= 0.93 within 2 minutes) is timed in
    # benchmarks/recipes.py. Its mirror augmentation and mirror test-time augmentation on.
    history, test = run_recipe("fashion-mnist-2min", tmp_path, max_epochs=3)
    assert test["test_acc"] >= 0.91, history
