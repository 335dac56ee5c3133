"""Recipes for the sequence chapter: autoregression on a noisy sine (9.1), n-gram models (9.3)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from divekit.data import load_data
from divekit.engine.plots import save_png
from divekit.recipes import Recipe, add_recipe
from divekit.scratch.sequence import (
    k_step_errors,
    k_step_predictions,
    lagged_features,
    multistep_predict,
    sine_series,
    train_autoregressive,
)
from divekit.text.ngram import NGramLM

TAU, NUM_TRAIN, KS = 4, 600, (1, 4, 16, 64)
ORDERS = {1: "unigram", 2: "bigram", 3: "trigram", 4: "4-gram", 5: "5-gram"}
SMOOTHINGS = {"add-1": {"smoothing": "add-k", "k": 1.0},
              "interpolated": {"smoothing": "interpolated", "eps": 1.0}}


def plot_k_step(
    x: torch.Tensor, preds: dict[int, torch.Tensor], tau: int, path: str | os.PathLike
) -> Path:
    """Draw the series with each k-step prediction (left) and their MSE against ``k`` (right).

    Args:
        x: the series, shape ``(T,)``.
        preds: the result of :func:`divekit.scratch.sequence.k_step_predictions` with the
            same ``tau``.
        tau: window length.
        path: the PNG to write.

    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    time = torch.arange(1, len(x) + 1)
    fig, (series_axis, error_axis) = plt.subplots(1, 2, figsize=(11, 3.6))
    series_axis.plot(time, x, color="lightgray", label="data")
    for k, pred in preds.items():
        series_axis.plot(time[tau + k - 1 : tau + k - 1 + len(pred)], pred, label=f"{k}-step")
    series_axis.set_xlabel("time")
    series_axis.set_ylabel("x")
    series_axis.legend(loc="lower left", fontsize="small")
    errors = k_step_errors(x, preds, tau)
    error_axis.plot(list(errors), list(errors.values()), marker="o")
    error_axis.set_xscale("log", base=2)
    error_axis.set_yscale("log")
    error_axis.set_xlabel("k (steps ahead)")
    error_axis.set_ylabel("mean squared error")
    error_axis.grid(alpha=0.3)
    fig.tight_layout()
    return save_png(fig, Path(path))


def sine_autoregression(out_dir: Path) -> dict[str, Any]:
    x = sine_series(1000, noise=0.2, seed=0)
    model, losses = train_autoregressive(x, tau=TAU, num_train=NUM_TRAIN, seed=0)
    features, labels = lagged_features(x, TAU)
    with torch.no_grad():
        one_step = ((model(features[NUM_TRAIN:]).reshape(-1) - labels[NUM_TRAIN:]) ** 2).mean()
    start = NUM_TRAIN + TAU
    multistep = multistep_predict(model, x, TAU, start)
    preds = k_step_predictions(model, x, TAU, KS)
    plot_k_step(x, preds, TAU, out_dir / "k_step_predictions.png")
    results = {"train_mse_per_epoch": losses, "one_step_test_mse": one_step.item(),
               "multistep_mse_after_604": ((multistep[start:] - x[start:]) ** 2).mean().item()}
    return results | {f"{k}_step_mse": mse for k, mse in k_step_errors(x, preds, TAU).items()}


def _plot_perplexities(perplexities: dict[str, list[float]], vocab_size: int,
                       path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(5.5, 3.6))
    for label, values in perplexities.items():
        axis.plot(list(ORDERS), values, marker="o", label=label)
    axis.axhline(vocab_size, color="gray", linestyle="--", label="uniform")
    axis.set_xticks(list(ORDERS), list(ORDERS.values()))
    axis.set_ylabel("held-out perplexity")
    axis.legend()
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


def ngram_timemachine(out_dir: Path) -> dict[str, Any]:
    data = load_data("timemachine", level="char", num_steps=1, val_fraction=0.1)
    # With one-token windows, X[:, 0] is the held-out stream (the last 10%) but for its last token.
    X, Y = data.test
    held_out = torch.cat([X[:, 0], Y[-1:, 0]])
    results: dict[str, Any] = {"vocab_size": len(data.vocab), "train_tokens": len(data.corpus),
                               "held_out_tokens": len(held_out)}
    curves = {}
    for label, options in SMOOTHINGS.items():
        curves[label] = []
        for n, order in ORDERS.items():
            model = NGramLM(n, **options).fit(data.corpus, data.vocab)
            curves[label].append(model.perplexity(held_out))
            results[f"{label} {order} perplexity"] = curves[label][-1]
    _plot_perplexities(curves, len(data.vocab), out_dir / "perplexity.png")
    trigram = NGramLM(3, **SMOOTHINGS["interpolated"]).fit(data.corpus, data.vocab)
    prefix = "time traveller "
    results["trigram greedy"] = "".join(trigram.generate(prefix, 40))
    results["trigram sampled"] = "".join(trigram.generate(prefix, 40, "sample", seed=0))
    return results


add_recipe(Recipe(
    "sine-autoregression", "9.1 Working with Sequences",
    "4-10-1 MLP on the last 4 values of sin(0.01 t) + N(0, 0.2^2), first 600 windows, Adam lr "
    "0.01, batch 16, 5 epochs; one-step, multi-step and 1/4/16/64-step-ahead predictions",
    runner=sine_autoregression,
    book="1- and 4-step predictions follow the data, 16- and 64-step ones decay (plot only)",
    target="one-step test MSE < 0.07 (the noise variance 0.04 is the floor); MSE grows with k",
))
add_recipe(Recipe(
    "ngram-timemachine", "9.3 Language Models",
    "Character n-gram models (n = 1..5, add-1 and interpolated smoothing) of The Time Machine; "
    "perplexity on the last 10% of the text",
    runner=ngram_timemachine,
    target="held-out perplexity falls from unigram to bigram to trigram",
))
