"""9.6 Concise implementation of recurrent neural networks, and 10.1-10.4 LSTM, GRU, deep and
bidirectional RNNs, as language models on PyTorch's fused ``nn.RNN`` / ``nn.GRU`` / ``nn.LSTM``.

A language model reads tokens ``x_1 .. x_T`` and at every step predicts the next token. Each
input token is a one-hot vector (as in the course) or a learned embedding; the recurrent layers
turn it into a hidden state ``h_t``, and one shared linear layer maps ``h_t`` to the logits of
token ``x_{t+1}``. The recurrences (one layer, one direction):

* RNN (9.4; Elman 1990): ``h_t = tanh(W_xh x_t + b_xh + W_hh h_{t-1} + b_hh)``.
* LSTM (10.1; Hochreiter & Schmidhuber 1997): gates ``i, f, o = sigmoid(...)``, candidate
  ``g = tanh(...)``, memory ``c_t = f * c_{t-1} + i * g`` and ``h_t = o * tanh(c_t)``.
* GRU (10.2; Cho et al. 2014): reset ``r`` and update ``z`` gates,
  ``n = tanh(W_xn x_t + b_xn + r * (W_hn h_{t-1} + b_hn))`` and ``h_t = (1 - z) * n + z * h_{t-1}``.

Deep RNNs (10.3) stack layers: layer ``l`` reads the hidden states of layer ``l - 1``. A
bidirectional RNN (10.4) runs a second stack from the end of the sequence to its start and
concatenates both hidden states, so its output at step ``t`` depends on the tokens after ``t``:
it suits tagging and feature extraction, not next-token prediction or text generation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from divekit.errors import DivekitError
from divekit.models.registry import register_model
from divekit.models.resnet import check_positive

CELLS = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}
BIDIRECTIONAL_REFUSAL = (
    "this model is bidirectional: its output at step t sees the future (the tokens after t), "
    "so it cannot generate text one token at a time; use it for tagging/feature extraction or "
    "train a unidirectional model"
)

State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


def _check_sizes(dropout: float, **sizes: int) -> None:
    check_positive(**sizes)
    if not 0 <= dropout < 1:
        raise DivekitError(f"dropout must be in [0, 1), got {dropout!r}")


def _check_tokens(x: object) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.dtype != torch.long:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise DivekitError(f"the input must be an int64 tensor of token indices of shape "
                           f"(batch, steps), got {shape}")


class RNNLanguageModel(nn.Module):
    """Token embedding (one-hot or learned), a recurrent stack, and a per-step output layer.

    ``forward(x)`` gives logits; ``forward(x, targets)`` gives ``(logits, loss)`` as the
    Trainer expects of a model with ``returns_loss``. Each call starts from the zero state
    unless ``state`` is given; :meth:`step` also returns the final state, to carry it on.

    Args:
        vocab_size: number of tokens ``V``.
        cell: ``"rnn"`` (tanh), ``"gru"`` or ``"lstm"``.
        hidden_size: hidden units ``H`` per layer and direction.
        num_layers: stacked recurrent layers ``L``.
        bidirectional: add a layer stack that reads the sequence backwards (sees the future).
        embedding_dim: ``None`` feeds one-hot vectors of size ``V`` as the course does; an int
            learns an ``nn.Embedding`` of that size.
        dropout: drop probability on the outputs of every recurrent layer (between layers and
            before the output layer); active in training mode only.

    Shape:
        - x: ``(B, T)`` int64 token indices; targets: ``(B, T)``, the next token of each step.
        - logits: ``(B, T, V)``.
        - state: ``(L * D, B, H)`` with ``D = 2`` when bidirectional, else 1; for the LSTM a
          pair ``(h, c)`` of such tensors.
    """

    returns_loss = True

    def __init__(
        self,
        vocab_size: int,
        cell: str = "rnn",
        hidden_size: int = 32,
        num_layers: int = 1,
        bidirectional: bool = False,
        embedding_dim: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if cell not in CELLS:
            raise DivekitError(f"cell must be one of {', '.join(CELLS)}, got {cell!r}")
        _check_sizes(dropout, vocab_size=vocab_size, hidden_size=hidden_size,
                     num_layers=num_layers,
                     **({} if embedding_dim is None else {"embedding_dim": embedding_dim}))
        self.vocab_size, self.cell, self.bidirectional = vocab_size, cell, bool(bidirectional)
        self.embedding = nn.Embedding(vocab_size, embedding_dim) if embedding_dim else None
        # nn.RNN drops only between its layers (and warns when there is one layer), so the
        # last layer's outputs get their own dropout below. The layer runs time-major: fed
        # (B, T) batches it then needs no transposed copies of its inputs and outputs, which
        # made a training epoch 1.25x faster at hidden 256 (oneDNN, 2-core EPYC).
        self.rnn = CELLS[cell](
            embedding_dim or vocab_size, hidden_size, num_layers,
            bidirectional=self.bidirectional, dropout=dropout if num_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(hidden_size * (2 if self.bidirectional else 1), vocab_size)

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        """One-hot vectors or embeddings of the tokens, time-major: ``(T, B, V or
        embedding_dim)``."""
        _check_tokens(x)
        if self.embedding is not None:
            return self.embedding(x.T)
        return F.one_hot(x.T, self.vocab_size).to(self.output.weight.dtype)

    def _run(self, x: torch.Tensor, state: State | None) -> tuple[torch.Tensor, State]:
        outputs, state = self.rnn(self._inputs(x), state)
        return self.output(self.dropout(outputs)).transpose(0, 1), state

    def forward(
        self, x: torch.Tensor, targets: torch.Tensor | None = None, state: State | None = None
    ):
        """Logits of the next token at every step, and the mean cross-entropy when given targets.

        Args:
            x: token indices, shape ``(B, T)``.
            targets: the next tokens, shape ``(B, T)``; optional.
            state: initial state (see the class docstring); ``None`` = zeros.

        Returns:
            ``logits`` of shape ``(B, T, V)``, or ``(logits, loss)`` with ``loss`` the
            cross-entropy averaged over all ``B * T`` tokens.
        """
        logits, _ = self._run(x, state)
        if targets is None:
            return logits
        if targets.shape != x.shape:
            raise DivekitError(f"targets must have the input's shape {tuple(x.shape)}, got "
                               f"{tuple(targets.shape)}")
        return logits, F.cross_entropy(logits.reshape(-1, self.vocab_size), targets.reshape(-1))

    def step(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Advance the state over ``x`` (one token or more per row) and return its logits.

        Calling ``step`` token by token, passing each returned state to the next call, gives
        the same logits as one ``forward`` over the whole sequence.

        Args:
            x: token indices, shape ``(B, T)``, e.g. ``T = 1`` when generating.
            state: the state after the previous tokens; ``None`` = zeros.

        Returns:
            ``(logits, state)``: logits of shape ``(B, T, V)`` and the state after the last token.
        """
        if self.bidirectional:
            raise DivekitError(BIDIRECTIONAL_REFUSAL)
        return self._run(x, state)


