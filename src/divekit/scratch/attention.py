"""Attention from scratch (course 11.1-11.7): attention pooling, scoring functions, multi-head
attention and positional encodings.

- 11.2: Nadaraya-Watson kernel regression (Nadaraya, 1964; Watson, 1964), the oldest attention
  pooling: a prediction is an average of training targets weighted by a Gaussian kernel of the
  distance between the query and each training input; the parametric version learns the width.
- 11.3: masked softmax, additive attention (Bahdanau et al., 2014) and scaled dot-product
  attention (Vaswani et al., 2017).
- 11.5: multi-head attention (Vaswani et al., 2017).
- 11.6: sinusoidal positional encoding (Vaswani et al., 2017), learned absolute positions
  (BERT, GPT) and rotary position embedding, RoPE (Su et al., 2021, "RoFormer").

Mask convention: the course describes which keys a query may see by *valid lengths*: query q of
example b sees keys ``0 .. valid_lens[b] - 1`` (1-D, shape (B,)) or ``0 .. valid_lens[b, q] - 1``
(2-D, shape (B, Q)). In PyTorch's terms, ``key_padding_mask`` (True = padding) is
``arange(K) >= valid_lens[:, None]`` and SDPA's boolean ``attn_mask`` (True = may attend) is its
negation.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from divekit.errors import DivekitError

# The course fills masked scores with a large negative number rather than -inf, so that a row
# with no valid key gives a uniform distribution instead of NaN.
MASK_VALUE = -1e6


# ---------------------------------------------------------------------------------------------
# 11.2 Attention pooling by similarity: Nadaraya-Watson kernel regression
# ---------------------------------------------------------------------------------------------

def target_function(x: torch.Tensor) -> torch.Tensor:
    """The course's regression target ``f(x) = 2 sin(x) + x^0.8``."""
    return 2 * torch.sin(x) + x ** 0.8


def nadaraya_watson_data(n_train: int = 50, noise: float = 0.5, seed: int = 0
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The course's kernel-regression data: noisy samples of :func:`target_function`.

    Training inputs are ``n_train`` uniform draws on [0, 5), sorted (so the attention heatmaps
    have a visible diagonal); targets get Gaussian noise of standard deviation ``noise``. Test
    inputs are the grid ``0, 0.1, ..., 4.9`` with the noise-free targets.

    Returns:
        ``(x_train, y_train, x_test, y_test)``, float32, shapes (n_train,) and (50,).
    """
    gen = torch.Generator().manual_seed(seed)
    x_train, _ = torch.sort(torch.rand(n_train, generator=gen) * 5)
    y_train = target_function(x_train) + noise * torch.randn(n_train, generator=gen)
    x_test = torch.arange(0, 5, 0.1)
    return x_train, y_train, x_test, target_function(x_test)


def nadaraya_watson(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                    w: float | torch.Tensor = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian-kernel attention pooling: ``f(q) = sum_i softmax_i(-((q - k_i) w)^2 / 2) v_i``.

    With ``w = 1`` this is the non-parametric Nadaraya-Watson estimator; a larger ``w`` is a
    narrower kernel (each prediction averages fewer, closer training points).

    Args:
        queries: the inputs to predict at.
        keys: the training inputs, shared by all queries (K,) or one row per query (Q, K).
        values: the training targets, shaped like ``keys``.
        w: inverse kernel width.

    Returns:
        ``(predictions, attention_weights)``: shapes (Q,) and (Q, K); each row of the weights
        sums to 1.
    """
    if queries.dim() != 1 or keys.dim() not in (1, 2) or values.shape != keys.shape:
        raise DivekitError(f"nadaraya_watson takes queries (Q,) and keys, values both (K,) or "
                           f"(Q, K); got {tuple(queries.shape)}, {tuple(keys.shape)}, "
                           f"{tuple(values.shape)}")
    distances = queries.unsqueeze(-1) - keys  # (Q, K), by broadcasting if keys is (K,)
    weights = torch.softmax(-((distances * w) ** 2) / 2, dim=-1)
    # (Q, K) x (K,) or row-wise (Q, K) x (Q, K): a weighted average of the values per query.
    return (weights * values).sum(dim=-1), weights


class NadarayaWatson(nn.Module):
    """Parametric Nadaraya-Watson regression: the Gaussian kernel with a learned width ``w``.

    ``forward`` returns the predictions and keeps the last ``attention_weights`` (Q, K).
    """

    def __init__(self, w: float = 1.0):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([float(w)]))
        self.attention_weights: torch.Tensor | None = None

    def forward(self, queries: torch.Tensor, keys: torch.Tensor,
                values: torch.Tensor) -> torch.Tensor:
        """Shapes as :func:`nadaraya_watson`: (Q,), (K,) or (Q, K), like keys -> (Q,)."""
        predictions, self.attention_weights = nadaraya_watson(queries, keys, values, self.w)
        return predictions


