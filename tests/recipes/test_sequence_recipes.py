"""The sequence recipes (9.1 autoregression, 9.3 n-gram models) run end to end from the CLI."""

import json

import divekit.recipes.sequence  # noqa: F401  (registers the recipes)
from divekit.cli import main
from tests.conftest import real_data_dir


def run(capsys, name, tmp_path, *flags):
    assert main(["recipe", "run", name, "--out", str(tmp_path), *flags]) == 0
    capsys.readouterr()
    return json.loads((tmp_path / "results.json").read_text())


def test_sine_autoregression_errors_grow_with_the_horizon(capsys, tmp_path, one_thread):
    results = run(capsys, "sine-autoregression", tmp_path)
    assert len(results["train_mse_per_epoch"]) == 5
    assert 0.03 < results["one_step_test_mse"] < 0.07  # the noise variance 0.04 is the floor
    errors = [results[f"{k}_step_mse"] for k in (1, 4, 16, 64)]
    assert errors == sorted(errors) and errors[-1] > 3 * errors[0]
    assert results["multistep_mse_after_604"] > 2 * results["one_step_test_mse"]
    assert (tmp_path / "k_step_predictions.png").read_bytes()[:4] == b"\x89PNG"


def test_ngram_perplexities_on_the_time_machine(capsys, tmp_path, monkeypatch):
    data_dir = str(real_data_dir("timemachine"))
    monkeypatch.setenv("DIVEKIT_DATA", str(tmp_path / "empty"))  # --data-dir must win
    results = run(capsys, "ngram-timemachine", tmp_path, "--data-dir", data_dir)
    assert results["vocab_size"] == 28
    assert results["train_tokens"] + results["held_out_tokens"] == 173_428
    for smoothing in ("add-1", "interpolated"):
        ppl = [results[f"{smoothing} {order} perplexity"] for order in
               ("unigram", "bigram", "trigram")]
        assert 15 < ppl[0] < 20 and ppl[1] < ppl[0] - 5 and ppl[2] < ppl[1] - 2
    # Add-1 spreads ever more mass over unseen 5-grams; interpolation backs off and keeps gaining.
    assert results["add-1 5-gram perplexity"] > results["add-1 4-gram perplexity"]
    assert results["interpolated 5-gram perplexity"] < results["interpolated 4-gram perplexity"]
    assert results["trigram greedy"].startswith("time traveller ")
    assert len(results["trigram sampled"]) == len("time traveller ") + 40
    assert (tmp_path / "perplexity.png").read_bytes()[:4] == b"\x89PNG"
