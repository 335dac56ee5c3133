"""9.3 Language models: n-gram statistics of a corpus and Zipf's law.

Word frequencies in natural language fall off roughly as a power of their rank,
``n_i ~ i ** -alpha`` (Zipf's law), so a log-log plot of frequency against rank is close to a
straight line; bigrams and trigrams follow the same law with a smaller exponent.
"""

from __future__ import annotations

import collections
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from divekit.errors import DivekitError


def ngram_frequencies(tokens: Sequence[str], n: int = 1) -> list[tuple[tuple[str, ...], int]]:
    """Count every run of ``n`` consecutive tokens, most frequent first.

    Args:
        tokens: the corpus as one token sequence.
        n: 1 for unigrams, 2 for bigrams, 3 for trigrams, ...

    Returns:
        ``(ngram, count)`` pairs, ``ngram`` a tuple of ``n`` tokens; ties in ascending order of
        the n-gram so the result is deterministic. Empty when there are fewer than ``n`` tokens.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise DivekitError(f"n-gram length must be a positive integer, got {n!r}")
    tokens = list(tokens)
    # The i-th shifted copy supplies the i-th token of every n-gram; zip stops at the shortest.
    counts = collections.Counter(zip(*(tokens[i:] for i in range(n)), strict=False))
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def plot_zipf(freq_lists: dict[str, Sequence[int]], path: str | os.PathLike) -> Path:
    """Draw frequency against rank on log-log axes, one line per list, into a PNG at ``path``.

    Args:
        freq_lists: legend label -> token counts, e.g.
            ``{"unigram": [c for _, c in ngram_frequencies(words, 1)], ...}``; each list is
            sorted in descending order before plotting, so rank 1 is the most frequent.
        path: the PNG to write (replaced atomically).

    Returns:
        ``path``.
    """
    if not freq_lists:
        raise DivekitError("plot_zipf needs at least one frequency list")
    for label, counts in freq_lists.items():
        if len(counts) == 0 or min(counts) <= 0:
            raise DivekitError(f"frequency list {label!r} must be non-empty and positive "
                               "(a log-log plot cannot show zero counts)")
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(5.5, 4))
    for label, counts in freq_lists.items():
        counts = sorted(counts, reverse=True)
        axis.loglog(range(1, len(counts) + 1), counts, label=label)
    axis.set_xlabel("rank")
    axis.set_ylabel("frequency")
    axis.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=100)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)
    return path
