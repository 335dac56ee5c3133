"""Word tagging data for fine-tuning BERT (16.6): WNUT-17 entities and UD English-EWT UPOS."""

import collections
import warnings

import pytest
import torch

import divekit as dk
from divekit.data.tagging import (
    UPOS_TAGS,
    WNUT17_TAGS,
    read_conll,
    read_conllu,
    wnut17,  # noqa: F401  (registers the datasets)
)
from tests.conftest import real_data_dir

WORDS = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "the", "cat", "dog", "sat", "on",
    "mat", "in", "paris", "new", "york", "##s", "##ing", "play", ".", "!", "@", "user"
]


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_read_conll_breaks_sentences_at_blank_and_whitespace_only_lines(tmp_path):
    # WNUT-17's training file separates most sentences by a lone tab; the last sentence may
    # have no separator after it.
    path = write(tmp_path / "a.conll", "@user\tO\nin\tO\nNew\tB-location\nYork\tI-location\n"
                                       "\t\nthe\tO\ncats\tO\n\n  \n\nParis\tB-location")
    assert read_conll(path, WNUT17_TAGS) == [
        (["@user", "in", "New", "York"], ["O", "O", "B-location", "I-location"]),
        (["the", "cats"], ["O", "O"]), (["Paris"], ["B-location"])]


@pytest.mark.parametrize("text, message", [
    ("a\tO\nb O\n", r"line 2: expected 'token<TAB>tag', got 'b O'"),
    ("a\tB-city\n", r"line 1: unknown tag 'B-city'; the tags are O, B-corporation"),
    ("\n\t\n", r"holds no sentences"),
])
def test_read_conll_rejects_bad_lines(tmp_path, text, message):
    path = write(tmp_path / "bad.conll", text)
    with pytest.raises(dk.DataError, match=message) as error:
        read_conll(path, WNUT17_TAGS)
    assert str(path) in str(error.value)


CONLLU = """# sent_id = 1
# text = I don't play.
1	I	I	PRON	PRP	_	3	nsubj	_	_
2-3	don't	_	_	_	_	_	_	_	_
2	do	do	AUX	VBP	_	4	aux	_	_
3	n't	not	PART	RB	_	4	advmod	_	_
4	play	play	VERB	VB	_	0	root	_	_
4.1	played	play	VERB	VBD	_	_	_	4:conj	CopyOf=4
5	.	.	PUNCT	.	_	4	punct	_	_

# sent_id = 2
1	Paris	Paris	PROPN	NNP	_	0	root	_	_
"""


def test_read_conllu_skips_comments_ranges_and_empty_nodes(tmp_path):
    path = write(tmp_path / "a.conllu", CONLLU)
    assert read_conllu(path, UPOS_TAGS) == [
        (["I", "do", "n't", "play", "."], ["PRON", "AUX", "PART", "VERB", "PUNCT"]),
        (["Paris"], ["PROPN"])]
    bad = write(tmp_path / "b.conllu", "1\tI\tI\tPRON\n")
    with pytest.raises(dk.DataError, match=r"line 1: 4 tab-separated fields, CoNLL-U has 10"):
        read_conllu(bad)


TRAIN = ("@user\tO\nplay\tO\nin\tO\nnew\tB-location\nyork\tI-location\n!\tO\n\t\n"
         "the\tO\ncats\tO\nsat\tO\non\tO\na\tO\nmat\tO\n.\tO\n\t\n"
         "dogs\tB-group\nplaying\tO\nin\tO\nparis\tB-location\n")
DEV = "paris\tB-location\n!\tO\n\ncats\tO\nsat\tO\n\n"
TEST = ("the\tO\ncats\tO\nsat\tO\non\tO\nthe\tO\nmat\tO\nin\tO\nnew\tB-location\n"
        "york\tI-location\n.\tO\n")


def wnut_folder(tmp_path):
    folder = tmp_path / "data" / "wnut17"
    for name, text in (("wnut17train.conll", TRAIN), ("emerging.dev.conll", DEV),
                       ("emerging.test.annotated", TEST)):
        write(folder / name, text)
    vocab = write(tmp_path / "tok" / "vocab.txt", "\n".join(WORDS) + "\n")
    return tmp_path / "data", vocab