SECTIONS = {
    "9.6": "9.6 Concise Implementation of Recurrent Neural Networks",
    "10.1": "10.1 Long Short-Term Memory (LSTM)",
    "10.2": "10.2 Gated Recurrent Units (GRU)",
    "10.3": "10.3 Deep Recurrent Neural Networks",
    "10.4": "10.4 Bidirectional Recurrent Neural Networks",
}


def _lm(name: str, section: str, params: int):
    """Register a language model; ``params`` is its count for the default 28-token vocabulary
    (ours: tests/models/test_rnn_lm.py derives it from the layer layout)."""
    return register_model(name, family="rnn", section=SECTIONS[section], task="language-model",
                          input_shape=(35,), params=params)


@_lm("rnn-lm", "9.6", params=2_908)
def rnn_lm(
    num_classes: int = 28, hidden_size: int = 32, num_layers: int = 1,
    embedding_dim: int | None = None, dropout: float = 0.0,
) -> nn.Module:
    """Tanh RNN language model (the course's 9.6 model: 32 hidden units, one-hot input).

    Args:
        num_classes: the vocabulary size (``create_model`` takes it from the data).
        hidden_size, num_layers, embedding_dim, dropout: see :class:`RNNLanguageModel`.
    """
    return RNNLanguageModel(num_classes, "rnn", hidden_size, num_layers, False, embedding_dim,
                            dropout)


@_lm("lstm-lm", "10.1", params=8_860)
def lstm_lm(
    num_classes: int = 28, hidden_size: int = 32, num_layers: int = 1,
    embedding_dim: int | None = None, dropout: float = 0.0,
) -> nn.Module:
    """LSTM language model (the course's 10.1 model: 32 hidden units, one-hot input).

    Args:
        num_classes: the vocabulary size (``create_model`` takes it from the data).
        hidden_size, num_layers, embedding_dim, dropout: see :class:`RNNLanguageModel`.
    """
    return RNNLanguageModel(num_classes, "lstm", hidden_size, num_layers, False, embedding_dim,
                            dropout)


