"""11.7 The Transformer architecture (d2l 11.7; Vaswani et al. 2017, "Attention Is All You
Need"): encoder and decoder layers and their stacks.

An encoder layer is self-attention then a position-wise feed-forward network (FFN,
``linear2(activation(linear1(x)))``); a decoder layer puts causal self-attention, then attention
over the encoder's output (the memory), then the FFN. Each sub-layer ``f`` sits in a residual
connection with layer normalisation:

* post-norm (the paper's and the course's ``AddNorm``): ``x = norm(x + dropout(f(x)))``;
* pre-norm (``norm_first=True``; nanoGPT, most large models): ``x = x + dropout(f(norm(x)))``,
  with one more layer norm at the end of the stack.

Sub-module names follow ``nn.TransformerEncoderLayer`` / ``nn.TransformerDecoderLayer``
(``self_attn``, ``multihead_attn``, ``linear1``, ``linear2``, ``norm1``..``norm3``), so their
state dicts load into these layers. The stacks embed tokens as the course does:
``dropout(embedding(x) * sqrt(d) + positions)``.

Decoding one token at a time reuses a cache per decoder layer,
``{"self": (keys, values), "cross": (keys, values)}`` of shapes ``(B, H, L, d / H)``: the
self-attention keys and values of the tokens so far (each step appends one position), and the
memory's keys and values, projected once by :meth:`Decoder.init_cache`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from divekit.errors import DivekitError
from divekit.layers.attention import KeyValue, MultiHeadAttention, keys_allowed
from divekit.layers.positional import LearnedPositionalEncoding, SinusoidalPositionalEncoding

LayerCache = dict[str, KeyValue]
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"relu": F.relu, "gelu": F.gelu}
POSITIONAL = {"sinusoidal": SinusoidalPositionalEncoding, "learned": LearnedPositionalEncoding}


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DivekitError(f"{name} must be a positive integer, got {value!r}")


class _Layer(nn.Module):
    """The FFN, norms and residual dropouts shared by encoder and decoder layers."""

    def __init__(self, d_model: int, ffn_num_hiddens: int, num_norms: int, dropout: float,
                 norm_first: bool, ffn_bias: bool, activation: str, ffn_dropout: float | None,
                 layer_norm_eps: float) -> None:
        super().__init__()
        _check_positive(d_model=d_model, ffn_num_hiddens=ffn_num_hiddens)
        if activation not in ACTIVATIONS:
            raise DivekitError(f"activation must be one of {', '.join(ACTIVATIONS)}, got "
                               f"{activation!r}")
        self.norm_first, self.activation_name = bool(norm_first), activation
        self.activation = ACTIVATIONS[activation]
        self.linear1 = nn.Linear(d_model, ffn_num_hiddens, bias=ffn_bias)
        self.dropout = nn.Dropout(dropout if ffn_dropout is None else ffn_dropout)
        self.linear2 = nn.Linear(ffn_num_hiddens, d_model, bias=ffn_bias)
        for index in range(1, num_norms + 1):
            self.add_module(f"norm{index}", nn.LayerNorm(d_model, eps=layer_norm_eps))
            self.add_module(f"dropout{index}", nn.Dropout(dropout))
        for linear in (self.linear1, self.linear2):
            nn.init.xavier_uniform_(linear.weight)
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.dropout(self.activation(self.linear1(x))))

    def _input(self, x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
        """What a sub-layer reads: the normalised input in pre-norm, the input in post-norm."""
        return norm(x) if self.norm_first else x

    def _add(self, x: torch.Tensor, y: torch.Tensor, norm: nn.Module,
             dropout: nn.Module) -> torch.Tensor:
        """The residual connection around a sub-layer with output ``y``."""
        return x + dropout(y) if self.norm_first else norm(x + dropout(y))


class EncoderLayer(_Layer):
    """Self-attention and FFN, each in a residual connection with layer norm.

    Args:
        d_model: model width ``d``.
        num_heads: attention heads (divides ``d``).
        ffn_num_hiddens: hidden units of the FFN.
        dropout: on the attention weights and on each sub-layer's output.
        norm_first: pre-norm instead of the course's post-norm.
        bias: biases in the attention projections.
        ffn_bias: biases in the FFN.
        activation: ``"relu"`` (the paper's) or ``"gelu"`` (BERT's).
        ffn_dropout: after the FFN's activation; ``None`` = ``dropout`` (as
            ``nn.TransformerEncoderLayer``); the course has none (0).
        layer_norm_eps: the norms' epsilon.

    Initialisation: Xavier-uniform weight matrices, zero biases, unit layer-norm scales.

    Shape:
        x ``(B, L, d)`` -> ``(B, L, d)``.
    """

    def __init__(self, d_model: int, num_heads: int, ffn_num_hiddens: int,
                 dropout: float = 0.0, *, norm_first: bool = False, bias: bool = True,
                 ffn_bias: bool = True, activation: str = "relu",
                 ffn_dropout: float | None = None, layer_norm_eps: float = 1e-5) -> None:
        super().__init__(d_model, ffn_num_hiddens, 2, dropout, norm_first, ffn_bias, activation,
                         ffn_dropout, layer_norm_eps)
        self.self_attn = MultiHeadAttention(d_model, num_heads, dropout, bias)

    def forward(self, x: torch.Tensor, *, key_padding_mask: torch.Tensor | None = None,
                lengths: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Args: ``key_padding_mask`` ``(B, L)`` True at padding, or ``lengths`` ``(B,)``
        valid lengths; ``attn_mask`` boolean, True = may attend (see
        :meth:`MultiHeadAttention.forward`). Padding positions get outputs too (ignore them)."""
        attended = self.self_attn(self._input(x, self.norm1), key_padding_mask=key_padding_mask,
                                  key_lengths=lengths, attn_mask=attn_mask).output
        x = self._add(x, attended, self.norm1, self.dropout1)
        return self._add(x, self._ffn(self._input(x, self.norm2)), self.norm2, self.dropout2)


