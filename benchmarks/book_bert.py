"""The book's BERT pretraining loop against divekit's, on this machine (d2l 15.8-15.10; Devlin
et al. 2019, "BERT: Pre-training of Deep Bidirectional Transformers for Language Understanding").

``train`` measures pretraining sentence pairs per second on the real WikiText-2 pairs
(``wikitext-2-bert``; with only the shared ``valid.txt`` and ``test.txt``, ``valid.txt`` trains)
and prints them with the CPU's name, the torch version and each side's ratio to the book:

1. The book's loop, written out here in plain PyTorch from d2l 15.8-15.10 (PyTorch edition):
   ``BERTEncoder`` (token + segment embeddings plus a learned position parameter, which the
   book adds through ``.data`` so it is never trained; no embedding layer norm or dropout),
   the book's encoder blocks (its ``MultiHeadAttention``: explicit ``bmm`` and a masked softmax
   over valid lengths that fills with -1e6; ``AddNorm`` post-norm; ``PositionWiseFFN`` with
   ReLU; biases everywhere), ``MaskLM`` (Linear, ReLU, LayerNorm, Linear to the vocabulary) on
   the gathered ``pred_positions``, ``NextSentencePred`` on ``hidden`` (Linear + Tanh) of
   ``<cls>``; PyTorch's default initialisation. Its data format: every pair padded to
   ``max_len`` 64, ``pred_positions`` padded to ``round(64 * 0.15) = 10`` slots with
   ``mlm_weights``, masked once. Its ``_get_batch_loss_bert``: cross-entropy per slot weighted
   by ``mlm_weights``, summed and divided by the weights' sum + 1e-8, plus the NSP
   cross-entropy; ``train_bert``: Adam at 0.01, shuffled batches of 512, fp32.
   (The book's PyTorch code builds that loss with ``nn.CrossEntropyLoss()``, whose mean
   makes the weights cancel, so its printed MLM loss also averages the padding slots; here the
   weights are applied per slot, as the book's text describes, so the MLM losses of both sides
   are the same quantity. The cost is the same either way.)
2. divekit: the ``Trainer`` with ``bert-small`` (same sizes, Adam at 0.01, batch 512) on its
   own loaders (length-bucketed batches trimmed to their longest pair, masking drawn afresh
   for each batch), in fp32 and in bf16 autocast.

Both sides use the same pairs and vocabulary: the book's tensors are built from
``load_data("wikitext-2-bert", static_masking=True)`` (its ``mlm_labels`` turned into the
book's padded ``pred_positions``/``mlm_weights``/``mlm_Y``). Unlike the book, which drops the
pairs longer than ``max_len``, divekit truncates them, on both sides here.

Timing: every optimizer step is timed (for divekit by a callback, between the Trainer's step
ends; the evaluation between epochs falls outside every step and is not counted, and is cut to
one small batch to save wall time). After ``--warmup`` steps, ``--repeats`` consecutive windows
of ``--steps`` steps each give pairs/s; the table shows their median. Each side's MLM and NSP
losses at its first and last step (and averaged over its last 10) show that both models learn
the same thing: the MLM loss falls from about ln V within a few steps; the NSP loss stays near
ln 2 for the first tens of steps (the book's own 50 steps average 0.74-0.78).

    DIVEKIT_DATA=../shared/data python benchmarks/book_bert.py train --repeats 3 --steps 20
    DIVEKIT_DATA=../shared/data python benchmarks/book_bert.py train --quick --threads 1
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
import warnings
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

import divekit as dk
from divekit.engine.callbacks import Callback
from machine import cpu_name

MAX_LEN, BATCH, LR = 64, 512, 0.01
NUM_PREDS = round(MAX_LEN * 0.15)  # the book's max_num_mlm_preds: 10 slots per pair
SIZES = {"num_hiddens": 128, "num_layers": 2, "num_heads": 2, "ffn_num_hiddens": 256,
         "dropout": 0.2}
IGNORE = -100


# ---- the book's model (d2l 15.8, PyTorch edition) ----

def sequence_mask(X: torch.Tensor, valid_len: torch.Tensor, value: float) -> torch.Tensor:
    """``X`` (rows, L) with the entries at or after each row's ``valid_len`` set to ``value``."""
    keep = torch.arange(X.shape[1], dtype=torch.float32)[None, :] < valid_len[:, None]
    X[~keep] = value
    return X


