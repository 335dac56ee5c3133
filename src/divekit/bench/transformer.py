"""The Transformer for English-French translation (d2l 11.7; Vaswani et al. 2017, "Attention
Is All You Need"): the book's training loop against the Trainer.

The book's loop is d2l 1.0's written out in plain PyTorch: every sentence padded to one length
(the longest of the pairs of at most 10 English words), batches of 128 from a shuffled order,
the course's from-scratch blocks (:mod:`divekit.scratch.transformer`: masked softmax, heads
split by reshaping) in fp32, Adam lr 0.001, the global gradient norm clipped to 1. divekit
trains ``transformer-mt`` of the same sizes with the Trainer on length-bucketed batches with
fused attention. Tokens are real (non-padding) target tokens on both sides.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

import divekit as dk
from divekit.scratch.attention import PositionalEncoding
from divekit.scratch.transformer import TransformerDecoderBlock, TransformerEncoderBlock

NAME, UNIT = "transformer", "tokens/s"
WHAT = "Transformer, fra-eng <= 10 words, 256 wide, 2+2 blocks, batch 128, Adam"
WARMUP, STEPS, QUICK_STEPS = 1, 8, 1
RESTART_BOOK = False
SIZES = {"num_hiddens": 256, "num_layers": 2, "num_heads": 4, "ffn_num_hiddens": 512}
DROPOUT, LR = 0.1, 1e-3


class BookTransformer(nn.Module):
    """d2l 1.0's ``TransformerEncoder``/``TransformerDecoder`` from the course's blocks.

    Shape:
        src ``(batch, src_steps)``, src_len ``(batch,)``, tgt_in ``(batch, tgt_steps)`` ->
        logits ``(batch, tgt_steps, tgt_vocab)``.
    """

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
    """Cross-entropy per real target token (padding ignored)."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=pad)


def book_steps(model: nn.Module, optimizer: torch.optim.Optimizer, train, pad: int,
               batch_size: int = 128, device: str | torch.device = "cpu") -> Iterator[int]:
    """One epoch of the book's loop over the padded training tensors ``train`` (``src,
    src_len, tgt_in, tgt_out, ...``) in a new random order; yields each batch's real target
    token count after its step."""
    src, src_len, tgt_in, tgt_out = train[:4]
    model.train()
    for rows in torch.randperm(len(src)).split(batch_size):
        targets = tgt_out[rows].to(device)
        logits = model(src[rows].to(device), src_len[rows].to(device), tgt_in[rows].to(device))
        loss = masked_loss(logits, targets, pad)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        yield int((targets != pad).sum())


def prepare(batches: int) -> dict:
    """The fra-eng pairs of at most 10 English words, batch 128 (from ``DIVEKIT_DATA``)."""
    return {"data": dk.load_data("fra-eng", 128)}


def book_run(state: dict, device: torch.device) -> Iterator[int]:
    data = state["data"]
    model = BookTransformer(len(data.src_vocab), len(data.tgt_vocab), **SIZES,
                            dropout=DROPOUT).to(device)
    optimizer = torch.optim.Adam(model.parameters(), LR)
    return book_steps(model, optimizer, data.train, data.tgt_vocab["<pad>"], device=device)


def divekit_run(state: dict) -> tuple[nn.Module, object, dict]:
    model = dk.create_model("transformer-mt", state["data"], **SIZES, dropout=DROPOUT)
    # No BLEU: its decoding pass after the timed steps would only lengthen the run.
    task = dk.create_task("translation", bleu=False)
    return model, state["data"], {"lr": LR, "optimizer": "adam", "grad_clip": 1.0, "task": task}
