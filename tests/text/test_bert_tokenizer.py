"""BertTokenizer: the course's word-level vocabulary against a hand count, WordPiece against
``transformers``' BERT tokenizer, truncation, warnings, saving and loading."""

from __future__ import annotations

import os
import warnings
from collections import Counter
from pathlib import Path

import pytest

from divekit.errors import DivekitError
from divekit.text.bert_tokenizer import BertTokenizer

CORPUS = [
    "the cat sat on the mat",
    "The dog sat on the log",
    "a cat and a dog",
    "the end",
]

# A vocab.txt in bert-base-uncased's format: specials, characters, ## characters, words.
LETTERS = "abcdefghijklmnopqrstuvwxyz"
VOCAB_TXT = (["[PAD]"] + [f"[unused{i}]" for i in range(3)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
             + list(LETTERS + ".,!?'-") + [f"##{c}" for c in LETTERS]
             + ["the", "cat", "sat", "on", "mat", "dog", "un", "##believ", "##able", "##s",
                "##ing", "play", "cafe", "100", "##0"])

SENTENCES = ["The cats sat on the mat.", "Unbelievable!", "the dogs were playing, Café 1000",
             "zzz qqq xylophone", "  spaces   and\ttabs  "]
PAIRS = [("The cat sat.", "The dog sat on the mat!"), ("Unbelievable cats", "playing"),
         ("a " * 30, "b c d"), ("on " * 8, "mat " * 9)]


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bert-vocab")
    (folder / "vocab.txt").write_text("\n".join(VOCAB_TXT) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def hf_tokenizer(vocab_dir):
    transformers = pytest.importorskip("transformers")
    # transformers 5 ignores BertTokenizerFast(vocab_file=...); from_pretrained reads vocab.txt.
    return transformers.BertTokenizerFast.from_pretrained(str(vocab_dir))


def test_word_level_vocabulary_matches_a_hand_count():
    tok = BertTokenizer.word_level([line.split() for line in CORPUS], min_freq=2)
    # By hand: the 5, sat 2, on 2, cat 2, a 2, dog 2 ("The" lower-cased); the rest once.
    # Ties are alphabetical, as in divekit's Vocab.
    expected = ["<unk>", "<pad>", "<mask>", "<cls>", "<sep>", "the", "a", "cat", "dog", "on", "sat"]
    assert tok.to_tokens(range(tok.vocab_size)) == expected
    assert (tok.unk_id, tok.pad_id, tok.mask_id, tok.cls_id, tok.sep_id) == (0, 1, 2, 3, 4)
    assert tok.special_ids == [0, 1, 2, 3, 4]
    counts = Counter(word.lower() for line in CORPUS for word in line.split())
    assert tok.vocab_size == 5 + sum(count >= 2 for count in counts.values())


def test_word_level_encodes_the_bert_template():
    tok = BertTokenizer.word_level([line.split() for line in CORPUS], min_freq=2)
    index = {token: i for i, token in enumerate(tok.to_tokens(range(tok.vocab_size)))}
    encoded = tok.encode("The CAT zebra", "dog sat", max_len=32)
    assert encoded.ids == [index[t] for t in
                           ["<cls>", "the", "cat", "<unk>", "<sep>", "dog", "sat", "<sep>"]]
    assert encoded.segments == [0, 0, 0, 0, 0, 1, 1, 1]
    assert encoded.sequence_ids == [None, 0, 0, 0, None, 1, 1, None]
    assert encoded.word_ids == [None, 0, 1, 2, None, 0, 1, None]
    assert encoded.offsets[1:4] == [(0, 3), (4, 7), (8, 13)]
    assert not encoded.truncated
    single = tok.encode(["a", "dog"], max_len=8, is_pretokenized=True)
    assert single.ids == [index["<cls>"], index["a"], index["dog"], index["<sep>"]]
    assert single.segments == [0, 0, 0, 0]


def test_truncation_drops_from_the_longer_sequence_and_warns_once_per_call():
    tok = BertTokenizer.word_level([line.split() for line in CORPUS], min_freq=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batch = tok.encode_batch(["the cat sat on the mat", "a", "the end the end the end"],
                                 ["the dog", "dog", "a"], max_len=8)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "2 of 3" in message and "max_len=8" in message
    assert caught[0].filename == __file__  # points at the caller
    # Only the first sequence is too long: it keeps 8 - 3 specials - 2 = 3 words.
    assert tok.to_tokens(batch[0].ids) == ["<cls>", "the", "cat", "sat", "<sep>", "the", "dog",
                                           "<sep>"]
    assert [e.truncated for e in batch] == [True, False, True]
    assert all(len(e.ids) <= 8 for e in batch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tok.encode("the cat", "the dog", max_len=7)  # exactly fits: no warning
    with pytest.raises(DivekitError, match="max_len"):
        tok.encode("the cat", "the dog", max_len=3)


def test_vocab_txt_gives_the_ids_transformers_gives(vocab_dir, hf_tokenizer):
    tok = BertTokenizer.load(vocab_dir / "vocab.txt")
    assert tok.vocab_size == len(hf_tokenizer)
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (
        hf_tokenizer.pad_token_id, hf_tokenizer.unk_token_id, hf_tokenizer.cls_token_id,
        hf_tokenizer.sep_token_id, hf_tokenizer.mask_token_id)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = [(s, None) for s in SENTENCES] + PAIRS
        for first, second in cases:
            for max_len in (512, 12):
                ours = tok.encode(first, second, max_len=max_len)
                theirs = hf_tokenizer(first, second, truncation=True, max_length=max_len,
                                      return_offsets_mapping=True)
                assert ours.ids == theirs["input_ids"], (first, second, max_len)
                assert ours.segments == theirs["token_type_ids"]
                assert ours.offsets == [tuple(o) for o in theirs["offset_mapping"]]
                assert ours.word_ids == theirs.word_ids()
                assert ours.sequence_ids == theirs.sequence_ids()
        batch = tok.encode_batch([p[0] for p in PAIRS], [p[1] for p in PAIRS], max_len=10)
    theirs = hf_tokenizer([p[0] for p in PAIRS], [p[1] for p in PAIRS], truncation=True,
                          max_length=10)
    assert [e.ids for e in batch] == theirs["input_ids"]
    assert [e.truncated for e in batch] == [len(hf_tokenizer(*p)["input_ids"]) > 10 for p in PAIRS]


def test_pretokenized_word_ids_map_pieces_to_words(vocab_dir, hf_tokenizer):
    tok = BertTokenizer.load(vocab_dir)  # the folder: finds vocab.txt
    words, other = ["Unbelievable", "cats", "xylophone"], ["playing", "dogs"]
    ours = tok.encode(words, other, max_len=64, is_pretokenized=True)
    theirs = hf_tokenizer(words, other, is_split_into_words=True)
    assert ours.ids == theirs["input_ids"]
    assert ours.word_ids == theirs.word_ids()
    pieces = tok.to_tokens(ours.ids)
    assert [p for p, w, s in zip(pieces, ours.word_ids, ours.sequence_ids, strict=True)
            if w == 0 and s == 0] == ["un", "##believ", "##able"]
    with pytest.raises(DivekitError, match="is_pretokenized"):
        tok.encode("a string", max_len=8, is_pretokenized=True)


def test_trained_wordpiece_round_trips_words_and_splits_unknown_ones():
    words = ["playing", "played", "player", "plays", "walking", "walked", "talking", "talked",
             "cats", "dogs", "running", "jumped", "quickly", "brown", "fox", "zebra", "vex",
             "whom", "kid", "judge", "the", ",", "!"]
    texts = [" ".join(words[i:] + words[:i]) for i in range(len(words))] * 5
    tok = BertTokenizer.train_wordpiece(texts, vocab_size=200, min_frequency=2)
    assert tok.to_tokens([0, 1, 2, 3, 4]) == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert tok.vocab_size <= 200
    sentence = "the Quick brown fox jumped, playing!"
    encoded = tok.encode(sentence, max_len=64)
    assert tok.unk_id not in encoded.ids
    assert tok.decode(encoded.ids) == "the quick brown fox jumped, playing!"
    # A word never seen is cut into known pieces: a first piece, then ## continuations.
    encoded = tok.encode("dogplayer", max_len=64)
    pieces = tok.to_tokens(encoded.ids)[1:-1]
    assert len(pieces) >= 2 and tok.unk_id not in encoded.ids
    assert not pieces[0].startswith("##") and all(p.startswith("##") for p in pieces[1:])
    assert pieces[0] + "".join(p[2:] for p in pieces[1:]) == "dogplayer"


def test_save_is_atomic_and_load_reads_it_back(tmp_path, monkeypatch):
    tok = BertTokenizer.word_level([line.split() for line in CORPUS], min_freq=1)
    written = tok.save(tmp_path)
    assert written == tmp_path / "tokenizer.json"
    for loaded in (BertTokenizer.load(written), BertTokenizer.load(tmp_path)):
        assert loaded.encode("the cat", "a dog zebra", max_len=16) == tok.encode(
            "the cat", "a dog zebra", max_len=16)
        assert loaded.special_ids == tok.special_ids and loaded.vocab_size == tok.vocab_size
    before = written.read_bytes()
    other = BertTokenizer.word_level([["x", "y"]], min_freq=1)

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        other.save(written)
    assert written.read_bytes() == before  # the old file is whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.json"]  # no temp left


def test_load_errors_name_the_path_and_the_accepted_files(tmp_path):
    for path in (tmp_path / "missing.json", tmp_path):
        with pytest.raises(DivekitError, match="tokenizer.json.*vocab.txt") as error:
            BertTokenizer.load(path)
        assert str(path) in str(error.value)
    broken = tmp_path / "tokenizer.json"
    broken.write_text("{not json", encoding="utf-8")
    with pytest.raises(DivekitError, match="cannot read") as error:
        BertTokenizer.load(tmp_path)
    assert str(broken) in str(error.value)
    no_specials = tmp_path / "vocab.txt"
    no_specials.write_text("a\nb\n", encoding="utf-8")
    with pytest.raises(DivekitError, match="special tokens"):
        BertTokenizer.load(no_specials)
