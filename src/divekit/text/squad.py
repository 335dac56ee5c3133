"""16.7 Fine-tuning BERT for question answering: SQuAD v1.1 scoring and span decoding.

SQuAD (Rajpurkar et al. 2016, "SQuAD: 100,000+ Questions for Machine Comprehension of Text")
asks for a span of a paragraph that answers a question. BERT (Devlin et al. 2019, section 4.2)
predicts a start and an end logit for every token and answers with the span that maximises
``start_logit + end_logit`` (:func:`best_spans`). Answers are scored as the official v1.1
evaluation script does (:func:`normalize_answer`, :func:`exact_match`, :func:`token_f1`,
:class:`SquadScore`): both texts are normalised, then a prediction scores the best exact match
and the best bag-of-words F1 over the question's gold answers.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Sequence

import torch

from divekit.engine.metrics import Sums
from divekit.errors import DivekitError

_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)  # ASCII punctuation, as v1.1
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """An answer as SQuAD v1.1 compares it: lower case, without ASCII punctuation, without the
    articles "a", "an", "the" (whole words), and with runs of whitespace made single spaces.

    The steps run in that order, so "The" is lower-cased before it is dropped and "U.S." becomes
    "us" (punctuation is deleted, not replaced by a space), while an article goes to a space.
    """
    if not isinstance(text, str):
        raise DivekitError(f"an answer must be a string, got {type(text).__name__}: {text!r}")
    text = text.lower().translate(_NO_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _check_answers(answers: Sequence[str]) -> None:
    if isinstance(answers, str) or not answers or not all(isinstance(a, str) for a in answers):
        raise DivekitError(f"answers must be a non-empty list of gold answer strings, got "
                           f"{answers!r}; wrap a single answer as [answer]")


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals some normalised gold answer, else 0.0."""
    _check_answers(answers)
    predicted = normalize_answer(prediction)
    return float(any(predicted == normalize_answer(answer) for answer in answers))


def _f1(predicted_words: list[str], answer: str) -> float:
    gold_words = normalize_answer(answer).split()
    # Words shared as a multiset: a word counts as often as it occurs in both.
    shared = sum((collections.Counter(predicted_words) & collections.Counter(gold_words)).values())
    if shared == 0:  # includes an empty prediction or answer, even both empty (as in v1.1)
        return 0.0
    precision, recall = shared / len(predicted_words), shared / len(gold_words)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, answers: Sequence[str]) -> float:
    """The best F1 over the gold answers of the normalised words, taken as bags of words.

    As in the official v1.1 script, a normalised prediction or answer without words scores 0
    against that answer, even when both are empty (e.g. "The" against "a"), although their
    exact match is 1; torchmetrics' ``SQuAD`` follows SQuAD 2.0 there and gives 1.
    """
    _check_answers(answers)
    predicted_words = normalize_answer(prediction).split()
    return max(_f1(predicted_words, answer) for answer in answers)


