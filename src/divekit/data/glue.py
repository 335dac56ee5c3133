"""16.6-16.7 Fine-tuning BERT on sequence-level tasks: GLUE's SST-2 and sentence-pair tasks.

BERT (Devlin et al. 2019, "BERT: Pre-training of Deep Bidirectional Transformers for Language
Understanding") is fine-tuned on a task by feeding ``<cls> A <sep>`` (one sentence) or
``<cls> A <sep> B <sep>`` (a pair, d2l 16.7's SNLI) and classifying the ``<cls>`` output. The
tasks come from GLUE (Wang et al. 2018, "GLUE: A Multi-Task Benchmark and Analysis Platform for
Natural Language Understanding"). Two datasets are registered:

* ``sst-2``: the Stanford Sentiment Treebank's binary sentences (Socher et al. 2013) as GLUE
  packs them; GLUE's ``test.tsv`` has no labels, so its ``dev.tsv`` is the test split.
* ``glue-pairs``: a sentence-pair task from files you give (GLUE TSV, SNLI/MNLI TSV or JSONL).

Batches are ``(tokens, segments, valid_len, labels)``: tokens and segments ``(B, L)`` int64
padded with the tokenizer's ``[PAD]`` and trimmed to the batch's longest input, valid_len and
labels ``(B,)``. :class:`BertTaskData` (the data of every BERT fine-tuning task: this module,
:mod:`~divekit.data.tagging` and :mod:`~divekit.data.squad`) serves batches of similar lengths
through a :class:`~divekit.data.buckets.BucketLoader`.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from divekit.data.buckets import BucketLoader
from divekit.data.paths import data_root
from divekit.data.registry import DataModule, Split, register_dataset
from divekit.errors import DataError, DivekitError

if TYPE_CHECKING:
    from divekit.text.bert_tokenizer import BertTokenizer

SECTION = "16.6 Fine-Tuning BERT for Sequence-Level and Token-Level Applications"
PAIRS_SECTION = "16.7 Natural Language Inference: Fine-Tuning BERT"
SST2_FILES = ("train.tsv", "dev.tsv")
SST2_CLASSES = ["negative", "positive"]
VOCAB_SIZE = 8000  # of the WordPiece tokenizer trained when none is given
# Column names tried when an option is left at its default and the file lacks that column:
# SNLI/MNLI name the label "gold_label"; some SNLI exports name the sentences premise/hypothesis.
COLUMN_ALIASES = {"sentence1": ("premise",), "sentence2": ("hypothesis",),
                  "label": ("gold_label",)}
NO_CONSENSUS = "-"  # SNLI/MNLI's gold label when the annotators did not agree


@dataclass(repr=False)
class BertTaskData(DataModule):
    """A :class:`DataModule` of tokenized inputs for fine-tuning BERT.

    Every split is a tuple of tensors whose first three are ``tokens`` ``(N, L)``,
    ``segments`` ``(N, L)`` and ``valid_len`` ``(N,)`` (tokens before the padding); the rest
    are the task's targets. Loaders sort by ``valid_len`` (training: within pools of batches,
    then shuffle the batches) and cut every ``(N, L)`` tensor to the batch's longest input.

    Attributes:
        tokenizer: the :class:`~divekit.text.bert_tokenizer.BertTokenizer` the inputs were
            encoded with (a model's vocabulary must match it).
        max_len: tokens per input, specials included; longer inputs were truncated.
        truncated: per split, how many inputs were longer than ``max_len``.
    """

    tokenizer: BertTokenizer | None = None
    max_len: int = 0
    truncated: dict[str, int] = field(default_factory=dict)

    @property
    def model_options(self) -> dict[str, int]:
        """The sizes a BERT task model takes from this data."""
        return {"vocab_size": self.tokenizer.vocab_size, "num_classes": len(self.class_names)}

    def _loader(self, split: Split, batch_size: int, shuffle: bool = False,
                transform: Callable | None = None) -> BucketLoader:
        valid_len = split[2]
        return BucketLoader(split, sort_key=valid_len,
                            trim=[valid_len if t.dim() == 2 else None for t in split],
                            batch_size=batch_size, shuffle=shuffle, seed=self.seed,
                            device=self.device)

    def _eval_loader(self, split: Split) -> BucketLoader:
        return self._loader(split, max(self.batch_size, 256))


def resolve_tokenizer(tokenizer: str | os.PathLike | None,
                      training_texts: Callable[[], Iterable[str]]) -> BertTokenizer:
    """The tokenizer a fine-tuning dataset encodes with.

    Args:
        tokenizer: a path :meth:`BertTokenizer.load` reads (``tokenizer.json``, a WordPiece
            ``vocab.txt``, or a folder holding one, such as a pretraining run folder); None =
            a WordPiece tokenizer of ``VOCAB_SIZE`` pieces trained on ``training_texts()``.
        training_texts: gives the training split's text, called only when needed.
    """
    from divekit.text.bert_tokenizer import BertTokenizer

    if tokenizer is None:
        return BertTokenizer.train_wordpiece(training_texts(), vocab_size=VOCAB_SIZE)
    if not isinstance(tokenizer, str | os.PathLike):
        raise DivekitError(f"option tokenizer must be a path, got {tokenizer!r}")
    path = Path(tokenizer).expanduser()
    if not path.exists():
        raise DataError(f"tokenizer {path} does not exist: give a tokenizer.json, a vocab.txt or "
                        "a folder holding one (e.g. a pretraining run folder), or leave the "
                        "option unset to train a WordPiece tokenizer on the training text")
    return BertTokenizer.load(path)


def check_max_len(max_len: int, least: int = 3) -> None:
    """Raise unless ``max_len`` is an integer of at least ``least`` (the specials' room)."""
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < least:
        raise DivekitError(f"max_len must be an integer of at least {least} (tokens, specials "
                           f"included), got {max_len!r}")


def pad_sequences(ids: Sequence[list[int]], segments: Sequence[list[int]], pad_id: int,
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack encoded inputs, padded with ``pad_id`` to the longest of them.

    Args:
        ids: the token ids of each input.
        segments: the segment ids of each input (as long as its ids).

    Returns:
        ``(tokens, segments, valid_len)``: ``(N, L)``, ``(N, L)`` and ``(N,)`` int64, with
        ``L`` the longest input's length; segments are 0 on padding.
    """
    valid_len = torch.tensor(list(map(len, ids)), dtype=torch.long)
    width = int(valid_len.max()) if len(ids) else 0
    # One flat tensor scattered under a mask: building nested padded lists took seconds.
    real = torch.arange(width) < valid_len[:, None]
    tokens = torch.full((len(ids), width), pad_id, dtype=torch.long)
    tokens[real] = torch.tensor(list(itertools.chain.from_iterable(ids)), dtype=torch.long)
    segment_ids = torch.zeros((len(ids), width), dtype=torch.long)
    segment_ids[real] = torch.tensor(list(itertools.chain.from_iterable(segments)),
                                     dtype=torch.long)
    return tokens, segment_ids, valid_len


def read_tsv(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and the rows of a tab-separated file, unquoted as GLUE writes it.

    Returns:
        The column names and ``(line_number, fields)`` per non-empty row.
    """
    lines = read_lines(path)
    if not lines or not lines[0].strip():
        raise DataError(f"{path} is empty: expected a header line of tab-separated column "
                        "names, then one example per line")
    columns = lines[0].split("\t")
    rows = []
    for number, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(columns):
            raise DataError(f"{path}, line {number}: {len(fields)} tab-separated fields, the "
                            f"header has {len(columns)}; fix the line or remove it")
        rows.append((number, fields))
    return columns, rows


def read_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file (a leading BOM and ``\\r`` line ends removed)."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # some exports start with a BOM
    except FileNotFoundError as e:
        raise DataError(f"{path} does not exist") from e
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path} as UTF-8 text: {e}") from e
    return [line.rstrip("\r") for line in text.split("\n")]


def read_sst2(path: Path) -> tuple[list[str], list[int]]:
    """The sentences and 0/1 labels (negative/positive) of GLUE SST-2's train.tsv or dev.tsv."""
    columns, rows = read_tsv(path)
    if "sentence" not in columns or "label" not in columns:
        raise DataError(f"{path} has columns {columns}, expected 'sentence' and 'label' (GLUE's "
                        "SST-2 train.tsv/dev.tsv; test.tsv has no labels)")
    text, label = columns.index("sentence"), columns.index("label")
    sentences, labels = [], []
    for number, fields in rows:
        if fields[label] not in ("0", "1"):
            raise DataError(f"{path}, line {number}: label {fields[label]!r}, expected 0 "
                            "(negative) or 1 (positive)")
        sentences.append(fields[text])
        labels.append(int(fields[label]))
    if not sentences:
        raise DataError(f"{path} holds a header but no examples")
    return sentences, labels


def read_sentence_pairs(path: Path, text_a: str = "sentence1", text_b: str = "sentence2",
                        label: str = "label", require_label: bool = True,
                        ) -> tuple[list[str], list[str], list[str] | None]:
    """The sentence pairs (and labels) of a GLUE/SNLI TSV file or an SNLI/MNLI JSONL file.

    A file ending in ``.jsonl`` holds one JSON object per line; any other is tab-separated with
    a header. A column name left at its default falls back to SNLI's names when absent
    (``premise``, ``hypothesis``, ``gold_label``). Pairs whose label is ``"-"`` (the annotators
    did not agree) are dropped, as the book drops them.

    Args:
        path: the file.
        text_a, text_b: columns (JSON keys) of the first and second sentences.
        label: column of the label.
        require_label: False = the file may lack the label column (GLUE's test files); the
            labels returned are then None.

    Returns:
        ``(firsts, seconds, labels)``, labels as strings (None for an unlabelled file).
    """
    if path.suffix == ".jsonl":
        columns, records = _read_jsonl(path)
    else:
        columns, rows = read_tsv(path)
        records = [(number, dict(zip(columns, fields, strict=True))) for number, fields in rows]
    first, second = _column(path, columns, text_a), _column(path, columns, text_b)
    gold = _column(path, columns, label, required=require_label)
    firsts, seconds, labels = [], [], []
    for number, record in records:
        value = None if gold is None else record.get(gold)
        if gold is not None and (value is None or str(value).strip() == ""):
            raise DataError(f"{path}, line {number}: no {gold!r} value; give every example a "
                            "label, or drop the line")
        if value is not None and str(value).strip() == NO_CONSENSUS:
            continue
        a, b = record.get(first), record.get(second)
        if not isinstance(a, str) or not isinstance(b, str):
            raise DataError(f"{path}, line {number}: {first!r} and {second!r} must both be text")
        firsts.append(a)
        seconds.append(b)
        labels.append(None if value is None else str(value).strip())
    if not firsts:
        raise DataError(f"{path} holds no labelled sentence pairs")
    return firsts, seconds, None if gold is None else labels


def _column(path: Path, columns: list[str], name: str, required: bool = True) -> str | None:
    for candidate in (name, *COLUMN_ALIASES.get(name, ())):
        if candidate in columns:
            return candidate
    if not required:
        return None
    tried = " or ".join(repr(c) for c in (name, *COLUMN_ALIASES.get(name, ())))
    raise DataError(f"{path} has no column {tried} (its columns: {', '.join(columns)}); name the "
                    "right ones with the options text_a, text_b and label")


def _read_jsonl(path: Path) -> tuple[list[str], list[tuple[int, dict]]]:
    records = []
    for number, line in enumerate(read_lines(path), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}, line {number}: not JSON ({e.msg}); a .jsonl file holds one "
                            "JSON object per line") from e
        if not isinstance(record, dict):
            raise DataError(f"{path}, line {number}: expected a JSON object, got "
                            f"{type(record).__name__}")
        records.append((number, record))
    if not records:
        raise DataError(f"{path} is empty: expected one JSON object per line")
    return list(records[0][1]), records


def build_classification(
    name: str,
    splits: dict[str, tuple[list[str], list[str] | None, list[int]]],
    class_names: list[str],
    tokenizer: BertTokenizer,
    max_len: int,
) -> BertTaskData:
    """Encode the splits' sentences (or pairs) into a :class:`BertTaskData`.

    Args:
        splits: ``"train"``, ``"test"`` and optionally ``"val"``, each
            ``(firsts, seconds or None, label indices)``.
        max_len: tokens per input, specials included; longer inputs are truncated (the
            tokenizer warns how many).
    """
    tensors, truncated = {}, {}
    for split, (firsts, seconds, labels) in splits.items():
        encodings = tokenizer.encode_batch(firsts, seconds, max_len=max_len)
        tensors[split] = (*pad_sequences([e.ids for e in encodings],
                                         [e.segments for e in encodings], tokenizer.pad_id),
                          torch.tensor(labels, dtype=torch.long))
        truncated[split] = sum(e.truncated for e in encodings)
    return BertTaskData(name, train=tensors["train"], test=tensors["test"], val=tensors.get("val"),
                        task="text-classification", class_names=class_names,
                        tokenizer=tokenizer, max_len=max_len, truncated=truncated)


@register_dataset("sst-2", section=SECTION, files=SST2_FILES)
def sst2(data_dir: str | None = None, tokenizer: str | None = None,
         max_len: int = 66) -> BertTaskData:
    """SST-2 (GLUE): 67,349 training and 872 test movie-review sentences, negative/positive.

    The test split is GLUE's ``dev.tsv``: GLUE's ``test.tsv`` has no labels (scores on it come
    only from the GLUE server), so it is not read. SST-2's sentences are short: at the default
    ``max_len=66`` (64 pieces plus ``[CLS]`` and ``[SEP]``) the default tokenizer cuts 2 of the
    67,349 training sentences (0.003%) and none of the test sentences.

    Args:
        data_dir: folder holding the ``sst-2/`` sub-folder (``train.tsv``, ``dev.tsv``).
        tokenizer: a tokenizer to load (``tokenizer.json``, ``vocab.txt`` or a run folder);
            default: a WordPiece tokenizer of 8,000 pieces trained on the training sentences.
        max_len: tokens per sentence, ``[CLS]`` and ``[SEP]`` included.
    """
    check_max_len(max_len)
    root = data_root(data_dir) / "sst-2"
    missing = [name for name in SST2_FILES if not (root / name).is_file()]
    if missing:
        raise DataError(f"sst-2 files missing in {root}: {', '.join(missing)}. Put train.tsv and "
                        "dev.tsv from GLUE's SST-2.zip (https://dl.fbaipublicfiles.com/glue/data/"
                        "SST-2.zip) in that folder, or point --data-dir / DIVEKIT_DATA at a "
                        "folder that has an 'sst-2' sub-folder.")
    train, test = read_sst2(root / "train.tsv"), read_sst2(root / "dev.tsv")
    tok = resolve_tokenizer(tokenizer, lambda: train[0])
    return build_classification("sst-2", {"train": (train[0], None, train[1]),
                                          "test": (test[0], None, test[1])},
                                SST2_CLASSES, tok, max_len)


def find_split_files(folder: Path) -> dict[str, Path]:
    """The train / dev / test files of a task folder, by name.

    A file belongs to a split when its name, cut at ``.``, ``_`` and ``-``, has the word
    ``train``, ``dev`` or ``test`` (``train.tsv``, ``snli_1.0_dev.jsonl``, ``dev_matched.tsv``)
    and it ends in ``.tsv``, ``.txt`` (SNLI's TSV) or ``.jsonl``.
    """
    found: dict[str, list[Path]] = {"train": [], "dev": [], "test": []}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix in (".tsv", ".txt", ".jsonl"):
            words = set(path.name.replace("-", ".").replace("_", ".").split("."))
            for split in found:
                if split in words:
                    found[split].append(path)
    for split, paths in found.items():
        if len(paths) > 1:
            names = ", ".join(p.name for p in paths)
            raise DataError(f"{folder} has several {split} files ({names}); keep one per split "
                            "in the folder")
    if not found["train"] or not found["dev"]:
        raise DataError(f"{folder} needs a train and a dev file (e.g. train.tsv and dev.tsv, or "
                        f"snli_1.0_train.jsonl and snli_1.0_dev.jsonl); it has "
                        f"{', '.join(p.name for p in folder.iterdir()) or 'no files'}")
    return {split: paths[0] for split, paths in found.items() if paths}


@register_dataset("glue-pairs", section=PAIRS_SECTION)
def glue_pairs(
    data_dir: str | None = None,
    path: str | None = None,
    text_a: str = "sentence1",
    text_b: str = "sentence2",
    label: str = "label",
    tokenizer: str | None = None,
    max_len: int = 128,
) -> BertTaskData:
    """Your sentence-pair task (GLUE MRPC/RTE/MNLI/..., SNLI) from a folder of TSV/JSONL files.

    The folder (option ``path``) holds a train and a dev file and optionally a test file (see
    :func:`find_split_files`), each a GLUE-style TSV with a header or a JSONL file (SNLI/MNLI's
    ``*.jsonl``, keys ``sentence1``, ``sentence2``, ``gold_label``). With a labelled test file,
    dev is the validation split and test the test split; otherwise (GLUE's test files have no
    labels) dev is the test split. Pairs labelled ``"-"`` (no annotator consensus) are dropped.
    The class names are the training labels, sorted.

    Args:
        data_dir: unused; ``path`` is read as given.
        path: the folder of the task's files.
        text_a, text_b, label: the columns (JSON keys) of the two sentences and the label; left
            at their defaults, SNLI's ``premise``/``hypothesis``/``gold_label`` are found too.
        tokenizer: a tokenizer to load (``tokenizer.json``, ``vocab.txt`` or a run folder);
            default: a WordPiece tokenizer of 8,000 pieces trained on the training sentences.
        max_len: tokens per pair, specials included (the book's 128); longer pairs lose
            tokens from the longer sentence.
    """
    if path is None:
        raise DivekitError("dataset 'glue-pairs' needs the option path=<folder with train and "
                           "dev files>")
    check_max_len(max_len)
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise DataError(f"glue-pairs folder {folder} does not exist: give option path a folder "
                        "holding train and dev files (.tsv or .jsonl)")
    files = find_split_files(folder)
    raw = {"train": read_sentence_pairs(files["train"], text_a, text_b, label),
           "dev": read_sentence_pairs(files["dev"], text_a, text_b, label)}
    if "test" in files:
        test = read_sentence_pairs(files["test"], text_a, text_b, label, require_label=False)
        if test[2] is not None:
            raw["test"] = test
    class_names = sorted(set(raw["train"][2]))
    index = {name: i for i, name in enumerate(class_names)}
    splits = {}
    for split, (firsts, seconds, labels) in raw.items():
        unknown = sorted(set(labels) - set(index))
        if unknown:
            raise DataError(f"{files[split]} has labels {unknown} that the training file "
                            f"{files['train'].name} lacks; a model cannot learn them")
        name = {"dev": "val" if "test" in raw else "test"}.get(split, split)
        splits[name] = (firsts, seconds, [index[gold] for gold in labels])
    tok = resolve_tokenizer(tokenizer, lambda: raw["train"][0] + raw["train"][1])
    return build_classification("glue-pairs", splits, class_names, tok, max_len)