def expected_labels(vocab, sentences, max_len):
    """The first-piece labels computed with transformers' word_ids (the oracle)."""
    from transformers import BertTokenizerFast

    hf = BertTokenizerFast(vocab=str(vocab), do_lower_case=True)
    encoded = hf([words for words, _ in sentences], is_split_into_words=True, truncation=True,
                 max_length=max_len)
    rows = []
    for i, (_, tags) in enumerate(sentences):
        row, previous = [], None
        for word in encoded.word_ids(i):
            row.append(-100 if word is None or word == previous else WNUT17_TAGS.index(tags[word]))
            previous = word
        rows.append((encoded["input_ids"][i], row))
    return rows


def test_labels_sit_on_the_first_piece_of_each_word(tmp_path):
    data_dir, vocab = wnut_folder(tmp_path)
    max_len = 10  # the test sentence (11 pieces + 2 specials) is cut, no training one
    with pytest.warns(UserWarning, match=r"1 of 1 inputs were longer than max_len=10"):
        data = dk.load_data("wnut-17", batch_size=2, data_dir=str(data_dir),
                            tokenizer=str(vocab), max_len=max_len)
    assert data.task == "token-classification" and data.scheme == "entities"
    assert data.class_names == WNUT17_TAGS and len(WNUT17_TAGS) == 13
    assert data.model_options == {"vocab_size": len(WORDS), "num_classes": 13}
    assert data.truncated == {"train": 0, "val": 0, "test": 1}
    for split, sentences in (("train", read_conll(data_dir / "wnut17" / "wnut17train.conll")),
                             ("test", read_conll(data_dir / "wnut17" /
                                                 "emerging.test.annotated"))):
        tokens, segments, valid_len, labels, sentence_id = getattr(data, split)
        assert sentence_id.tolist() == list(range(len(sentences)))
        assert data.tags[split] == [tags for _, tags in sentences]  # cut words included
        for i, (ids, row) in enumerate(expected_labels(vocab, sentences, max_len)):
            assert tokens[i, :valid_len[i]].tolist() == ids
            assert labels[i, :valid_len[i]].tolist() == row
            assert (labels[i, valid_len[i]:] == -100).all() and not segments[i].any()
    # "dogs playing" is dog ##s play ##ing: the labels sit on "dog" and "play" only.
    tokens, _, _, labels, _ = data.train
    assert data.tokenizer.to_tokens(tokens[2, 1:5]) == ["dog", "##s", "play", "##ing"]
    assert labels[2, 1:5].tolist() == [WNUT17_TAGS.index("B-group"), -100, 0, -100]


def test_batches_carry_sentence_ids_into_tags(tmp_path):
    data_dir, vocab = wnut_folder(tmp_path)
    data = dk.load_data("wnut-17", batch_size=2, data_dir=str(data_dir), tokenizer=str(vocab))
    seen = []
    for tokens, segments, valid_len, labels, sentence_id in data.train_dataloader():
        assert tokens.shape == labels.shape == segments.shape
        assert tokens.shape[1] == valid_len.max() and sentence_id.shape == valid_len.shape
        for row, ids in zip(labels, sentence_id.tolist(), strict=True):
            gold = [data.class_names[t] for t in row[row != -100].tolist()]
            assert gold == data.tags["train"][ids]
            seen.append(ids)
    assert sorted(seen) == [0, 1, 2]


def test_hold_out_renumbers_sentences_and_their_tags(tmp_path):
    data_dir, vocab = wnut_folder(tmp_path)
    data = dk.load_data("wnut-17", data_dir=str(data_dir), tokenizer=str(vocab), val_size=1,
                        seed=3)
    original = read_conll(data_dir / "wnut17" / "wnut17train.conll")
    assert len(data.tags["train"]) == 2 and len(data.tags["val"]) == 1
    assert collections.Counter(map(tuple, data.words["train"] + data.words["val"])) == \
        collections.Counter(tuple(words) for words, _ in original)
    for split in ("train", "val"):
        tokens, _, valid_len, labels, sentence_id = getattr(data, split)
        assert sentence_id.tolist() == list(range(len(data.tags[split])))
        for i in range(len(sentence_id)):
            words = data.words[split][i]
            expected = data.tokenizer.encode(words, max_len=128, is_pretokenized=True).ids
            assert tokens[i, :valid_len[i]].tolist() == expected
            row = labels[i]
            assert [data.class_names[t] for t in row[row != -100]] == data.tags[split][i]


