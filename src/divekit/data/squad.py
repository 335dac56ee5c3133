"""SQuAD v1.1 for fine-tuning BERT on extractive question answering (d2l 16.6's span tasks).

SQuAD (Rajpurkar et al. 2016, "SQuAD: 100,000+ Questions for Machine Comprehension of Text")
pairs questions with Wikipedia paragraphs; every answer is a span of its paragraph. BERT
(Devlin et al. 2019, "BERT: Pre-training of Deep Bidirectional Transformers for Language
Understanding", section 4.2) reads ``[CLS] question [SEP] context [SEP]`` and predicts the
answer's first and last token. A paragraph longer than fits is read in overlapping windows
(``doc_stride`` tokens of overlap, as the ``stride`` of Hugging Face's ``run_qa.py``); every
window is one input (a *feature*). A window that does not hold the whole answer is labelled
``start = end = 0``, the ``[CLS]`` position.

Batches are ``(tokens, segments, valid_len, start, end, feature_id)``: ``feature_id`` indexes
:attr:`QAData.features` of the split, which maps every token of the window back to characters
of the context, so that predicted spans become answer text.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from divekit.data.glue import BertTaskData, check_max_len, pad_sequences, resolve_tokenizer
from divekit.data.paths import data_root
from divekit.data.registry import register_dataset
from divekit.errors import DataError, DivekitError

SECTION = "SQuAD v1.1 (extractive question answering)"
SQUAD_URL = "https://rajpurkar.github.io/SQuAD-explorer/dataset/"
TRAIN_FILE, DEV_FILE = "train-v1.1.json", "dev-v1.1.json"

Offsets = list[tuple[int, int] | None]
Feature = tuple[int, Offsets]  # (example index, per-token character offsets into the context)


@dataclass(repr=False)
class QAData(BertTaskData):
    """A :class:`BertTaskData` of question/context windows.

    Attributes:
        examples: per split, one dict per question: ``id``, ``question``, ``context``,
            ``answers`` (the gold answer texts) and ``answer_starts`` (their character
            offsets in the context).
        features: per split, one ``(example_index, offsets)`` per window (``feature_id`` in
            a batch indexes it): ``offsets[i]`` is the ``(char_start, char_end)`` of token
            ``i`` in the context, or None for question, special and padding tokens; it has
            ``max_len`` entries.
        titles: per split, the article of every example.
        truncated: per split, the examples whose context needed more than one window.
        questions_cut: per split, the questions cut to ``max_query_len`` tokens.
    """

    examples: dict[str, list[dict]] = field(default_factory=dict)
    features: dict[str, list[Feature]] = field(default_factory=dict)
    titles: dict[str, list[str]] = field(default_factory=dict)
    questions_cut: dict[str, int] = field(default_factory=dict)

    @property
    def model_options(self) -> dict[str, int]:
        """The size a BERT question-answering model takes from this data."""
        return {"vocab_size": self.tokenizer.vocab_size}

    def hold_out(self, val_size: float | int, seed: int) -> None:
        """Move training *articles* into a new validation split: ``val_size`` of them (a
        count, or a fraction in (0, 1)), chosen by ``seed``, so that no paragraph, question
        or window is on both sides."""
        titles = list(dict.fromkeys(self.titles["train"]))
        held = set(_held_out_titles(titles, val_size, seed, "val_size"))
        examples, features, titles_of = (self.examples["train"], self.features["train"],
                                          self.titles["train"])
        tensors = self.train
        for split, side in (("train", False), ("val", True)):
            kept = [i for i, title in enumerate(titles_of) if (title in held) == side]
            renumber = {old: new for new, old in enumerate(kept)}
            feature_ids = [f for f, (example, _) in enumerate(features) if example in renumber]
            index = torch.tensor(feature_ids, dtype=torch.long)
            self.examples[split] = [examples[i] for i in kept]
            self.titles[split] = [titles_of[i] for i in kept]
            self.features[split] = [(renumber[features[f][0]], features[f][1])
                                    for f in feature_ids]
            *inputs, _ = (t[index] for t in tensors)
            setattr(self, split, (*inputs, torch.arange(len(feature_ids))))


def read_squad(path: Path) -> list[dict]:
    """The articles of a SQuAD v1.1 JSON file, checked: ``[{"title", "paragraphs": [{"context",
    "qas": [{"id", "question", "answers": [{"text", "answer_start"}]}]}]}]``."""
    try:
        with open(path, encoding="utf-8") as file:
            document = json.load(file)
    except FileNotFoundError as e:
        raise DataError(f"{path} does not exist") from e
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path} as UTF-8 text: {e}") from e
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON ({e.msg}, line {e.lineno} column {e.colno}); "
                        "give the original SQuAD v1.1 file") from e
    articles = document.get("data") if isinstance(document, dict) else None
    if not isinstance(articles, list) or not articles:
        raise DataError(f"{path} is not SQuAD JSON: expected an object with a non-empty 'data' "
                        "list of articles")
    for a, article in enumerate(articles):
        _expect(path, f"data[{a}]", article, {"title": str, "paragraphs": list})
        for p, paragraph in enumerate(article["paragraphs"]):
            where = f"data[{a}].paragraphs[{p}]"
            _expect(path, where, paragraph, {"context": str, "qas": list})
            for q, qa in enumerate(paragraph["qas"]):
                _expect(path, f"{where}.qas[{q}]", qa, {"id": str, "question": str,
                                                        "answers": list})
                if qa.get("is_impossible") or not qa["answers"]:
                    raise DataError(f"{path}, {where}.qas[{q}]: a question without an answer "
                                    "(SQuAD 2.0?); this dataset reads SQuAD v1.1, where every "
                                    "question has one")
                for n, answer in enumerate(qa["answers"]):
                    _expect(path, f"{where}.qas[{q}].answers[{n}]", answer,
                            {"text": str, "answer_start": int})
    return articles


def _expect(path: Path, where: str, value: object, keys: dict[str, type]) -> None:
    if not isinstance(value, dict):
        raise DataError(f"{path}, {where}: expected a JSON object, got {type(value).__name__}; "
                        "give a SQuAD v1.1 file")
    for key, kind in keys.items():
        if not isinstance(value.get(key), kind) or isinstance(value.get(key), bool):
            raise DataError(f"{path}, {where}: needs {key!r} as a {kind.__name__} (SQuAD v1.1 "
                            "layout)")


def squad_examples(articles: list[dict]) -> tuple[list[dict], list[str]]:
    """One dict per question (see :attr:`QAData.examples`) and the title of its article."""
    examples, titles = [], []
    for article in articles:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                examples.append({"id": qa["id"], "question": qa["question"],
                                 "context": paragraph["context"],
                                 "answers": [a["text"] for a in qa["answers"]],
                                 "answer_starts": [a["answer_start"] for a in qa["answers"]]})
                titles.append(article["title"])
    return examples, titles


def _held_out_titles(titles: list[str], share: float | int, seed: int, option: str) -> list[str]:
    """``share`` of the titles (a fraction in (0, 1) or a count), chosen by ``seed``."""
    count = round(share * len(titles)) if isinstance(share, float) else share
    if (isinstance(share, bool) or not isinstance(share, int | float)
            or isinstance(share, float) and not 0 < share < 1 or not 0 < count < len(titles)):
        raise DivekitError(f"{option} must be a fraction in (0, 1) or a count in "
                           f"[1, {len(titles) - 1}] of the {len(titles)} articles, got {share!r}")
    order = torch.randperm(len(titles), generator=torch.Generator().manual_seed(seed))
    return [titles[i] for i in order[:count].tolist()]


def split_articles(articles: list[dict], test_articles: float | int, seed: int,
                   ) -> tuple[list[dict], list[dict]]:
    """Split articles by title into a training and a held-out part.

    Args:
        test_articles: the held-out share: a fraction in (0, 1) or a count of articles.
        seed: seeds the permutation of the titles.

    Returns:
        ``(train, held_out)``, each in the file's order.
    """
    titles = list(dict.fromkeys(article["title"] for article in articles))
    held = set(_held_out_titles(titles, test_articles, seed, "test_articles"))
    return ([a for a in articles if a["title"] not in held],
            [a for a in articles if a["title"] in held])


def answer_tokens(offsets: list[tuple[int, int]], char_start: int, char_end: int,
                  ) -> tuple[int, int] | None:
    """The first and last context tokens that overlap the characters
    ``[char_start, char_end)``, or None when no token does."""
    first = next((i for i, (_, end) in enumerate(offsets) if end > char_start), None)
    last = next((i for i in reversed(range(len(offsets))) if offsets[i][0] < char_end), None)
    if first is None or last is None or first > last:
        return None
    return first, last


def make_features(examples: list[dict], tokenizer, max_len: int, max_query_len: int,
                  doc_stride: int) -> tuple[list[list[int]], list[list[int]], list[int],
                                            list[int], list[Feature], int, int]:
    """Cut every example into windows ``[CLS] question [SEP] context window [SEP]``.

    The question keeps its first ``max_query_len`` tokens; each window then holds up to
    ``max_len - len(question) - 3`` context tokens, and neighbouring windows share
    ``doc_stride`` of them, so together they cover every context token.

    Args:
        tokenizer: a :class:`~divekit.text.bert_tokenizer.BertTokenizer`.

    Returns:
        The windows' token ids and segment ids, their answer start and end positions (the
        first answer's tokens when the window holds all of it, else 0 and 0), their features
        ``(example_index, offsets)``, how many examples needed more than one window and how
        many questions were cut.
    """
    backend = tokenizer.backend
    contexts = list(dict.fromkeys(example["context"] for example in examples))
    # The specials are added by hand around each window, so encode without them.
    context_encodings = dict(zip(contexts, backend.encode_batch(contexts,
                                                                add_special_tokens=False),
                                 strict=True))
    questions = backend.encode_batch([example["question"] for example in examples],
                                     add_special_tokens=False)
    all_ids, all_segments, starts, ends, features = [], [], [], [], []
    multi_window = questions_cut = 0
    for index, (example, question) in enumerate(zip(examples, questions, strict=True)):
        question_ids = question.ids[:max_query_len]
        questions_cut += len(question.ids) > max_query_len
        context = context_encodings[example["context"]]
        room = max_len - len(question_ids) - 3
        char_start = example["answer_starts"][0]
        answer = answer_tokens(context.offsets, char_start,
                               char_start + len(example["answers"][0]))
        windows = _windows(len(context.ids), room, room - doc_stride)
        multi_window += len(windows) > 1
        head = len(question_ids) + 2  # [CLS] question [SEP]
        for begin, end in windows:
            ids = [tokenizer.cls_id, *question_ids, tokenizer.sep_id, *context.ids[begin:end],
                   tokenizer.sep_id]
            segments = [0] * head + [1] * (end - begin + 1)
            offsets: Offsets = [None] * head + list(context.offsets[begin:end])
            offsets += [None] * (max_len - len(offsets))
            all_ids.append(ids)
            all_segments.append(segments)
            inside = answer is not None and begin <= answer[0] and answer[1] < end
            starts.append(head + answer[0] - begin if inside else 0)
            ends.append(head + answer[1] - begin if inside else 0)
            features.append((index, offsets))
    return all_ids, all_segments, starts, ends, features, multi_window, questions_cut


def _windows(length: int, room: int, step: int) -> list[tuple[int, int]]:
    """``[begin, end)`` token ranges of up to ``room`` tokens, ``step`` apart, covering
    ``range(length)``."""
    windows, begin = [], 0
    while True:
        windows.append((begin, min(begin + room, length)))
        if begin + room >= length:
            return windows
        begin += step


def build_qa(name: str, splits: dict[str, list[dict]], titles: dict[str, list[str]],
             tokenizer: str | None, max_len: int, max_query_len: int,
             doc_stride: int) -> QAData:
    """Encode question-answering examples into a :class:`QAData` (see :func:`make_features`).

    Args:
        splits: ``"train"``, ``"test"`` and optionally ``"val"``: example dicts.
        titles: per split, the article title of each example.
        tokenizer: a tokenizer path, or None to train WordPiece on the training questions and
            contexts.
    """
    tok = resolve_tokenizer(tokenizer, lambda: [
        *dict.fromkeys(e["context"] for e in splits["train"]),
        *(e["question"] for e in splits["train"])])
    tensors, features, multi_window, questions_cut = {}, {}, {}, {}
    for split, examples in splits.items():
        ids, segments, starts, ends, features[split], multi_window[split], questions_cut[split] = (
            make_features(examples, tok, max_len, max_query_len, doc_stride))
        tensors[split] = (*pad_sequences(ids, segments, tok.pad_id),
                          torch.tensor(starts, dtype=torch.long),
                          torch.tensor(ends, dtype=torch.long),
                          torch.arange(len(ids)))
        if questions_cut[split]:
            warnings.warn(f"{questions_cut[split]} of {len(examples)} {split} questions were "
                          f"longer than max_query_len={max_query_len} tokens and were truncated",
                          stacklevel=2)
    return QAData(name, train=tensors["train"], test=tensors["test"], val=tensors.get("val"),
                  task="question-answering", tokenizer=tok, max_len=max_len,
                  truncated=multi_window, questions_cut=questions_cut, examples=splits,
                  features=features, titles=titles)


@register_dataset("squad", section=SECTION, files=(DEV_FILE,))
def squad(
    data_dir: str | None = None,
    tokenizer: str | None = None,
    max_len: int = 256,
    max_query_len: int = 64,
    doc_stride: int = 128,
    seed: int = 0,
    test_articles: float | int = 0.2,
) -> QAData:
    """SQuAD v1.1: questions on Wikipedia paragraphs, answered by a span of the paragraph.

    With ``train-v1.1.json`` in the folder, it is the train split and ``dev-v1.1.json`` the
    test split. With only ``dev-v1.1.json`` (48 articles, 10,570 questions), its articles are
    split by title, seeded: ``test_articles`` of them (default 20%: 10 articles) are held out
    as the test split and the rest train, so no paragraph is on both sides. Scores on that
    test split are not comparable with published dev scores.

    Args:
        data_dir: folder holding the ``squad-v1.1/`` sub-folder.
        tokenizer: a tokenizer to load (``tokenizer.json``, ``vocab.txt`` or a run folder);
            default: a WordPiece tokenizer of 8,000 pieces trained on the training questions
            and paragraphs.
        max_len: tokens per window, specials included.
        max_query_len: a question keeps at most this many tokens.
        doc_stride: context tokens shared by neighbouring windows.
        seed: seeds the split of the dev file's articles.
        test_articles: the held-out share of the dev file's articles (a fraction in (0, 1),
            or a count), used only when there is no training file.
    """
    for option, value in (("max_query_len", max_query_len), ("doc_stride", doc_stride)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise DivekitError(f"{option} must be a non-negative integer, got {value!r}")
    check_max_len(max_len, least=4)
    if max_len - max_query_len - 3 <= doc_stride:
        raise DivekitError(f"max_len={max_len} leaves {max_len - max_query_len - 3} context "
                           f"tokens per window next to a {max_query_len}-token question, not "
                           f"more than doc_stride={doc_stride}: raise max_len or lower "
                           "max_query_len / doc_stride")
    root = data_root(data_dir) / "squad-v1.1"
    if not (root / DEV_FILE).is_file():
        raise DataError(f"squad file missing in {root}: {DEV_FILE}. Put the original file from "
                        f"{SQUAD_URL}{DEV_FILE} (and optionally {TRAIN_FILE}) in that folder, or "
                        "point --data-dir / DIVEKIT_DATA at a folder that has a 'squad-v1.1' "
                        "sub-folder.")
    dev = read_squad(root / DEV_FILE)
    if (root / TRAIN_FILE).is_file():
        parts = {"train": read_squad(root / TRAIN_FILE), "test": dev}
    else:
        train, test = split_articles(dev, test_articles, seed)
        parts = {"train": train, "test": test}
    splits, titles = {}, {}
    for split, articles in parts.items():
        splits[split], titles[split] = squad_examples(articles)
    return build_qa("squad", splits, titles, tokenizer, max_len, max_query_len, doc_stride)
