"""9.3 Language models: count-based n-gram models, their smoothing, and perplexity.

An n-gram model assumes each token depends only on the ``n - 1`` tokens before it and
estimates ``P(x | context)`` from counts ``n(context, x)`` in a training corpus. Counts alone
give zero probability to everything unseen, so the estimates are smoothed:

* ``"add-k"`` (Laplace smoothing for ``k = 1``): pretend every token followed every context
  ``k`` more times, ``P(x | c) = (n(c, x) + k) / (n(c) + k V)`` over a vocabulary of ``V``.
* ``"interpolated"``: the course's formula, which mixes in the next lower order with weight
  ``eps``: ``P(x) = (n(x) + eps_1 / V) / (n + eps_1)``,
  ``P(x | x') = (n(x', x) + eps_2 P(x)) / (n(x') + eps_2)``,
  ``P(x | x'', x') = (n(x'', x', x) + eps_3 P(x | x')) / (n(x'', x') + eps_3)``, and so on.

In both, ``n(c)`` counts the occurrences of ``c`` that some token follows, so every
conditional distribution sums to one. Perplexity is ``exp`` of the mean negative
log-likelihood per token: a model that is uniform over ``V`` tokens has perplexity ``V``.
"""

from __future__ import annotations

import collections
import math
import numbers
from collections.abc import Sequence

import numpy as np
import torch

from divekit.errors import DivekitError
from divekit.text.vocab import Vocab

SMOOTHINGS = ("add-k", "interpolated")
STRATEGIES = ("greedy", "sample")


def _positive(value: object) -> bool:
    return (not isinstance(value, bool) and isinstance(value, int | float)
            and math.isfinite(value) and value > 0)


