"""Recipes for the recurrent language models of chapters 9-10 on The Time Machine.

The ``*-book`` recipes are d2l 1.0's experiments (9.6, 10.1-10.3) with its settings: one-hot
characters, 32 hidden units, ``TimeMachine(batch_size=1024, num_steps=32)`` (a window at every
character, the first 10,000 train and the next 5,000 validate), SGD with the global gradient
norm clipped to 1, the book's learning rates and epochs. One thing is ours: the weights that
are evaluated are a moving average of the trained ones (``ema``), which takes out the 0.1-0.4
swings of validation perplexity between epochs that SGD at these learning rates causes, and the
two-layer GRU, which overfits its 10,000 characters, adds SGD weight decay 3e-4. With ``--ema 0
--weight-decay 0`` the run is the book's loop exactly. The book prints one unseeded run per
experiment; ``benchmarks/book_lm.py`` trains seeds of the book's loop written in plain PyTorch
next to these recipes. ``timemachine-char-fast`` is ours: how low a character-level model gets
on the last 10% of the book in a few minutes of CPU. ``bilstm-ewt-pos`` puts 10.4's
bidirectional LSTM to the use it suits, tagging: part-of-speech tags of UD English-EWT.
"""

from typing import Any

from divekit.recipes import Recipe, add_recipe, training_run

BOOK_DATA = {"num_steps": 32, "stride": 1, "num_train": 10000, "num_val": 5000}
BOOK_EMA = 0.95  # decay of the evaluated weight average (ours; ``--ema 0`` is the book's loop)


def book_run(model: str, lr: float, max_epochs: int, num_layers: int = 1,
             weight_decay: float = 0.0) -> dict[str, Any]:
    """The run config of d2l 1.0's language-model experiments (``rnn-concise``, ``gru``, ...).

    Args:
        model: a registered language model, fed one-hot characters.
        lr: SGD learning rate.
        max_epochs: passes over the 10,000 training windows (10 batches each).
        num_layers: stacked recurrent layers of 32 units.
        weight_decay: SGD weight decay (ours; the book has none).
    """
    return training_run(model, "timemachine", 1024,
                        model_options={"hidden_size": 32, "num_layers": num_layers},
                        data_options=BOOK_DATA, optimizer="sgd", lr=lr, grad_clip=1.0,
                        max_epochs=max_epochs, ema=BOOK_EMA, weight_decay=weight_decay)


add_recipe(Recipe(
    "rnn-lm-timemachine-book", "9.6 Concise Implementation of Recurrent Neural Networks",
    "d2l 1.0's nn.RNN language model: 32 hidden units, SGD lr 1, clip 1, 100 epochs",
    book_run("rnn-lm", lr=1.0, max_epochs=100),
    book="train ppl 5.87 / val ppl 7.19 (nn.RNN); 6.16 / 7.24 from scratch (en 1.0.3)",
    target="val ppl <= 7.2 (seeds 0-2: 7.05, 7.28, 7.12; 7.25, 7.37, 7.27 with --ema 0)",
))
add_recipe(Recipe(
    "gru-lm-timemachine-book", "10.2 Gated Recurrent Units (GRU)",
    "d2l 1.0's nn.GRU language model: 32 hidden units, SGD lr 4, clip 1, 50 epochs",
    book_run("gru-lm", lr=4.0, max_epochs=50),
    book="train ppl 4.94 / val ppl 6.55 (nn.GRU); 5.73 / 6.74 from scratch (en 1.0.3)",
    target="val ppl <= 6.55 (seeds 0-2: 6.29, 6.38, 6.43; seed 0 with --ema 0: 6.47)",
))
add_recipe(Recipe(
    "lstm-lm-timemachine-book", "10.1 Long Short-Term Memory (LSTM)",
    "d2l 1.0's nn.LSTM language model: 32 hidden units, SGD lr 4, clip 1, 50 epochs",
    book_run("lstm-lm", lr=4.0, max_epochs=50),
    book="train ppl 5.76 / val ppl 6.69 (nn.LSTM); 6.94 / 7.42 from scratch (en 1.0.3)",
    target="val ppl <= 6.7 (seeds 0-2: 6.67, 6.71, 6.70; 6.76, 6.89, 6.84 with --ema 0)",
))
add_recipe(Recipe(
    "deep-gru-lm-timemachine-book", "10.3 Deep Recurrent Neural Networks",
    "d2l 1.0's two-layer nn.GRU language model: 2 x 32 hidden units, SGD lr 2, clip 1, "
    "100 epochs (plus weight decay 3e-4, ours)",
    book_run("deep-gru-lm", lr=2.0, max_epochs=100, num_layers=2, weight_decay=3e-4),
    book="train ppl 4.13 / val ppl 6.11 (nn.GRU); 5.24 / 6.95 from scratch (en 1.0.3)",
    target="val ppl <= 6.11 at the median of seeds 0-2 (6.10, 6.17, 6.06; ema 0.99 without weight "
           "decay 6.23, 6.25, 6.06; the book's loop, --ema 0 --weight-decay 0: 6.62, 6.42, 6.35)",
))
add_recipe(Recipe(
    "timemachine-char-fast", "10.3 Deep Recurrent Neural Networks (LSTM), tuned",
    "2-layer LSTM of 256 units on learned 64-d character embeddings, dropout 0.3, 256-step "
    "windows every 64 characters, AdamW one-cycle, 4 epochs: perplexity 3.79 on the last 10% "
    "of the book",
    training_run("lstm-lm", "timemachine", 16,
                 model_options={"hidden_size": 256, "num_layers": 2, "embedding_dim": 64,
                                "dropout": 0.3},
                 data_options={"num_steps": 256, "stride": 64},
                 max_epochs=4, optimizer="adamw", lr=0.006, weight_decay=0.05,
                 schedule="onecycle", grad_clip=1.0),
    target="test ppl (the last 10% of the book) <= 3.8 in about 5 minutes on one CPU thread",
))
add_recipe(Recipe(
    "bilstm-ewt-pos", "10.4 Bidirectional Recurrent Neural Networks",
    "bilstm-tagger (64-d word-piece embeddings, 64 units each way, dropout 0.3) on UD "
    "English-EWT part-of-speech tags, AdamW one-cycle lr 5e-3, batch 32, 10 epochs",
    training_run("bilstm-tagger", "ud-ewt-pos", 32, model_options={"dropout": 0.3},
                 max_epochs=10, optimizer="adamw", lr=5e-3, weight_decay=1e-4,
                 schedule="onecycle"),
    target="test word accuracy >= 0.91 (bert-ewt-pos after our pretraining: 0.916)",
))
