"""16.7 SQuAD v1.1 scoring against torchmetrics, and span decoding against a naive double loop."""

import math
import random

import pytest
import torch
from torchmetrics.functional.text import squad
from torchmetrics.text import SQuAD

from divekit.engine import distributed
from divekit.errors import DivekitError
from divekit.text.squad import SquadScore, best_spans, exact_match, normalize_answer, token_f1

# --- Answers ----------------------------------------------------------------------------------

CONTENT = ["cat", "Cat", "CAT.", "dog", "dog,", "U.S.", "us", "(1976)", "1976", "sat", "mat!",
           "theater", "Anna", "naïve", "x-ray", "xray", "new", "York", "York's", "yorks"]
FILLER = ["The", "the", "a", "A", "an", "An", "!", "...", ",", "-", " ", "\t", "\n"]


def phrase(rng: random.Random, words: int, content: bool) -> str:
    """A phrase of mixed case, punctuation, articles and whitespace; with ``content`` it holds a
    word that survives normalisation."""
    pieces = [rng.choice(CONTENT + FILLER) for _ in range(words)]
    if content:
        pieces.insert(rng.randrange(len(pieces) + 1), rng.choice(CONTENT))
    return rng.choice([" ", "  ", ""]).join(pieces) if rng.random() < 0.2 else " ".join(pieces)


def keeps_a_word(text: str) -> bool:
    return any(word in CONTENT for word in text.split())


def random_questions(count: int, seed: int = 0) -> tuple[list[str], list[list[str]]]:
    """Predictions that keep a word after normalisation, with 1-3 gold answers each (some of
    which normalise to nothing). The one case where torchmetrics (SQuAD 2.0's rule) and the
    v1.1 script differ, an empty prediction against an empty answer, is tested by hand."""
    rng = random.Random(seed)
    predictions, answers = [], []
    for _ in range(count):
        gold = [phrase(rng, rng.randint(0, 4), content=rng.random() < 0.9)
                for _ in range(rng.randint(1, 3))]
        if rng.random() < 0.3:  # a near miss: a gold answer with words added or re-cased
            prediction = rng.choice(gold) + " " + phrase(rng, rng.randint(0, 2), content=True)
        elif rng.random() < 0.3 and any(keeps_a_word(g) for g in gold):
            answer = rng.choice([g for g in gold if keeps_a_word(g)])
            prediction = answer.upper() + rng.choice(["", ".", " the"])
        else:
            prediction = phrase(rng, rng.randint(0, 4), content=True)
        predictions.append(prediction)
        answers.append(gold)
    return predictions, answers


def torchmetrics_inputs(predictions, answers):
    preds = [{"prediction_text": p, "id": str(i)} for i, p in enumerate(predictions)]
    target = [{"answers": {"answer_start": [0] * len(a), "text": a}, "id": str(i)}
              for i, a in enumerate(answers)]
    return preds, target


@pytest.mark.parametrize(("text", "expected"), [
    ("The Cat.", "cat"),
    ("  An\tapple,  a day!\n", "apple day"),
    ("U.S.A.", "usa"),                  # punctuation is deleted, not turned into spaces
    ("x-ray", "xray"),
    ("the-end", "theend"),              # ... so "the" is no longer a word of its own
    ("Theater Anna them", "theater anna them"),  # articles only as whole words
    ("A, the, AN", ""),
    ("Ça va «bien»", "ça va «bien»"),    # only ASCII punctuation goes
    ("", ""),
])
def test_normalize_answer_hand_examples(text, expected):
    assert normalize_answer(text) == expected


def test_exact_match_and_f1_hand_examples():
    assert exact_match("The cat!", ["a dog", "cat"]) == 1.0
    assert exact_match("cats", ["cat"]) == 0.0
    # {cat, sat} against {cat, sat, on, mat}: precision 1, recall 1/2, F1 2/3.
    assert token_f1("the cat sat", ["cat sat on mat"]) == pytest.approx(2 / 3)
    # Words as a multiset: "b b" is shared twice; precision = recall = 2/3.
    assert token_f1("x b b", ["b c b"]) == pytest.approx(2 / 3)
    assert token_f1("x b b", ["b c"]) == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    # The best over the answers.
    assert token_f1("new york", ["york city", "New York!", "boston"]) == 1.0
    assert token_f1("", ["cat"]) == 0.0 and exact_match("", ["cat"]) == 0.0
    # The official v1.1 script: F1 is 0 whenever no word is shared, even when both normalise
    # to nothing (their exact match is 1). torchmetrics follows SQuAD 2.0 there (F1 = 1).
    assert exact_match("The", ["a."]) == 1.0
    assert token_f1("The", ["a."]) == 0.0
    assert token_f1("The", ["a.", "the cat"]) == 0.0