class NGramLM:
    """A count-based n-gram language model over a fixed vocabulary.

    Tokens are strings (mapped through a :class:`Vocab`, unknown ones to ``"<unk>"``) or
    indices in ``[0, V)``. The first ``n - 1`` tokens of a text have shorter contexts; they are
    scored by the model of the matching lower order.

    Args:
        n: 1 for unigrams, 2 for bigrams, 3 for trigrams, ...
        smoothing: ``"add-k"`` or ``"interpolated"`` (see the module docstring).
        k: the pseudo-count of add-k smoothing, positive.
        eps: the interpolation weights ``eps_1, ..., eps_n`` (one value for all orders, or one
            per order, lowest first), positive.
    """

    def __init__(
        self,
        n: int = 2,
        smoothing: str = "add-k",
        k: float = 1.0,
        eps: float | Sequence[float] = 1.0,
    ) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise DivekitError(f"n-gram order n must be a positive integer, got {n!r}")
        if smoothing not in SMOOTHINGS:
            raise DivekitError(f"smoothing must be one of {SMOOTHINGS}, got {smoothing!r}")
        if not _positive(k):
            raise DivekitError(f"add-k pseudo-count k must be a positive number, got {k!r}")
        weights = tuple(eps) if isinstance(eps, Sequence) else (eps,) * n
        if len(weights) != n or not all(_positive(w) for w in weights):
            raise DivekitError(f"eps must be one positive number or {n} of them (one per "
                               f"order), got {eps!r}")
        self.n, self.smoothing, self.k, self.eps = n, smoothing, k, weights
        self.vocab: Vocab | None = None
        self.vocab_size = 0
        # _following[m][context] = {token: count} for contexts of m tokens; _totals sums them.
        self._following: list[dict[tuple[int, ...], dict[int, int]]] = []
        self._totals: list[dict[tuple[int, ...], int]] = []

    def fit(
        self, tokens: Sequence[str] | Sequence[int] | torch.Tensor, vocab: Vocab | int | None = None
    ) -> NGramLM:
        """Count every m-gram, m = 1..n, of a training stream.

        Args:
            tokens: the corpus as one stream of tokens (strings) or of indices (ints, or a 1-D
                tensor such as ``TextDataModule.corpus``).
            vocab: a :class:`Vocab`, or the vocabulary size for an index stream; default:
                ``Vocab(tokens)`` for string tokens (required for indices).

        Returns:
            The model itself.
        """
        if not isinstance(tokens, torch.Tensor):
            tokens = list(tokens)
        if isinstance(vocab, Vocab):
            self.vocab, self.vocab_size = vocab, len(vocab)
        elif vocab is None and _is_text(tokens):
            self.vocab = Vocab(tokens)
            self.vocab_size = len(self.vocab)
        elif isinstance(vocab, int) and not isinstance(vocab, bool) and vocab > 0:
            self.vocab, self.vocab_size = None, vocab
        else:
            raise DivekitError("fit needs vocab=<a Vocab or the vocabulary size> for a stream "
                               f"of indices, got vocab={vocab!r}")
        # A fit that fails on bad tokens leaves an unfitted model, not old counts.
        self._following, self._totals = [], []
        ids = self._encode(tokens)
        self._following = [{} for _ in range(self.n)]
        self._totals = [collections.Counter() for _ in range(self.n)]
        for m in range(self.n):
            # The j-th shifted copy supplies the j-th token of every (m+1)-gram.
            grams = collections.Counter(zip(*(ids[j:] for j in range(m + 1)), strict=False))
            for gram, count in grams.items():
                self._following[m].setdefault(gram[:-1], {})[gram[-1]] = count
                self._totals[m][gram[:-1]] += count
        return self

    def _encode(self, tokens: Sequence[str] | Sequence[int] | torch.Tensor) -> list[int]:
        if isinstance(tokens, torch.Tensor):
            if tokens.ndim != 1 or tokens.is_floating_point():
                raise DivekitError(f"a token tensor must be 1-D integer indices, got shape "
                                   f"{tuple(tokens.shape)} and dtype {tokens.dtype}")
            if len(tokens) and not 0 <= tokens.min() <= tokens.max() < self.vocab_size:
                raise DivekitError(f"token indices must be in [0, {self.vocab_size}), got "
                                   f"{tokens.min().item()}..{tokens.max().item()}")
            return tokens.tolist()
        tokens = list(tokens)
        if _is_text(tokens):
            if not all(isinstance(token, str) for token in tokens):
                raise DivekitError("tokens must be all strings or all indices, not a mix")
            if self.vocab is None:
                raise DivekitError("this model was fitted on indices without a Vocab, so it "
                                   "cannot look up string tokens; pass indices")
            return self.vocab[tokens]
        bad = [t for t in tokens if isinstance(t, bool) or not isinstance(t, numbers.Integral)
               or not 0 <= t < self.vocab_size]
        if bad:
            raise DivekitError(f"tokens must be strings or indices in [0, {self.vocab_size}), "
                               f"got {bad[0]!r}")
        return [int(t) for t in tokens]

    def _check_fitted(self) -> None:
        if not self._following:
            raise DivekitError("the n-gram model is not fitted yet: call fit(tokens) first")

    def _context(self, ids: list[int]) -> tuple[int, ...]:
        """The last ``n - 1`` indices: all that an n-gram model conditions on."""
        return tuple(ids[max(0, len(ids) - self.n + 1) :])

    def _prob(self, context: tuple[int, ...], token: int) -> float:
        order = len(context)
        count = self._following[order].get(context, {}).get(token, 0)
        total = self._totals[order].get(context, 0)
        if self.smoothing == "add-k":
            return (count + self.k) / (total + self.k * self.vocab_size)
        lower = self._prob(context[1:], token) if order else 1 / self.vocab_size
        return (count + self.eps[order] * lower) / (total + self.eps[order])

    def _distribution(self, context: tuple[int, ...]) -> np.ndarray:
        order = len(context)
        following = self._following[order].get(context, {})
        counts = np.zeros(self.vocab_size)
        counts[list(following)] = list(following.values())
        total = self._totals[order].get(context, 0)
        if self.smoothing == "add-k":
            return (counts + self.k) / (total + self.k * self.vocab_size)
        lower = (self._distribution(context[1:]) if order
                 else np.full(self.vocab_size, 1 / self.vocab_size))
        return (counts + self.eps[order] * lower) / (total + self.eps[order])

    def prob(self, token: str | int, context: Sequence[str] | Sequence[int] = ()) -> float:
        """``P(token | context)``; only the last ``n - 1`` tokens of ``context`` matter.

        Args:
            token: the next token (string or index).
            context: the tokens before it, oldest first (may be shorter than ``n - 1``).
        """
        self._check_fitted()
        (index,) = self._encode([token])
        return self._prob(self._context(self._encode(context)), index)

    def log_prob(self, token: str | int, context: Sequence[str] | Sequence[int] = ()) -> float:
        """``log P(token | context)`` (natural logarithm)."""
        return math.log(self.prob(token, context))

    def distribution(self, context: Sequence[str] | Sequence[int] = ()) -> np.ndarray:
        """``P(x | context)`` for every token ``x`` of the vocabulary.

        Returns:
            float64 array of shape ``(V,)``, indexed like the vocabulary; it sums to one.
        """
        self._check_fitted()
        return self._distribution(self._context(self._encode(context)))

    def perplexity(self, tokens: Sequence[str] | Sequence[int] | torch.Tensor) -> float:
        """``exp(-(1/T) sum_t log P(x_t | x_{t-n+1}, ..., x_{t-1}))`` over a text of T tokens.

        Args:
            tokens: the text (strings or indices); unknown strings count as ``"<unk>"``.
        """
        self._check_fitted()
        ids = self._encode(tokens)
        if not ids:
            raise DivekitError("perplexity needs at least one token")
        start = self.n - 1
        nll = -math.fsum(math.log(self._prob(tuple(ids[max(0, t - start) : t]), ids[t]))
                         for t in range(len(ids)))
        return math.exp(nll / len(ids))

    def generate(
        self,
        prefix: Sequence[str] | Sequence[int],
        num_tokens: int,
        strategy: str = "greedy",
        seed: int | None = None,
    ) -> list:
        """Continue ``prefix`` by ``num_tokens`` tokens, each conditioned on the ones before it.

        Args:
            prefix: the first tokens (a string counts as its characters); may be empty.
            num_tokens: how many tokens to add.
            strategy: ``"greedy"`` takes the most likely token (the lowest index on ties);
                ``"sample"`` draws from ``P(x | context)``.
            seed: seed of the draws for ``"sample"``.

        Returns:
            The prefix followed by the generated tokens, as strings when the model has a
            vocabulary, otherwise as indices.
        """
        if isinstance(num_tokens, bool) or not isinstance(num_tokens, int) or num_tokens < 0:
            raise DivekitError(f"num_tokens must be a non-negative integer, got {num_tokens!r}")
        if strategy not in STRATEGIES:
            raise DivekitError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        self._check_fitted()
        ids = self._encode(prefix)
        rng = np.random.default_rng(seed)
        for _ in range(num_tokens):
            probs = self._distribution(self._context(ids))
            ids.append(int(probs.argmax()) if strategy == "greedy"
                       else int(rng.choice(self.vocab_size, p=probs)))
        return self.vocab.to_tokens(ids) if self.vocab is not None else ids


def _is_text(tokens: object) -> bool:
    """Whether ``tokens`` is a string or a non-tensor sequence whose first element is one."""
    if isinstance(tokens, str):
        return True
    if isinstance(tokens, torch.Tensor):
        return False
    tokens = list(tokens)
    return bool(tokens) and isinstance(tokens[0], str)