class DecoderLayerOutput(NamedTuple):
    """``output`` ``(B, T, d)``; ``cache`` the updated :data:`LayerCache` (when one was given);
    ``cross_weights`` ``(B, T, S)`` the memory attention averaged over heads (when asked)."""

    output: torch.Tensor
    cache: LayerCache | None
    cross_weights: torch.Tensor | None


class DecoderLayer(_Layer):
    """Causal self-attention, attention over the memory, and FFN, each with residual and norm.

    Args: as :class:`EncoderLayer`.

    Shape:
        x ``(B, T, d)``, memory ``(B, S, d)`` -> output ``(B, T, d)``.
    """

    def __init__(self, d_model: int, num_heads: int, ffn_num_hiddens: int,
                 dropout: float = 0.0, *, norm_first: bool = False, bias: bool = True,
                 ffn_bias: bool = True, activation: str = "relu",
                 ffn_dropout: float | None = None, layer_norm_eps: float = 1e-5) -> None:
        super().__init__(d_model, ffn_num_hiddens, 3, dropout, norm_first, ffn_bias, activation,
                         ffn_dropout, layer_norm_eps)
        self.self_attn = MultiHeadAttention(d_model, num_heads, dropout, bias)
        self.multihead_attn = MultiHeadAttention(d_model, num_heads, dropout, bias)

    def init_cache(self, memory: torch.Tensor) -> LayerCache:
        """The cache before the first token: no keys of its own, the memory's projected."""
        attn = self.self_attn
        empty = memory.new_zeros(memory.shape[0], attn.num_heads, 0, attn.head_dim)
        return {"self": (empty, empty), "cross": self.multihead_attn.project_key_value(memory)}

    def forward(self, x: torch.Tensor, memory: torch.Tensor | None = None, *,
                memory_key_padding_mask: torch.Tensor | None = None,
                memory_lengths: torch.Tensor | None = None,
                memory_mask: torch.Tensor | None = None, cache: LayerCache | None = None,
                need_weights: bool = False) -> DecoderLayerOutput:
        """Decode ``x`` (whole targets, or the next tokens after those in ``cache``).

        Args:
            x: ``(B, T, d)``; position ``t`` attends to positions ``<= t`` (and, with a cache,
                to all cached ones).
            memory: encoder output ``(B, S, d)``; unused when ``cache`` holds its projection.
            memory_key_padding_mask: ``(B, S)`` True at padding; or ``memory_lengths`` ``(B,)``.
            memory_mask: boolean, True = may attend, broadcastable to ``(B, H, T, S)``.
            cache: from :meth:`init_cache` or an earlier call; the output holds the new one.
            need_weights: return the memory attention's weights averaged over heads.
        """
        cross = None if cache is None else cache.get("cross")
        if memory is None and cross is None:
            raise DivekitError("the decoder layer needs the memory (encoder output) or a cache "
                               "made by init_cache(memory)")
        attended = self.self_attn(self._input(x, self.norm1), is_causal=True,
                                  past_key_value=None if cache is None else cache["self"],
                                  use_cache=cache is not None)
        x = self._add(x, attended.output, self.norm1, self.dropout1)
        source = {"static_key_value": cross} if cross is not None else {"key": memory}
        crossed = self.multihead_attn(self._input(x, self.norm2), **source,
                                      key_padding_mask=memory_key_padding_mask,
                                      key_lengths=memory_lengths, attn_mask=memory_mask,
                                      need_weights=need_weights)
        x = self._add(x, crossed.output, self.norm2, self.dropout2)
        x = self._add(x, self._ffn(self._input(x, self.norm3)), self.norm3, self.dropout3)
        new_cache = None if cache is None else {"self": attended.cache, "cross": cross}
        return DecoderLayerOutput(x, new_cache, crossed.weights)