@pytest.mark.parametrize("answers", [[], "cat", [None], ["cat", 3]])
def test_bad_answers_are_an_error(answers):
    with pytest.raises(DivekitError, match="non-empty list of gold answer strings"):
        token_f1("cat", answers)
    with pytest.raises(DivekitError, match="non-empty list of gold answer strings"):
        exact_match("cat", answers)


def test_per_question_scores_equal_torchmetrics():
    predictions, answers = random_questions(250)
    for prediction, gold in zip(predictions, answers, strict=True):
        expected = squad(*torchmetrics_inputs([prediction], [gold]))
        assert exact_match(prediction, gold) * 100 == expected["exact_match"].item()
        assert token_f1(prediction, gold) * 100 == pytest.approx(expected["f1"].item(), abs=1e-4)


def test_empty_predictions_equal_torchmetrics():
    predictions = ["", "", "  ", "the"]
    answers = [["cat"], ["the cat", "dog"], ["New York"], ["a cat"]]
    metric = SquadScore()
    metric.update(predictions, answers)
    expected = squad(*torchmetrics_inputs(predictions, answers))
    assert metric.compute()["em"].item() == 0.0 == expected["exact_match"].item()
    assert metric.compute()["f1"].item() == 0.0 == expected["f1"].item()


def test_squad_score_equals_torchmetrics_over_batches():
    predictions, answers = random_questions(300, seed=1)
    metric, reference = SquadScore(), SQuAD()
    for begin in range(0, len(predictions), 64):
        batch = slice(begin, begin + 64)
        metric.update(predictions[batch], answers[batch])
        reference.update(*torchmetrics_inputs(predictions[batch], answers[batch]))
    result, expected = metric.compute(), reference.compute()
    assert set(result) == {"em", "f1"}
    assert result["em"].dtype == torch.float64
    assert 0 < expected["exact_match"].item() < expected["f1"].item() < 100  # a fair mix
    assert result["em"].item() == pytest.approx(expected["exact_match"].item(), rel=1e-5)
    assert result["f1"].item() == pytest.approx(expected["f1"].item(), rel=1e-5)
    assert SquadScore.higher_is_better is True


def test_squad_score_state_halves_and_processes(monkeypatch):
    predictions, answers = random_questions(80, seed=2)
    whole, first, second = SquadScore(), SquadScore(), SquadScore()
    whole.update(predictions, answers)
    first.update(predictions[:30], answers[:30])
    second.update(predictions[30:], answers[30:])
    merged = SquadScore()
    for name in merged.metric_state:  # what a checkpoint restores and DDP sums
        setattr(merged, name, first.metric_state[name] + second.metric_state[name])
    assert merged.metric_state["count"].item() == 80
    expected = squad(*torchmetrics_inputs(predictions, answers))
    for result in (whole.compute(), merged.compute()):
        assert result["em"].item() == pytest.approx(expected["exact_match"].item(), rel=1e-5)
        assert result["f1"].item() == pytest.approx(expected["f1"].item(), rel=1e-5)
    # compute() all-reduces: "process 1" holds the second half.
    other_sums = torch.stack(list(second.metric_state.values()))
    monkeypatch.setattr(distributed, "all_reduce_sum", lambda t: t.add_(other_sums))
    result = first.compute()
    assert result["em"].item() == pytest.approx(expected["exact_match"].item(), rel=1e-5)
    assert result["f1"].item() == pytest.approx(expected["f1"].item(), rel=1e-5)
    assert first.metric_state["count"].item() == 30  # the local state is left alone


def test_squad_score_reset_and_errors():
    metric = SquadScore().to("cpu")
    assert {k: v.item() for k, v in metric.compute().items()} == {"em": 0.0, "f1": 0.0}
    metric.update(["cat"], [["cat"]])
    assert metric.compute()["em"].item() == 100.0
    metric.reset()
    assert all(v.item() == 0 for v in metric.metric_state.values())
    with pytest.raises(DivekitError, match="2 predictions but 1 answer lists"):
        metric.update(["a", "b"], [["a"]])
    with pytest.raises(DivekitError, match="wrap a single answer"):
        metric.update(["a"], ["a"])


# --- Span decoding ----------------------------------------------------------------------------

def naive_best_spans(start_logits, end_logits, allowed, max_answer_len):
    """Every pair in (start, end) order; a later pair wins only with a strictly larger score,
    so ties go to the smallest start, then the smallest end."""
    starts, ends, scores = [], [], []
    for b in range(start_logits.shape[0]):
        best = None
        for s in range(start_logits.shape[1]):
            for e in range(s, min(s + max_answer_len, start_logits.shape[1])):
                if not (allowed[b, s] and allowed[b, e]):
                    continue
                score = (start_logits[b, s] + end_logits[b, e]).item()
                if best is None or score > best[2]:
                    best = (s, e, score)
        best = best or (0, 0, -math.inf)
        starts.append(best[0])
        ends.append(best[1])
        scores.append(best[2])
    return starts, ends, scores


