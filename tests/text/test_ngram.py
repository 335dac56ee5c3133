"""Count-based n-gram language models (9.3): normalisation, counts, perplexity, generation."""

import itertools
import math
import re
from collections import Counter

import numpy as np
import pytest
import torch

from divekit.data import load_data
from divekit.errors import DivekitError
from divekit.text.ngram import NGramLM
from divekit.text.vocab import Vocab
from tests.conftest import real_data_dir

CORPUS = list("abracadabra cadabra abba")
SMOOTHINGS = [("add-k", {"k": 0.5}), ("interpolated", {"eps": (0.3, 1.0, 2.5)})]


def models(n):
    for smoothing, options in SMOOTHINGS:
        if "eps" in options:
            options = {"eps": options["eps"][:n]}
        yield NGramLM(n, smoothing, **options).fit(CORPUS)


def contexts(vocab, length):
    return [list(c) for c in itertools.product(vocab.idx_to_token, repeat=length)]


@pytest.mark.parametrize("n", [1, 2, 3])
def test_every_conditional_distribution_sums_to_one(n):
    for lm in models(n):
        # Every context of every length up to n - 1, seen or not, <unk> included.
        for length in range(n):
            for context in contexts(lm.vocab, length):
                probs = lm.distribution(context)
                assert probs.dtype == np.float64 and probs.shape == (len(lm.vocab),)
                assert math.fsum(probs) == pytest.approx(1.0, abs=1e-14)
                assert (probs > 0).all()
                singles = [lm.prob(token, context) for token in lm.vocab.idx_to_token]
                np.testing.assert_allclose(singles, probs, rtol=1e-14)


def counts(tokens, m):
    return Counter(zip(*(tokens[j:] for j in range(m)), strict=False))


def test_add_k_matches_direct_counts():
    k, vocab_size = 0.5, len(set(CORPUS)) + 1  # + <unk>
    uni, bi, tri = counts(CORPUS, 1), counts(CORPUS, 2), counts(CORPUS, 3)
    # n(c) counts the occurrences of c that something follows: the last token has no successor.
    follows1 = counts(CORPUS[:-1], 1)
    follows2 = counts(CORPUS[:-1], 2)
    unigram, bigram, trigram = (NGramLM(n, "add-k", k=k).fit(CORPUS) for n in (1, 2, 3))
    for x in set(CORPUS) | {"z"}:
        assert unigram.prob(x) == pytest.approx((uni[(x,)] + k) / (len(CORPUS) + k * vocab_size),
                                                rel=1e-14)
        for a in set(CORPUS):
            assert bigram.prob(x, [a]) == pytest.approx(
                (bi[(a, x)] + k) / (follows1[(a,)] + k * vocab_size), rel=1e-14)
            for b in set(CORPUS):
                assert trigram.prob(x, ["q", a, b]) == pytest.approx(
                    (tri[(a, b, x)] + k) / (follows2[(a, b)] + k * vocab_size), rel=1e-14)
    assert bigram.prob("b", ["a"]) == pytest.approx((4 + k) / (9 + k * vocab_size), rel=1e-14)


def test_interpolated_matches_the_course_formula():
    e1, e2, e3 = 0.3, 1.0, 2.5
    vocab_size = len(set(CORPUS)) + 1
    uni, bi, tri = counts(CORPUS, 1), counts(CORPUS, 2), counts(CORPUS, 3)
    follows1, follows2 = counts(CORPUS[:-1], 1), counts(CORPUS[:-1], 2)
    lm = NGramLM(3, "interpolated", eps=(e1, e2, e3)).fit(CORPUS)

    def p1(x):
        return (uni[(x,)] + e1 / vocab_size) / (len(CORPUS) + e1)

    def p2(x, b):
        return (bi[(b, x)] + e2 * p1(x)) / (follows1[(b,)] + e2)

    def p3(x, a, b):
        return (tri[(a, b, x)] + e3 * p2(x, b)) / (follows2[(a, b)] + e3)

    for x in sorted(set(CORPUS)):
        assert lm.prob(x) == pytest.approx(p1(x), rel=1e-14)
        for a, b in itertools.product(sorted(set(CORPUS)), repeat=2):
            assert lm.prob(x, [b]) == pytest.approx(p2(x, b), rel=1e-14)
            assert lm.prob(x, [a, b]) == pytest.approx(p3(x, a, b), rel=1e-14)
            assert lm.log_prob(x, [a, b]) == pytest.approx(math.log(p3(x, a, b)), rel=1e-14)


def test_perplexity_is_exp_of_mean_negative_log_likelihood():
    lm = NGramLM(2, "add-k").fit(CORPUS)
    text = list("abcadz")  # "z" is unknown: scored as <unk>
    logs = [lm.log_prob(text[0])]
    logs += [lm.log_prob(text[t], [text[t - 1]]) for t in range(1, len(text))]
    assert lm.perplexity(text) == pytest.approx(math.exp(-sum(logs) / len(text)), rel=1e-14)
    assert lm.prob("z", ["a"]) == lm.prob("<unk>", ["a"])