def leave_one_out(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each training example, the keys and values of all the *other* examples.

    Training the kernel width with each example among its own keys would reward ``w -> inf``:
    a kernel so narrow that every point predicts itself. The course therefore leaves it out.

    Shape:
        x, y: (n,). Returns keys and values of shape (n, n - 1); row i omits example i.
    """
    n = x.shape[0]
    others = ~torch.eye(n, dtype=torch.bool, device=x.device)
    return x.expand(n, n)[others].reshape(n, n - 1), y.expand(n, n)[others].reshape(n, n - 1)


def train_nadaraya_watson(x_train: torch.Tensor, y_train: torch.Tensor, lr: float = 0.5,
                          epochs: int = 5, seed: int = 0) -> tuple[NadarayaWatson, list[float]]:
    """Fit the kernel width by full-batch SGD as the course does (lr 0.5, 5 epochs).

    The loss is the squared error summed over the training examples, each predicted from the
    others (:func:`leave_one_out`); ``w`` starts from a uniform draw on [0, 1) like the book.
    The kernel depends on ``w^2``, so the gradient vanishes as ``w -> 0``: a start very close
    to 0 barely moves (a few seeds do that).

    Returns:
        The trained model and each epoch's summed loss (measured before that epoch's update).
    """
    gen = torch.Generator().manual_seed(seed)
    model = NadarayaWatson(torch.rand(1, generator=gen).item())
    keys, values = leave_one_out(x_train, y_train)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    for _ in range(epochs):
        optimizer.zero_grad()
        loss = ((model(x_train, keys, values) - y_train) ** 2).sum()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return model, losses


# ---------------------------------------------------------------------------------------------
# 11.3 Attention scoring functions
# ---------------------------------------------------------------------------------------------

def masked_softmax(scores: torch.Tensor, valid_lens: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax over the keys (last axis) that gives zero weight to keys past the valid length.

    Masked scores are replaced by -1e6 as in the course, so they get a weight of exactly 0 as
    long as some key is valid; a row whose valid length is 0 has every score masked and comes
    out *uniform* (1/K each), not NaN as it would with -inf. Callers that can have such rows
    must ignore them.

    Args:
        scores: attention scores.
        valid_lens: None (no mask), (B,) one length per example, or (B, Q) one per query.

    Shape:
        scores: (B, Q, K). Output: (B, Q, K), each row sums to 1.
    """
    if valid_lens is None:
        return torch.softmax(scores, dim=-1)
    if scores.dim() != 3:
        raise DivekitError(f"masked_softmax with valid_lens takes scores of shape (B, Q, K), "
                           f"got {tuple(scores.shape)}")
    batch_size, num_queries, num_keys = scores.shape
    if valid_lens.shape == (batch_size,):
        lens = valid_lens[:, None, None]
    elif valid_lens.shape == (batch_size, num_queries):
        lens = valid_lens[:, :, None]
    else:
        raise DivekitError(f"valid_lens must have shape ({batch_size},) or ({batch_size}, "
                           f"{num_queries}) for scores {tuple(scores.shape)}, "
                           f"got {tuple(valid_lens.shape)}")
    keep = torch.arange(num_keys, device=scores.device) < lens  # (B, Q or 1, K)
    return torch.softmax(scores.masked_fill(~keep, MASK_VALUE), dim=-1)