@pytest.mark.parametrize("length", [1, 4, 17, 40])
@pytest.mark.parametrize("max_answer_len", [1, 3, 30, 100])
@pytest.mark.parametrize("tied", [False, True])
def test_best_spans_equal_a_naive_double_loop(length, max_answer_len, tied):
    generator = torch.Generator().manual_seed(length * 1000 + max_answer_len + tied)
    batch = 6
    if tied:  # few distinct values: many pairs share the best score
        start = torch.randint(-2, 2, (batch, length), generator=generator).float()
        end = torch.randint(-2, 2, (batch, length), generator=generator).float()
    else:
        start = torch.randn(batch, length, generator=generator)
        end = torch.randn(batch, length, generator=generator)
    allowed = torch.rand(batch, length, generator=generator) < 0.6
    allowed[0] = False  # no context token at all
    allowed[1] = torch.arange(length) >= length // 2  # question first, then the context
    start[2, 0] = end[2, 0] = 100.0  # the best pair sits on a forbidden (CLS) position
    allowed[2, 0] = False
    got = best_spans(start, end, allowed, max_answer_len)
    expected = naive_best_spans(start, end, allowed, max_answer_len)
    assert got[0].tolist() == expected[0]
    assert got[1].tolist() == expected[1]
    assert got[2].tolist() == expected[2]
    assert got[0].dtype == got[1].dtype == torch.int64
    assert got[2][0].item() == -math.inf and got[0][0].item() == got[1][0].item() == 0


def test_best_spans_hand_example():
    start = torch.tensor([[0.0, 1.0, 5.0, 0.0]])
    end = torch.tensor([[0.0, 0.0, 1.0, 4.0]])
    allowed = torch.tensor([[False, True, True, True]])
    # (2, 3): 5 + 4 = 9 is the best span of at most 30 tokens.
    assert [t.item() for t in best_spans(start, end, allowed)] == [2, 3, 9.0]
    # One-token answers only: (2, 2) = 5 + 1 beats (3, 3) = 0 + 4 and (1, 1) = 1 + 0.
    assert [t.item() for t in best_spans(start, end, allowed, max_answer_len=1)] == [2, 2, 6.0]
    # An end before its start never counts: start 3 with end 1 would score 5 + 9.
    start, end = torch.tensor([[0.0, 0.0, 0.0, 5.0]]), torch.tensor([[0.0, 9.0, 0.0, 0.0]])
    assert [t.item() for t in best_spans(start, end, allowed)] == [1, 1, 9.0]


def test_best_spans_minus_infinity_and_half_precision():
    # Every allowed pair scores -inf: still a valid (allowed) span, the first one.
    start = torch.tensor([[5.0, -math.inf, -math.inf]])
    end = torch.tensor([[5.0, 0.0, 0.0]])
    allowed = torch.tensor([[False, True, True]])
    assert [t.item() for t in best_spans(start, end, allowed)] == [1, 1, -math.inf]
    # A NaN logit rules out its spans only; all-NaN rows have no answer.
    start = torch.tensor([[math.nan, 1.0, 2.0], [math.nan, math.nan, 0.0]])
    end = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, math.nan]])
    allowed = torch.ones(2, 3, dtype=torch.bool)
    assert [t.tolist() for t in best_spans(start, end, allowed)] == \
        [[2, 0], [2, 0], [2.0, -math.inf]]
    start, end, score = best_spans(torch.randn(3, 8).half(), torch.randn(3, 8).half(),
                                   torch.ones(3, 8, dtype=torch.bool))
    assert score.dtype == torch.float32 and start.shape == end.shape == score.shape == (3,)
    start, end, score = best_spans(torch.zeros(2, 0), torch.zeros(2, 0),
                                   torch.zeros(2, 0, dtype=torch.bool))
    assert start.tolist() == end.tolist() == [0, 0] and score.tolist() == [-math.inf] * 2


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"max_answer_len": 0}, "max_answer_len must be an integer >= 1"),
    ({"allowed": torch.ones(2, 5)}, "allowed must be a boolean tensor"),
    ({"end_logits": torch.zeros(2, 4)}, "share one"),
])
def test_best_spans_errors(kwargs, message):
    arguments = {"start_logits": torch.zeros(2, 5), "end_logits": torch.zeros(2, 5),
                 "allowed": torch.ones(2, 5, dtype=torch.bool), **kwargs}
    with pytest.raises(DivekitError, match=message):
        best_spans(**arguments)
