"""16.6 token-level metrics: BIO chunks and entity F1 against seqeval, word accuracy."""

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from seqeval.metrics import f1_score, precision_score, recall_score
from seqeval.metrics.sequence_labeling import get_entities

from divekit.engine import distributed
from divekit.errors import DivekitError
from divekit.text import tagging
from divekit.text.tagging import EntityF1, WordAccuracy, entities

# CoNLL-2003 and WNUT-17 types (some with a hyphen inside the type, which must stay in the type).
TYPES = ["PER", "LOC", "ORG", "creative-work", "group"]
TAGS = ["O"] + [f"{prefix}-{kind}" for kind in TYPES for prefix in "BI"]

tag = st.sampled_from(TAGS)


def examples(count: int) -> settings:
    """Reproducible runs (CI never meets a new example) that write no example database."""
    return settings(max_examples=count, deadline=None, derandomize=True, database=None)


@st.composite
def sentence_pairs(draw):
    """A gold sentence and a prediction of the same length: a copy of the gold tags with some
    tags replaced, so that predictions find some entities, miss others, and are often
    ill-formed (an I- after O or after another type)."""
    gold = draw(st.lists(tag, max_size=12))
    noise = draw(st.floats(0, 1))
    replaced = draw(st.lists(st.tuples(st.floats(0, 1), tag), min_size=len(gold),
                             max_size=len(gold)))
    predicted = [new if u < noise else old for old, (u, new) in zip(gold, replaced, strict=True)]
    return predicted, gold


corpora = st.lists(sentence_pairs(), min_size=1, max_size=8)


def seqeval_scores(predicted, gold):
    with warnings.catch_warnings():  # seqeval warns when a ratio is undefined (and gives 0)
        warnings.simplefilter("ignore")
        return {"f1": f1_score(gold, predicted), "precision": precision_score(gold, predicted),
                "recall": recall_score(gold, predicted)}


def assert_matches_seqeval(metric, predicted, gold):
    expected = seqeval_scores(predicted, gold)
    result = metric.compute()
    assert set(result) == {"f1", "precision", "recall"}
    for key, value in expected.items():
        assert result[key].item() == pytest.approx(value, abs=1e-12), key


# --- Chunks -----------------------------------------------------------------------------------

@examples(300)
@given(st.lists(tag, max_size=15))
def test_entities_equal_seqeval_default_mode(tags):
    assert entities(tags) == set(get_entities(tags))


HAND_CHUNKS = [
    (["B-PER", "I-PER", "O", "B-LOC"], {("PER", 0, 1), ("LOC", 3, 3)}),
    # conlleval: an I- after O or after another type opens a chunk; B- always does.
    (["O", "I-PER", "I-PER", "B-PER", "I-LOC", "O"],
     {("PER", 1, 2), ("PER", 3, 3), ("LOC", 4, 4)}),
    (["I-ORG"], {("ORG", 0, 0)}),
    (["B-PER", "B-PER", "I-PER"], {("PER", 0, 0), ("PER", 1, 2)}),
    (["B-creative-work", "I-creative-work", "I-group"],
     {("creative-work", 0, 1), ("group", 2, 2)}),
    (["O", "O"], set()),
    ([], set()),
]


@pytest.mark.parametrize(("tags", "expected"), HAND_CHUNKS)
def test_entities_hand_examples(tags, expected):
    assert entities(tags) == expected


@pytest.mark.parametrize("bad", ["X", "B", "I", "B-", "I-", "E-PER", "S-PER", "o", "b-PER", 3])
def test_non_bio_tag_is_an_error(bad):
    with pytest.raises(DivekitError, match="not BIO"):
        entities(["O", bad])


def test_a_string_is_not_a_tag_sequence():
    with pytest.raises(DivekitError, match="list of tag strings"):
        entities("B-PER")


# --- EntityF1 ---------------------------------------------------------------------------------

@examples(300)
@given(corpora)
def test_entity_f1_equals_seqeval(corpus):
    predicted, gold = [p for p, _ in corpus], [g for _, g in corpus]
    metric = EntityF1()
    metric.update(predicted, gold)
    assert_matches_seqeval(metric, predicted, gold)


def test_entity_f1_hand_example():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    # PER and LOC found; ORG predicted one word too long, so it is wrong (and the gold missed).
    predicted = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "I-ORG"]]
    metric = EntityF1()
    metric.update(predicted, gold)
    assert {k: v.item() for k, v in metric.metric_state.items()} == \
        {"correct": 2, "predicted": 3, "gold": 3}
    result = metric.compute()
    for key in ("f1", "precision", "recall"):
        assert result[key].item() == pytest.approx(2 / 3)
        assert result[key].dtype == torch.float64
    assert EntityF1.higher_is_better is True


