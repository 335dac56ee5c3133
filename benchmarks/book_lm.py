"""Validation perplexity of the book's language-model experiments (9.6, 10.1-10.3) over seeds.

The book prints one unseeded run per experiment. To tell what is the software and what is the
draw, this trains each seed three ways on d2l 1.0's data (a window at every character of The
Time Machine, 32 steps, the first 10,000 windows train, the next 5,000 validate, batch 1024):

1. book loop: d2l 1.0's ``Trainer.fit`` written out in plain PyTorch, reading the text file
   itself (one-hot input, ``nn.RNN/GRU/LSTM`` time-major, a linear output layer, SGD, the
   global gradient norm clipped to 1). Its validation perplexity is reported both as the book
   plots it (the mean over the 5 validation batches of ``exp(batch loss)``) and as divekit
   does (``exp`` of the mean loss over all 160,000 tokens).
2. divekit ``--ema 0 --weight-decay 0``: the ``*-timemachine-book`` recipe with the book's
   settings only (no weight average, no weight decay).
3. divekit: the recipe as registered (a moving average of the weights is evaluated; the
   two-layer GRU also has weight decay).

Each cell is the last epoch's validation perplexity; medians over seeds are printed last.
Slow: about 1.5-4 minutes per run on one CPU thread (the two-layer GRU is the longest).

    DIVEKIT_DATA=../shared/data python benchmarks/book_lm.py deep-gru --seeds 3
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from divekit import experiment
from divekit.data.paths import data_root
from divekit.recipes import get_recipe

# name -> (layer, layers, lr, epochs, the book's validation perplexity with the nn layer)
EXPERIMENTS = {
    "rnn": (nn.RNN, 1, 1.0, 100, 7.19),
    "gru": (nn.GRU, 1, 4.0, 50, 6.55),
    "lstm": (nn.LSTM, 1, 4.0, 50, 6.69),
    "deep-gru": (nn.GRU, 2, 2.0, 100, 6.11),
}


def book_loop(name: str, seed: int) -> tuple[float, float]:
    """Train as d2l 1.0 does; returns the last validation perplexity (book's way, divekit's)."""
    layer, layers, lr, epochs, _ = EXPERIMENTS[name]
    torch.manual_seed(seed)
    text = (data_root() / "timemachine" / "timemachine.txt").read_text()
    chars = list(re.sub("[^A-Za-z]+", " ", text).lower())
    vocab = sorted({"<unk>", *chars})
    stream = torch.tensor([vocab.index(c) for c in chars[: 15000 + 32]])
    windows = stream.unfold(0, 33, 1)
    x, y = windows[:, :-1], windows[:, 1:]
    size = len(vocab)
    rnn, linear = layer(size, 32, layers), nn.Linear(32, size)
    params = [*rnn.parameters(), *linear.parameters()]
    optimizer = torch.optim.SGD(params, lr=lr)

    def loss(rows: slice | torch.Tensor) -> torch.Tensor:
        outputs, _ = rnn(F.one_hot(x[rows].T, size).float())
        logits = linear(outputs).swapaxes(0, 1)
        return F.cross_entropy(logits.reshape(-1, size), y[rows].reshape(-1))

    for _ in range(epochs):
        order = torch.randperm(10000)
        for start in range(0, 10000, 1024):
            batch_loss = loss(order[start : start + 1024])
            optimizer.zero_grad()
            batch_loss.backward()
            norm = torch.sqrt(sum((p.grad**2).sum() for p in params))
            if norm > 1:
                for p in params:
                    p.grad *= 1 / norm
            optimizer.step()
    with torch.no_grad():
        starts = range(10000, 15000, 1024)
        losses = [loss(slice(s, min(s + 1024, 15000))).item() for s in starts]
    sizes = [min(1024, 15000 - s) for s in starts]
    book = statistics.mean(math.exp(v) for v in losses)
    ours = math.exp(sum(v * n for v, n in zip(losses, sizes, strict=True)) / 5000)
    return book, ours


def divekit_run(name: str, seed: int, book_only: bool) -> float:
    config = get_recipe(f"{name}-lm-timemachine-book").run_config()
    config.trainer.seed = seed
    if book_only:
        config.trainer.ema, config.trainer.weight_decay = 0.0, 0.0
    with tempfile.TemporaryDirectory() as folder:
        history, _ = experiment.train(config, Path(folder), progress=False)
    return history[-1]["val_ppl"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=EXPERIMENTS)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    columns = {"book loop (book's metric)": [], "book loop": [], "divekit, book settings": [],
               "divekit recipe": []}
    print(f"{args.name}: book (en 1.0.3, one unseeded run) {EXPERIMENTS[args.name][-1]}")
    print("seed  " + "  ".join(f"{c:>25}" for c in columns))
    for seed in range(args.seeds):
        row = [*book_loop(args.name, seed), divekit_run(args.name, seed, True),
               divekit_run(args.name, seed, False)]
        for column, value in zip(columns.values(), row, strict=True):
            column.append(value)
        print(f"{seed:>4}  " + "  ".join(f"{v:>25.3f}" for v in row), flush=True)
    print("median" + "  ".join(f"{statistics.median(v):>25.3f}" for v in columns.values()))


if __name__ == "__main__":
    main()