def causal_valid_lens(batch_size: int, num_queries: int, num_keys: int,
                      valid_lens: torch.Tensor | None = None,
                      device: torch.device | None = None) -> torch.Tensor:
    """Valid lengths (B, Q) that let each query see only the keys up to its own position.

    The queries are the *last* ``num_queries`` of the ``num_keys`` positions (with a cache of
    earlier keys, K > Q), so query i sees keys ``0 .. K - Q + i``; with K == Q that is the
    usual lower triangle (the course's decoder ``dec_valid_lens = [1, 2, ..., T]``). A 1-D or
    2-D ``valid_lens`` further limits each row (padding).
    """
    if num_keys < num_queries:
        raise DivekitError(f"a causal mask needs at least as many keys as queries, got "
                           f"{num_keys} keys for {num_queries} queries")
    first = num_keys - num_queries + 1
    lens = torch.arange(first, first + num_queries, device=device).expand(batch_size, -1)
    if valid_lens is not None:
        limit = valid_lens[:, None] if valid_lens.dim() == 1 else valid_lens
        lens = torch.minimum(lens, limit.to(lens.dtype))
    return lens


class AdditiveAttention(nn.Module):
    """Additive attention: ``score(q, k) = w_v^T tanh(W_q q + W_k k)`` (course 11.3.3).

    Queries and keys may have different sizes; the score is a one-hidden-layer MLP of both.

    Args:
        query_size, key_size: feature sizes of the queries and keys.
        num_hiddens: width of the scoring MLP.
        dropout: dropout on the attention weights.
    """

    def __init__(self, query_size: int, key_size: int, num_hiddens: int, dropout: float = 0.0):
        super().__init__()
        self.W_q = nn.Linear(query_size, num_hiddens, bias=False)
        self.W_k = nn.Linear(key_size, num_hiddens, bias=False)
        self.w_v = nn.Linear(num_hiddens, 1, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.attention_weights: torch.Tensor | None = None

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                valid_lens: torch.Tensor | None = None) -> torch.Tensor:
        """Attention pooling of the values.

        Shape:
            queries: (B, Q, query_size), keys: (B, K, key_size), values: (B, K, V),
            valid_lens: None, (B,) or (B, Q). Output: (B, Q, V); ``attention_weights``:
            (B, Q, K).
        """
        # Every (query, key) pair: (B, Q, 1, h) + (B, 1, K, h) -> (B, Q, K, h).
        features = torch.tanh(self.W_q(queries).unsqueeze(2) + self.W_k(keys).unsqueeze(1))
        scores = self.w_v(features).squeeze(-1)  # (B, Q, K)
        self.attention_weights = masked_softmax(scores, valid_lens)
        return self.dropout(self.attention_weights) @ values


class DotProductAttention(nn.Module):
    """Scaled dot-product attention: ``softmax(Q K^T / sqrt(d)) V`` (course 11.3.2).

    Dividing by sqrt(d) keeps the scores' variance near 1 whatever the feature size d, so the
    softmax does not saturate.

    Args:
        dropout: dropout on the attention weights.
    """

    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.attention_weights: torch.Tensor | None = None

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                valid_lens: torch.Tensor | None = None) -> torch.Tensor:
        """Attention pooling of the values.

        Shape:
            queries: (B, Q, d), keys: (B, K, d), values: (B, K, V), valid_lens: None, (B,)
            or (B, Q). Output: (B, Q, V); ``attention_weights``: (B, Q, K).
        """
        d = queries.shape[-1]
        scores = queries @ keys.transpose(1, 2) / math.sqrt(d)
        self.attention_weights = masked_softmax(scores, valid_lens)
        return self.dropout(self.attention_weights) @ values


# ---------------------------------------------------------------------------------------------
# 11.5 Multi-head attention
# ---------------------------------------------------------------------------------------------

