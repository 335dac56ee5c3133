"""10.6-10.7 The encoder-decoder architecture and sequence-to-sequence learning with RNNs.

Every translation model follows one interface, which teacher-forced training, greedy and beam
decoding and the ``translate`` command rely on:

* ``forward(src, src_len, tgt_in) -> logits``: sources ``(B, S)`` with valid lengths ``(B,)``
  and decoder inputs ``(B, T)`` (``<bos>`` then the target shifted right) give next-token
  logits ``(B, T, V)``.
* ``encode(src, src_len) -> state``: the decoder's starting state, a dict of batch-first
  tensors (or lists of them).
* ``step(tokens, state) -> (logits, state)``: one decoding step from the latest tokens ``(B,)``;
  models with cross-attention add ``state["attention"]`` ``(B, S)``, the weights of that step.
* ``reorder(state, index) -> state``: the rows ``index`` of a state (beam search).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from divekit.errors import DivekitError
from divekit.models.registry import register_model


def select_rows(state: Any, index: torch.Tensor) -> Any:
    """Rows ``index`` (dim 0) of every tensor in a nested dict/list/tuple state."""
    if isinstance(state, torch.Tensor):
        return state.index_select(0, index)
    if isinstance(state, Mapping):
        return {key: select_rows(value, index) for key, value in state.items()}
    if isinstance(state, list | tuple):
        return type(state)(select_rows(value, index) for value in state)
    return state


def source_mask(src_len: torch.Tensor, length: int) -> torch.Tensor:
    """``(B, S)`` boolean, True at the real (non-padding) source positions."""
    return torch.arange(length, device=src_len.device) < src_len[:, None]


def init_seq2seq(module: nn.Module) -> None:
    """The course's initialisation (d2l 1.0 ``init_seq2seq``) as it acts: Xavier-uniform GRU
    weights. It also names ``nn.Linear``, but the book's output and attention layers are
    ``LazyLinear``, which it skips, so they keep PyTorch's defaults, as they do here."""
    if isinstance(module, nn.GRU):
        for name, parameter in module.named_parameters():
            if "weight" in name:
                nn.init.xavier_uniform_(parameter)


def _check_sizes(**sizes: int) -> None:
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DivekitError(f"{name} must be a positive integer, got {value!r}")