@pytest.mark.parametrize("smoothing", ["add-k", "interpolated"])
def test_a_uniform_model_has_the_vocabulary_size_as_perplexity(smoothing):
    vocab = Vocab(list("abcde"))
    # Every token (and <unk>) seen equally often: the unigram estimate is exactly uniform.
    lm = NGramLM(1, smoothing).fit(list(range(len(vocab))) * 3, vocab)
    assert lm.perplexity(list("abcaaedbz")) == pytest.approx(len(vocab), rel=1e-13)


def test_add_k_with_a_huge_k_approaches_uniform():
    perplexities = [NGramLM(2, "add-k", k=k).fit(CORPUS).perplexity(CORPUS) for k in
                    (0.01, 1.0, 100.0, 1e8)]
    vocab_size = len(set(CORPUS)) + 1
    assert perplexities == sorted(perplexities)  # more smoothing, worse fit of training text
    assert perplexities[0] < vocab_size / 2
    assert perplexities[-1] == pytest.approx(vocab_size, rel=1e-6)


def test_index_streams_and_tensors_give_the_same_model_as_strings():
    vocab = Vocab(CORPUS)
    text = NGramLM(3, "interpolated").fit(CORPUS, vocab)
    indices = NGramLM(3, "interpolated").fit(torch.tensor(vocab[CORPUS]), len(vocab))
    assert indices.perplexity(vocab[list("cab ab")]) == text.perplexity(list("cab ab"))
    np.testing.assert_array_equal(indices.distribution(vocab[["a", "b"]]),
                                  text.distribution(["a", "b"]))


def test_greedy_generation_follows_the_only_continuation():
    lm = NGramLM(3, "add-k", k=1e-9).fit(list("abcd") * 20)
    assert "".join(lm.generate("ab", 10)) == "abcdabcdabcd"
    # With k this small every other continuation has probability < 1e-8 per step.
    assert "".join(lm.generate("bc", 7, "sample", seed=3)) == "bcdabcdab"


def test_sampling_is_seeded_and_greedy_takes_the_argmax():
    lm = NGramLM(2, "add-k").fit(CORPUS)
    first = lm.generate(list("ab"), 30, "sample", seed=7)
    assert first == lm.generate(list("ab"), 30, "sample", seed=7)
    greedy = lm.generate(["c"], 5)
    for t in range(1, len(greedy)):
        probs = lm.distribution(greedy[:t])
        assert lm.vocab[greedy[t]] == int(np.argmax(probs))
    indices = NGramLM(1).fit([0, 1, 1, 2], 3)
    assert indices.generate([], 3) == [1, 1, 1]


@pytest.mark.parametrize("call, message", [
    (lambda: NGramLM(0), "positive integer"),
    (lambda: NGramLM(2, "kneser"), "smoothing"),
    (lambda: NGramLM(2, k=0), "pseudo-count"),
    (lambda: NGramLM(3, "interpolated", eps=(1.0, 1.0)), "eps"),
    (lambda: NGramLM(2).prob("a"), "not fitted"),
    (lambda: NGramLM(2).fit([0, 1, 2]), "vocab="),
    (lambda: NGramLM(2).fit([0, 1, 2], 2), "indices in [0, 2)"),
    (lambda: NGramLM(2).fit(torch.tensor([0, 5]), 3), "indices must be in [0, 3), got 0..5"),
    (lambda: NGramLM(2).fit([0, 1], 2).prob("a"), "without a Vocab"),
    (lambda: NGramLM(2).fit(CORPUS).perplexity([]), "at least one token"),
    (lambda: NGramLM(2).fit(CORPUS).prob("a", ["b", 1]), "not a mix"),
    (lambda: NGramLM(2).fit(CORPUS).generate("a", 3, "beam"), "strategy"),
    (lambda: NGramLM(2).fit(CORPUS).generate("a", -1), "num_tokens"),
    (lambda: NGramLM(2).fit(torch.zeros(2, 3, dtype=torch.long), 3), "1-D"),
])
def test_bad_arguments_are_named(call, message):
    with pytest.raises(DivekitError, match=re.escape(message)):
        call()


def test_longer_contexts_lower_held_out_perplexity_on_the_time_machine():
    data = load_data("timemachine", data_dir=str(real_data_dir("timemachine")), num_steps=1)
    # With one-token windows, X[:, 0] is the held-out stream (the last 10%) but for its last token.
    X, Y = data.test
    held_out = torch.cat([X[:, 0], Y[-1:, 0]])
    ppl = {n: NGramLM(n, "add-k").fit(data.corpus, data.vocab).perplexity(held_out)
           for n in (1, 2, 3)}
    print("char-level add-1 perplexity on the last 10%:", ppl)
    # 27 letters and space: a unigram model beats uniform (28) but not by much; context helps.
    assert 15 < ppl[1] < 20
    assert ppl[2] < ppl[1] - 5
    assert ppl[3] < ppl[2] - 2
