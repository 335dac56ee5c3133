"""The book's Transformer for translation against divekit's, on this machine (d2l 11.7).

Three measurements, each printed as a ratio with the CPU's name:

1. ``train``: training tokens/s on the fra-eng pairs of at most 10 English words. The book's
   loop is d2l 1.0's written out in plain PyTorch: every sentence padded to one ``num_steps``
   (the longest here), batches of 128 drawn at random, the course's from-scratch blocks
   (``divekit.scratch.transformer``: masked softmax, heads split by reshaping) in fp32, Adam,
   the global gradient norm clipped to 1. divekit: ``transformer-mt`` with the same sizes on
   length-bucketed batches, fused attention, and each precision measured (fp32 and bf16).
   Tokens are real (non-padding) target tokens; medians of ``--repeats`` timings of
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
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import divekit as dk
from divekit import experiment
from divekit.recipes import get_recipe
from divekit.scratch.attention import PositionalEncoding
from divekit.scratch.transformer import TransformerDecoderBlock, TransformerEncoderBlock
from divekit.text.decode import beam_search
from machine import cpu_name

SIZES = {"num_hiddens": 256, "num_layers": 2, "num_heads": 4, "ffn_num_hiddens": 512}


class BookTransformer(nn.Module):
    """d2l 1.0's ``TransformerEncoder``/``TransformerDecoder`` from the course's blocks."""

    def __init__(self, src_vocab: int, tgt_vocab: int, num_hiddens: int, num_layers: int,
                 num_heads: int, ffn_num_hiddens: int, dropout: float = 0.2) -> None:
        super().__init__()
        self.d = num_hiddens
        self.src_embedding = nn.Embedding(src_vocab, num_hiddens)
        self.tgt_embedding = nn.Embedding(tgt_vocab, num_hiddens)
        self.positions = PositionalEncoding(num_hiddens, dropout)
        self.encoder = nn.ModuleList(
            TransformerEncoderBlock(num_hiddens, ffn_num_hiddens, num_heads, dropout)
            for _ in range(num_layers))
        self.decoder = nn.ModuleList(
            TransformerDecoderBlock(num_hiddens, ffn_num_hiddens, num_heads, dropout)
            for _ in range(num_layers))
        self.dense = nn.Linear(num_hiddens, tgt_vocab)

    def forward(self, src, src_len, tgt_in):
        X = self.positions(self.src_embedding(src) * math.sqrt(self.d))
        for block in self.encoder:
            X = block(X, src_len)
        Y = self.positions(self.tgt_embedding(tgt_in) * math.sqrt(self.d))
        for block in self.decoder:
            Y, _ = block(Y, X, src_len)
        return self.dense(Y)


def masked_loss(logits, targets, pad):
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=pad)



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
    data = dk.load_data("fra-eng", 128)
    pad = data.tgt_vocab["<pad>"]
    src, src_len, tgt_in, tgt_out, _ = data.train
    generator = torch.Generator().manual_seed(0)

    torch.manual_seed(0)
    book = BookTransformer(len(data.src_vocab), len(data.tgt_vocab), **SIZES, dropout=0.1)
    optimizer = torch.optim.Adam(book.parameters(), 1e-3)
    counted = []

    def book_step():
        rows = torch.randint(len(src), (128,), generator=generator)
        loss = masked_loss(book(src[rows], src_len[rows], tgt_in[rows]), tgt_out[rows], pad)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(book.parameters(), 1.0)
        optimizer.step()
        counted.append(int((tgt_out[rows] != pad).sum()))

    book_time = timed(book_step, steps, repeats)
    book_rate = statistics.mean(counted) * steps / book_time
    print(f"book loop (padded to {src.shape[1]}/{tgt_out.shape[1]}, scratch blocks, fp32): "
          f"{book_rate:,.0f} tokens/s")
    for amp in ("off", "bf16"):
        torch.manual_seed(0)
        model = dk.create_model("transformer-mt", data, **SIZES, dropout=0.1)
        optimizer_ours = torch.optim.Adam(model.parameters(), 1e-3)
        task = dk.create_task("translation")
        task.setup(data)
        batches = iter(data.train_dataloader())
        tokens = []

        def our_step(model=model, optimizer=optimizer_ours, task=task, batches=batches,
                     tokens=tokens, amp=amp):
            batch = next(batches)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16"):
                loss = task.step(model, batch).loss
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            tokens.append(int(task.count(batch)))

        ours_time = timed(our_step, steps, repeats)
        rate = statistics.mean(tokens) * steps / ours_time
        print(f"divekit transformer-mt (buckets, fused attention, amp {amp}): {rate:,.0f} "
              f"tokens/s = {rate / book_rate:.2f}x the book loop")


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
    src, src_len, tgt_in, tgt_out, _ = data.train
    for _ in range(30):
        model.train()
        for rows in torch.randperm(len(src)).split(128):
            loss = masked_loss(model(src[rows], src_len[rows], tgt_in[rows]), tgt_out[rows], pad)
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
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
    parser.add_argument("--steps", type=int, default=20)
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
