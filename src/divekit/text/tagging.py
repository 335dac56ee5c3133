"""16.6 Fine-tuning BERT for token-level applications: scoring a tagger's output.

Two metrics for sequence tagging (Devlin et al. 2019, "BERT: Pre-training of Deep Bidirectional
Transformers for Language Understanding", section 4.3 on CoNLL-2003 NER):

* :class:`EntityF1`, the named-entity score of the CoNLL shared tasks (Tjong Kim Sang and
  De Meulder 2003) and WNUT-17: tags are read as BIO (IOB2) chunks with the rules of the
  CoNLL-2000 ``conlleval`` script (:func:`entities`), and an entity counts as found only when
  its type, first and last word all match. Precision, recall and F1 are micro-averaged over
  entities, exactly as ``seqeval``'s default mode computes them.
* :class:`WordAccuracy`, the fraction of words tagged correctly (part-of-speech tagging).

Both keep integer counts as their state, so a split's score is exact whatever the batching, and
summing the counts over processes (what ``torchrun`` does) gives the score of the whole split.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from divekit.engine.metrics import Sums
from divekit.errors import DivekitError


def _split_tag(tag: str, position: int) -> tuple[str, str]:
    """``("B" | "I" | "O", type)`` of one BIO tag (type ``""`` for ``O``)."""
    if tag == "O":
        return "O", ""
    if isinstance(tag, str) and tag[:2] in ("B-", "I-") and len(tag) > 2:
        return tag[0], tag[2:]
    raise DivekitError(f"tag {tag!r} at position {position} is not BIO (IOB2): use 'O', "
                       "'B-<type>' or 'I-<type>' (convert IOBES/BILOU tags to BIO first)")


def entities(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """The entity chunks of a BIO (IOB2) tag sequence, read with conlleval's rules.

    A chunk starts at ``B-x``, and also at an ``I-x`` that does not continue a chunk of type
    ``x`` (after ``O``, at the start, or after a chunk of another type): conlleval, and
    ``seqeval``'s default mode, treat such an ill-formed ``I-x`` as the start of an entity
    rather than dropping it. A chunk runs over the ``I-x`` tags of its type that follow it.

    Args:
        tags: one tag per word: ``"O"``, ``"B-<type>"`` or ``"I-<type>"``.

    Returns:
        The set of ``(type, start, end)`` chunks, ``end`` inclusive (the index of the chunk's
        last word, as in ``seqeval.metrics.sequence_labeling.get_entities``).
    """
    if isinstance(tags, str):
        raise DivekitError("tags must be a list of tag strings, one per word, got a string")
    chunks: set[tuple[str, int, int]] = set()
    current: str | None = None  # the type of the chunk that is open, if any
    start = 0
    for i, tag in enumerate(tags):
        prefix, kind = _split_tag(tag, i)
        if current is not None and (prefix != "I" or kind != current):
            chunks.add((current, start, i - 1))
            current = None
        if prefix == "B" or (prefix == "I" and current is None):
            current, start = kind, i
    if current is not None:
        chunks.add((current, start, len(tags) - 1))
    return chunks


def _check_pairs(predicted: Sequence[Sequence[str]], gold: Sequence[Sequence[str]]) -> None:
    if isinstance(predicted, str) or isinstance(gold, str):
        raise DivekitError("predicted and gold must be lists of sentences (lists of tags)")
    if len(predicted) != len(gold):
        raise DivekitError(f"got {len(predicted)} predicted sentences but {len(gold)} gold ones: "
                           "pass one predicted tag list per gold sentence")
    for i, (pred, true) in enumerate(zip(predicted, gold, strict=True)):
        if isinstance(pred, str) or isinstance(true, str):
            raise DivekitError(f"sentence {i} is a string: pass each sentence as a list of tags")
        if len(pred) != len(true):
            raise DivekitError(f"sentence {i} has {len(pred)} predicted tags but {len(true)} "
                               "gold ones: predict exactly one tag per word")


class _Counts(Sums):
    """Integer counts (see :class:`~divekit.engine.metrics.Sums`)."""

    _dtype = torch.long


class EntityF1(_Counts):
    """Entity-level F1, precision and recall of BIO tags (CoNLL / WNUT), micro-averaged.

    The state is three counts: entities predicted correctly (same type, start and end),
    entities predicted, and gold entities. Each sentence is chunked on its own with
    :func:`entities`, so batches can split a split anywhere between sentences.

    Example:
        >>> metric = EntityF1()
        >>> metric.update([["B-PER", "I-PER", "O", "B-LOC"]], [["B-PER", "I-PER", "O", "O"]])
        >>> {k: round(v.item(), 3) for k, v in metric.compute().items()}
        {'f1': 0.667, 'precision': 0.5, 'recall': 1.0}
    """

    _names = ("correct", "predicted", "gold")

    def update(self, predicted: Sequence[Sequence[str]], gold: Sequence[Sequence[str]]) -> None:
        """Add a batch of sentences: predicted and gold tags, one list of tags per sentence."""
        _check_pairs(predicted, gold)
        correct = num_predicted = num_gold = 0
        for pred_tags, gold_tags in zip(predicted, gold, strict=True):
            pred_chunks, gold_chunks = entities(pred_tags), entities(gold_tags)
            correct += len(pred_chunks & gold_chunks)
            num_predicted += len(pred_chunks)
            num_gold += len(gold_chunks)
        self.add(correct=correct, predicted=num_predicted, gold=num_gold)

    def compute(self) -> dict[str, torch.Tensor]:
        """``{"f1", "precision", "recall"}`` as float64 scalars in ``[0, 1]``, over all processes.

        A ratio whose denominator is 0 (no predicted entity, no gold entity) is 0, as in
        ``seqeval`` (which also warns); F1 is ``2 correct / (predicted + gold)``, the harmonic
        mean of precision and recall, and 0 when either is 0.
        """
        correct, predicted, gold = self.totals()
        ratio = lambda num, den: torch.tensor(num / den if den else 0.0,  # noqa: E731
                                              dtype=torch.float64)
        return {"f1": ratio(2 * correct, predicted + gold),
                "precision": ratio(correct, predicted), "recall": ratio(correct, gold)}


class WordAccuracy(_Counts):
    """The fraction of words whose predicted tag equals the gold tag (e.g. part of speech).

    The state is two counts: words tagged correctly and words seen.
    """

    _names = ("correct", "total")

    def update(self, predicted: Sequence[Sequence[str]], gold: Sequence[Sequence[str]]) -> None:
        """Add a batch of sentences: predicted and gold tags, one list of tags per sentence."""
        _check_pairs(predicted, gold)
        correct = sum(p == g for pred, true in zip(predicted, gold, strict=True)
                      for p, g in zip(pred, true, strict=True))
        self.add(correct=correct, total=sum(len(true) for true in gold))

    def compute(self) -> torch.Tensor:
        """The accuracy over every word so far (all processes), a float64 scalar; 0 before any
        word (like the Trainer's means)."""
        correct, total = self.totals()
        return torch.tensor(correct / total if total else 0.0, dtype=torch.float64)