class GRUEncoder(nn.Module):
    """Embedding and a GRU stack over the source; padding is skipped (packed sequences), so the
    final state is the one after each sentence's last real token.

    With ``bidirectional`` each direction has ``num_hiddens // 2`` units and the two are
    concatenated, so outputs and states keep ``num_hiddens`` features either way.

    Shape:
        src ``(B, S)``, src_len ``(B,)`` -> outputs ``(B, S, H)`` (zeros at padding) and the
        final state ``(L, B, H)``.
    """

    def __init__(self, vocab_size: int, embed_size: int, num_hiddens: int, num_layers: int,
                 dropout: float = 0.0, bidirectional: bool = False) -> None:
        super().__init__()
        if bidirectional and num_hiddens % 2:
            raise DivekitError(f"a bidirectional encoder splits num_hiddens between its two "
                               f"directions: it must be even, got {num_hiddens}")
        self.bidirectional = bidirectional
        self.embedding = nn.Embedding(vocab_size, embed_size)
        self.rnn = nn.GRU(embed_size, num_hiddens // 2 if bidirectional else num_hiddens,
                          num_layers, dropout=dropout, batch_first=True,
                          bidirectional=bidirectional)

    def forward(self, src: torch.Tensor, src_len: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        packed = nn.utils.rnn.pack_padded_sequence(self.embedding(src), src_len.cpu(),
                                                   batch_first=True, enforce_sorted=False)
        outputs, state = self.rnn(packed)
        outputs, _ = nn.utils.rnn.pad_packed_sequence(outputs, batch_first=True,
                                                      total_length=src.shape[1])
        if self.bidirectional:  # (L * 2, B, H/2) -> (L, B, H): both directions of each layer
            state = state.unflatten(0, (-1, 2)).permute(0, 2, 1, 3).flatten(2)
        return outputs, state


class Seq2Seq(nn.Module):
    """The course's RNN encoder-decoder (d2l 10.7; Sutskever et al. 2014, Cho et al. 2014).

    The encoder's final state starts the decoder, and its last layer's final state (the
    context) is concatenated to the decoder's input embedding at every step.

    Args:
        src_vocab_size, tgt_vocab_size: vocabulary sizes.
        embed_size: embedding width of both sides.
        num_hiddens: GRU units per layer.
        num_layers: GRU layers of the encoder and of the decoder.
        dropout: between GRU layers.
        bidirectional: read the source in both directions (see :class:`GRUEncoder`).
    """

    def __init__(self, src_vocab_size: int, tgt_vocab_size: int, embed_size: int,
                 num_hiddens: int, num_layers: int, dropout: float = 0.0,
                 bidirectional: bool = False) -> None:
        super().__init__()
        _check_sizes(src_vocab_size=src_vocab_size, tgt_vocab_size=tgt_vocab_size,
                     embed_size=embed_size, num_hiddens=num_hiddens, num_layers=num_layers)
        self.encoder = GRUEncoder(src_vocab_size, embed_size, num_hiddens, num_layers, dropout,
                                  bidirectional)
        self.embedding = nn.Embedding(tgt_vocab_size, embed_size)
        self.rnn = nn.GRU(embed_size + num_hiddens, num_hiddens, num_layers, dropout=dropout,
                          batch_first=True)
        self.dense = nn.Linear(num_hiddens, tgt_vocab_size)
        self.apply(init_seq2seq)

    def encode(self, src: torch.Tensor, src_len: torch.Tensor) -> dict[str, torch.Tensor]:
        _, state = self.encoder(src, src_len)
        return {"hidden": state.transpose(0, 1), "context": state[-1]}

    def _decode(self, tgt: torch.Tensor, state: dict[str, torch.Tensor]
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        context = state["context"][:, None].expand(-1, tgt.shape[1], -1)
        inputs = torch.cat([self.embedding(tgt), context], dim=-1)
        outputs, hidden = self.rnn(inputs, state["hidden"].transpose(0, 1).contiguous())
        return self.dense(outputs), {**state, "hidden": hidden.transpose(0, 1)}

    def forward(self, src: torch.Tensor, src_len: torch.Tensor,
                tgt_in: torch.Tensor) -> torch.Tensor:
        return self._decode(tgt_in, self.encode(src, src_len))[0]

    def step(self, tokens: torch.Tensor, state: dict[str, torch.Tensor]
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits, state = self._decode(tokens[:, None], state)
        return logits[:, 0], state

    def reorder(self, state: Any, index: torch.Tensor) -> Any:
        return select_rows(state, index)


class AdditiveAttention(nn.Module):
    """Additive attention (d2l 11.3; Bahdanau et al. 2015):
    ``score(q, k) = w_v^T tanh(W_q q + W_k k)``, softmax over the real keys.

    The keys' projection ``W_k k`` depends only on the source, so :meth:`project_keys` computes
    it once per sentence and every decoding step reuses it.
    """

    def __init__(self, query_size: int, key_size: int, num_hiddens: int,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.W_q = nn.Linear(query_size, num_hiddens, bias=False)
        self.W_k = nn.Linear(key_size, num_hiddens, bias=False)
        self.w_v = nn.Linear(num_hiddens, 1, bias=False)
        self.dropout = nn.Dropout(dropout)

    def project_keys(self, keys: torch.Tensor) -> torch.Tensor:
        return self.W_k(keys)

    def forward(self, query: torch.Tensor, projected_keys: torch.Tensor, values: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Context and weights for one query per sentence.

        Shape:
            query ``(B, Q)``, projected_keys ``(B, S, h)``, values ``(B, S, V)``, mask
            ``(B, S)`` (True = a real key) -> context ``(B, V)``, weights ``(B, S)``.
        """
        scores = self.w_v(torch.tanh(self.W_q(query)[:, None] + projected_keys))[..., 0]
        weights = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        context = torch.bmm(self.dropout(weights)[:, None], values)[:, 0]
        return context, weights


class BahdanauSeq2Seq(Seq2Seq):
    """The RNN encoder-decoder with Bahdanau attention (d2l 11.4; Bahdanau et al. 2015).

    At each step the decoder's previous top-layer state queries the encoder outputs; the
    attention-weighted context replaces the fixed one of :class:`Seq2Seq`. The step is
    inherently sequential (the query is the state of the step before), so ``forward`` runs
    :meth:`step` over the target: teacher forcing and decoding share one code path.

    Args: as :class:`Seq2Seq`.
    """

    def __init__(self, src_vocab_size: int, tgt_vocab_size: int, embed_size: int,
                 num_hiddens: int, num_layers: int, dropout: float = 0.0,
                 bidirectional: bool = False) -> None:
        super().__init__(src_vocab_size, tgt_vocab_size, embed_size, num_hiddens, num_layers,
                         dropout, bidirectional)
        self.attention = AdditiveAttention(num_hiddens, num_hiddens, num_hiddens, dropout)
        self.apply(init_seq2seq)

    def encode(self, src: torch.Tensor, src_len: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs, state = self.encoder(src, src_len)
        return {"hidden": state.transpose(0, 1), "memory": outputs,
                "keys": self.attention.project_keys(outputs),
                "mask": source_mask(src_len, src.shape[1])}

    def step(self, tokens: torch.Tensor, state: dict[str, torch.Tensor]
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        hidden = state["hidden"].transpose(0, 1).contiguous()
        context, weights = self.attention(hidden[-1], state["keys"], state["memory"],
                                          state["mask"])
        inputs = torch.cat([self.embedding(tokens), context], dim=-1)[:, None]
        outputs, hidden = self.rnn(inputs, hidden)
        return self.dense(outputs[:, 0]), {**state, "hidden": hidden.transpose(0, 1),
                                           "attention": weights}

    def forward(self, src: torch.Tensor, src_len: torch.Tensor,
                tgt_in: torch.Tensor) -> torch.Tensor:
        state = self.encode(src, src_len)
        logits = []
        for t in range(tgt_in.shape[1]):
            step_logits, state = self.step(tgt_in[:, t], state)
            logits.append(step_logits)
        return torch.stack(logits, dim=1)


def _gru_params(inputs: int, hidden: int, layers: int, directions: int = 1) -> int:
    per_layer = [3 * hidden * ((inputs if i == 0 else hidden * directions) + hidden + 2)
                 for i in range(layers)]
    return directions * sum(per_layer)


BOOK = {"embed_size": 256, "num_hiddens": 256, "num_layers": 2, "dropout": 0.2}
_VOCAB = 1000  # the registry's default vocabulary sizes
_SEQ2SEQ_PARAMS = (
    _VOCAB * 256 + _gru_params(256, 256, 2)  # encoder
    + _VOCAB * 256 + _gru_params(512, 256, 2) + 256 * _VOCAB + _VOCAB  # decoder
)


@register_model("seq2seq-gru", family="seq2seq", section="10.7 Sequence-to-Sequence Learning",
                task="translation", input_shape=(9,), params=_SEQ2SEQ_PARAMS)
def seq2seq_gru(src_vocab_size: int = _VOCAB, tgt_vocab_size: int = _VOCAB,
                embed_size: int = 256, num_hiddens: int = 256, num_layers: int = 2,
                dropout: float = 0.2, bidirectional: bool = False) -> Seq2Seq:
    """GRU encoder-decoder, the context fed at every step (defaults: d2l 1.0's sizes)."""
    return Seq2Seq(src_vocab_size, tgt_vocab_size, embed_size, num_hiddens, num_layers,
                   dropout, bidirectional)


@register_model("bahdanau-gru", family="seq2seq",
                section="11.4 The Bahdanau Attention Mechanism", task="translation",
                input_shape=(9,), params=_SEQ2SEQ_PARAMS + 2 * 256 * 256 + 256)
def bahdanau_gru(src_vocab_size: int = _VOCAB, tgt_vocab_size: int = _VOCAB,
                 embed_size: int = 256, num_hiddens: int = 256, num_layers: int = 2,
                 dropout: float = 0.2, bidirectional: bool = False) -> BahdanauSeq2Seq:
    """GRU encoder-decoder with additive attention over the encoder outputs (d2l 1.0 sizes)."""
    return BahdanauSeq2Seq(src_vocab_size, tgt_vocab_size, embed_size, num_hiddens,
                           num_layers, dropout, bidirectional)
