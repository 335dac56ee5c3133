"""BLEU (10.7.6): the course's formula on the book's examples, corpus BLEU against sacrebleu."""

import math
import random

import pytest
import sacrebleu
import torch
from sacrebleu.metrics import BLEU

from divekit.errors import DivekitError
from divekit.text.bleu import CorpusBLEU, corpus_bleu, course_bleu

# --- The course's formula --------------------------------------------------------------------

BOOK_EXAMPLES = [
    # Equal lengths (no brevity penalty). p1 = 3/4 (il, est, .), p2 = 1/3 ("il est");
    # (3/4)**(1/2) * (1/3)**(1/4) = 0.8660 * 0.7598 = 0.658.
    ("il est riche .", "il est calme .", 0.658),
    # p1 = 2/5 (je, suis), p2 = 1/4 ("je suis"); (2/5)**(1/2) * (1/4)**(1/4) = 0.6325 * 0.7071.
    ("je suis en retard ?", "je suis chez moi .", 0.447),
    # Exact matches: every p_n = 1 and len_pred = len_label.
    ("va !", "va !", 1.000),
    ("j'ai perdu .", "j'ai perdu .", 1.000),
    ("il est calme .", "il est calme .", 1.000),
    # No common token: p1 = 0.
    ("elle court .", "va !", 0.000),
]


@pytest.mark.parametrize(("pred", "label", "expected"), BOOK_EXAMPLES)
def test_book_examples(pred, label, expected):
    assert round(course_bleu(pred, label, k=2), 3) == expected
    assert course_bleu(pred.split(), label.split(), k=2) == course_bleu(pred, label, k=2)


def test_brevity_penalty_clipping_and_weights():
    # Too short: exp(1 - 4/2) = e**-1, every n-gram matches.
    assert math.isclose(course_bleu("il est", "il est calme .", k=2), math.exp(-1))
    # Longer than the label: no penalty (min(0, 1 - 2/3) = 0, exp(0) = 1).
    # Clipping: "the" occurs once in the label, so 1 of the 3 matches; p1**(1/2) = 3**-0.5.
    assert math.isclose(course_bleu("the the the", "the cat", k=1), 3 ** -0.5)
    # Weights 1/2**n: p1 = 2/3, p2 = 1/2, p3 = 0 -> 0 with k=3, (2/3)**.5 * (1/2)**.25 with k=2.
    pred, label = "a b c", "a b d"
    assert math.isclose(course_bleu(pred, label, k=2), (2 / 3) ** 0.5 * 0.5 ** 0.25)
    assert course_bleu(pred, label, k=3) == 0.0
    # Runs of spaces separate tokens (no empty tokens).
    assert course_bleu("il  est calme . ", "il est calme .") == 1.0


def test_edge_cases():
    # Orders longer than the prediction are left out: a one-token exact match scores 1.
    assert course_bleu("va", "va", k=4) == 1.0
    # An order the label is too short for has p_n = 0: BP = exp(min(0, 1 - 1/2)) = 1, p2 = 0.
    assert course_bleu("va va", "va", k=2) == 0.0
    # The book would divide by len_pred = 0: the score is 0, even against an empty label.
    assert course_bleu("", "il est calme .") == 0.0
    assert course_bleu("", "") == 0.0
    assert course_bleu("il est", "") == 0.0
    with pytest.raises(DivekitError, match="k"):
        course_bleu("a", "a", k=0)


# --- Corpus BLEU against sacrebleu -----------------------------------------------------------

WORDS = ["the", "cat", "a", "dog", "sat", "on", "mat", "mats", ".", "!", "?", "it's", "don't",
         "Hello", "world", "(big)", "42"]


def sentence(rng, longest=12):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, longest)))


def corpus(seed, num=40, refs=(1, 1)):
    """Random hypotheses (some empty, some short) with refs[0]..refs[1] references each; a
    reference is sometimes a noisy copy of its hypothesis, so that n-grams of every order
    match."""
    rng = random.Random(seed)
    hypotheses, references = [], []
    for _ in range(num):
        hypothesis = sentence(rng)
        hypotheses.append(hypothesis)
        references.append([])
        for _ in range(rng.randint(*refs)):
            words = hypothesis.split()
            if words and rng.random() < 0.6:
                words[rng.randrange(len(words))] = rng.choice(WORDS)
                references[-1].append(" ".join(words + [rng.choice(WORDS)] * rng.randint(0, 3)))
            else:
                references[-1].append(sentence(rng, 8) or "x")
    return hypotheses, references