def masked_softmax(X: torch.Tensor, valid_len: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis of ``X`` (B*h, Lq, Lk) with keys past ``valid_len`` (B*h,)
    filled with -1e6 first, the book's way (one length per query row, then reshaped)."""
    shape = X.shape
    lengths = torch.repeat_interleave(valid_len, shape[1])
    X = sequence_mask(X.reshape(-1, shape[-1]), lengths, value=-1e6)
    return F.softmax(X.reshape(shape), dim=-1)


class BookMultiHeadAttention(nn.Module):
    """The book's multi-head attention: four biased projections, heads folded into the batch
    axis, scaled dot products by ``bmm``, dropout on the attention weights."""

    def __init__(self, num_hiddens: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.W_q = nn.Linear(num_hiddens, num_hiddens)
        self.W_k = nn.Linear(num_hiddens, num_hiddens)
        self.W_v = nn.Linear(num_hiddens, num_hiddens)
        self.W_o = nn.Linear(num_hiddens, num_hiddens)
        self.dropout = nn.Dropout(dropout)

    def _split(self, X: torch.Tensor) -> torch.Tensor:
        B, L, H = X.shape  # (B, L, H) -> (B * heads, L, H / heads)
        X = X.reshape(B, L, self.num_heads, H // self.num_heads).permute(0, 2, 1, 3)
        return X.reshape(B * self.num_heads, L, H // self.num_heads)

    def forward(self, X: torch.Tensor, valid_len: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.W_q(X)), self._split(self.W_k(X)), self._split(self.W_v(X))
        lengths = torch.repeat_interleave(valid_len, self.num_heads, dim=0)
        scores = torch.bmm(q, k.transpose(1, 2)) / math.sqrt(q.shape[-1])
        out = torch.bmm(self.dropout(masked_softmax(scores, lengths)), v)
        B = X.shape[0]
        out = out.reshape(B, self.num_heads, out.shape[1], out.shape[2]).permute(0, 2, 1, 3)
        return self.W_o(out.reshape(B, out.shape[1], -1))


class BookEncoderBlock(nn.Module):
    """The book's post-norm block: ``AddNorm(X, attention(X))``, then ``AddNorm(Y, FFN(Y))``
    with ``AddNorm(X, Y) = LayerNorm(dropout(Y) + X)`` and a ReLU FFN."""

    def __init__(self, num_hiddens: int, num_heads: int, ffn_num_hiddens: int,
                 dropout: float) -> None:
        super().__init__()
        self.attention = BookMultiHeadAttention(num_hiddens, num_heads, dropout)
        self.dropout1, self.norm1 = nn.Dropout(dropout), nn.LayerNorm(num_hiddens)
        self.dense1 = nn.Linear(num_hiddens, ffn_num_hiddens)
        self.dense2 = nn.Linear(ffn_num_hiddens, num_hiddens)
        self.dropout2, self.norm2 = nn.Dropout(dropout), nn.LayerNorm(num_hiddens)

    def forward(self, X: torch.Tensor, valid_len: torch.Tensor) -> torch.Tensor:
        Y = self.norm1(self.dropout1(self.attention(X, valid_len)) + X)
        return self.norm2(self.dropout2(self.dense2(F.relu(self.dense1(Y)))) + Y)


class BookBERT(nn.Module):
    """The book's ``BERTModel``: ``BERTEncoder``, ``MaskLM`` and ``NextSentencePred``.

    Shape:
        tokens, segments ``(B, L)``, valid_len ``(B,)`` float, pred_positions ``(B, P)`` ->
        mlm logits ``(B, P, V)``, nsp logits ``(B, 2)``.
    """

    def __init__(self, vocab_size: int, num_hiddens: int, num_layers: int, num_heads: int,
                 ffn_num_hiddens: int, dropout: float, max_len: int = 1000) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, num_hiddens)
        self.segment_embedding = nn.Embedding(2, num_hiddens)
        self.blks = nn.ModuleList(
            BookEncoderBlock(num_hiddens, num_heads, ffn_num_hiddens, dropout)
            for _ in range(num_layers))
        self.pos_embedding = nn.Parameter(torch.randn(1, max_len, num_hiddens))
        self.mlm = nn.Sequential(nn.Linear(num_hiddens, num_hiddens), nn.ReLU(),
                                 nn.LayerNorm(num_hiddens), nn.Linear(num_hiddens, vocab_size))
        self.hidden = nn.Sequential(nn.Linear(num_hiddens, num_hiddens), nn.Tanh())
        self.nsp = nn.Linear(num_hiddens, 2)

    def forward(self, tokens, segments, valid_len, pred_positions):
        X = self.token_embedding(tokens) + self.segment_embedding(segments)
        # The book adds pos_embedding.data: the positions get no gradient.
        X = X + self.pos_embedding.data[:, :X.shape[1], :]
        for blk in self.blks:
            X = blk(X, valid_len)
        B, P = pred_positions.shape
        rows = torch.repeat_interleave(torch.arange(B), P)
        gathered = X[rows, pred_positions.reshape(-1)].reshape(B, P, -1)
        return self.mlm(gathered), self.nsp(self.hidden(X[:, 0, :]))


def book_tensors(train: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The book's training tensors from divekit's statically masked split.

    Returns:
        ``(tokens, segments, valid_len, pred_positions, mlm_weights, mlm_Y, nsp_y)``: tokens,
        segments ``(N, 64)``; valid_len ``(N,)`` float32 (the book's dtype); pred_positions,
        mlm_weights, mlm_Y ``(N, 10)``, the slots after each pair's predictions 0 with weight 0.
    """
    tokens, segments, valid_len, mlm_labels, nsp = train
    if tokens.shape[1] != MAX_LEN:
        raise SystemExit(f"expected pairs padded to {MAX_LEN} tokens, got {tokens.shape[1]}")
    chosen = mlm_labels != IGNORE
    counts = chosen.sum(1)
    if int(counts.max()) > NUM_PREDS:
        raise SystemExit(f"a pair has {int(counts.max())} masked positions, more than the "
                         f"book's {NUM_PREDS} slots")
    rows, cols = chosen.nonzero(as_tuple=True)  # row by row, positions ascending
    slots = (chosen.cumsum(1) - 1)[rows, cols]
    positions = torch.zeros(len(tokens), NUM_PREDS, dtype=torch.long)
    labels = torch.zeros(len(tokens), NUM_PREDS, dtype=torch.long)
    positions[rows, slots] = cols
    labels[rows, slots] = mlm_labels[rows, cols]
    weights = (torch.arange(NUM_PREDS)[None, :] < counts[:, None]).float()
    return tokens, segments, valid_len.float(), positions, weights, labels, nsp


def book_batch_loss(net: BookBERT, vocab_size: int, tokens, segments, valid_len,
                    pred_positions, mlm_weights, mlm_Y, nsp_y):
    """The book's ``_get_batch_loss_bert``: ``(mlm, nsp, mlm + nsp)``."""
    mlm_hat, nsp_hat = net(tokens, segments, valid_len, pred_positions)
    mlm = F.cross_entropy(mlm_hat.reshape(-1, vocab_size), mlm_Y.reshape(-1),
                          reduction="none") * mlm_weights.reshape(-1)
    mlm = mlm.sum() / (mlm_weights.sum() + 1e-8)
    nsp = F.cross_entropy(nsp_hat, nsp_y)
    return mlm, nsp, mlm + nsp


def book_run(tensors: tuple[torch.Tensor, ...], vocab_size: int, total_steps: int,
             seed: int = 0) -> tuple[list[float], list[int], list[tuple[float, float]]]:
    """The book's ``train_bert`` for ``total_steps`` steps: per-step seconds, pairs, losses."""
    torch.manual_seed(seed)
    net = BookBERT(vocab_size, **SIZES)
    optimizer = torch.optim.Adam(net.parameters(), lr=LR)
    seconds, pairs, losses = [], [], []
    while len(seconds) < total_steps:
        last = time.perf_counter()
        for rows in torch.randperm(len(tensors[0])).split(BATCH):  # shuffled, last one short
            batch = [t[rows] for t in tensors]
            optimizer.zero_grad()
            mlm, nsp, loss = book_batch_loss(net, vocab_size, *batch)
            loss.backward()
            optimizer.step()
            # What the book's metric.add reads each step (a float of each loss).
            step_losses = (float(mlm.detach()), float(nsp.detach()))
            now = time.perf_counter()
            seconds.append(now - last)
            pairs.append(len(rows))
            losses.append(step_losses)
            last = now
            if len(seconds) == total_steps:
                break
    return seconds, pairs, losses


# ---- divekit's side ----

class StepClock(Callback):
    """Seconds of every optimizer step of the Trainer, evaluation left out (it runs after an
    epoch's last step and before the next epoch starts the clock again)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.losses: list[tuple[float, float]] = []
        self.last = 0.0

    def on_epoch_start(self, trainer) -> None:
        self.last = time.perf_counter()

    def on_step_end(self, trainer) -> None:
        self.seconds.append(time.perf_counter() - self.last)
        parts = trainer.step_losses
        self.losses.append((float(parts["mlm"]), float(parts["nsp"])))
        self.last = time.perf_counter()  # reading the losses is this callback's, not the step's


class CountedLoader:
    """A training loader that records the pairs of every batch it gives."""

    def __init__(self, loader, pairs: list[int]) -> None:
        self.loader, self.pairs = loader, pairs

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def __iter__(self) -> Iterator:
        for batch in self.loader:
            self.pairs.append(len(batch[0]))
            yield batch


class TrainOnly:
    """The data as ``Trainer.fit`` reads it: divekit's own training loader (counted), and an
    evaluation of one small test batch, which is never timed and only costs wall time."""

    task = "bert-pretraining"

    def __init__(self, data, pairs: list[int]) -> None:
        self.data, self.pairs = data, pairs

    def train_dataloader(self) -> CountedLoader:
        return CountedLoader(self.data.train_dataloader(), self.pairs)

    def val_dataloader(self) -> None:
        return None

    def test_dataloader(self) -> list[tuple[torch.Tensor, ...]]:
        return [tuple(t[:16] for t in self.data.test)]

    def __repr__(self) -> str:
        return repr(self.data)


def divekit_run(data, amp: str, total_steps: int, seed: int = 0
                ) -> tuple[list[float], list[int], list[tuple[float, float]]]:
    """``bert-small`` through the Trainer for ``total_steps`` steps: per-step seconds, pairs,
    losses."""
    clock, pairs = StepClock(), []
    model = dk.create_model("bert-small", data, **SIZES)
    trainer = dk.Trainer(max_epochs=10_000, max_steps=total_steps, lr=LR, optimizer="adam",
                         amp=amp, device="cpu", seed=seed, progress=False, callbacks=[clock])
    trainer.fit(model, TrainOnly(data, pairs))
    if len(clock.seconds) != total_steps:
        raise SystemExit(f"the Trainer took {len(clock.seconds)} steps, not {total_steps}")
    return clock.seconds, pairs[:total_steps], clock.losses


# ---- measurement ----


def window_rate(seconds: list[float], pairs: list[int], warmup: int, steps: int,
                repeats: int) -> float:
    """Median pairs/s over ``repeats`` consecutive windows of ``steps`` steps after
    ``warmup``."""
    rates = []
    for r in range(repeats):
        start, stop = warmup + r * steps, warmup + (r + 1) * steps
        rates.append(sum(pairs[start:stop]) / sum(seconds[start:stop]))
    return statistics.median(rates)


def train_speed(warmup: int, steps: int, repeats: int) -> None:
    total = warmup + steps * repeats
    with warnings.catch_warnings():  # the truncation warnings: counted in the header instead
        warnings.simplefilter("ignore", UserWarning)
        static = dk.load_data("wikitext-2-bert", BATCH, max_len=MAX_LEN, static_masking=True)
        dynamic = dk.load_data("wikitext-2-bert", BATCH, max_len=MAX_LEN)
    vocab = static.tokenizer.vocab_size
    if dynamic.tokenizer.vocab_size != vocab or not torch.equal(static.train[4],
                                                                dynamic.train[4]):
        raise SystemExit("the two loads of wikitext-2-bert disagree on pairs or vocabulary")
    tensors = book_tensors(static.train)
    pairs_n = len(tensors[0])
    print(f"wikitext-2-bert: {pairs_n:,} training pairs (mean {float(tensors[2].mean()):.1f} "
          f"tokens, {static.truncated.get('train', 0):,} truncated to {MAX_LEN}), vocabulary "
          f"{vocab:,}; batch {BATCH}, Adam {LR}; warm-up steps {warmup}, then {repeats} x "
          f"{steps} timed steps")

    runs: dict[str, tuple[str, Callable[[], tuple]]] = {
        "book": ("book loop (padded to 64, 10 slots, fp32)",
                 lambda: book_run(tensors, vocab, total)),
        "off": ("divekit bert-small, Trainer (buckets, fp32)",
                lambda: divekit_run(dynamic, "off", total)),
        "bf16": ("divekit bert-small, Trainer (buckets, bf16)",
                 lambda: divekit_run(dynamic, "bf16", total)),
    }
    rates, losses = {}, {}
    for key, (_, run) in runs.items():
        seconds, pairs, losses[key] = run()
        rates[key] = window_rate(seconds, pairs, warmup, steps, repeats)
    width = max(len(label) for label, _ in runs.values())
    print(f"{'':{width}}  {'pairs/s':>10}  {'vs book':>8}")
    for key, (label, _) in runs.items():
        print(f"{label:{width}}  {rates[key]:>10,.1f}  {rates[key] / rates['book']:>7.2f}x")
    tail = min(10, total)
    print(f"losses (MLM, NSP) at step 1, at step {total} and the mean of the last {tail} "
          f"steps; chance is ln {vocab} = {math.log(vocab):.2f} and ln 2 = 0.69:")
    for key, (label, _) in runs.items():
        (mlm0, nsp0), (mlm1, nsp1) = losses[key][0], losses[key][-1]
        mlm_tail = statistics.mean(mlm for mlm, _ in losses[key][-tail:])
        nsp_tail = statistics.mean(nsp for _, nsp in losses[key][-tail:])
        print(f"{label:{width}}  MLM {mlm0:.3f} -> {mlm1:.3f} (last {tail}: {mlm_tail:.3f}), "
              f"NSP {nsp0:.3f} -> {nsp1:.3f} (last {tail}: {nsp_tail:.3f})")

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="+", choices=["train"])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke test: 1 warm-up step, 1 x 3 timed steps")
    args = parser.parse_args()
    if args.quick:
        args.warmup, args.steps, args.repeats = 1, 3, 1
    if min(args.steps, args.repeats) < 1 or args.warmup < 0:
        parser.error("--steps and --repeats must be positive, --warmup not negative")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    if "train" in args.what:
        train_speed(args.warmup, args.steps, args.repeats)


if __name__ == "__main__":
    main()
