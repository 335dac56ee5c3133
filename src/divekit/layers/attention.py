"""11.5 Multi-head attention (d2l 11.5; Vaswani et al. 2017, "Attention Is All You Need") on
PyTorch's fused ``F.scaled_dot_product_attention``.

``h`` heads each attend with their own projections of width ``d / h``:
``head_i = softmax(Q_i K_i^T / sqrt(d / h)) V_i`` with ``Q_i = X_q W_q^i`` and so on, and the
heads' outputs are concatenated and projected by ``W_o``. All heads run in one batched kernel.

Mask conventions (the same as PyTorch's, which disagree with each other, so every argument
says which it follows):

* ``attn_mask`` is boolean and **True where a query may attend** to a key (SDPA's convention,
  not ``nn.MultiheadAttention``'s, whose True means "blocked").
* ``key_padding_mask`` is boolean and **True at padding keys** (``nn.MultiheadAttention``'s
  convention); ``key_lengths`` gives the same information as valid key counts (the course's
  ``valid_lens``).
* ``is_causal``: query ``i`` attends to keys ``0 .. i``; the queries are the *last* positions of
  the keys (so with a key/value cache the new token sees all earlier ones).

The parameters are laid out as ``nn.MultiheadAttention``'s (``in_proj_weight`` stacking
``W_q, W_k, W_v``, ``in_proj_bias``, ``out_proj``), so its ``state_dict`` loads as it is
(:meth:`MultiHeadAttention.from_torch`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from divekit.errors import DivekitError

KeyValue = tuple[torch.Tensor, torch.Tensor]


class AttentionOutput(NamedTuple):
    """What :class:`MultiHeadAttention` returns.

    Attributes:
        output: ``(B, Lq, E)``.
        weights: attention weights (before dropout), ``(B, Lq, Lk)`` averaged over heads or
            ``(B, H, Lq, Lk)``; ``None`` unless asked for.
        cache: the projected keys and values attended to, each ``(B, H, Lk, E / H)``, to pass
            as ``past_key_value`` next time; ``None`` unless ``use_cache``.
    """

    output: torch.Tensor
    weights: torch.Tensor | None
    cache: KeyValue | None


def keys_allowed(num_keys: int, lengths: torch.Tensor | None = None,
                 key_padding_mask: torch.Tensor | None = None) -> torch.Tensor | None:
    """The boolean mask of the keys a query may attend to, ready to broadcast over heads.

    Args:
        num_keys: ``Lk``.
        lengths: ``(B,)`` valid key counts: keys ``0 .. lengths[b] - 1`` are real.
        key_padding_mask: ``(B, Lk)`` boolean, True at padding (``nn.MultiheadAttention``'s
            convention).

    Returns:
        ``(B, 1, 1, Lk)``, True where attention is allowed; ``None`` when neither is given.
    """
    allowed = None
    if lengths is not None:
        if lengths.ndim != 1:
            raise DivekitError(f"key lengths must have shape (batch,), got {tuple(lengths.shape)}")
        allowed = torch.arange(num_keys, device=lengths.device) < lengths[:, None]
    if key_padding_mask is not None:
        if key_padding_mask.dtype != torch.bool or key_padding_mask.ndim != 2 \
                or key_padding_mask.shape[1] != num_keys:
            raise DivekitError(f"key_padding_mask must be boolean of shape (batch, {num_keys}) "
                               f"with True at padding, got {key_padding_mask.dtype} "
                               f"{tuple(key_padding_mask.shape)}")
        allowed = ~key_padding_mask if allowed is None else allowed & ~key_padding_mask
    return None if allowed is None else allowed[:, None, None, :]


def causal_mask(num_queries: int, num_keys: int,
                device: torch.device | str | None = None) -> torch.Tensor:
    """``(Lq, Lk)`` boolean, True where key ``j`` is not after query ``i``.

    The queries are the last ``Lq`` of the ``Lk`` positions (query ``i`` sits at position
    ``Lk - Lq + i``), which is what decoding with a key/value cache needs; SDPA's own
    ``is_causal`` aligns them with the first positions instead, so it is only used when
    ``Lq == Lk``, where both agree.
    """
    query_positions = torch.arange(num_queries, device=device)[:, None] + (num_keys - num_queries)
    return torch.arange(num_keys, device=device) <= query_positions


class MultiHeadAttention(nn.Module):
    """Multi-head scaled dot-product attention with masks, a key/value cache and weights.

    Args:
        embed_dim: model width ``E`` (of queries, keys, values and output).
        num_heads: ``H``; must divide ``E``.
        dropout: drop probability on the attention weights (training mode only).
        bias: biases in the four projections (``nn.MultiheadAttention``'s ``bias``; the course's
            d2l 1.0 attention has none).

    Initialisation: Xavier-uniform for each of ``W_q, W_k, W_v`` (as ``E x E`` matrices) and
    ``W_o``, zero biases.

    Shape:
        - query ``(B, Lq, E)``; key/value ``(B, Lk, E)`` (batch first).
        - output ``(B, Lq, E)``.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0,
                 bias: bool = True) -> None:
        super().__init__()
        for name, value in (("embed_dim", embed_dim), ("num_heads", num_heads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DivekitError(f"{name} must be a positive integer, got {value!r}")
        if embed_dim % num_heads:
            raise DivekitError(f"num_heads={num_heads} must divide embed_dim={embed_dim}; pick "
                               f"a number of heads that divides the model width")
        if not 0 <= dropout < 1:
            raise DivekitError(f"dropout must be in [0, 1), got {dropout!r}")
        self.embed_dim, self.num_heads, self.dropout = embed_dim, num_heads, float(dropout)
        self.head_dim = embed_dim // num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        if bias:
            self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for weight in self.in_proj_weight.chunk(3):
            nn.init.xavier_uniform_(weight)
        nn.init.xavier_uniform_(self.out_proj.weight)
        for bias in (self.in_proj_bias, self.out_proj.bias):
            if bias is not None:
                nn.init.zeros_(bias)

    @classmethod
    def from_torch(cls, module: nn.MultiheadAttention) -> MultiHeadAttention:
        """A copy of ``module``'s weights and settings (same dtype and device).

        Raises:
            DivekitError: for ``kdim``/``vdim`` other than ``embed_dim``, ``add_bias_kv`` or
                ``add_zero_attn``, which this layer does not have.
        """
        if not module._qkv_same_embed_dim or module.bias_k is not None or module.add_zero_attn:
            raise DivekitError("only an nn.MultiheadAttention with kdim = vdim = embed_dim and "
                               "no add_bias_kv/add_zero_attn can be copied")
        layer = cls(module.embed_dim, module.num_heads, module.dropout,
                    bias=module.in_proj_bias is not None)
        layer.to(module.in_proj_weight)
        layer.load_state_dict(module.state_dict())
        return layer

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, L, E)`` -> ``(B, H, L, E / H)``."""
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def _project(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """``x`` through rows ``start * E .. stop * E`` of the stacked input projections."""
        rows = slice(start * self.embed_dim, stop * self.embed_dim)
        bias = None if self.in_proj_bias is None else self.in_proj_bias[rows]
        return F.linear(x, self.in_proj_weight[rows], bias)

    def project_key_value(self, key: torch.Tensor, value: torch.Tensor | None = None
                          ) -> KeyValue:
        """The keys and values of ``key``/``value`` (``value`` defaults to ``key``), split into
        heads: compute a memory's once and pass it as ``static_key_value`` at every step.

        Shape:
            key, value ``(B, Lk, E)`` -> two ``(B, H, Lk, E / H)``.
        """
        if value is None or value is key:  # one matmul for both
            k, v = self._project(key, 1, 3).chunk(2, dim=-1)
        else:
            k, v = self._project(key, 1, 2), self._project(value, 2, 3)
        return self._heads(k), self._heads(v)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor | None = None,
        value: torch.Tensor | None = None,
        *,
        key_padding_mask: torch.Tensor | None = None,
        key_lengths: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        past_key_value: KeyValue | None = None,
        static_key_value: KeyValue | None = None,
        use_cache: bool = False,
        need_weights: bool = False,
        average_weights: bool = True,
    ) -> AttentionOutput:
        """Attend from ``query`` to ``key``/``value`` (self-attention when both are ``None``).

        Args:
            query: ``(B, Lq, E)``.
            key, value: ``(B, Lk, E)``; ``value`` defaults to ``key``, both to ``query``.
            key_padding_mask: ``(B, Lk)`` boolean, True at padding keys.
            key_lengths: ``(B,)`` valid key counts (an alternative to ``key_padding_mask``;
                with a cache, counts over the cached keys followed by the new ones).
            attn_mask: boolean, True where query ``i`` may attend to key ``j``: ``(Lq, Lk)``,
                ``(B, Lq, Lk)`` or ``(B, H, Lq, Lk)``; combined with the other masks.
            is_causal: queries attend to no key after their own position (see the module
                docstring for the alignment with a cache).
            past_key_value: keys and values of earlier steps, each ``(B, H, L_past, E / H)``;
                the new ones are appended after them (incremental self-attention).
            static_key_value: keys and values to attend to as they are (from
                :meth:`project_key_value`; cross-attention over a memory); ``key``, ``value``
                and ``past_key_value`` must then be ``None``.
            use_cache: return the keys and values attended to, to pass as ``past_key_value``.
            need_weights: also return the attention weights; they are then computed with
                explicit matrix products instead of the fused kernel.
            average_weights: average the returned weights over heads.

        Every query must be allowed at least one key, or its output is NaN.

        Returns:
            :class:`AttentionOutput` ``(output, weights, cache)``.
        """
        if query.ndim != 3 or query.shape[-1] != self.embed_dim:
            raise DivekitError(f"query must have shape (batch, length, {self.embed_dim}), got "
                               f"{tuple(query.shape)}")
        if static_key_value is not None:
            if key is not None or value is not None or past_key_value is not None:
                raise DivekitError("static_key_value replaces key, value and past_key_value; "
                                   "pass only one of them")
            q = self._heads(self._project(query, 0, 1))
            k, v = static_key_value
        elif key is None and value is None:  # self-attention: one matmul for q, k and v
            q, k, v = (self._heads(x) for x in self._project(query, 0, 3).chunk(3, dim=-1))
        else:
            key = query if key is None else key
            q = self._heads(self._project(query, 0, 1))
            k, v = self.project_key_value(key, value)
        if past_key_value is not None:
            k = torch.cat([past_key_value[0], k], dim=2)
            v = torch.cat([past_key_value[1], v], dim=2)

        num_queries, num_keys = q.shape[2], k.shape[2]
        allowed = keys_allowed(num_keys, key_lengths, key_padding_mask)
        if attn_mask is not None:
            if attn_mask.dtype != torch.bool:
                raise DivekitError(f"attn_mask must be boolean (True = may attend), got "
                                   f"{attn_mask.dtype}")
            if attn_mask.ndim == 3:  # (B, Lq, Lk): the same for every head
                attn_mask = attn_mask[:, None]
            allowed = attn_mask if allowed is None else allowed & attn_mask
        # SDPA's is_causal aligns queries with the first keys: right only for Lq == Lk, and it
        # cannot be combined with a mask or explicit weights.
        fused_causal = (is_causal and allowed is None and num_queries == num_keys
                        and not need_weights)
        if is_causal and not fused_causal and num_queries > 1:  # one query sees every key
            causal = causal_mask(num_queries, num_keys, q.device)
            allowed = causal if allowed is None else allowed & causal

        dropout_p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
            if allowed is not None:
                scores = scores.masked_fill(~allowed, float("-inf"))
            weights = scores.softmax(dim=-1)
            heads = F.dropout(weights, dropout_p, self.training) @ v
            if average_weights:
                weights = weights.mean(dim=1)
        else:
            heads = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed,
                                                   dropout_p=dropout_p, is_causal=fused_causal)
        output = self.out_proj(heads.transpose(1, 2).flatten(2))
        return AttentionOutput(output, weights, (k, v) if use_cache else None)
