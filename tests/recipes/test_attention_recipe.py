"""The Nadaraya-Watson recipe (course 11.2) fits both models and draws its three plots."""

import json

import divekit.recipes.attention  # noqa: F401  (registers the recipe)
from divekit.recipes import get_recipe


def test_nadaraya_watson_recipe_learns_a_narrower_better_kernel(tmp_path):
    results = get_recipe("nadaraya-watson").runner(tmp_path)
    json.dumps(results)  # the CLI writes it to results.json
    # Measured: leave-one-out train MSE 0.78 -> 0.45, test MSE (vs the noise-free curve)
    # 0.43 -> 0.13, w 16.2, summed loss 58.8 -> 22.7.
    assert results["learned_w"] > 5
    assert results["train_mse_parametric"] < 0.65 * results["train_mse_nonparametric"]
    assert results["test_mse_parametric"] < results["test_mse_nonparametric"]
    assert 0.2 < results["train_mse_parametric"] < 1.0  # noise variance is 0.25: no overfit
    losses = results["loss_per_epoch"]
    assert len(losses) == 5 and losses[-1] < 0.5 * losses[0]
    for png in ("predictions.png", "attention_nonparametric.png", "attention_parametric.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