def test_missing_files_name_them(tmp_path):
    with pytest.raises(dk.DataError, match=r"ud-english-ewt files missing in .*: "
                                           r"en_ewt-ud-train.conllu, en_ewt-ud-dev.conllu"):
        dk.load_data("ud-ewt-pos", data_dir=str(tmp_path))


def count(sentences):
    return len(sentences), sum(len(words) for words, _ in sentences)


def test_real_wnut17_counts_equal_the_published_ones():
    folder = real_data_dir("wnut17") / "wnut17"
    counts = [count(read_conll(folder / name, WNUT17_TAGS)) for name in
              ("wnut17train.conll", "emerging.dev.conll", "emerging.test.annotated")]
    assert counts == [(3394, 62730), (1009, 15733), (1287, 23394)]


def test_real_ud_ewt_counts_equal_the_release_stats():
    folder = real_data_dir("ud-english-ewt") / "ud-english-ewt"
    splits = [read_conllu(folder / f"en_ewt-ud-{split}.conllu", UPOS_TAGS)
              for split in ("train", "dev", "test")]
    assert [count(s) for s in splits] == [(12544, 204577), (2001, 25147), (2077, 25094)]
    # Per-tag counts of the train split, from the treebank's stats.xml (SOURCE.md).
    tags = collections.Counter(tag for _, sentence in splits[0] for tag in sentence)
    assert [tags[t] for t in UPOS_TAGS] == [13137, 17742, 10167, 12815, 6687, 16299, 695,
                                            34751, 4126, 5748, 18677, 12620, 23596, 3819, 722,
                                            22576, 400]


@pytest.fixture(scope="module")
def real_wnut17():
    root = real_data_dir("wnut17")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a few long test sentences are cut: counted below
        return dk.load_data("wnut-17", batch_size=32, data_dir=str(root))


def test_real_wnut17_labels_follow_the_gold_tags(real_wnut17):
    data = real_wnut17
    assert data.model_options == {"vocab_size": 8000, "num_classes": 13}
    assert data.truncated["train"] == data.truncated["val"] == 0
    assert 0 < data.truncated["test"] < 20  # of 1,287 at max_len=128
    for split in ("train", "val", "test"):
        _, _, valid_len, labels, sentence_id = getattr(data, split)
        complete = 0
        for row, ids in zip(labels, sentence_id.tolist(), strict=True):
            gold = data.tags[split][ids]
            predicted_at = [data.class_names[t] for t in row[row != -100].tolist()]
            # A cut sentence, or one with a word of dropped characters only (a lone U+FE0F),
            # has fewer labels than words; the others have exactly one per word.
            if len(predicted_at) == len(gold):
                assert predicted_at == gold
                complete += 1
        assert complete >= len(labels) - 12
    batch = next(iter(data.test_dataloader()))
    assert [t.dtype for t in batch] == [torch.int64] * 5


@pytest.mark.slow  # WordPiece training and encoding 16,622 sentences: about 8 s on 2 cores
def test_real_ud_ewt_pos_labels_every_word_of_uncut_sentences():
    root = real_data_dir("ud-english-ewt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a handful of long sentences are cut: counted below
        data = dk.load_data("ud-ewt-pos", data_dir=str(root))
    assert data.scheme == "tags" and data.class_names == UPOS_TAGS
    assert data.model_options == {"vocab_size": 8000, "num_classes": 17}
    assert [len(getattr(data, s)[0]) for s in ("train", "val", "test")] == [12544, 2001, 2077]
    assert data.truncated["train"] < 15 and data.truncated["val"] + data.truncated["test"] < 5
    for split in ("train", "val", "test"):
        _, _, _, labels, sentence_id = getattr(data, split)
        labelled = (labels != -100).sum(1)
        words = torch.tensor([len(data.tags[split][i]) for i in sentence_id.tolist()])
        # Only cut sentences have fewer labels than words (every UD word has a piece).
        assert (labelled <= words).all()
        assert int((labelled < words).sum()) <= data.truncated[split]
        flat = labels[labels != -100]
        gold = [UPOS_TAGS.index(tag) for i in sentence_id.tolist()
                for tag in data.tags[split][i][:int(labelled[i])]]
        assert flat.tolist() == gold