class MultiHeadAttention(nn.Module):
    """Multi-head scaled dot-product attention (course 11.5; Vaswani et al., 2017).

    Queries, keys and values are projected to ``num_hiddens`` features, split into
    ``num_heads`` heads of ``num_hiddens / num_heads`` features that attend independently (as
    one batch of B * num_heads attentions), and the heads' outputs are concatenated and
    projected by ``W_o``.

    Args:
        num_hiddens: model width (and output size).
        num_heads: number of heads; must divide ``num_hiddens``.
        dropout: dropout on the attention weights.
        bias: give the four projections biases (PyTorch's ``nn.MultiheadAttention`` has them;
            the course does not).
        query_size, key_size, value_size: input feature sizes, ``num_hiddens`` by default.
    """

    def __init__(self, num_hiddens: int, num_heads: int, dropout: float = 0.0,
                 bias: bool = False, *, query_size: int | None = None,
                 key_size: int | None = None, value_size: int | None = None):
        super().__init__()
        if num_hiddens % num_heads:
            raise DivekitError(f"num_heads ({num_heads}) must divide num_hiddens "
                               f"({num_hiddens}); pick a divisor")
        self.num_heads = num_heads
        self.attention = DotProductAttention(dropout)
        self.W_q = nn.Linear(query_size or num_hiddens, num_hiddens, bias=bias)
        self.W_k = nn.Linear(key_size or num_hiddens, num_hiddens, bias=bias)
        self.W_v = nn.Linear(value_size or num_hiddens, num_hiddens, bias=bias)
        self.W_o = nn.Linear(num_hiddens, num_hiddens, bias=bias)

    def transpose_qkv(self, X: torch.Tensor) -> torch.Tensor:
        """Split the features into heads and fold the heads into the batch.

        Shape: (B, n, num_hiddens) -> (B * num_heads, n, num_hiddens / num_heads), head-major
        within each example (rows ``b * num_heads + h``).
        """
        B, n, _ = X.shape
        X = X.reshape(B, n, self.num_heads, -1).permute(0, 2, 1, 3)  # (B, heads, n, d_head)
        return X.reshape(B * self.num_heads, n, -1)

    def transpose_output(self, X: torch.Tensor) -> torch.Tensor:
        """Undo :meth:`transpose_qkv`: (B * num_heads, n, d_head) -> (B, n, num_hiddens)."""
        X = X.reshape(-1, self.num_heads, X.shape[1], X.shape[2]).permute(0, 2, 1, 3)
        return X.reshape(X.shape[0], X.shape[1], -1)

    @property
    def attention_weights(self) -> torch.Tensor | None:
        """The last weights, shape (B * num_heads, Q, K) (head-major per example)."""
        return self.attention.attention_weights

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                valid_lens: torch.Tensor | None = None, *, causal: bool = False
                ) -> torch.Tensor:
        """Multi-head attention of the queries over the keys and values.

        Args:
            queries, keys, values: the inputs (self-attention passes the same tensor thrice).
            valid_lens: None, (B,) (key padding) or (B, Q) (a per-query mask, e.g. causal).
            causal: also hide from each query the keys after its own position (see
                :func:`causal_valid_lens`; the queries are the last Q of the K positions).

        Shape:
            queries: (B, Q, query_size), keys: (B, K, key_size), values: (B, K, value_size).
            Output: (B, Q, num_hiddens).
        """
        if causal:
            valid_lens = causal_valid_lens(queries.shape[0], queries.shape[1], keys.shape[1],
                                           valid_lens, device=queries.device)
        if valid_lens is not None:
            # Every head of example b uses example b's lengths (rows b * heads + h).
            valid_lens = torch.repeat_interleave(valid_lens, self.num_heads, dim=0)
        output = self.attention(self.transpose_qkv(self.W_q(queries)),
                                self.transpose_qkv(self.W_k(keys)),
                                self.transpose_qkv(self.W_v(values)), valid_lens)
        return self.W_o(self.transpose_output(output))


# ---------------------------------------------------------------------------------------------
# 11.6 Positional encoding
# ---------------------------------------------------------------------------------------------