def test_entity_f1_undefined_ratios_are_zero():
    metric = EntityF1()
    assert {k: v.item() for k, v in metric.compute().items()} == \
        {"f1": 0.0, "precision": 0.0, "recall": 0.0}
    metric.update([["O", "O"]], [["B-PER", "O"]])  # nothing predicted: precision undefined
    assert {k: v.item() for k, v in metric.compute().items()} == \
        {"f1": 0.0, "precision": 0.0, "recall": 0.0}
    metric.reset()
    metric.update([["B-PER", "O"]], [["O", "O"]])  # no gold entity: recall undefined
    assert {k: v.item() for k, v in metric.compute().items()} == \
        {"f1": 0.0, "precision": 0.0, "recall": 0.0}


def test_entity_f1_reset_forgets():
    metric = EntityF1()
    metric.update([["B-PER"]], [["B-PER"]])
    metric.reset()
    assert all(v.item() == 0 for v in metric.metric_state.values())


@examples(60)
@given(corpora, st.data())
def test_entity_f1_state_of_two_halves_sums_to_the_whole(corpus, data):
    predicted, gold = [p for p, _ in corpus], [g for _, g in corpus]
    cut = data.draw(st.integers(0, len(corpus)))
    halves = [EntityF1(), EntityF1()]
    halves[0].update(predicted[:cut], gold[:cut])
    halves[1].update(predicted[cut:], gold[cut:])
    # What a checkpoint restores (SplitMeters._set_state) and what DDP sums: the state.
    merged = EntityF1()
    for name in merged.metric_state:
        setattr(merged, name, halves[0].metric_state[name] + halves[1].metric_state[name])
    assert_matches_seqeval(merged, predicted, gold)


def test_entity_f1_compute_sums_over_processes(monkeypatch):
    # Process 0 saw the first sentence, "process 1" the second: compute must all-reduce.
    gold = [["B-PER", "I-PER", "O"], ["B-LOC", "O", "B-ORG"]]
    predicted = [["B-PER", "I-PER", "O"], ["B-LOC", "I-LOC", "B-ORG"]]
    mine, other = EntityF1(), EntityF1()
    mine.update(predicted[:1], gold[:1])
    other.update(predicted[1:], gold[1:])
    other_sums = torch.stack(list(other.metric_state.values()))
    monkeypatch.setattr(distributed, "all_reduce_sum", lambda t: t.add_(other_sums))
    assert_matches_seqeval(mine, predicted, gold)
    assert mine.metric_state["correct"].item() == 1  # the local state is left alone


def test_entity_f1_to_moves_state():
    metric = EntityF1().to(torch.device("cpu"))
    assert all(v.device.type == "cpu" and v.dtype == torch.long
               for v in metric.metric_state.values())
    assert tagging.EntityF1 is EntityF1


@pytest.mark.parametrize(("predicted", "gold", "message"), [
    ([["O"]], [["O"], ["O"]], "1 predicted sentences but 2"),
    ([["O", "O"]], [["O"]], "sentence 0 has 2 predicted tags but 1"),
    (["O"], [["O"]], "sentence 0 is a string"),
])
def test_entity_f1_shape_errors(predicted, gold, message):
    with pytest.raises(DivekitError, match=message):
        EntityF1().update(predicted, gold)


# --- WordAccuracy -----------------------------------------------------------------------------

@examples(60)
@given(corpora, st.data())
def test_word_accuracy_equals_a_naive_count(corpus, data):
    predicted, gold = [p for p, _ in corpus], [g for _, g in corpus]
    right = total = 0
    for pred_tags, gold_tags in corpus:
        for i in range(len(gold_tags)):
            total += 1
            right += pred_tags[i] == gold_tags[i]
    cut = data.draw(st.integers(0, len(corpus)))
    halves = [WordAccuracy(), WordAccuracy()]
    halves[0].update(predicted[:cut], gold[:cut])
    halves[1].update(predicted[cut:], gold[cut:])
    merged = WordAccuracy()
    for name in merged.metric_state:
        setattr(merged, name, halves[0].metric_state[name] + halves[1].metric_state[name])
    assert merged.metric_state["total"].item() == total
    assert merged.compute().item() == pytest.approx(right / total if total else 0.0)


def test_word_accuracy_hand_example():
    metric = WordAccuracy()
    metric.update([["DT", "NN", "VB"], ["NN"]], [["DT", "NN", "NN"], ["VB"]])
    metric.update([["PRP"]], [["PRP"]])
    assert metric.compute().item() == pytest.approx(3 / 5)
    assert WordAccuracy.higher_is_better is True
    metric.reset()
    assert metric.compute().item() == 0.0
    with pytest.raises(DivekitError, match="2 predicted tags but 1"):
        metric.update([["DT", "NN"]], [["DT"]])
