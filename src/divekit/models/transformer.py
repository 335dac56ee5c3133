"""11.7 The Transformer architecture for machine translation (d2l 11.7; Vaswani et al. 2017,
"Attention Is All You Need").

The encoder reads the source with self-attention; the decoder predicts each target token from
the tokens before it (causal self-attention) and the source (attention over the encoder's
output). Training feeds whole targets at once (teacher forcing, one fused pass); decoding feeds
one token per step and keeps each decoder layer's keys and values in a cache, so a step costs
one new position instead of the whole prefix.

``transformer-mt`` with its defaults is the course's d2l 1.0 model exactly: post-norm blocks,
attention projections without biases, FFN with biases and no dropout inside, 256 hidden units,
2 blocks per side, 4 heads, FFN width 64, dropout 0.2, sinusoidal positions for 1000 steps,
embeddings scaled by ``sqrt(d)``, an output layer with bias. The book recipe is
``transformer-mt`` with ``model_options`` holding only the vocabulary sizes (from the data);
``attention_bias=True, norm_first=True`` give today's common variant.

Initialisation (ours; the course leaves PyTorch's defaults): Xavier-uniform weight matrices
(each of ``W_q, W_k, W_v, W_o``, the FFN and the output layer), zero biases, embeddings normal
with standard deviation ``d^-1/2`` (unit scale after the ``sqrt(d)`` factor).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from divekit.errors import DivekitError
from divekit.layers.attention import MultiHeadAttention
from divekit.layers.transformer import Decoder, Encoder
from divekit.models.registry import register_model
from divekit.models.seq2seq import select_rows

State = dict[str, Any]
INITS = ("xavier", "torch")


def _torch_default_init(module: nn.Module) -> None:
    """PyTorch's default initialisation of each layer (d2l's lazy layers get these)."""
    if isinstance(module, nn.Linear | nn.Embedding | nn.LayerNorm):
        module.reset_parameters()
    elif isinstance(module, MultiHeadAttention):
        # One (3d, d) matrix with fan-in d: the same bound as three (d, d) nn.Linear weights.
        nn.init.kaiming_uniform_(module.in_proj_weight, a=math.sqrt(5))


class TransformerTranslator(nn.Module):
    """Transformer encoder-decoder with the translation interface of :mod:`divekit.models.seq2seq`.

    Args:
        src_vocab_size, tgt_vocab_size: vocabulary sizes.
        num_hiddens: model width ``d``.
        num_layers: blocks of the encoder and of the decoder.
        num_heads: attention heads (divides ``d``).
        ffn_num_hiddens: hidden units of the position-wise FFN.
        dropout: on the embeddings, the attention weights and every sub-layer's output.
        norm_first: pre-norm blocks (and a final norm per stack) instead of post-norm.
        attention_bias: biases in the attention projections (the course has none).
        max_len: longest source and target.
        tie_embeddings: the output layer's weight is the decoder's input embedding.
        init: ``"xavier"`` (ours, see the module's docstring) or ``"torch"``: PyTorch's
            defaults, which the course's model keeps (embeddings N(0, 1), so that after the
            ``sqrt(d)`` factor they dwarf the positional encoding; Kaiming-uniform linear
            layers).

    Shape:
        src ``(B, S)``, src_len ``(B,)``, tgt_in ``(B, T)`` -> logits ``(B, T, V_tgt)``.
    """

    def __init__(self, src_vocab_size: int, tgt_vocab_size: int, num_hiddens: int = 256,
                 num_layers: int = 2, num_heads: int = 4, ffn_num_hiddens: int = 64,
                 dropout: float = 0.2, *, norm_first: bool = False,
                 attention_bias: bool = False, max_len: int = 1000,
                 tie_embeddings: bool = False, init: str = "xavier") -> None:
        super().__init__()
        if not 0 <= dropout < 1:
            raise DivekitError(f"dropout must be in [0, 1), got {dropout!r}")
        if init not in INITS:
            raise DivekitError(f"init must be one of {', '.join(INITS)}, got {init!r}")
        options = {"norm_first": norm_first, "bias": attention_bias, "ffn_bias": True,
                   "ffn_dropout": 0.0, "max_len": max_len}
        self.encoder = Encoder(src_vocab_size, num_hiddens, num_layers, num_heads,
                               ffn_num_hiddens, dropout, **options)
        self.decoder = Decoder(tgt_vocab_size, num_hiddens, num_layers, num_heads,
                               ffn_num_hiddens, dropout, **options)
        self.output = nn.Linear(num_hiddens, tgt_vocab_size)
        nn.init.zeros_(self.output.bias)
        if tie_embeddings:
            self.output.weight = self.decoder.embedding.weight
        else:
            nn.init.xavier_uniform_(self.output.weight)
        if init == "torch":
            self.apply(_torch_default_init)

    @staticmethod
    def _check(src: torch.Tensor, src_len: torch.Tensor) -> None:
        if src.ndim != 2 or src.dtype != torch.long:
            raise DivekitError(f"src must be an int64 tensor of shape (batch, length), got "
                               f"{src.dtype} {tuple(src.shape)}")
        if src_len.shape != src.shape[:1]:
            raise DivekitError(f"src_len must have shape ({src.shape[0]},), one length per "
                               f"source, got {tuple(src_len.shape)}")

    def forward(self, src: torch.Tensor, src_len: torch.Tensor,
                tgt_in: torch.Tensor) -> torch.Tensor:
        """Next-token logits at every target position (teacher forcing, one pass)."""
        self._check(src, src_len)
        if tgt_in.ndim != 2 or tgt_in.shape[0] != src.shape[0]:
            raise DivekitError(f"tgt_in must have shape ({src.shape[0]}, steps), got "
                               f"{tuple(tgt_in.shape)}")
        memory = self.encoder(src, src_len)
        return self.output(self.decoder(tgt_in, memory, memory_lengths=src_len).output)

    def encode(self, src: torch.Tensor, src_len: torch.Tensor) -> State:
        """The decoding state: source lengths, and per decoder layer an empty self-attention
        cache and the memory's projected keys and values."""
        self._check(src, src_len)
        memory = self.encoder(src, src_len)
        return {"src_len": src_len, "cache": self.decoder.init_cache(memory)}

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """Logits ``(B, V_tgt)`` of the token after ``tokens`` ``(B,)``, and the new state
        (with ``"attention"`` ``(B, S)``: the last layer's memory attention, mean of heads)."""
        out = self.decoder(tokens[:, None], memory_lengths=state["src_len"],
                           cache=state["cache"], need_weights=True)
        logits = self.output(out.output[:, 0])
        return logits, {"src_len": state["src_len"], "cache": out.cache,
                        "attention": out.cross_weights[:, 0]}

    def reorder(self, state: State, index: torch.Tensor) -> State:
        return select_rows(state, index)


_VOCAB = 1000  # the registry's default vocabulary sizes


@register_model("transformer-mt", family="transformer",
                section="11.7 The Transformer Architecture", task="translation",
                input_shape=(9,),
                # Our count with the defaults (tests/models/test_transformer_mt.py derives it).
                params=2_479_336)
def transformer_mt(src_vocab_size: int = _VOCAB, tgt_vocab_size: int = _VOCAB,
                   num_hiddens: int = 256, num_layers: int = 2, num_heads: int = 4,
                   ffn_num_hiddens: int = 64, dropout: float = 0.2, norm_first: bool = False,
                   attention_bias: bool = False, max_len: int = 1000,
                   tie_embeddings: bool = False, init: str = "xavier") -> TransformerTranslator:
    """Transformer encoder-decoder (defaults: the course's d2l 1.0 model and sizes).

    Args: see :class:`TransformerTranslator`.
    """
    return TransformerTranslator(src_vocab_size, tgt_vocab_size, num_hiddens, num_layers,
                                 num_heads, ffn_num_hiddens, dropout, norm_first=norm_first,
                                 attention_bias=attention_bias, max_len=max_len,
                                 tie_embeddings=tie_embeddings, init=init)
