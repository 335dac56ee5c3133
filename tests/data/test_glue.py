"""Sentence (pair) classification data for fine-tuning BERT (16.6-16.7): SST-2 and glue-pairs."""

import collections
import csv
import json
import warnings

import pytest
import torch

import divekit as dk
from divekit.data.glue import (
    find_split_files,
    read_sentence_pairs,
    read_sst2,
    sst2,  # noqa: F401  (registers the datasets)
)
from tests.conftest import real_data_dir

WORDS = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "the", "cat", "dog", "sat", "ran",
    "on", "mat", "is", "man", "woman", "plays", "guitar", "sleeps", "outside", "inside", ".",
    ",", "##s", "##ing", "good", "bad", "movie", "film"
]


def write_vocab(folder):
    """A bert-base-uncased style vocab.txt, so transformers can tokenize as an oracle."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(WORDS) + "\n", encoding="utf-8")
    return folder / "vocab.txt"


def hf_tokenizer(vocab_file):
    from transformers import BertTokenizerFast

    return BertTokenizerFast(vocab=str(vocab_file), do_lower_case=True)


def write(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_read_sst2_reads_sentences_and_labels(tmp_path):
    path = write(tmp_path / "train.tsv", ["sentence\tlabel", "a good movie \t1", "",
                                          "a bad film \t0"])
    assert read_sst2(path) == (["a good movie ", "a bad film "], [1, 0])


@pytest.mark.parametrize("lines, message", [
    (["sentence\tlabel", "a good movie\t2"], r"line 2: label '2', expected 0"),
    (["index\tsentence", "0\ta movie"], r"expected 'sentence' and 'label'.*test.tsv has no"),
    (["sentence\tlabel", "a\tgood\t1"], r"line 2: 3 tab-separated fields, the header has 2"),
    ([""], r"is empty: expected a header line"),
    (["sentence\tlabel"], r"holds a header but no examples"),
])
def test_read_sst2_rejects_bad_files_naming_the_file(tmp_path, lines, message):
    path = write(tmp_path / "dev.tsv", lines)
    with pytest.raises(dk.DivekitError, match=message) as error:
        read_sst2(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_sst2_missing_files_say_where_to_put_them(tmp_path):
    write(tmp_path / "sst-2" / "train.tsv", ["sentence\tlabel", "a\t1"])
    with pytest.raises(dk.DataError, match=r"sst-2 files missing in .*: dev.tsv\. Put train.tsv"):
        dk.load_data("sst-2", data_dir=str(tmp_path))


SNLI_HEADER = ("gold_label\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
               "sentence2_parse\tsentence1\tsentence2\tcaptionID\tpairID\tlabel1")


def snli_row(label, first, second):
    return f"{label}\t( x )\t( y )\t(ROOT x)\t(ROOT y)\t{first}\t{second}\tc1\tp1\t{label}"


def test_read_pairs_finds_snli_columns_and_drops_no_consensus(tmp_path):
    path = write(tmp_path / "snli_1.0_dev.txt", [
        SNLI_HEADER, snli_row("entailment", "A man plays.", "A man plays guitar."),
        snli_row("-", "A dog sat.", "A cat sat."),
        snli_row("contradiction", "A cat sleeps.", "A cat ran.")])
    firsts, seconds, labels = read_sentence_pairs(path)
    # The oracle: Python's csv module over the same file, filtered by hand.
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f, delimiter="\t") if r["gold_label"] != "-"]
    assert firsts == [r["sentence1"] for r in rows] == ["A man plays.", "A cat sleeps."]
    assert seconds == [r["sentence2"] for r in rows]
    assert labels == ["entailment", "contradiction"]


def test_read_pairs_premise_hypothesis_and_jsonl(tmp_path):
    tsv = write(tmp_path / "train.tsv", ["premise\thypothesis\tgold_label", "a\tb\tneutral"])
    assert read_sentence_pairs(tsv) == (["a"], ["b"], ["neutral"])
    records = [{"sentence1": "A man.", "sentence2": "A woman.", "gold_label": "neutral"},
               {"sentence1": "A dog.", "sentence2": "A cat.", "gold_label": "-"},
               {"sentence1": "A cat.", "sentence2": "A mat.", "gold_label": "entailment"}]
    jsonl = write(tmp_path / "snli_1.0_train.jsonl", [json.dumps(r) for r in records])
    assert read_sentence_pairs(jsonl) == (["A man.", "A cat."], ["A woman.", "A mat."],
                                          ["neutral", "entailment"])
    custom = write(tmp_path / "dev.tsv", ["q1\tq2\tis_dup", "a\tb\t1"])
    assert read_sentence_pairs(custom, "q1", "q2", "is_dup") == (["a"], ["b"], ["1"])


@pytest.mark.parametrize("name, lines, message", [
    ("train.tsv", ["s1\ts2\tlabel", "a\tb\t0"], r"no column 'sentence1' or 'premise'.*options "
                                                 r"text_a, text_b and label"),
    ("train.jsonl", ['{"sentence1": "a", "sentence2": "b", "gold_label": "x"}', "{oops"],
     r"line 2: not JSON"),
    ("train.jsonl", ["[1, 2]"], r"line 1: expected a JSON object, got list"),
    ("train.jsonl", [""], r"is empty: expected one JSON object per line"),
    ("train.tsv", ["sentence1\tsentence2\tlabel", "a\tb\t"], r"line 2: no 'label' value"),
    ("train.tsv", ["sentence1\tsentence2\tlabel", "a\tb\t-"], r"holds no labelled sentence"),
])
def test_read_pairs_rejects_bad_files(tmp_path, name, lines, message):
    path = write(tmp_path / name, lines)
    with pytest.raises(dk.DataError, match=message) as error:
        read_sentence_pairs(path)
    assert str(path) in str(error.value)


def test_split_files_are_found_by_name(tmp_path):
    for name in ("snli_1.0_train.jsonl", "snli_1.0_dev.jsonl", "snli_1.0_test.jsonl",
                 "README.md"):
        write(tmp_path / name, ["{}"])
    assert {k: v.name for k, v in find_split_files(tmp_path).items()} == {
        "train": "snli_1.0_train.jsonl", "dev": "snli_1.0_dev.jsonl",
        "test": "snli_1.0_test.jsonl"}
    write(tmp_path / "dev_matched.tsv", ["x"])
    with pytest.raises(dk.DataError, match=r"several dev files \(dev_matched.tsv, snli_1.0_dev"):
        find_split_files(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(dk.DataError, match=r"needs a train and a dev file"):
        find_split_files(empty)


def test_glue_pairs_needs_an_existing_folder(tmp_path):
    with pytest.raises(dk.DivekitError, match=r"needs the option path="):
        dk.load_data("glue-pairs")
    with pytest.raises(dk.DataError, match=r"does not exist: give option path a folder"):
        dk.load_data("glue-pairs", path=str(tmp_path / "nowhere"))
    with pytest.raises(dk.DataError, match=r"tokenizer .* does not exist"):
        write(tmp_path / "t" / "train.tsv", ["sentence1\tsentence2\tlabel", "a\tb\tx"])
        write(tmp_path / "t" / "dev.tsv", ["sentence1\tsentence2\tlabel", "a\tb\tx"])
        dk.load_data("glue-pairs", path=str(tmp_path / "t"), tokenizer=str(tmp_path / "no.json"))


PAIRS = [("A man plays guitar.", "A man sleeps.", "contradiction"),
         ("A dog sat on a mat.", "A dog sat.", "entailment"),
         ("A woman plays outside.", "A woman is outside.", "entailment"),
         ("The cat ran inside.", "A cat is good.", "neutral"),
         ("A man sleeps inside.", "A man is playing guitar outside on a mat.", "contradiction"),
         ("Cats ran.", "Dogs sat.", "neutral"), ("A woman.", "A man.", "contradiction")]


def write_pair_task(folder, test_labels=True):
    header = "sentence1\tsentence2\tlabel"
    write(folder / "train.tsv", [header, *("\t".join(p) for p in PAIRS)])
    write(folder / "dev.tsv", [header, *("\t".join(p) for p in PAIRS[:3])])
    if test_labels:
        write(folder / "test.tsv", [header, *("\t".join(p) for p in PAIRS[3:])])
    else:  # GLUE's test files: no label column
        write(folder / "test.tsv", ["index\tsentence1\tsentence2",
                                    *(f"{i}\t{a}\t{b}" for i, (a, b, _) in enumerate(PAIRS))])
    return folder


def test_glue_pairs_encodes_pairs_as_transformers_does(tmp_path):
    vocab = write_vocab(tmp_path / "tok")
    folder = write_pair_task(tmp_path / "task")
    hf = hf_tokenizer(vocab)
    firsts, seconds = [a for a, _, _ in PAIRS], [b for _, b, _ in PAIRS]
    full_lengths = [len(ids) for ids in hf(firsts, seconds)["input_ids"]]
    max_len = 14
    cut = {"train": sum(n > max_len for n in full_lengths),
           "val": sum(n > max_len for n in full_lengths[:3]),
           "test": sum(n > max_len for n in full_lengths[3:])}
    assert cut["train"] == 1  # the test means something: one pair (the long one) is cut
    with pytest.warns(UserWarning, match=f"{cut['train']} of 7 inputs were longer than "
                                         f"max_len={max_len}"):
        data = dk.load_data("glue-pairs", batch_size=3, path=str(folder),
                            tokenizer=str(vocab), max_len=max_len)
    assert data.task == "text-classification"
    assert data.class_names == ["contradiction", "entailment", "neutral"]
    assert data.model_options == {"vocab_size": len(WORDS), "num_classes": 3}
    assert data.truncated == cut
    assert len(data.val[0]) == 3 and len(data.test[0]) == 4  # a labelled test file: dev = val
    expected = hf(firsts, seconds, truncation=True, max_length=max_len)
    tokens, segments, valid_len, labels = data.train
    for i in range(len(PAIRS)):
        n = len(expected["input_ids"][i])
        assert valid_len[i] == n
        assert tokens[i, :n].tolist() == expected["input_ids"][i]
        assert segments[i, :n].tolist() == expected["token_type_ids"][i]
        assert (tokens[i, n:] == 0).all() and (segments[i, n:] == 0).all()  # [PAD] = 0
        assert data.class_names[labels[i]] == PAIRS[i][2]


def test_glue_pairs_batches_are_trimmed_and_cover_every_pair_once(tmp_path):
    vocab = write_vocab(tmp_path / "tok")
    folder = write_pair_task(tmp_path / "task", test_labels=False)
    data = dk.load_data("glue-pairs", batch_size=2, path=str(folder), tokenizer=str(vocab))
    assert data.val is None and len(data.test[0]) == 3  # unlabelled test file: dev = test
    seen = []
    for tokens, segments, valid_len, labels in data.train_dataloader():
        assert tokens.dtype == segments.dtype == valid_len.dtype == labels.dtype == torch.int64
        assert tokens.shape == segments.shape and tokens.shape[1] == valid_len.max()
        assert labels.shape == valid_len.shape
        seen += [tuple(row[:n].tolist()) for row, n in zip(tokens, valid_len, strict=True)]
    stored = [tuple(row[:n].tolist()) for row, n in zip(data.train[0], data.train[2], strict=True)]
    assert collections.Counter(seen) == collections.Counter(stored)
    evaluation = list(data.test_dataloader())
    lengths = torch.cat([batch[2] for batch in evaluation])
    assert lengths.tolist() == sorted(lengths.tolist())  # evaluation is sorted by length


def test_glue_pairs_named_columns_and_an_unlabelled_test_file(tmp_path):
    # QQP's layout: its own column names, and GLUE's test.tsv without the label column.
    write(tmp_path / "train.tsv", ["id\tquestion1\tquestion2\tis_duplicate",
                                   "1\ta cat sat\ta cat sat .\t1", "2\ta dog\ta man\t0"])
    write(tmp_path / "dev.tsv", ["id\tquestion1\tquestion2\tis_duplicate",
                                 "3\ta mat\ta mat\t1"])
    write(tmp_path / "test.tsv", ["id\tquestion1\tquestion2", "4\ta\tb", "5\tc\td"])
    data = dk.load_data("glue-pairs", path=str(tmp_path), text_a="question1",
                        text_b="question2", label="is_duplicate",
                        tokenizer=str(write_vocab(tmp_path / "tok")))
    assert data.class_names == ["0", "1"] and data.val is None
    assert data.train[3].tolist() == [1, 0] and data.test[3].tolist() == [1]


def test_glue_pairs_trains_its_own_wordpiece_by_default(tmp_path):
    folder = write_pair_task(tmp_path / "task")
    data = dk.load_data("glue-pairs", path=str(folder), val_size=2)
    assert data.tokenizer.kind == "wordpiece"
    assert data.model_options["vocab_size"] == data.tokenizer.vocab_size
    assert len(data.train[0]) == 5 and len(data.val[0]) == 2
    tokens, _, valid_len, _ = data.train
    assert (tokens[torch.arange(5), valid_len - 1] == data.tokenizer.sep_id).all()


def test_unknown_dev_label_is_a_clear_error(tmp_path):
    header = "sentence1\tsentence2\tlabel"
    write(tmp_path / "train.tsv", [header, "a\tb\tyes"])
    write(tmp_path / "dev.tsv", [header, "a\tb\tmaybe"])
    with pytest.raises(dk.DataError, match=r"dev.tsv has labels \['maybe'\] that the training"):
        dk.load_data("glue-pairs", path=str(tmp_path))


@pytest.fixture(scope="module")
def real_sst2():
    root = real_data_dir("sst-2")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = dk.load_data("sst-2", batch_size=64, data_dir=str(root))
    return root, data, [str(w.message) for w in caught]


@pytest.mark.slow  # WordPiece training and encoding 67k sentences: about 10-20 s on 2 cores
def test_real_sst2_counts_labels_and_truncation(real_sst2):
    root, data, messages = real_sst2
    for split, name in (("train", "train.tsv"), ("test", "dev.tsv")):
        with open(root / "sst-2" / name, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
        labels = getattr(data, split)[3]
        assert labels.tolist() == [int(r["label"]) for r in rows]
    assert len(data.train[0]) == 67_349 and len(data.test[0]) == 872
    assert data.class_names == ["negative", "positive"]
    assert data.model_options == {"vocab_size": 8000, "num_classes": 2}
    # At the default max_len=66 hardly any sentence is cut (2 of 67,349 with the default
    # tokenizer); the warning says how many.
    assert data.truncated["train"] < 20 and data.truncated["test"] == 0
    assert messages == [f"{data.truncated['train']} of 67349 inputs were longer than "
                        "max_len=66 tokens and were truncated"]
    tokens, segments, valid_len, labels = next(iter(data.train_dataloader()))
    assert tokens.shape == (64, int(valid_len.max())) and not segments.any()
    assert (tokens[:, 0] == data.tokenizer.cls_id).all()
