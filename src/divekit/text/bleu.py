"""10.7.6 Evaluation of predicted sequences: BLEU (Papineni et al. 2002, "BLEU: a Method for
Automatic Evaluation of Machine Translation").

Two versions:

* :func:`course_bleu`, the course's sentence-level formula for one prediction and one label::

      exp(min(0, 1 - len_label / len_pred)) * prod_{n=1..k} p_n ** (1 / 2**n)

  where ``p_n`` is the clipped n-gram precision: each n-gram of the prediction matches at most
  as many times as it occurs in the label, over the number of n-grams in the prediction. Longer
  n-grams get larger weights ``1 / 2**n`` (a ``p_n < 1`` raised to a smaller power is larger),
  and the first factor penalises predictions shorter than the label.
* :func:`corpus_bleu` and :class:`CorpusBLEU`, the number papers report: sacrebleu's corpus
  BLEU (Post 2018, "A Call for Clarity in Reporting BLEU Scores"; 13a tokenizer, 4-grams,
  geometric mean, brevity penalty over the whole corpus, 0-100 scale) with one or more
  references per sentence. Corpus BLEU is not a mean of sentence scores: it is a function of
  sums of per-sentence statistics (matched and total n-grams of each order, hypothesis length,
  closest reference length), which is what :class:`CorpusBLEU` accumulates batch by batch.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Sequence

import torch
import torch.distributed as dist
from sacrebleu.metrics import BLEU

from divekit.errors import DivekitError

MAX_ORDER = 4  # sacrebleu's default maximum n-gram order


def _tokens(text: str | Sequence[str], name: str) -> list[str]:
    if isinstance(text, str):
        return text.split()
    if not all(isinstance(token, str) for token in text):
        raise DivekitError(f"{name} must be a string or a list of string tokens, got {text!r}")
    return list(text)


def _ngrams(tokens: list[str], n: int) -> collections.Counter:
    return collections.Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def course_bleu(pred: str | list[str], label: str | list[str], k: int = 2) -> float:
    """The course's BLEU of one predicted sequence against one label sequence.

    Strings are split on whitespace (runs of spaces separate tokens, so ``""`` has no tokens);
    lists are taken as tokens already.

    Edge cases, following the book's formula:

    * an empty prediction scores 0 (the formula divides by ``len_pred``; so does
      ``len_pred - n + 1`` for every ``n``), even against an empty label;
    * orders ``n`` longer than the prediction are left out of the product (the book loops over
      ``n = 1 .. min(k, len_pred)``), so a one-token prediction equal to a one-token label
      scores 1 for any ``k``;
    * an order ``n`` the prediction has but the label is too short for gives ``p_n = 0``, hence
      a score of 0 (e.g. any non-empty prediction against an empty label).

    Args:
        pred: the predicted sequence.
        label: the reference sequence.
        k: the longest n-gram order to match, >= 1.

    Returns:
        The score, in ``[0, 1]``; 1 for an exact (non-empty) match.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise DivekitError(f"k (the longest n-gram order) must be an integer >= 1, got {k!r}")
    pred_tokens, label_tokens = _tokens(pred, "pred"), _tokens(label, "label")
    len_pred, len_label = len(pred_tokens), len(label_tokens)
    if len_pred == 0:
        return 0.0
    score = math.exp(min(0.0, 1 - len_label / len_pred))
    for n in range(1, min(k, len_pred) + 1):
        pred_ngrams, label_ngrams = _ngrams(pred_tokens, n), _ngrams(label_tokens, n)
        # Clipping: a repeated n-gram matches at most as often as the label has it.
        matches = sum(min(count, label_ngrams[ngram]) for ngram, count in pred_ngrams.items())
        score *= (matches / (len_pred - n + 1)) ** (0.5 ** n)
    return score