@_lm("gru-lm", "10.2", params=6_876)
def gru_lm(
    num_classes: int = 28, hidden_size: int = 32, num_layers: int = 1,
    embedding_dim: int | None = None, dropout: float = 0.0,
) -> nn.Module:
    """GRU language model (the course's 10.2 model: 32 hidden units, one-hot input).

    Args:
        num_classes: the vocabulary size (``create_model`` takes it from the data).
        hidden_size, num_layers, embedding_dim, dropout: see :class:`RNNLanguageModel`.
    """
    return RNNLanguageModel(num_classes, "gru", hidden_size, num_layers, False, embedding_dim,
                            dropout)


@_lm("deep-gru-lm", "10.3", params=13_212)
def deep_gru_lm(
    num_classes: int = 28, hidden_size: int = 32, num_layers: int = 2,
    embedding_dim: int | None = None, dropout: float = 0.0,
) -> nn.Module:
    """Deep GRU language model: two stacked GRU layers of 32 units (the course's 10.3 model).

    Args:
        num_classes: the vocabulary size (``create_model`` takes it from the data).
        hidden_size, num_layers, embedding_dim, dropout: see :class:`RNNLanguageModel`.
    """
    return RNNLanguageModel(num_classes, "gru", hidden_size, num_layers, False, embedding_dim,
                            dropout)


class BiLSTMTagger(nn.Module):
    """A bidirectional LSTM tagger (10.4): one label per input token, from both directions'
    hidden states, so the tag of token ``t`` can depend on the tokens after it.

    Embeddings -> dropout -> ``nn.LSTM(bidirectional=True)`` -> dropout -> a linear layer over
    the concatenated states. Given ``valid_len``, each sequence is packed to its length, so
    the backward direction starts at the sequence's own last token, not at the padding: the
    outputs of a padded sequence equal those of the sequence alone.

    Shape:
        tokens: ``(B, T)`` token ids; ``segments`` (ignored: one sentence per input, as the
        word-tagging data's batches carry them) and ``valid_len``: ``(B,)`` tokens that are
        not padding -> logits ``(B, T, num_classes)`` (the output bias at padded positions).
    """

    def __init__(self, vocab_size: int, num_classes: int, embedding_dim: int = 64,
                 hidden_size: int = 64, num_layers: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        _check_sizes(dropout, vocab_size=vocab_size, num_classes=num_classes,
                     embedding_dim=embedding_dim, hidden_size=hidden_size, num_layers=num_layers)
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.rnn = nn.LSTM(embedding_dim, hidden_size, num_layers, bidirectional=True,
                           dropout=dropout if num_layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(2 * hidden_size, num_classes)

    def forward(self, tokens: torch.Tensor, segments: torch.Tensor | None = None,
                valid_len: torch.Tensor | None = None) -> torch.Tensor:
        _check_tokens(tokens)
        inputs = self.dropout(self.embedding(tokens.T))  # time-major, as in RNNLanguageModel
        if valid_len is None:
            outputs, _ = self.rnn(inputs)
        else:
            packed = nn.utils.rnn.pack_padded_sequence(inputs, valid_len.cpu(),
                                                       enforce_sorted=False)
            outputs, _ = nn.utils.rnn.pad_packed_sequence(self.rnn(packed)[0],
                                                          total_length=tokens.shape[1])
        return self.output(self.dropout(outputs)).transpose(0, 1)


@register_model("bilstm-tagger", family="rnn", section=SECTIONS["10.4"],
                task="token-classification", input_shape=(35,), params=580_753)
def bilstm_tagger(
    vocab_size: int = 8000, num_classes: int = 17, embedding_dim: int = 64,
    hidden_size: int = 64, num_layers: int = 1, dropout: float = 0.0,
) -> nn.Module:
    """Bidirectional LSTM tagger (word pieces in, one tag per piece; e.g. ud-ewt-pos, wnut-17).

    Args:
        vocab_size, num_classes: the tokenizer's size and the number of tags
            (``create_model`` takes both from the data).
        embedding_dim, hidden_size, num_layers, dropout: see :class:`BiLSTMTagger`.
    """
    return BiLSTMTagger(vocab_size, num_classes, embedding_dim, hidden_size, num_layers, dropout)