class SquadScore(Sums):
    """Exact match and F1 of SQuAD v1.1 answers, on the 0-100 scale, accumulated over batches.

    The state is three float64 sums, so a split's score is exact whatever the batching and
    ``compute`` sums them over processes under ``torchrun``: the exact matches (each 0 or 1),
    the F1 scores (each in ``[0, 1]``), and the number of questions.
    """

    _names = ("em", "f1", "count")

    def update(self, predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> None:
        """Add a batch of questions: one predicted answer and a list of gold answers each."""
        if isinstance(predictions, str) or isinstance(answers, str):
            raise DivekitError("predictions and answers must be lists (one entry per question)")
        if len(predictions) != len(answers):
            raise DivekitError(f"got {len(predictions)} predictions but {len(answers)} answer "
                               "lists: pass one list of gold answers per prediction")
        pairs = list(zip(predictions, answers, strict=True))
        self.add(em=sum(exact_match(p, a) for p, a in pairs),
                 f1=sum(token_f1(p, a) for p, a in pairs), count=len(pairs))

    def compute(self) -> dict[str, torch.Tensor]:
        """``{"em", "f1"}`` on the 0-100 scale over every question so far (all processes), as
        float64 scalars; 0 before any question (like the Trainer's means)."""
        em, f1, count = self.totals()
        return {name: torch.tensor(100 * value / count if count else 0.0, dtype=torch.float64)
                for name, value in (("em", em), ("f1", f1))}


def best_spans(start_logits: torch.Tensor, end_logits: torch.Tensor, allowed: torch.Tensor,
               max_answer_len: int = 30) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The highest-scoring answer span of each row: ``start <= end < start + max_answer_len``,
    both positions allowed, maximising ``start_logits[start] + end_logits[end]``.

    Only the band of spans no longer than ``max_answer_len`` is scored: memory and work are
    ``B x L x min(L, max_answer_len)`` (15,360 pairs per row at ``L = 512`` and 30 tokens;
    every ``L x L`` pair would be 262,144, still fine for ``L <= 512``). Ties go to the smallest
    start, then the smallest end (row-major order). A row that allows no token, or whose every
    allowed span scores NaN, gets ``start = end = 0`` (the CLS position, BERT's "no answer")
    and score ``-inf``. Logits of half precision are scored in float32.

    Args:
        start_logits: start scores of each token.
        end_logits: end scores of each token.
        allowed: True at the tokens an answer may cover (the context tokens of the window; not
            the question, the special tokens or padding).
        max_answer_len: the longest answer in tokens, >= 1.

    Returns:
        ``(start, end, score)``: int64 positions (end inclusive) and the span's score.

    Shape:
        start_logits, end_logits, allowed: ``(B, L)``; start, end, score: ``(B,)``.
    """
    if isinstance(max_answer_len, bool) or not isinstance(max_answer_len, int) \
            or max_answer_len < 1:
        raise DivekitError(f"max_answer_len must be an integer >= 1, got {max_answer_len!r}")
    if start_logits.dim() != 2 or start_logits.shape != end_logits.shape \
            or start_logits.shape != allowed.shape:
        raise DivekitError(f"start_logits, end_logits and allowed must share one (B, L) shape, "
                           f"got {tuple(start_logits.shape)}, {tuple(end_logits.shape)} and "
                           f"{tuple(allowed.shape)}")
    if allowed.dtype != torch.bool:
        raise DivekitError(f"allowed must be a boolean tensor, got {allowed.dtype}")
    dtype = torch.promote_types(torch.promote_types(start_logits.dtype, end_logits.dtype),
                                torch.float32)
    batch, length = start_logits.shape
    if length == 0:
        zero = torch.zeros(batch, dtype=torch.long, device=start_logits.device)
        return zero, zero.clone(), torch.full((batch,), float("-inf"), dtype=dtype,
                                              device=start_logits.device)
    width = min(max_answer_len, length)
    # Entry [b, s, k] of the (B, L, W) tensors below is about the span (s, s + k); positions
    # past the end are padding and never allowed.
    pad = width - 1
    end_band = torch.nn.functional.pad(end_logits.to(dtype), (0, pad)).unfold(1, width, 1)
    end_allowed = torch.nn.functional.pad(allowed, (0, pad), value=False).unfold(1, width, 1)
    valid = allowed[:, :, None] & end_allowed  # (B, L, W)
    scores = start_logits.to(dtype)[:, :, None] + end_band
    valid = valid & ~scores.isnan()  # one NaN logit must not turn a whole row into NaN
    scores = scores.masked_fill(~valid, float("-inf")).flatten(1)
    best = scores.max(dim=1).values
    # The first valid span reaching the maximum (asking for validity, not only the score, keeps
    # a row whose valid spans all score -inf on a valid span).
    hit = valid.flatten(1) & (scores == best[:, None])
    positions = torch.arange(hit.shape[1], device=hit.device).expand_as(hit)
    index = positions.masked_fill(~hit, hit.shape[1]).min(dim=1).values
    start = torch.div(index, width, rounding_mode="floor")
    end = start + index % width
    found = hit.any(dim=1)
    zero = torch.zeros_like(start)
    return (torch.where(found, start, zero), torch.where(found, end, zero),
            best.masked_fill(~found, float("-inf")))