def sinusoidal_positions(max_len: int, num_hiddens: int,
                         dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The fixed sinusoidal position table (course 11.6.3).

    ``P[pos, 2i] = sin(pos / 10000^(2i/d))`` and ``P[pos, 2i+1] = cos(pos / 10000^(2i/d))``:
    column pair i is a point turning on a circle at frequency ``10000^(-2i/d)``, so moving k
    positions rotates every pair by a fixed angle, a linear map that does not depend on pos.
    An odd ``num_hiddens`` drops the last cosine column.

    Shape:
        Output: (max_len, num_hiddens), of ``dtype``.
    """
    if max_len < 1 or num_hiddens < 1:
        raise DivekitError(f"sinusoidal_positions needs max_len and num_hiddens >= 1, got "
                           f"{max_len} and {num_hiddens}")
    positions = torch.arange(max_len, dtype=dtype)[:, None]
    even = torch.arange(0, num_hiddens, 2, dtype=dtype)  # 2i
    angles = positions / torch.pow(10000.0, even / num_hiddens)  # (max_len, ceil(d / 2))
    P = torch.zeros(max_len, num_hiddens, dtype=dtype)
    P[:, 0::2] = torch.sin(angles)
    P[:, 1::2] = torch.cos(angles[:, : num_hiddens // 2])
    return P


def _check_room(X: torch.Tensor, offset: int, max_len: int) -> None:
    if X.dim() != 3 or offset < 0 or offset + X.shape[1] > max_len:
        raise DivekitError(f"positions {offset}..{offset + X.shape[1] - 1} of an input of shape "
                           f"{tuple(X.shape)} (want (B, T, d)) do not fit max_len={max_len}; "
                           f"raise max_len")


class PositionalEncoding(nn.Module):
    """Adds the sinusoidal positions to the input, then dropout (course 11.6.3).

    Args:
        num_hiddens: feature size d.
        dropout: dropout on the sum.
        max_len: the longest sequence it can encode.
    """

    def __init__(self, num_hiddens: int, dropout: float = 0.0, max_len: int = 1000):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        # A buffer so that .to(device) / .double() move it; not saved: it is a formula.
        self.register_buffer("P", sinusoidal_positions(max_len, num_hiddens), persistent=False)

    def forward(self, X: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """``dropout(X + P[offset : offset + T])``; ``offset`` > 0 when decoding step by step.

        Shape: X (B, T, d) -> (B, T, d).
        """
        _check_room(X, offset, self.P.shape[0])
        return self.dropout(X + self.P[offset: offset + X.shape[1]])


class LearnedPositions(nn.Module):
    """Learned absolute positions (BERT, GPT): one trained vector per position, added.

    Unlike the sinusoids, it cannot encode positions past ``max_len``.

    Args:
        max_len: number of positions.
        num_hiddens: feature size d.
        dropout: dropout on the sum.
    """

    def __init__(self, max_len: int, num_hiddens: int, dropout: float = 0.0):
        super().__init__()
        # Small initial values (std 0.02, as BERT and GPT-2) so the token embeddings dominate.
        self.P = nn.Parameter(torch.randn(max_len, num_hiddens) * 0.02)
        self.dropout = nn.Dropout(dropout)

    def forward(self, X: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """``dropout(X + P[offset : offset + T])``. Shape: X (B, T, d) -> (B, T, d)."""
        _check_room(X, offset, self.P.shape[0])
        return self.dropout(X + self.P[offset: offset + X.shape[1]])


def apply_rope(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary position embedding (Su et al., 2021): rotate feature pairs by position angles.

    Features ``(2i, 2i+1)`` form a 2-D point that is rotated by the angle ``m * theta_i`` with
    ``theta_i = base^(-2i/d)`` at position m. Applied to queries and keys, a dot product
    ``<rope(q, m), rope(k, n)>`` then depends on the positions only through ``m - n``: the
    attention sees relative positions, and norms are unchanged. (This is the paper's
    interleaved pairing; Hugging Face's LLaMA pairs feature i with i + d/2, the same map up to
    a permutation of the features.)

    Args:
        x: queries or keys.
        positions: position of each row, integer or float.

    Shape:
        x: (..., T, d) with d even; positions: (T,) or broadcastable to x's (..., T).
        Output: like x.
    """
    d = x.shape[-1]
    if d % 2:
        raise DivekitError(f"apply_rope rotates feature pairs: the feature size must be even, "
                           f"got {d}")
    theta = base ** (-torch.arange(0, d, 2, dtype=x.dtype, device=x.device) / d)  # (d/2,)
    angles = positions.to(x.dtype)[..., None] * theta  # (..., T, d/2)
    cos, sin = torch.cos(angles), torch.sin(angles)
    x_even, x_odd = x[..., 0::2], x[..., 1::2]
    rotated = torch.stack((x_even * cos - x_odd * sin, x_even * sin + x_odd * cos), dim=-1)
    return rotated.flatten(-2)  # interleave back: (..., T, d/2, 2) -> (..., T, d)

