"""11.6 Positional encoding (d2l 11.6; Vaswani et al. 2017): fixed sinusoids, or learned
position embeddings (as BERT's, Devlin et al. 2019).

Self-attention is blind to order, so each position ``i`` adds a vector ``p_i`` to the token
representation. The sinusoidal table is
``p_{i, 2j} = sin(i / 10000^{2j / d})`` and ``p_{i, 2j + 1} = cos(i / 10000^{2j / d})``:
every pair of columns is a rotation at its own frequency, so ``p_{i + k}`` is a linear function
of ``p_i``. Both modules take an ``offset``, the position of the first input, for incremental
decoding (one new token at position ``offset``).
"""

from __future__ import annotations

import torch
from torch import nn

from divekit.errors import DivekitError


def _check_range(x: torch.Tensor, offset: int, max_len: int) -> None:
    if x.ndim != 3:
        raise DivekitError(f"positional encodings take (batch, length, features), got "
                           f"{tuple(x.shape)}")
    if offset < 0 or offset + x.shape[1] > max_len:
        raise DivekitError(f"positions {offset}..{offset + x.shape[1] - 1} are outside the "
                           f"table of max_len={max_len}; build the model with a larger max_len")


class SinusoidalPositionalEncoding(nn.Module):
    """Adds the fixed sinusoidal encodings of positions ``offset ..`` to the inputs.

    The table is a non-persistent buffer: it follows ``.to()`` but stays out of checkpoints.

    Args:
        num_hiddens: feature size ``d``.
        max_len: positions in the table (the course uses 1000).

    Shape:
        x ``(B, T, d)`` -> ``(B, T, d)``.
    """

    def __init__(self, num_hiddens: int, max_len: int = 1000) -> None:
        super().__init__()
        self.num_hiddens, self.max_len = num_hiddens, max_len
        # Computed in float64 and rounded once to the default dtype.
        positions = torch.arange(max_len, dtype=torch.float64)[:, None]
        inverse_frequencies = 10000.0 ** (-torch.arange(0, num_hiddens, 2,
                                                        dtype=torch.float64) / num_hiddens)
        angles = positions * inverse_frequencies
        table = torch.zeros(max_len, num_hiddens, dtype=torch.float64)
        table[:, 0::2] = torch.sin(angles)
        table[:, 1::2] = torch.cos(angles[:, : num_hiddens // 2])  # odd d: one cosine fewer
        self.register_buffer("table", table.to(torch.get_default_dtype()), persistent=False)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        _check_range(x, offset, self.max_len)
        return x + self.table[offset:offset + x.shape[1]].to(x.dtype)


class LearnedPositionalEncoding(nn.Module):
    """Adds a learned vector per position (``weight`` row ``offset + t`` to input ``t``).

    Args:
        num_hiddens: feature size ``d``.
        max_len: positions that have a vector (BERT: 512).

    Initialisation: normal with standard deviation 0.02 (BERT's).

    Shape:
        x ``(B, T, d)`` -> ``(B, T, d)``.
    """

    def __init__(self, num_hiddens: int, max_len: int = 512) -> None:
        super().__init__()
        self.num_hiddens, self.max_len = num_hiddens, max_len
        self.weight = nn.Parameter(torch.empty(max_len, num_hiddens))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        _check_range(x, offset, self.max_len)
        return x + self.weight[offset:offset + x.shape[1]]
