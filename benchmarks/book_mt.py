"""The book's Transformer for translation against divekit's, on this machine (d2l 11.7).

Three measurements, each printed as a ratio with the CPU's name:

1. ``train``: training tokens/s on the fra-eng pairs of at most 10 English words, the case
   ``divekit bench transformer --amp bf16`` (:mod:`divekit.bench.transformer`): the book's
   loop (d2l 1.0's in plain PyTorch, every sentence padded to the longest, the course's
   from-scratch blocks, fp32) against ``transformer-mt`` trained by the Trainer in fp32 and
   bf16. Tokens are real (non-padding) target tokens; medians of ``--repeats`` timings of
   ``--steps`` steps after a warm-up.
2. ``beam``: beam-search sentences/s of a trained-size model (random weights, same shapes)
   with the key/value cache against recomputing the whole prefix at every step.
3. ``book``: the book's experiment itself (641 pairs, 30 epochs) with the book's loop, to show
   what its model reaches here: the held-out loss per token and as d2l plots it (the mean of
   its two validation batches' means, 128 pairs and 1 pair), next to the recipe's.

    DIVEKIT_DATA=../shared/data python benchmarks/book_mt.py train beam book
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import divekit as dk
from divekit import experiment
from divekit.bench import transformer
from divekit.bench.runner import measure, table
from divekit.bench.transformer import SIZES, BookTransformer, book_steps, masked_loss
from divekit.recipes import get_recipe
from divekit.text.decode import beam_search
from machine import cpu_name


def timed(step, steps: int, repeats: int) -> float:
    """Median seconds of ``steps`` calls of ``step`` (after one warm-up round)."""
    for _ in range(3):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def train_speed(steps: int, repeats: int) -> None:
    """``divekit bench transformer --amp bf16`` with these step and repeat counts."""
    case = transformer
    row = measure(case, case.prepare(case.WARMUP + steps), case.WARMUP, steps, repeats,
                  ["off", "bf16"], torch.device("cpu"), print)
    print("\n".join(table([row], ["off", "bf16"])))


class Recompute(nn.Module):
    """A model whose decoding step re-runs the whole prefix (no cache): the baseline."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def encode(self, src, src_len):
        return {"src": src, "src_len": src_len, "prefix": src.new_zeros(len(src), 0)}

    def step(self, tokens, state):
        prefix = torch.cat([state["prefix"], tokens[:, None]], dim=1)
        logits = self.model(state["src"], state["src_len"], prefix)[:, -1]
        return logits, {**state, "prefix": prefix}

    def reorder(self, state, index):
        return {key: value.index_select(0, index) for key, value in state.items()}


def beam_speed(repeats: int, num_beams: int = 4) -> None:
    data = dk.load_data("fra-eng", 128)
    torch.manual_seed(0)
    model = dk.create_model("transformer-mt", data, **SIZES).eval()
    src, src_len = data.test[0][:256], data.test[1][:256]
    width = int(src_len.max())
    src = src[:, :width]
    specials = {"bos": data.tgt_vocab["<bos>"], "eos": data.tgt_vocab["<eos>"]}
    rates = {}
    for name, decoder in (("cache", model), ("recompute", Recompute(model))):
        def run(decoder=decoder):
            beam_search(decoder, src, src_len, **specials, max_len=data.max_target_len,
                        num_beams=num_beams)
        rates[name] = len(src) / timed(run, 1, repeats)
    print(f"beam search (beam {num_beams}, {len(src)} sentences, up to {data.max_target_len} "
          f"tokens): cache {rates['cache']:.1f} sentences/s, recomputing the prefix "
          f"{rates['recompute']:.1f}: the cache is {rates['cache'] / rates['recompute']:.2f}x")


def book_experiment(seed: int) -> None:
    data = dk.load_data("fra-eng", 128, **get_recipe("transformer-fra-eng-book")
                        .config.data_options)
    pad = data.tgt_vocab["<pad>"]
    torch.manual_seed(seed)
    model = BookTransformer(len(data.src_vocab), len(data.tgt_vocab), 256, 2, 4, 64, 0.2)
    optimizer = torch.optim.Adam(model.parameters(), 0.001)
    for _ in range(30):
        for _ in book_steps(model, optimizer, data.train, pad):
            pass
    model.eval()
    losses, tokens = [], []
    with torch.no_grad():
        for start in range(0, len(data.test[0]), 128):
            s, n, t_in, t_out, _ = (t[start : start + 128] for t in data.test)
            losses.append(float(masked_loss(model(s, n, t_in), t_out, pad)))
            tokens.append(int((t_out != pad).sum()))
    per_token = sum(x * n for x, n in zip(losses, tokens, strict=True)) / sum(tokens)
    print(f"book loop, seed {seed}: held-out loss {per_token:.3f} per token, "
          f"{statistics.mean(losses):.3f} the book's way (the book printed 1.86)")
    config = get_recipe("transformer-fra-eng-book").run_config()
    config.trainer.seed = seed
    with tempfile.TemporaryDirectory() as out:
        experiment.train(config, Path(out), progress=False)
        from divekit.recipes.translation import book_validation_loss

        ours, book_way = book_validation_loss(Path(out))
    print(f"divekit recipe, seed {seed}: held-out loss {ours:.3f} per token, {book_way:.3f} "
          "the book's way")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="+", choices=["train", "beam", "book"])
    parser.add_argument("--steps", type=int, default=transformer.STEPS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=1)
    args = parser.parse_args()
    print(f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    if "train" in args.what:
        train_speed(args.steps, args.repeats)
    if "beam" in args.what:
        beam_speed(args.repeats)
    if "book" in args.what:
        for seed in range(args.seeds):
            book_experiment(seed)


if __name__ == "__main__":
    main()