def _check_corpus(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if isinstance(hypotheses, str) or not all(isinstance(h, str) for h in hypotheses):
        raise DivekitError("hypotheses must be a list of strings (one translation per sentence)")
    if isinstance(references, str) or len(references) != len(hypotheses):
        raise DivekitError(f"references must be a list with one list of reference strings per "
                           f"hypothesis ({len(hypotheses)}), got {type(references).__name__} "
                           f"of length {len(references)}")
    for i, refs in enumerate(references):
        if isinstance(refs, str) or not refs or not all(isinstance(r, str) for r in refs):
            raise DivekitError(f"references[{i}] must be a non-empty list of reference strings, "
                               f"got {refs!r}; wrap a single reference as [reference]")


def _reference_streams(references: Sequence[Sequence[str]]) -> list[list[str | None]]:
    """sacrebleu's layout: stream ``j`` holds every sentence's ``j``-th reference.

    Streams must be equally long, so a sentence with fewer references gets ``None`` in the
    missing places: sacrebleu drops ``None`` (``Metric._cache_references``), whereas an empty
    string would count as a real reference of length 0 and change the brevity penalty.
    """
    width = max(len(refs) for refs in references)
    return [[refs[j] if j < len(refs) else None for refs in references] for j in range(width)]


def _sacrebleu() -> BLEU:
    """sacrebleu's BLEU with its defaults. ``force`` only silences its warning that the text
    looks tokenized: the course's data is, on purpose (spaces before punctuation), on both sides.
    """
    return BLEU(force=True)


def _statistics(bleu: BLEU, hypotheses: Sequence[str],
                references: Sequence[Sequence[str]]) -> list[int]:
    """``[hyp_len, ref_len, matches_1..4, totals_1..4]`` summed over the sentences."""
    score = bleu.corpus_score(list(hypotheses), _reference_streams(references))
    return [score.sys_len, score.ref_len, *score.counts, *score.totals]


def _score(statistics: Sequence[int]) -> float:
    hyp_len, ref_len = int(statistics[0]), int(statistics[1])
    counts = [int(c) for c in statistics[2:2 + MAX_ORDER]]
    totals = [int(t) for t in statistics[2 + MAX_ORDER:]]
    return BLEU.compute_bleu(counts, totals, hyp_len, ref_len, smooth_method="exp",
                             max_ngram_order=MAX_ORDER).score


def corpus_bleu(hypotheses: list[str], references: list[list[str]]) -> float:
    """sacrebleu's corpus BLEU (13a tokenizer, 4-grams, 0-100) with references per sentence.

    Args:
        hypotheses: one detokenised translation per sentence.
        references: for each hypothesis, the list of its reference translations; the number
            of references may differ from sentence to sentence.

    Returns:
        The score on sacrebleu's 0-100 scale, equal to ``sacrebleu.corpus_bleu`` given the
        references as streams.
    """
    _check_corpus(hypotheses, references)
    if not hypotheses:
        raise DivekitError("corpus_bleu needs at least one hypothesis, got none")
    return _score(_statistics(_sacrebleu(), hypotheses, references))


class CorpusBLEU:
    """Corpus BLEU accumulated over batches, torchmetrics-style (0-100 scale, like sacrebleu).

    ``update`` adds a batch's sufficient statistics (hypothesis length, closest reference
    length, matched and total n-grams of orders 1-4), computed by sacrebleu; ``compute`` turns
    their sums into the score, so any split into batches, or into processes whose statistics
    are summed, gives exactly :func:`corpus_bleu` of the whole set. The statistics are integer
    tensors; ``compute`` sums them over processes when ``torch.distributed`` is initialised.
    """

    higher_is_better = True

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = torch.device(device or "cpu")
        self._bleu = _sacrebleu()
        self.reset()

    def reset(self) -> None:
        """Forget every sentence seen."""
        zeros = lambda *shape: torch.zeros(shape, dtype=torch.long, device=self.device)  # noqa: E731
        self.hyp_len, self.ref_len, self.sentences = zeros(), zeros(), zeros()
        self.matches, self.totals = zeros(MAX_ORDER), zeros(MAX_ORDER)

    def to(self, device: torch.device | str) -> CorpusBLEU:
        """Move the statistics to ``device``."""
        self.device = torch.device(device)
        for name, value in self.metric_state.items():
            setattr(self, name, value.to(self.device))
        return self

    @property
    def metric_state(self) -> dict[str, torch.Tensor]:
        """The running sums (torchmetrics' name for a metric's state)."""
        return {"hyp_len": self.hyp_len, "ref_len": self.ref_len, "sentences": self.sentences,
                "matches": self.matches, "totals": self.totals}

    def update(self, hypotheses: list[str], references: list[list[str]]) -> None:
        """Add a batch of hypotheses, each with its list of references."""
        _check_corpus(hypotheses, references)
        if not hypotheses:
            return
        stats = torch.tensor(_statistics(self._bleu, hypotheses, references), dtype=torch.long,
                             device=self.device)
        self.hyp_len += stats[0]
        self.ref_len += stats[1]
        self.matches += stats[2:2 + MAX_ORDER]
        self.totals += stats[2 + MAX_ORDER:]
        self.sentences += len(hypotheses)

    def compute(self) -> torch.Tensor:
        """The corpus BLEU of every sentence so far (over all processes), a float64 scalar."""
        stats = torch.cat([self.hyp_len[None], self.ref_len[None], self.matches, self.totals,
                           self.sentences[None]])
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(stats)
        stats = stats.tolist()
        if stats[-1] == 0:
            raise DivekitError("CorpusBLEU.compute() before any sentence: call update() first")
        return torch.tensor(_score(stats[:-1]), dtype=torch.float64)