class _Stack(nn.Module):
    """Token embedding scaled by ``sqrt(d)``, positions, dropout; layers; a final pre-norm."""

    def __init__(self, layer_type: type[_Layer], vocab_size: int, num_hiddens: int,
                 num_layers: int, num_heads: int, ffn_num_hiddens: int, dropout: float,
                 norm_first: bool, max_len: int, positional: str, layer_norm_eps: float,
                 **layer_options) -> None:
        super().__init__()
        _check_positive(vocab_size=vocab_size, num_hiddens=num_hiddens, num_layers=num_layers,
                        max_len=max_len)
        if positional not in POSITIONAL:
            raise DivekitError(f"positional must be one of {', '.join(POSITIONAL)}, got "
                               f"{positional!r}")
        self.num_hiddens = num_hiddens
        self.embedding = nn.Embedding(vocab_size, num_hiddens)
        # Standard deviation d^-1/2, so that the embedding times sqrt(d) has unit scale, like
        # the positional encodings it is added to (Vaswani et al.; fairseq).
        nn.init.normal_(self.embedding.weight, std=num_hiddens ** -0.5)
        self.positional = POSITIONAL[positional](num_hiddens, max_len)
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            layer_type(num_hiddens, num_heads, ffn_num_hiddens, dropout, norm_first=norm_first,
                       layer_norm_eps=layer_norm_eps, **layer_options)
            for _ in range(num_layers))
        # Pre-norm layers add un-normalised sub-layer outputs to the residual stream.
        self.norm = nn.LayerNorm(num_hiddens, eps=layer_norm_eps) if norm_first else None

    def embed(self, tokens: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """``(B, T)`` token ids at positions ``offset ..`` -> ``(B, T, d)`` layer input."""
        if tokens.ndim != 2 or tokens.dtype != torch.long:
            raise DivekitError(f"tokens must be an int64 tensor of shape (batch, length), got "
                               f"{tokens.dtype} {tuple(tokens.shape)}")
        x = self.embedding(tokens) * math.sqrt(self.num_hiddens)
        return self.dropout(self.positional(x, offset))

    def _final(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.norm is None else self.norm(x)


class Encoder(_Stack):
    """The Transformer encoder: embedded tokens through ``num_layers`` :class:`EncoderLayer`.

    Args:
        vocab_size: source vocabulary size.
        num_hiddens: model width ``d``.
        num_layers, num_heads, ffn_num_hiddens, dropout: the layers' (see
            :class:`EncoderLayer`); ``dropout`` also follows the embedding.
        norm_first: pre-norm layers and a final layer norm.
        bias, ffn_bias, activation, ffn_dropout, layer_norm_eps: see :class:`EncoderLayer`.
        max_len: longest sequence.
        positional: ``"sinusoidal"`` (the course's) or ``"learned"``.

    Initialisation: embeddings normal with standard deviation ``d^-1/2``; see the layers.

    Shape:
        tokens ``(B, S)``, lengths ``(B,)`` -> ``(B, S, d)``.
    """

    def __init__(self, vocab_size: int, num_hiddens: int, num_layers: int, num_heads: int,
                 ffn_num_hiddens: int, dropout: float = 0.0, *, norm_first: bool = False,
                 bias: bool = True, ffn_bias: bool = True, activation: str = "relu",
                 ffn_dropout: float | None = None, max_len: int = 1000,
                 positional: str = "sinusoidal", layer_norm_eps: float = 1e-5) -> None:
        super().__init__(EncoderLayer, vocab_size, num_hiddens, num_layers, num_heads,
                         ffn_num_hiddens, dropout, norm_first, max_len, positional,
                         layer_norm_eps, bias=bias, ffn_bias=ffn_bias, activation=activation,
                         ffn_dropout=ffn_dropout)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor | None = None, *,
                key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Encode ``tokens`` whose positions from ``lengths[b]`` on (or where
        ``key_padding_mask`` is True) are padding that no position attends to."""
        x = self.embed(tokens)
        allowed = keys_allowed(tokens.shape[1], lengths, key_padding_mask)  # built once
        for layer in self.layers:
            x = layer(x, attn_mask=allowed)
        return self._final(x)


class DecoderOutput(NamedTuple):
    """``output`` ``(B, T, d)`` (before any vocabulary projection); ``cache`` one
    :data:`LayerCache` per layer (when one was given); ``cross_weights`` ``(B, T, S)``, the last
    layer's memory attention averaged over heads (when asked)."""

    output: torch.Tensor
    cache: list[LayerCache] | None
    cross_weights: torch.Tensor | None


class Decoder(_Stack):
    """The Transformer decoder: embedded tokens through ``num_layers`` :class:`DecoderLayer`.

    Args: as :class:`Encoder` (``vocab_size`` of the target).

    Shape:
        tokens ``(B, T)``, memory ``(B, S, d)`` -> output ``(B, T, d)``.
    """

    def __init__(self, vocab_size: int, num_hiddens: int, num_layers: int, num_heads: int,
                 ffn_num_hiddens: int, dropout: float = 0.0, *, norm_first: bool = False,
                 bias: bool = True, ffn_bias: bool = True, activation: str = "relu",
                 ffn_dropout: float | None = None, max_len: int = 1000,
                 positional: str = "sinusoidal", layer_norm_eps: float = 1e-5) -> None:
        super().__init__(DecoderLayer, vocab_size, num_hiddens, num_layers, num_heads,
                         ffn_num_hiddens, dropout, norm_first, max_len, positional,
                         layer_norm_eps, bias=bias, ffn_bias=ffn_bias, activation=activation,
                         ffn_dropout=ffn_dropout)

    def init_cache(self, memory: torch.Tensor) -> list[LayerCache]:
        """One empty-history cache per layer holding the memory's projected keys and values."""
        return [layer.init_cache(memory) for layer in self.layers]

    def forward(self, tokens: torch.Tensor, memory: torch.Tensor | None = None, *,
                memory_lengths: torch.Tensor | None = None,
                memory_key_padding_mask: torch.Tensor | None = None,
                cache: list[LayerCache] | None = None,
                need_weights: bool = False) -> DecoderOutput:
        """Decode whole targets (teacher forcing), or the next tokens after a cache.

        Args:
            tokens: ``(B, T)``; with a cache, the tokens after the cached ones (their positions
                continue from the cache's length).
            memory: encoder output ``(B, S, d)``; not needed with a cache.
            memory_lengths: ``(B,)`` valid source lengths; or ``memory_key_padding_mask``
                ``(B, S)``, True at padding.
            cache: from :meth:`init_cache` or an earlier call.
            need_weights: return the last layer's memory attention.
        """
        if cache is None:
            if memory is None:
                raise DivekitError("the decoder needs the memory (encoder output) or a cache "
                                   "made by init_cache(memory)")
            offset, num_keys = 0, memory.shape[1]
        else:
            if len(cache) != len(self.layers):
                raise DivekitError(f"the cache has {len(cache)} layers, the decoder "
                                   f"{len(self.layers)}; make it with init_cache")
            offset, num_keys = cache[0]["self"][0].shape[2], cache[0]["cross"][0].shape[2]
            memory = None  # its keys and values are in the cache
        x = self.embed(tokens, offset)
        allowed = keys_allowed(num_keys, memory_lengths, memory_key_padding_mask)
        new_cache, weights = ([] if cache is not None else None), None
        for index, layer in enumerate(self.layers):
            last = index == len(self.layers) - 1
            out = layer(x, memory, memory_mask=allowed,
                        cache=None if cache is None else cache[index],
                        need_weights=need_weights and last)
            x, weights = out.output, out.cross_weights
            if new_cache is not None:
                new_cache.append(out.cache)
        return DecoderOutput(self._final(x), new_cache, weights)
