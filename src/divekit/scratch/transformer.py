"""The Transformer's blocks from scratch (course 11.7; Vaswani et al., 2017, "Attention Is All
You Need").

An encoder block is self-attention then a position-wise feed-forward network, each wrapped in a
residual connection with layer normalization; a decoder block adds, between the two, attention
over the encoder's outputs, and masks its self-attention so a position sees no later one.

Two orders of residual and norm (``norm_first``):

- post-norm, the paper's and the course's (``norm_first=False``): ``LN(x + dropout(f(x)))``;
- pre-norm, GPT-2's and most later models' (``norm_first=True``): ``x + dropout(f(LN(x)))``,
  which leaves an un-normalized path from input to output and trains deep stacks more stably
  (Xiong et al., 2020). A pre-norm stack usually ends with one more LayerNorm (not part of a
  block).

Parameters match ``nn.TransformerEncoderLayer`` / ``nn.TransformerDecoderLayer`` one to one
(with ``use_bias=True`` and ReLU), so their weights can be copied over; PyTorch also applies
dropout inside the feed-forward network, the course does not.
"""

from __future__ import annotations

import torch
from torch import nn

from divekit.scratch.attention import MultiHeadAttention


class PositionWiseFFN(nn.Module):
    """The same two-layer MLP applied to every position: ``dense2(relu(dense1(x)))``.

    Shape: (B, T, num_hiddens) -> (B, T, num_hiddens), hidden width ``ffn_num_hiddens``.
    """

    def __init__(self, num_hiddens: int, ffn_num_hiddens: int):
        super().__init__()
        self.dense1 = nn.Linear(num_hiddens, ffn_num_hiddens)
        self.relu = nn.ReLU()
        self.dense2 = nn.Linear(ffn_num_hiddens, num_hiddens)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.dense2(self.relu(self.dense1(X)))


class AddNorm(nn.Module):
    """Residual connection and layer normalization around a sublayer ``f``.

    Use as ``addnorm(X, f(addnorm.sublayer_input(X)))``:

    - post-norm (``norm_first=False``, the course): the sublayer reads ``X``, and the result is
      ``LN(X + dropout(Y))``;
    - pre-norm (``norm_first=True``): the sublayer reads ``LN(X)``, and the result is
      ``X + dropout(Y)``.

    Args:
        num_hiddens: feature size normalized over.
        dropout: dropout on the sublayer's output before the sum.
        norm_first: pre-norm instead of post-norm.

    Shape: X, Y: (B, T, num_hiddens) -> (B, T, num_hiddens).
    """

    def __init__(self, num_hiddens: int, dropout: float = 0.0, norm_first: bool = False):
        super().__init__()
        self.norm_first = norm_first
        self.dropout = nn.Dropout(dropout)
        self.ln = nn.LayerNorm(num_hiddens)

    def sublayer_input(self, X: torch.Tensor) -> torch.Tensor:
        """What the sublayer reads: ``LN(X)`` in pre-norm, ``X`` itself in post-norm."""
        return self.ln(X) if self.norm_first else X

    def forward(self, X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        if self.norm_first:
            return X + self.dropout(Y)
        return self.ln(X + self.dropout(Y))


class TransformerEncoderBlock(nn.Module):
    """Self-attention and a position-wise FFN, each with add & norm (course 11.7.4).

    Args:
        num_hiddens: model width d.
        ffn_num_hiddens: hidden width of the feed-forward network.
        num_heads: attention heads (must divide d).
        dropout: on the attention weights and on each sublayer's output.
        use_bias: biases in the attention projections (PyTorch's layers have them).
        norm_first: pre-norm instead of the course's post-norm.
    """

    def __init__(self, num_hiddens: int, ffn_num_hiddens: int, num_heads: int,
                 dropout: float = 0.0, use_bias: bool = False, norm_first: bool = False):
        super().__init__()
        self.attention = MultiHeadAttention(num_hiddens, num_heads, dropout, use_bias)
        self.addnorm1 = AddNorm(num_hiddens, dropout, norm_first)
        self.ffn = PositionWiseFFN(num_hiddens, ffn_num_hiddens)
        self.addnorm2 = AddNorm(num_hiddens, dropout, norm_first)

    def forward(self, X: torch.Tensor, valid_lens: torch.Tensor | None = None) -> torch.Tensor:
        """Encode a batch of sequences.

        Args:
            X: the input sequences.
            valid_lens: real length of each sequence (B,); keys past it (padding) are not
                attended to. Outputs at padded positions are computed but meaningless.

        Shape: X: (B, T, d) -> (B, T, d).
        """
        Z = self.addnorm1.sublayer_input(X)
        X = self.addnorm1(X, self.attention(Z, Z, Z, valid_lens))
        return self.addnorm2(X, self.ffn(self.addnorm2.sublayer_input(X)))


class TransformerDecoderBlock(nn.Module):
    """Masked self-attention, attention over the encoder outputs, and an FFN (course 11.7.5).

    Each of the three sublayers has its add & norm. The self-attention is causal: position t
    attends to positions up to t only, so training on a whole target sequence at once
    (teacher forcing) computes what step-by-step decoding computes.

    Args: as :class:`TransformerEncoderBlock`.
    """

    def __init__(self, num_hiddens: int, ffn_num_hiddens: int, num_heads: int,
                 dropout: float = 0.0, use_bias: bool = False, norm_first: bool = False):
        super().__init__()
        self.attention1 = MultiHeadAttention(num_hiddens, num_heads, dropout, use_bias)
        self.addnorm1 = AddNorm(num_hiddens, dropout, norm_first)
        self.attention2 = MultiHeadAttention(num_hiddens, num_heads, dropout, use_bias)
        self.addnorm2 = AddNorm(num_hiddens, dropout, norm_first)
        self.ffn = PositionWiseFFN(num_hiddens, ffn_num_hiddens)
        self.addnorm3 = AddNorm(num_hiddens, dropout, norm_first)

    def forward(self, X: torch.Tensor, enc_outputs: torch.Tensor,
                enc_valid_lens: torch.Tensor | None = None, past: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode T new positions, after the ``past`` ones if any.

        Args:
            X: the new positions' inputs (the whole target when training; one token when
                decoding step by step).
            enc_outputs: the encoder's outputs (the memory attended to).
            enc_valid_lens: valid source length of each example (B,), to skip source padding.
            past: what this block's self-attention read at the earlier positions (the
                ``key_values`` it returned before), or None at the start. The course keeps
                this in ``state[2]``.

        Returns:
            ``(output, key_values)``: the block's output, and ``past`` extended by this
            call's positions, to pass back as ``past`` at the next step.

        Shape:
            X: (B, T, d), enc_outputs: (B, S, d), past: (B, P, d). Output: (B, T, d);
            key_values: (B, P + T, d).
        """
        Z = self.addnorm1.sublayer_input(X)
        key_values = Z if past is None else torch.cat((past, Z), dim=1)
        # causal: new position t is position P + t and sees key positions 0 .. P + t.
        X = self.addnorm1(X, self.attention1(Z, key_values, key_values, causal=True))
        Z = self.addnorm2.sublayer_input(X)
        X = self.addnorm2(X, self.attention2(Z, enc_outputs, enc_outputs, enc_valid_lens))
        return self.addnorm3(X, self.ffn(self.addnorm3.sublayer_input(X))), key_values
