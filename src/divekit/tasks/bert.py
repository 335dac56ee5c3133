"""15.8-15.10, 16.6-16.7 BERT's tasks: pretraining (masked language modelling and next-sentence
prediction) and fine-tuning for sentence classification, token tagging and question answering.

Every model is called as ``model(tokens, segments, valid_len)`` (see :mod:`divekit.models.bert`);
the batches are those of :mod:`divekit.data.bert`, :mod:`divekit.data.glue`,
:mod:`divekit.data.tagging` and :mod:`divekit.data.squad`:

* ``bert-pretraining``: ``(tokens, segments, valid_len, mlm_labels, nsp_labels)``; the loss is
  the masked-LM cross-entropy (mean over the predicted tokens) plus the next-sentence one (mean
  over the pairs), each reported as a part (``mlm``, ``nsp``) with its accuracy.
* ``text-classification``: ``(tokens, segments, valid_len, labels)``: classification from
  ``<cls>``, accuracy.
* ``token-classification``: ``(tokens, segments, valid_len, labels, sentence_id)``; labels only
  at the first piece of each word. Evaluation rebuilds every sentence's word tags (a word cut off
  by ``max_len`` counts as missed) and scores them against the gold tags: entity-level F1 for
  BIO entity data (WNUT-17, as ``seqeval``), word accuracy for tag data (POS).
* ``question-answering``: ``(tokens, segments, valid_len, start, end, feature_id)``; the loss is
  the mean of the start and end cross-entropies. Evaluation takes each window's best span of
  context tokens (end >= start, at most ``max_answer_len`` tokens), keeps each question's best
  over its windows, and scores the answer text by SQuAD's exact match and F1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from divekit.engine import distributed
from divekit.engine.metrics import Sums
from divekit.engine.task import Output, Task, register_task
from divekit.errors import DivekitError
from divekit.tasks.classification import Classification

IGNORE = -100  # label of the positions no loss or metric reads


def _bert(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # DistributedDataParallel


def _needs(data: Any, attributes: tuple[str, ...], task: str, example: str) -> None:
    missing = [name for name in attributes if getattr(data, name, None) is None]
    if missing:
        raise DivekitError(f"the {task} task needs {example} data (with {', '.join(missing)}), "
                           f"got {getattr(data, 'name', type(data).__name__)!r}")


class Accuracy(Sums):
    """Correct over counted predictions (masked tokens, sentence pairs, labelled words), exact
    over a split and summed over processes."""

    _names = ("correct", "total")

    def update(self, predicted: torch.Tensor, target: torch.Tensor) -> None:
        self.add(correct=(predicted == target).sum(), total=target.numel())

    def compute(self) -> torch.Tensor:
        correct, total = self.totals()
        return torch.tensor(correct / total if total else 0.0, dtype=torch.float64)


class _SpanBatches(Task):
    """Batches of ``(tokens, segments, valid_len, target, target, ...)`` counted in
    sequences: the model reads the first three, the loss the next two."""

    def inputs(self, batch: Any) -> Any:
        return batch[:3]

    def targets(self, batch: Any) -> Any:
        return batch[3:5]

    def count(self, batch: Any) -> int:
        return len(batch[0])


@register_task("bert-pretraining")
@dataclass
class BertPretraining(_SpanBatches):
    """Masked language modelling plus next-sentence prediction (Devlin et al. 2019).

    Metrics: ``mlm_acc`` (masked tokens predicted right), ``nsp_acc``; the loss's parts ``mlm``
    and ``nsp``. A batch counts its examples. Single sentences (next-sentence label -100) train
    the masked LM only.
    """

    monitor = "loss"

    def step(self, model: nn.Module, batch: Any) -> Output:
        tokens, segments, valid_len, mlm_labels, nsp_labels = batch
        predict = mlm_labels != IGNORE
        mlm_logits, nsp_logits = model(tokens, segments, valid_len, predict)
        targets = mlm_labels[predict]
        mlm_logits = mlm_logits.float()  # once: argmax is 5x faster on float32 than bf16 here
        mlm = F.cross_entropy(mlm_logits, targets)
        # Single sentences (masked-LM text without a next sentence) have the label -100.
        paired = nsp_labels != IGNORE
        nsp = F.cross_entropy(nsp_logits.float(), nsp_labels, ignore_index=IGNORE,
                              reduction="sum") / paired.sum().clamp(min=1)
        outputs = (mlm_logits.argmax(-1), targets, nsp_logits.argmax(-1)[paired],
                   nsp_labels[paired])
        parts = {"mlm": mlm.detach()}
        if paired.any():  # a batch of single sentences has no next-sentence loss to average
            parts["nsp"] = nsp.detach()
        return Output(mlm + nsp, outputs, parts)

    def metrics(self, split: str) -> dict[str, Any]:
        return {"mlm_acc": Accuracy(), "nsp_acc": Accuracy()}

    def update(self, metrics: dict, output: Output, batch: Any) -> None:
        mlm_predicted, mlm_targets, nsp_predicted, nsp_targets = output.outputs
        metrics["mlm_acc"].update(mlm_predicted, mlm_targets)
        metrics["nsp_acc"].update(nsp_predicted, nsp_targets)

    def predict(self, model: nn.Module, inputs: Any) -> Any:
        return _bert(model).encode(*inputs)


@register_task("text-classification")
@dataclass
class TextClassification(Classification):
    """Classification of a sentence or sentence pair from BERT's ``<cls>`` representation.

    Args: as :class:`~divekit.tasks.classification.Classification`; the classes are the data's
    ``class_names``.
    """

    def setup(self, data: Any) -> None:
        if self.num_classes is None:
            _needs(data, ("class_names",), "text-classification", "labelled sentence")
            self.num_classes = len(data.class_names)

    def inputs(self, batch: Any) -> Any:
        return batch[:3]

    def targets(self, batch: Any) -> torch.Tensor:
        return batch[3]

    def step(self, model: nn.Module, batch: Any) -> Output:
        logits = model(*batch[:3])
        return Output(self.loss(logits, batch[3]), logits)

    def predict(self, model: nn.Module, inputs: Any) -> torch.Tensor:
        return model(*inputs)


@register_task("token-classification")
@dataclass
class TokenClassification(Task):
    """One tag per word from the features of its first word piece.

    Metrics: on training batches ``acc`` over labelled words (cheap, from tensors); on the
    evaluation splits, from every sentence's rebuilt word tags: ``f1``, ``precision`` and
    ``recall`` of entities for BIO entity data (the default monitor ``f1``), or ``acc`` of words
    for tag data (monitor ``acc``).
    """

    monitor = "f1"

    def __post_init__(self) -> None:
        self.tags: dict[str, list[list[str]]] = {}
        self.class_names: list[str] = []
        self.entities = True

    def setup(self, data: Any) -> None:
        _needs(data, ("tags", "class_names", "scheme"), "token-classification",
               "word-tagging (e.g. wnut-17, ud-ewt-pos)")
        self.tags, self.class_names = data.tags, list(data.class_names)
        self.entities = data.scheme == "entities"
        self.monitor = "f1" if self.entities else "acc"

    def inputs(self, batch: Any) -> Any:
        return batch[:3]

    def targets(self, batch: Any) -> torch.Tensor:
        return batch[3]

    def count(self, batch: Any) -> torch.Tensor:
        return (batch[3] != IGNORE).sum()

    def step(self, model: nn.Module, batch: Any) -> Output:
        logits = model(*batch[:3])
        labels = batch[3]
        loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(),
                               ignore_index=IGNORE)
        return Output(loss, logits.argmax(-1))

    def metrics(self, split: str) -> dict[str, Any]:
        if split == "train" or split not in self.tags:
            return {"acc": Accuracy()}
        from divekit.text.tagging import EntityF1, WordAccuracy

        metric = EntityF1() if self.entities else WordAccuracy()
        name = "entities" if self.entities else "acc"
        return {name: SplitTags(metric, self.tags[split], self.class_names,
                                missing="O" if self.entities else None)}

    def update(self, metrics: dict, output: Output, batch: Any) -> None:
        labels = batch[3]
        labelled = labels != IGNORE
        if "acc" in metrics and isinstance(metrics["acc"], Accuracy):
            metrics["acc"].update(output.outputs[labelled], labels[labelled])
            return
        next(iter(metrics.values())).update(output.outputs, labelled, batch[4])

    def predict(self, model: nn.Module, inputs: Any) -> torch.Tensor:
        return model(*inputs).argmax(-1)


class SplitTags:
    """A word-tag metric of one split: predictions arrive per batch as tag ids at the labelled
    positions; each sentence's tags are completed (words cut off by ``max_len`` get ``missing``,
    never a right answer for POS) and compared with its gold tags."""

    higher_is_better = True

    def __init__(self, metric: Any, gold: list[list[str]], names: list[str],
                 missing: str | None) -> None:
        self.metric, self.gold, self.names, self.missing = metric, gold, names, missing

    def update(self, predicted: torch.Tensor, labelled: torch.Tensor,
               sentence_id: torch.Tensor) -> None:
        predictions, golds = [], []
        for row, mask, index in zip(predicted.cpu(), labelled.cpu(), sentence_id.tolist(),
                                    strict=True):
            gold = self.gold[index]
            tags = [self.names[i] for i in row[mask].tolist()]
            tags += [self.missing or "<cut>"] * (len(gold) - len(tags))
            predictions.append(tags)
            golds.append(gold)
        self.metric.update(predictions, golds)

    def reset(self) -> None:
        self.metric.reset()

    def to(self, device: torch.device | str) -> SplitTags:
        self.metric = self.metric.to(device)
        return self

    @property
    def metric_state(self) -> dict[str, torch.Tensor]:
        return self.metric.metric_state

    def compute(self) -> Any:
        return self.metric.compute()


@register_task("question-answering")
@dataclass
class QuestionAnswering(_SpanBatches):
    """Extractive question answering: start and end logits over the context's tokens.

    Args:
        max_answer_len: the longest answer span, in tokens.

    Metrics (evaluation splits): ``em`` and ``f1`` of SQuAD v1.1 (0-100, the official
    normalisation), over every question of the split; monitor ``f1``.
    """

    max_answer_len: int = 30
    monitor = "f1"

    def __post_init__(self) -> None:
        if isinstance(self.max_answer_len, bool) or not isinstance(self.max_answer_len, int) \
                or self.max_answer_len < 1:
            raise DivekitError(f"max_answer_len must be a positive integer, got "
                               f"{self.max_answer_len!r}")
        self.examples: dict[str, list[dict]] = {}
        self.features: dict[str, list] = {}

    def setup(self, data: Any) -> None:
        _needs(data, ("examples", "features"), "question-answering", "SQuAD-style")
        self.examples, self.features = data.examples, data.features

    def step(self, model: nn.Module, batch: Any) -> Output:
        tokens, segments, valid_len, start, end, feature_id = batch
        logits = model(tokens, segments, valid_len).float()
        start_logits, end_logits = logits.unbind(-1)
        loss = (F.cross_entropy(start_logits, start) + F.cross_entropy(end_logits, end)) / 2
        if model.training:
            return Output(loss)
        from divekit.text.squad import best_spans

        positions = torch.arange(tokens.shape[1], device=tokens.device)
        # Context tokens: the second segment without its closing separator.
        allowed = (segments == 1) & (positions < (valid_len - 1)[:, None])
        spans = best_spans(start_logits, end_logits, allowed, self.max_answer_len)
        return Output(loss, (feature_id, *spans))

    def metrics(self, split: str) -> dict[str, Any]:
        if split == "train" or split not in self.examples:
            return {}
        return {"squad": SplitAnswers(self.examples[split], self.features[split])}

    def update(self, metrics: dict, output: Output, batch: Any) -> None:
        if "squad" in metrics and output.outputs is not None:
            metrics["squad"].update(*output.outputs)


class SplitAnswers:
    """SQuAD exact match and F1 of one split: every window's best span arrives with its score;
    each question keeps the best of its windows, whose text is scored against its answers."""

    higher_is_better = True

    def __init__(self, examples: list[dict], features: list) -> None:
        self.examples, self.features = examples, features
        self.reset()

    def reset(self) -> None:
        self.best: dict[int, tuple[float, int, int]] = {}  # example -> (score, char span)

    def to(self, device: torch.device | str) -> SplitAnswers:
        return self

    def update(self, feature_id: torch.Tensor, start: torch.Tensor, end: torch.Tensor,
               score: torch.Tensor) -> None:
        for feature, first, last, value in zip(feature_id.tolist(), start.tolist(),
                                               end.tolist(), score.tolist(), strict=True):
            example, offsets = self.features[feature]
            if offsets[first] is None or offsets[last] is None:
                continue  # no context token in this window
            candidate = (value, offsets[first][0], offsets[last][1])
            if example not in self.best or candidate[0] > self.best[example][0]:
                self.best[example] = candidate

    @property
    def metric_state(self) -> dict[str, Any]:
        return {"best": self.best}

    def compute(self) -> dict[str, torch.Tensor]:
        from divekit.text.squad import SquadScore

        best: dict[int, tuple[float, int, int]] = {}
        for part in distributed.gather(self.best):  # each process saw some windows
            for example, candidate in part.items():
                if example not in best or candidate[0] > best[example][0]:
                    best[example] = candidate
        score = SquadScore()
        predictions = []
        for index, example in enumerate(self.examples):
            span = best.get(index)
            predictions.append("" if span is None else example["context"][span[1]:span[2]])
        score.update(predictions, [example["answers"] for example in self.examples])
        return score.compute()
