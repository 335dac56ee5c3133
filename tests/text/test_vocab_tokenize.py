"""Tokenization, the vocabulary, n-gram counts and the Zipf plot (9.2-9.3)."""

import collections
import json
import random
import re

import pytest
import torch

from divekit.errors import DivekitError
from divekit.text import Vocab, ngram_frequencies, plot_zipf, preprocess_timemachine, tokenize
from tests.conftest import real_data_dir


def test_preprocess_keeps_letters_only_in_lower_case():
    text = "The Time-Machine, by H. G. Wells [1898]\n\nI\tsaid: 'Don't!'"
    assert preprocess_timemachine(text) == "the time machine by h g wells i said don t "
    assert preprocess_timemachine("") == ""


def test_tokenize_char_and_word_for_text_and_lines():
    assert tokenize("ab c") == ["a", "b", " ", "c"]
    assert tokenize("  the time\n machine ", level="word") == ["the", "time", "machine"]
    assert tokenize(["ab", "", "c d"], level="char") == [["a", "b"], [], ["c", " ", "d"]]
    assert tokenize(["the time", "", "traveller"], level="word") == [
        ["the", "time"], [], ["traveller"]]
    with pytest.raises(DivekitError, match="token level"):
        tokenize("abc", level="sentence")


def random_tokens(count=500, seed=0):
    rng = random.Random(seed)
    # A skewed distribution over 12 words, so counts differ and some tie.
    words = [f"w{i}" for i in range(12)]
    return rng.choices(words, weights=[1 / (i + 1) for i in range(12)], k=count)


def test_vocab_orders_by_frequency_then_alphabetically():
    tokens = random_tokens()
    counts = collections.Counter(tokens)
    vocab = Vocab(tokens)
    expected = sorted(counts, key=lambda token: (-counts[token], token))
    assert vocab.idx_to_token == ["<unk>", *expected]
    assert vocab.token_freqs == [(token, counts[token]) for token in expected]
    assert len(vocab) == len(counts) + 1
    assert all(vocab[token] == i for i, token in enumerate(vocab.idx_to_token))
    # Ties: equal counts must come out in alphabetical order.
    tie = Vocab(["b", "a", "c", "a", "b", "d"])
    assert tie.idx_to_token == ["<unk>", "a", "b", "c", "d"]


def test_vocab_from_lines_equals_vocab_from_flat_tokens():
    lines = [["the", "time"], [], ["the", "traveller"]]
    assert Vocab(lines).idx_to_token == Vocab(["the", "time", "the", "traveller"]).idx_to_token


def test_min_freq_drops_rare_tokens_to_unk():
    tokens = random_tokens()
    counts = collections.Counter(tokens)
    vocab = Vocab(tokens, min_freq=20)
    kept = {token for token, count in counts.items() if count >= 20}
    assert set(vocab.idx_to_token[1:]) == kept and 0 < len(kept) < len(counts)
    for token, count in counts.items():
        assert (vocab[token] == vocab.unk) == (count < 20)
    # token_freqs still reports every token seen, kept or not.
    assert dict(vocab.token_freqs) == counts


def test_reserved_tokens_follow_unk_even_when_in_the_text():
    vocab = Vocab(["x", "<eos>", "x", "y", "<eos>", "<eos>"], reserved_tokens=["<pad>", "<eos>"])
    assert vocab.idx_to_token == ["<unk>", "<pad>", "<eos>", "x", "y"]
    assert vocab["<pad>"] == 1 and vocab["<eos>"] == 2
    for bad in (["<pad>", "<pad>"], ["<unk>"]):
        with pytest.raises(DivekitError, match="reserved tokens"):
            Vocab(["x"], reserved_tokens=bad)


def test_unknown_tokens_and_index_lookups():
    vocab = Vocab(list("hello world"))
    assert vocab.unk == 0 and vocab.idx_to_token[0] == "<unk>"
    assert vocab["Q"] == 0 and "Q" not in vocab and "l" in vocab
    assert vocab[["h", "Q", "o"]] == [vocab["h"], 0, vocab["o"]]
    assert vocab[[["h"], ["e", "Q"]]] == [[vocab["h"]], [vocab["e"], 0]]
    indices = vocab[list("hold")]
    assert vocab.to_tokens(indices) == list("hold")
    assert vocab.to_tokens(torch.tensor(indices)) == list("hold")
    assert vocab.to_tokens(torch.tensor(vocab["w"])) == "w"
    assert vocab.to_tokens(0) == "<unk>"
    with pytest.raises(DivekitError, match="outside the vocabulary"):
        vocab.to_tokens(len(vocab))
    assert len(Vocab()) == 1