def summed_sentence_statistics(hypotheses, references):
    """The corpus score from per-sentence sacrebleu statistics, each sentence with exactly its
    own references (no padding of reference streams needed)."""
    total = [0] * 10
    for hypothesis, refs in zip(hypotheses, references, strict=True):
        score = BLEU().corpus_score([hypothesis], [[r] for r in refs])
        stats = [score.sys_len, score.ref_len, *score.counts, *score.totals]
        total = [a + b for a, b in zip(total, stats, strict=True)]
    return BLEU.compute_bleu(total[2:6], total[6:], total[0], total[1]).score


@pytest.mark.parametrize("seed", range(4))
def test_single_reference_equals_sacrebleu(seed):
    hypotheses, references = corpus(seed)
    expected = sacrebleu.corpus_bleu(hypotheses, [[refs[0] for refs in references]]).score
    assert 0 < expected < 100
    assert math.isclose(corpus_bleu(hypotheses, references), expected, rel_tol=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_equal_number_of_references_equals_sacrebleu(seed):
    hypotheses, references = corpus(seed, refs=(3, 3))
    streams = [list(stream) for stream in zip(*references, strict=True)]
    expected = sacrebleu.corpus_bleu(hypotheses, streams).score
    assert math.isclose(corpus_bleu(hypotheses, references), expected, rel_tol=1e-12)
    # More references can only raise the score here (more n-grams to match).
    assert expected >= sacrebleu.corpus_bleu(hypotheses, streams[:1]).score


@pytest.mark.parametrize("seed", range(4))
def test_varying_number_of_references_equals_sacrebleu(seed):
    hypotheses, references = corpus(seed, refs=(1, 4))
    assert len({len(refs) for refs in references}) > 1
    width = max(len(refs) for refs in references)
    padded = [[refs[j] if j < len(refs) else None for refs in references] for j in range(width)]
    expected = sacrebleu.corpus_bleu(hypotheses, padded).score
    assert math.isclose(corpus_bleu(hypotheses, references), expected, rel_tol=1e-12)
    assert math.isclose(summed_sentence_statistics(hypotheses, references), expected,
                        rel_tol=1e-12)


def test_missing_references_are_not_empty_references():
    # A short hypothesis: against an extra empty reference (length 0, closer to 1 than 4 is)
    # the brevity penalty would vanish; a missing reference must not change it.
    hypotheses = ["cat", "the dog sat on the mat"]
    references = [["the cat sat ."], ["the dog sat on the mat", "a dog sat on a mat"]]
    empty_padded = sacrebleu.corpus_bleu(hypotheses, [["the cat sat .", "the dog sat on the mat"],
                                                      ["", "a dog sat on a mat"]]).score
    expected = summed_sentence_statistics(hypotheses, references)
    assert not math.isclose(empty_padded, expected)
    assert math.isclose(corpus_bleu(hypotheses, references), expected, rel_tol=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_corpus_bleu_metric_accumulates_batches_exactly(seed):
    hypotheses, references = corpus(seed, num=60, refs=(1, 3))
    metric = CorpusBLEU()
    assert metric.higher_is_better is True
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(hypotheses)), 5))
    for start, stop in zip([0, *cuts], [*cuts, len(hypotheses)], strict=True):
        metric.update(hypotheses[start:stop], references[start:stop])
    metric.update([], [])
    expected = summed_sentence_statistics(hypotheses, references)
    score = metric.compute()
    assert score.dtype == torch.float64 and score.shape == ()
    assert math.isclose(score.item(), expected, rel_tol=1e-12)
    assert math.isclose(score.item(), corpus_bleu(hypotheses, references), rel_tol=1e-12)
    # Statistics of two "processes" summed (what an all-reduce does) give the whole corpus.
    first, second = CorpusBLEU(), CorpusBLEU()
    first.update(hypotheses[::2], references[::2])
    second.update(hypotheses[1::2], references[1::2])
    for name, value in first.metric_state.items():
        value += second.metric_state[name]
    assert math.isclose(first.compute().item(), expected, rel_tol=1e-12)
    metric.reset()
    metric.update(hypotheses[:10], references[:10])
    assert math.isclose(metric.compute().item(),
                        summed_sentence_statistics(hypotheses[:10], references[:10]),
                        rel_tol=1e-12)


def test_bad_corpus_input_is_refused():
    with pytest.raises(DivekitError, match="references"):
        corpus_bleu(["a b"], ["a b"])  # a reference string, not a list of them
    with pytest.raises(DivekitError, match="references"):
        corpus_bleu(["a b", "c"], [["a b"]])
    with pytest.raises(DivekitError, match=r"references\[0\]"):
        corpus_bleu(["a b"], [[]])
    with pytest.raises(DivekitError, match="at least one"):
        corpus_bleu([], [])
    with pytest.raises(DivekitError, match="update"):
        CorpusBLEU().compute()
