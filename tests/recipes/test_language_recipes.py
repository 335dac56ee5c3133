"""The language-model recipes: d2l 1.0's settings (9.6, 10.1-10.3) and a tuned CPU recipe."""

import json
import re

import pytest

import divekit.data.text  # noqa: F401  (registers the timemachine dataset)
import divekit.models.rnn  # noqa: F401  (registers the language models)
import divekit.recipes.language  # noqa: F401  (registers the recipes)
from divekit import experiment
from divekit.cli import main
from divekit.data import load_data
from divekit.recipes import get_recipe
from tests.conftest import real_data_dir

# name -> (model, layers, lr, epochs, the book's val ppl with the nn layer, d2l-en 1.0.3)
BOOK = {
    "rnn-lm-timemachine-book": ("rnn-lm", 1, 1.0, 100, 7.19),
    "gru-lm-timemachine-book": ("gru-lm", 1, 4.0, 50, 6.55),
    "lstm-lm-timemachine-book": ("lstm-lm", 1, 4.0, 50, 6.69),
    "deep-gru-lm-timemachine-book": ("deep-gru-lm", 2, 2.0, 100, 6.11),
}
OURS = {"ema": 0.95}  # every book recipe evaluates this weight average; the deeper GRU also
DEEP_GRU_DECAY = {"weight_decay": 3e-4}  # ... has SGD weight decay against overfitting


def data_dir() -> str:
    return str(real_data_dir("timemachine"))


@pytest.mark.parametrize("name", BOOK)
def test_book_recipes_have_the_books_settings(name):
    model, layers, lr, epochs, target = BOOK[name]
    recipe = get_recipe(name)
    config = recipe.run_config()
    assert config.model == model and config.data == "timemachine"
    assert config.model_options == {"hidden_size": 32, "num_layers": layers}
    assert config.data_options == {"num_steps": 32, "stride": 1, "num_train": 10000,
                                   "num_val": 5000}
    assert config.batch_size == 1024 and config.val_size == 0
    ours = {**OURS, **(DEEP_GRU_DECAY if layers == 2 else {"weight_decay": 0.0})}
    settings = {"optimizer": "sgd", "lr": lr, "grad_clip": 1.0, "max_epochs": epochs, **ours}
    assert {key: getattr(config.trainer, key) for key in settings} == settings
    assert set(config.changes()["trainer"]) <= set(settings)
    assert recipe.target.startswith("val ppl <= ") and f"val ppl {target}" in recipe.book


def test_book_data_and_model_are_the_books(one_thread):
    config = get_recipe("deep-gru-lm-timemachine-book").run_config()
    data, model = experiment.build(config, data_dir())
    assert len(data.train[0]) == 10000 and len(data.val[0]) == 5000
    assert len(data.train_dataloader()) == 10  # 9 batches of 1024 and one of 784
    # One-hot characters into two GRU layers of 32 units, a linear layer out.
    assert model.embedding is None and model.rnn.input_size == data.num_classes == 28
    assert (model.rnn.hidden_size, model.rnn.num_layers) == (32, 2)
    assert model.output.out_features == 28


def test_a_book_recipe_runs_from_the_cli(tmp_path, capsys, one_thread):
    out = tmp_path / "run"
    assert main(["recipe", "run", "rnn-lm-timemachine-book", "--epochs", "1", "--data-dir",
                 data_dir(), "--out", str(out), "--quiet"]) == 0
    assert "test" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["data_options"]["num_train"] == 10000
    (metrics,) = json.loads((out / "metrics.json").read_text())
    assert metrics["val_ppl"] < 28  # one epoch already beats guessing uniformly
    assert json.loads((out / "test_metrics.json").read_text())["test_ppl"] < 28


def test_the_tuned_recipe_holds_out_the_last_tenth_of_the_book():
    config = get_recipe("timemachine-char-fast").run_config()
    assert config.data == "timemachine" and config.val_size == 0
    data = load_data("timemachine", data_dir=data_dir(), **config.data_options)
    text = (real_data_dir("timemachine") / "timemachine" / "timemachine.txt").read_text()
    chars = re.sub("[^A-Za-z]+", " ", text).lower()
    cut = len(chars) - round(0.1 * len(chars))
    assert data.val is None and "".join(data.vocab.to_tokens(data.corpus)) == chars[:cut]
    held_out = "".join(data.vocab.to_tokens(data.test[0].reshape(-1)))
    assert held_out == chars[cut : cut + len(held_out)]
    assert len(chars) - cut - len(held_out) < config.data_options["num_steps"]


def train_recipe(name: str) -> list[dict]:
    config = get_recipe(name).run_config()
    data, model = experiment.build(config, data_dir())
    return experiment.trainer_for(config, progress=False).fit(model, data)


# On one thread: ~80 s (RNN, 100 epochs), ~70 s (GRU) and ~100 s (LSTM, 50 epochs) on a
# lightly loaded 2-core CPU; the two-layer GRU (~150-250 s) is left to `divekit recipe run` and
# benchmarks/book_lm.py. Bounds are the targets (the GRU's is the book's own 6.55). The
# book's loop itself, seeds 0-2 without the weight average, gives RNN 7.24-7.60, GRU 6.59-6.91,
# LSTM 6.78-7.19: the averaged weights are what brings these seeds under the book's numbers.
@pytest.mark.slow
@pytest.mark.parametrize("name, bound", [("gru-lm-timemachine-book", 6.55),
                                         ("rnn-lm-timemachine-book", 7.2),
                                         ("lstm-lm-timemachine-book", 6.7)])
def test_book_recipe_reaches_the_books_validation_perplexity(name, bound):
    history = train_recipe(name)
    assert history[-1]["val_ppl"] <= bound
    assert history[-1]["train_ppl"] < history[-1]["val_ppl"]