def test_save_load_round_trip(tmp_path):
    vocab = Vocab(random_tokens() + ["é", "日本"], reserved_tokens=["<eos>"])
    path = vocab.save(tmp_path / "sub" / "vocab.json")
    loaded = Vocab.load(path)
    assert loaded.idx_to_token == vocab.idx_to_token
    assert loaded.token_to_idx == vocab.token_to_idx
    assert loaded.token_freqs == vocab.token_freqs
    assert loaded[["w0", "日本", "unseen"]] == vocab[["w0", "日本", "unseen"]]
    assert [p.name for p in path.parent.iterdir()] == ["vocab.json"]  # no temporary file left
    vocab.save(path)  # overwriting works too
    assert Vocab.load(path).idx_to_token == vocab.idx_to_token


@pytest.mark.parametrize("content", [
    "{not json",
    "[1, 2]",
    json.dumps({"idx_to_token": ["<unk>", "a"], "token_freqs": [["a", 1]]}),
    json.dumps({"format": "divekit-vocab", "idx_to_token": ["a"], "token_freqs": []}),
    json.dumps({"format": "divekit-vocab", "idx_to_token": ["<unk>", "a", "a"],
                "token_freqs": []}),
    json.dumps({"format": "divekit-vocab", "idx_to_token": ["<unk>"], "token_freqs": [["a"]]}),
])
def test_malformed_vocab_file_is_a_divekit_error(tmp_path, content):
    path = tmp_path / "vocab.json"
    path.write_text(content)
    with pytest.raises(DivekitError, match="vocab"):
        Vocab.load(path)
    with pytest.raises(DivekitError, match="cannot read"):
        Vocab.load(tmp_path / "absent.json")


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_ngram_frequencies_match_naive_counts(n):
    tokens = random_tokens(400, seed=n)
    naive = collections.Counter()
    for start in range(len(tokens) - n + 1):
        naive[tuple(tokens[start:start + n])] += 1
    result = ngram_frequencies(tokens, n)
    assert dict(result) == naive
    assert len(result) == len(naive)
    counts = [count for _, count in result]
    assert counts == sorted(counts, reverse=True)
    for (a, count_a), (b, count_b) in zip(result, result[1:], strict=False):
        assert count_a > count_b or a < b


def test_ngram_edge_cases():
    assert ngram_frequencies(["a", "b"], 3) == []
    assert ngram_frequencies(["a", "b", "a"], 2) == [(("a", "b"), 1), (("b", "a"), 1)]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(DivekitError, match="n-gram length"):
            ngram_frequencies(["a"], bad)


def test_plot_zipf_writes_a_png(tmp_path):
    words = random_tokens(2000)
    lists = {f"{n}-gram": [c for _, c in ngram_frequencies(words, n)] for n in (1, 2, 3)}
    path = plot_zipf(lists, tmp_path / "plots" / "zipf.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["zipf.png"]
    with pytest.raises(DivekitError, match="at least one"):
        plot_zipf({}, tmp_path / "x.png")
    with pytest.raises(DivekitError, match="positive"):
        plot_zipf({"bad": [3, 0]}, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def timemachine_words():
    text = (real_data_dir("timemachine") / "timemachine" / "timemachine.txt").read_text()
    return re.sub("[^A-Za-z]+", " ", text).lower().split()


def test_timemachine_ngrams_match_the_book():
    # Printed outputs of d2l 1.0, section 9.2.4 / 9.3 ("Natural Language Statistics").
    words = timemachine_words()
    assert ngram_frequencies(words, 1)[:10] == [
        (("the",), 2261), (("i",), 1267), (("and",), 1245), (("of",), 1155), (("a",), 816),
        (("to",), 695), (("was",), 552), (("in",), 541), (("that",), 443), (("my",), 440)]
    assert ngram_frequencies(words, 2)[:10] == [
        (("of", "the"), 309), (("in", "the"), 169), (("i", "had"), 130), (("i", "was"), 112),
        (("and", "the"), 109), (("the", "time"), 102), (("it", "was"), 99),
        (("to", "the"), 85), (("as", "i"), 78), (("of", "a"), 73)]
    trigrams = dict(ngram_frequencies(words, 3)[:10])
    assert trigrams == {
        ("the", "time", "traveller"): 59, ("the", "time", "machine"): 30,
        ("the", "medical", "man"): 24, ("it", "seemed", "to"): 16, ("it", "was", "a"): 15,
        ("here", "and", "there"): 15, ("seemed", "to", "me"): 14, ("i", "did", "not"): 14,
        ("i", "saw", "the"): 13, ("i", "began", "to"): 13}
    # 32,775 words, 4,579 distinct: 4,580 vocabulary entries with <unk> (timemachine/SOURCE.md).
    assert len(words) == 32775 and len(Vocab(words)) == 4580
