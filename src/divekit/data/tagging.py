"""16.6 Fine-tuning BERT for token-level applications: tagging every word of a sentence.

BERT (Devlin et al. 2019, "BERT: Pre-training of Deep Bidirectional Transformers for Language
Understanding", section 5.3) tags a word by classifying the output at its first word piece;
the later pieces of a word predict nothing. Two datasets are registered:

* ``wnut-17``: named entities in noisy user text (Derczynski et al. 2017, "Results of the
  WNUT2017 Shared Task on Novel and Emerging Entity Recognition"), 6 types in BIO tags (13
  tags); scored by entity F1 (``scheme="entities"``).
* ``ud-ewt-pos``: the universal part-of-speech tags (UPOS, 17) of Universal Dependencies'
  English Web Treebank (Silveira et al. 2014, "A Gold Standard Dependency Corpus for English");
  scored by per-word accuracy (``scheme="tags"``).

Batches are ``(tokens, segments, valid_len, labels, sentence_id)``: labels ``(B, L)`` hold the
tag index at the first piece of each word and -100 elsewhere (specials, later pieces,
padding); ``sentence_id`` ``(B,)`` indexes :attr:`TaggingData.tags` of the split, the gold tags
of every word. A sentence longer than ``max_len`` pieces is truncated (the tokenizer warns);
its cut words stay in ``tags``, so the metrics count them as missed. A word the tokenizer turns
into no piece at all (one made only of characters it drops) gets no label either.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from divekit.data.glue import (
    SECTION,
    BertTaskData,
    check_max_len,
    pad_sequences,
    read_lines,
    resolve_tokenizer,
)
from divekit.data.paths import data_root
from divekit.data.registry import register_dataset
from divekit.errors import DataError

IGNORE = -100  # the label of positions that predict nothing (PyTorch's cross-entropy default)
ENTITY_TYPES = ("corporation", "creative-work", "group", "location", "person", "product")
WNUT17_TAGS = ["O", *(f"{bio}-{kind}" for kind in ENTITY_TYPES for bio in "BI")]
WNUT17_FILES = ("wnut17train.conll", "emerging.dev.conll", "emerging.test.annotated")
WNUT17_URL = "https://github.com/leondz/emerging_entities_17"
UPOS_TAGS = ["ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART", "PRON",
             "PROPN", "PUNCT", "SCONJ", "SYM", "VERB", "X"]
UD_EWT_FILES = ("en_ewt-ud-train.conllu", "en_ewt-ud-dev.conllu", "en_ewt-ud-test.conllu")
UD_EWT_URL = "https://github.com/UniversalDependencies/UD_English-EWT"

Sentence = tuple[list[str], list[str]]  # (words, tags)


@dataclass(repr=False)
class TaggingData(BertTaskData):
    """A :class:`BertTaskData` of tagged sentences, one input per sentence.

    Attributes:
        words: per split, the words of every sentence.
        tags: per split, the gold tag of every word of every sentence (``sentence_id`` in a
            batch indexes it), cut words included.
        scheme: ``"entities"`` (BIO tags, scored by entity F1) or ``"tags"`` (scored by
            per-word accuracy).
    """

    words: dict[str, list[list[str]]] = field(default_factory=dict)
    tags: dict[str, list[list[str]]] = field(default_factory=dict)
    scheme: str = "tags"

    def hold_out(self, val_size: float | int, seed: int) -> None:
        """Move ``val_size`` training sentences into a new validation split; ``words``,
        ``tags`` and ``sentence_id`` are renumbered to match."""
        words, tags = self.words["train"], self.tags["train"]
        super().hold_out(val_size, seed)
        for split in ("train", "val"):
            *inputs, sentence_id = getattr(self, split)
            ids = sentence_id.tolist()
            self.words[split] = [words[i] for i in ids]
            self.tags[split] = [tags[i] for i in ids]
            setattr(self, split, (*inputs, torch.arange(len(ids))))


def _sentences(path: Path, word_of, expected: str) -> list[Sentence]:
    """Group a tagging file's word lines into sentences, a blank (or whitespace-only) line
    ending each. ``word_of(fields, number)`` gives a line's ``(word, tag)``, or None for a
    line that holds no word."""
    sentences: list[Sentence] = []
    words: list[str] = []
    tags: list[str] = []
    for number, line in enumerate(read_lines(path), 1):
        if not line.strip():
            if words:
                sentences.append((words, tags))
                words, tags = [], []
            continue
        word = word_of(line, number)
        if word is not None:
            words.append(word[0])
            tags.append(word[1])
    if words:
        sentences.append((words, tags))
    if not sentences:
        raise DataError(f"{path} holds no sentences: expected {expected}, a blank line after "
                        "each sentence")
    return sentences


def read_conll(path: Path, tag_names: list[str] | None = None) -> list[Sentence]:
    """The sentences of a two-column CoNLL file (WNUT-17): ``token<TAB>tag`` per line.

    A line that is empty or holds only whitespace ends a sentence (WNUT-17's training file
    separates most sentences by a lone tab).

    Args:
        tag_names: the allowed tags (None = any).
    """
    def word_of(line: str, number: int) -> tuple[str, str]:
        fields = line.split("\t")
        if len(fields) != 2 or not fields[0] or not fields[1]:
            raise DataError(f"{path}, line {number}: expected 'token<TAB>tag', got {line[:60]!r}")
        _check_tag(path, number, fields[1], tag_names)
        return fields[0], fields[1]

    return _sentences(path, word_of, "'token<TAB>tag' lines")


def read_conllu(path: Path, tag_names: list[str] | None = None) -> list[Sentence]:
    """The words and UPOS tags of a CoNLL-U file (Universal Dependencies).

    Comment lines, multi-word token ranges (ids like ``3-4``: the surface token "don't" over
    the words "do" "n't") and empty nodes (ids like ``8.1``) are skipped: the words are the
    syntactic words, the ones that carry a UPOS tag.

    Args:
        tag_names: the allowed tags (None = any).
    """
    def word_of(line: str, number: int) -> tuple[str, str] | None:
        if line.startswith("#"):
            return None
        fields = line.split("\t")
        if len(fields) != 10:
            raise DataError(f"{path}, line {number}: {len(fields)} tab-separated fields, CoNLL-U "
                            "has 10 (ID FORM LEMMA UPOS XPOS FEATS HEAD DEPREL DEPS MISC)")
        if "-" in fields[0] or "." in fields[0]:
            return None
        _check_tag(path, number, fields[3], tag_names)
        return fields[1], fields[3]

    return _sentences(path, word_of, "CoNLL-U word lines")


def _check_tag(path: Path, number: int, tag: str, tag_names: list[str] | None) -> None:
    if tag_names is not None and tag not in tag_names:
        raise DataError(f"{path}, line {number}: unknown tag {tag!r}; the tags are "
                        f"{', '.join(tag_names)}")


def build_tagging(name: str, splits: dict[str, list[Sentence]], class_names: list[str],
                  scheme: str, tokenizer: str | None, max_len: int) -> TaggingData:
    """Encode tagged sentences (words given to the tokenizer as they are) into a
    :class:`TaggingData`.

    Args:
        splits: ``"train"``, ``"test"`` and optionally ``"val"``: ``(words, tags)`` sentences.
        class_names: the tags, in label-index order.
        scheme: ``"entities"`` or ``"tags"`` (see :class:`TaggingData`).
        tokenizer: a tokenizer path, or None to train WordPiece on the training words.
        max_len: pieces per sentence, ``[CLS]`` and ``[SEP]`` included.
    """
    tok = resolve_tokenizer(tokenizer, lambda: [" ".join(words) for words, _ in splits["train"]])
    index = {tag: i for i, tag in enumerate(class_names)}
    tensors, truncated = {}, {}
    for split, sentences in splits.items():
        encodings = tok.encode_batch([words for words, _ in sentences], max_len=max_len,
                                     is_pretokenized=True)
        tokens, segments, valid_len = pad_sequences([e.ids for e in encodings],
                                                      [e.segments for e in encodings], tok.pad_id)
        rows = []
        for encoding, (_, tags) in zip(encodings, sentences, strict=True):
            row, previous = [], None
            for word, sequence in zip(encoding.word_ids, encoding.sequence_ids, strict=True):
                first_piece = word is not None and sequence == 0 and word != previous
                row.append(index[tags[word]] if first_piece else IGNORE)
                previous = word
            rows.append(row + [IGNORE] * (tokens.shape[1] - len(row)))
        labels = torch.tensor(rows, dtype=torch.long).reshape(tokens.shape)
        tensors[split] = (tokens, segments, valid_len, labels, torch.arange(len(sentences)))
        truncated[split] = sum(e.truncated for e in encodings)
    return TaggingData(
        name, train=tensors["train"], test=tensors["test"], val=tensors.get("val"),
        task="token-classification", class_names=list(class_names), tokenizer=tok,
        max_len=max_len, truncated=truncated, scheme=scheme,
        words={split: [w for w, _ in s] for split, s in splits.items()},
        tags={split: [t for _, t in s] for split, s in splits.items()})


def _files(dataset: str, data_dir: str | None, names: tuple[str, ...], url: str) -> list[Path]:
    root = data_root(data_dir) / dataset
    missing = [name for name in names if not (root / name).is_file()]
    if missing:
        raise DataError(f"{dataset} files missing in {root}: {', '.join(missing)}. Put the "
                        f"original files from {url} in that folder, or point --data-dir / "
                        f"DIVEKIT_DATA at a folder that has a '{dataset}' sub-folder.")
    return [root / name for name in names]


@register_dataset("wnut-17", section=SECTION, files=WNUT17_FILES)
def wnut17(data_dir: str | None = None, tokenizer: str | None = None,
           max_len: int = 128) -> TaggingData:
    """WNUT-17 emerging entities: 3,394 / 1,009 / 1,287 tweets and posts tagged in BIO (13).

    The splits are the shared task's: train ``wnut17train.conll``, validation
    ``emerging.dev.conll``, test ``emerging.test.annotated`` (62,730 / 15,733 / 23,394
    tokens). Scored by entity F1 (``scheme="entities"``).

    Args:
        data_dir: folder holding the ``wnut17/`` sub-folder.
        tokenizer: a tokenizer to load (``tokenizer.json``, ``vocab.txt`` or a run folder);
            default: a WordPiece tokenizer of 8,000 pieces trained on the training words.
        max_len: pieces per sentence, ``[CLS]`` and ``[SEP]`` included.
    """
    check_max_len(max_len)
    train, val, test = (read_conll(path, WNUT17_TAGS)
                        for path in _files("wnut17", data_dir, WNUT17_FILES, WNUT17_URL))
    return build_tagging("wnut-17", {"train": train, "val": val, "test": test}, WNUT17_TAGS,
                         "entities", tokenizer, max_len)


@register_dataset("ud-ewt-pos", section=SECTION, files=UD_EWT_FILES)
def ud_ewt_pos(data_dir: str | None = None, tokenizer: str | None = None,
               max_len: int = 128) -> TaggingData:
    """UD English-EWT part-of-speech tags (UPOS, 17): 12,544 / 2,001 / 2,077 sentences.

    The treebank's train / dev / test files (release 2.16: 204,577 / 25,147 / 25,094 words)
    are the train / validation / test splits. Scored by per-word accuracy (``scheme="tags"``).

    Args:
        data_dir: folder holding the ``ud-english-ewt/`` sub-folder.
        tokenizer: a tokenizer to load (``tokenizer.json``, ``vocab.txt`` or a run folder);
            default: a WordPiece tokenizer of 8,000 pieces trained on the training words.
        max_len: pieces per sentence, ``[CLS]`` and ``[SEP]`` included.
    """
    check_max_len(max_len)
    train, val, test = (read_conllu(path, UPOS_TAGS)
                        for path in _files("ud-english-ewt", data_dir, UD_EWT_FILES, UD_EWT_URL))
    return build_tagging("ud-ewt-pos", {"train": train, "val": val, "test": test}, UPOS_TAGS,
                         "tags", tokenizer, max_len)
