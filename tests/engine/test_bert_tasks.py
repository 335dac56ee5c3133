"""The BERT tasks: losses against cross-entropies computed by hand, metrics against seqeval /
torchmetrics through the tasks' own split metrics, and the Trainer driving each task."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from seqeval.metrics import f1_score
from torchmetrics.functional.text import squad as tm_squad

import divekit as dk
from divekit.tasks.bert import (
    BertPretraining,
    QuestionAnswering,
    TextClassification,
    TokenClassification,
)

VOCAB = 12


def tiny(name, **options):
    torch.manual_seed(0)
    return dk.create_model(name, vocab_size=VOCAB, num_layers=1, num_hiddens=16, num_heads=2,
                           ffn_num_hiddens=24, **options).eval()


def inputs(batch=4, length=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(5, VOCAB, (batch, length), generator=generator)
    segments = (torch.arange(length) >= length // 2).long().expand(batch, -1).clone()
    valid_len = torch.tensor([length, length - 1, 4, length][:batch])
    return tokens, segments, valid_len


def test_pretraining_loss_is_masked_lm_plus_next_sentence_and_singles_have_no_nsp():
    model = tiny("bert-small")
    tokens, segments, valid_len = inputs()
    mlm_labels = torch.full_like(tokens, -100)
    mlm_labels[0, 1], mlm_labels[1, 2], mlm_labels[3, 4] = 7, 8, 9
    nsp_labels = torch.tensor([1, 0, -100, 1])  # row 2 is a single sentence
    output = BertPretraining().step(model, (tokens, segments, valid_len, mlm_labels, nsp_labels))
    full_mlm, nsp_logits = model(tokens, segments, valid_len)
    picked = full_mlm[[0, 1, 3], [1, 2, 4]]
    expected_mlm = F.cross_entropy(picked, torch.tensor([7, 8, 9]))
    expected_nsp = F.cross_entropy(nsp_logits[[0, 1, 3]], torch.tensor([1, 0, 1]))
    torch.testing.assert_close(output.parts["mlm"], expected_mlm)
    torch.testing.assert_close(output.parts["nsp"], expected_nsp)
    torch.testing.assert_close(output.loss, expected_mlm + expected_nsp)
    singles = BertPretraining().step(model, (tokens, segments, valid_len, mlm_labels,
                                             torch.full_like(nsp_labels, -100)))
    assert "nsp" not in singles.parts
    torch.testing.assert_close(singles.loss, expected_mlm)
    metrics = BertPretraining().metrics("test")
    BertPretraining().update(metrics, output, None)
    assert metrics["nsp_acc"].total == 3 and metrics["mlm_acc"].total == 3


def test_text_classification_is_cross_entropy_of_the_cls_logits():
    model = tiny("bert-classifier", num_classes=3)
    task = TextClassification()
    task.setup(SimpleNamespace(class_names=["a", "b", "c"]))
    tokens, segments, valid_len = inputs()
    labels = torch.tensor([0, 2, 1, 1])
    output = task.step(model, (tokens, segments, valid_len, labels))
    torch.testing.assert_close(output.loss, F.cross_entropy(model(tokens, segments, valid_len),
                                                            labels))


def test_token_classification_scores_rebuilt_word_tags_like_seqeval():
    names = ["O", "B-PER", "I-PER", "B-LOC"]
    gold = [["B-PER", "I-PER", "O"], ["B-LOC", "O"], ["O", "B-PER", "O", "B-LOC"]]
    data = SimpleNamespace(tags={"test": gold}, class_names=names, scheme="entities")
    task = TokenClassification()
    task.setup(data)
    assert task.monitor == "f1"
    # First pieces of each word carry labels; sentence 2 lost its last word to max_len.
    labels = torch.full((3, 6), -100)
    labels[0, [1, 2, 4]] = torch.tensor([1, 2, 0])
    labels[1, [1, 3]] = torch.tensor([3, 0])
    labels[2, [1, 2, 3]] = torch.tensor([0, 1, 0])
    predicted = torch.zeros(3, 6, dtype=torch.long)
    predicted[0, [1, 2, 4]] = torch.tensor([1, 0, 0])  # B-PER O O
    predicted[1, [1, 3]] = torch.tensor([3, 0])  # right
    predicted[2, [1, 2, 3]] = torch.tensor([0, 1, 0])  # right, and its B-LOC was cut off
    metrics = task.metrics("test")
    batch = (None, None, None, labels, torch.tensor([0, 1, 2]))
    task.update(metrics, dk.engine.task.Output(torch.zeros(()), predicted), batch)
    ours = next(iter(metrics.values())).compute()
    expected = f1_score(gold, [["B-PER", "O", "O"], ["B-LOC", "O"], ["O", "B-PER", "O", "O"]])
    assert float(ours["f1"]) == pytest.approx(expected)


def test_question_answering_picks_the_best_window_and_scores_it_like_squad():
    context = "the cat sat on the mat"
    examples = [{"id": "q", "question": "where?", "context": context, "answers": ["the mat"]}]
    # Two windows over the same context: tokens 0-2 are <cls> question <sep>.
    words = [(0, 3), (4, 7), (8, 11), (12, 14), (15, 18), (19, 22)]
    first = [None, None, None, *words[:4], None]
    second = [None, None, None, *words[2:], None]
    task = QuestionAnswering()
    task.setup(SimpleNamespace(examples={"test": examples},
                               features={"test": [(0, first), (0, second)]}))
    metrics = task.metrics("test")
    # Window 1's best span "the cat" scores 3; window 2's "the mat" scores 5.
    output = dk.engine.task.Output(torch.zeros(()), (torch.tensor([0, 1]), torch.tensor([3, 5]),
                                                     torch.tensor([4, 6]),
                                                     torch.tensor([3.0, 5.0])))
    task.update(metrics, output, None)
    result = metrics["squad"].compute()
    expected = tm_squad([{"prediction_text": "the mat", "id": "q"}],
                        [{"answers": {"answer_start": [19], "text": ["the mat"]}, "id": "q"}])
    assert float(result["em"]) == pytest.approx(float(expected["exact_match"])) == 100.0


def test_question_answering_loss_is_the_mean_of_start_and_end_cross_entropy():
    model = tiny("bert-qa")
    model.train()
    tokens, segments, valid_len = inputs()
    start, end = torch.tensor([3, 4, 0, 5]), torch.tensor([4, 4, 0, 5])
    torch.manual_seed(1)
    output = QuestionAnswering().step(model, (tokens, segments, valid_len, start, end,
                                              torch.arange(4)))
    torch.manual_seed(1)
    start_logits, end_logits = model(tokens, segments, valid_len).unbind(-1)
    expected = (F.cross_entropy(start_logits, start) + F.cross_entropy(end_logits, end)) / 2
    torch.testing.assert_close(output.loss, expected)
