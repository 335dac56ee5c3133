"""`divekit interpret`: confusion matrix, per-class scores, most confused pairs and the
highest-loss test examples of classification runs, and the hardest tokens of language models."""

import csv

import pytest
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassConfusionMatrix

from divekit import experiment, interpret
from divekit.config import RunConfig, TrainerSettings
from divekit.data import DataModule, load_data
from divekit.engine import Trainer
from divekit.errors import DivekitError
from divekit.interpret import (
    Interpretation,
    LanguageModelInterpretation,
    display_images,
    interpret_run,
    report_classification,
)
from tests.conftest import blobs

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LM_TOKENS = 20000  # the embedded text's first characters; the last 10% are the test split


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """Two epochs of softmax regression on standardised digits: good, but not perfect."""
    run = tmp_path_factory.mktemp("interpret") / "digits"
    config = RunConfig("softmax-regression", "digits", 64, data_options={"normalize": True},
                       trainer=TrainerSettings(max_epochs=2, lr=0.5, device="cpu"))
    experiment.train(config, run, progress=False)
    return run


@pytest.fixture(scope="module")
def digits(digits_run):
    """The run's interpretation, and the oracle's view: logits from ``trainer.predict``."""
    trainer, data, model = experiment.load_run(digits_run, device="cpu")
    view = interpret.interpret(trainer, data, model)
    return view, trainer.predict(model, data.test[0]), data.test[1].cpu(), data


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("interpret") / "lm"
    config = RunConfig("gru-lm", "embedded-text", 32, data_options={"max_tokens": LM_TOKENS},
                       model_options={"hidden_size": 32},
                       trainer=TrainerSettings(max_epochs=1, lr=0.02, optimizer="adam",
                                               device="cpu"))
    experiment.train(config, run, progress=False)
    return run


def test_confusion_counts_every_test_example_as_predict_argmax_does(digits):
    view, logits, labels, _ = digits
    predictions = logits.argmax(1)
    expected = torch.zeros(10, 10, dtype=torch.int64)
    for true, predicted in zip(labels.tolist(), predictions.tolist(), strict=True):
        expected[true, predicted] += 1
    assert view.confusion.dtype == torch.int64
    assert int(view.confusion.sum()) == len(labels) == 360
    assert torch.equal(view.confusion, expected)
    assert torch.equal(view.confusion, MulticlassConfusionMatrix(10)(predictions, labels))
    assert expected.trace() < 360  # the run makes mistakes, so the checks below can fail
    assert torch.equal(view.predictions, predictions) and torch.equal(view.targets, labels)


def test_accuracy_matches_the_trainers_evaluation(digits, digits_run):
    view, *_ = digits
    test = experiment.evaluate_run(digits_run, device="cpu")
    assert view.accuracy == pytest.approx(test["test_acc"], abs=1e-6)


def hand_scores(confusion: torch.Tensor) -> list[tuple[float, float, float, int]]:
    """Precision, recall, F1 and support of each class from counts (0 where undefined)."""
    scores = []
    for c in range(len(confusion)):
        tp = int(confusion[c, c])
        fp, fn = int(confusion[:, c].sum()) - tp, int(confusion[c].sum()) - tp
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        scores.append((precision, recall, f1, tp + fn))
    return scores


def test_per_class_scores_follow_the_formulas_of_the_counts(digits):
    view, *_ = digits
    scores = view.per_class()
    assert list(scores) == [str(d) for d in range(10)]
    for name, (precision, recall, f1, support) in zip(scores, hand_scores(view.confusion),
                                                      strict=True):
        assert scores[name]["precision"] == pytest.approx(precision, abs=1e-6)
        assert scores[name]["recall"] == pytest.approx(recall, abs=1e-6)
        assert scores[name]["f1"] == pytest.approx(f1, abs=1e-6)
        assert scores[name]["support"] == support
    assert sum(s["support"] for s in scores.values()) == 360


def hand_built() -> Interpretation:
    """Five examples of classes a, b and none of c: a->a, a->b, b->b, b->b, b->a."""
    targets, predictions = torch.tensor([0, 0, 1, 1, 1]), torch.tensor([0, 1, 1, 1, 0])
    confusion = torch.tensor([[1, 1, 0], [1, 2, 0], [0, 0, 0]])
    return Interpretation(["a", "b", "c"], confusion, torch.tensor([0.1, 2.0, 0.2, 0.3, 1.5]),
                          predictions, targets, torch.full((5,), 0.6))


def test_hand_counted_scores_and_a_class_that_never_occurs():
    scores = hand_built().per_class()
    assert scores["a"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5,
                                         "support": 2})
    assert scores["b"] == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3,
                                         "support": 3})
    assert scores["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0.0}
    assert hand_built().most_confused() == [("a", "b", 1), ("b", "a", 1)]
    assert hand_built().most_confused(min_count=2) == []


def test_most_confused_pairs_are_off_diagonal_and_largest_first(digits):
    view, *_ = digits
    pairs = view.most_confused(k=100)
    off_diagonal = view.confusion.clone().fill_diagonal_(0)
    assert len(pairs) == int((off_diagonal > 0).sum())
    assert all(true != predicted for true, predicted, _ in pairs)
    counts = [count for *_, count in pairs]
    assert counts == sorted(counts, reverse=True)
    assert counts[0] == int(off_diagonal.max())
    for true, predicted, count in pairs:
        assert count == int(view.confusion[int(true), int(predicted)])
    assert view.most_confused(k=3) == pairs[:3]
    assert all(count >= 2 for *_, count in view.most_confused(k=100, min_count=2))
    assert len(view.most_confused(k=100, min_count=2)) == int((off_diagonal >= 2).sum())


def test_top_losses_are_the_largest_per_example_cross_entropies(digits):
    view, logits, labels, _ = digits
    oracle = F.cross_entropy(logits.double(), labels, reduction="none")
    losses, indices = view.top_losses(12)
    assert len(indices) == 12
    assert torch.all(losses[:-1] >= losses[1:])
    assert torch.allclose(losses.double(), oracle.sort(descending=True).values[:12], atol=1e-5)
    assert torch.allclose(oracle[indices], losses.double(), atol=1e-5)
    assert torch.allclose(view.losses.double(), oracle, atol=1e-5)
    assert torch.allclose(view.probabilities, logits.softmax(1).max(1).values, atol=1e-6)
    assert len(view.top_losses(1000)[0]) == 360


def test_grid_images_are_shown_without_the_standardisation(digits):
    _, _, _, data = digits
    indices = torch.tensor([5, 0, 359])
    raw = load_data("digits").test[0][indices]
    assert data.normalization is not None and data.test[0].min() < 0
    assert torch.allclose(display_images(data, indices), raw, atol=1e-5)


def test_interpret_run_writes_the_figures_and_tables(digits, digits_run, tmp_path,
                                                     monkeypatch):
    view, logits, labels, _ = digits
    drawn = {}
    real_draw = interpret.draw_grid

    def spy(images, titles, class_names, path, **options):
        drawn.update(images=images, titles=titles)
        return real_draw(images, titles, class_names, path, **options)

    monkeypatch.setattr(interpret, "draw_grid", spy)
    lines = interpret_run(digits_run, out_dir=tmp_path / "out", top=9, device="cpu")
    out = tmp_path / "out"
    for name in ("confusion.png", "top_losses.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    with open(out / "per_class.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["class"] for row in rows] == [str(d) for d in range(10)]
    assert sum(int(row["support"]) for row in rows) == 360
    for row, (precision, recall, f1, _) in zip(rows, hand_scores(view.confusion), strict=True):
        assert float(row["precision"]) == pytest.approx(precision, abs=1e-5)
        assert float(row["recall"]) == pytest.approx(recall, abs=1e-5)
        assert float(row["f1"]) == pytest.approx(f1, abs=1e-5)
    with open(out / "top_losses.csv", newline="") as f:
        top = list(csv.DictReader(f))
    worst = F.cross_entropy(logits, labels, reduction="none").topk(9).indices
    assert [int(row["index"]) for row in top] == worst.tolist()
    # Each cell: prediction / label, then the predicted class's probability and the loss.
    predicted, true = logits.argmax(1)[worst[0]], labels[worst[0]]
    assert drawn["titles"][0].startswith(f"{int(predicted)} / {int(true)}\n")
    probability = float(logits.softmax(1)[worst[0], predicted])
    assert f"{probability:.2f} / loss" in drawn["titles"][0]
    assert len(drawn["titles"]) == len(drawn["images"]) == 9
    text = "\n".join(lines)
    assert "best checkpoint" in lines[0] and "best.pt" in lines[0]
    assert f"accuracy {view.accuracy:.4f}" in text
    pair = view.most_confused(1)[0]
    assert f"{pair[0]} -> {pair[1]}: {pair[2]}" in text
    assert all(str(out / name) in text for name in ("confusion.png", "per_class.csv"))
    last = interpret_run(digits_run, top=2, checkpoint="last", device="cpu")
    assert "last checkpoint" in last[0]
    assert (digits_run / "interpret" / "confusion.png").is_file()  # the default folder


def test_non_image_classification_lists_the_top_loss_rows(tmp_path):
    train, test = blobs(64, 4, shape=(6,)), blobs(40, 4, sample_seed=1, shape=(6,))
    data = DataModule("rows", train=train, test=test, batch_size=16,
                      class_names=["w", "x", "y", "z"])
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 4)  # untrained: plenty of mistakes
    view = interpret.interpret(Trainer(task="classification", progress=False, device="cpu"),
                               data, model)
    lines = report_classification(view, data, tmp_path, top=5)
    with torch.no_grad():
        oracle = F.cross_entropy(model(test[0]), test[1], reduction="none")
    rows = [line for line in lines if line.startswith("  ") and ": " in line]
    assert [int(line.split(":")[0]) for line in rows] == oracle.topk(5).indices.tolist()
    assert not (tmp_path / "top_losses.png").exists()
    assert (tmp_path / "confusion.png").read_bytes()[:8] == PNG_MAGIC
    assert int(view.confusion.sum()) == 40


def test_language_model_shows_its_hardest_tokens_in_context(lm_run, tmp_path):
    from divekit.data.text import python_reference_text
    from divekit.text.tokenize import preprocess_timemachine

    trainer, data, model = experiment.load_run(lm_run, device="cpu")
    view = interpret.interpret(trainer, data, model)
    assert isinstance(view, LanguageModelInterpretation) and view.level == "char"
    inputs, targets = data.test
    logits = trainer.predict(model, inputs)
    oracle = F.cross_entropy(logits.flatten(0, 1).double(), targets.flatten(), reduction="none")
    hardest = view.top_losses(10)
    losses = torch.tensor([t.loss for t in hardest], dtype=torch.float64)
    assert torch.all(losses[:-1] >= losses[1:])
    assert torch.allclose(losses, oracle.sort(descending=True).values[:10], atol=1e-4)
    # The test split is the corpus's last 10%: token p of it is predicted after p + 1 chars.
    text = preprocess_timemachine(python_reference_text())[:LM_TOKENS]
    test_text = text[LM_TOKENS - LM_TOKENS // 10:]
    for token in hardest:
        assert token.loss == pytest.approx(float(oracle[token.position]), abs=1e-4)
        assert token.target == test_text[token.position + 1]
        before = test_text[max(token.position + 1 - 24, 0): token.position + 1]
        assert token.context.endswith(f"{before}[{token.target}] …")
        assert token.predicted == view.tokens[int(logits.flatten(0, 1)[token.position].argmax())]
    test = experiment.evaluate_run(lm_run, device="cpu")
    assert view.perplexity == pytest.approx(test["test_ppl"], rel=1e-4)

    lines = interpret_run(lm_run, out_dir=tmp_path, top=5, device="cpu")
    written = (tmp_path / "top_losses.txt").read_text(encoding="utf-8").splitlines()
    assert len(written) == 2 + 5 and hardest[0].context in written[2]
    assert "best checkpoint" in lines[0] and f"perplexity {view.perplexity:.2f}" in lines[1]


def test_word_context_is_joined_with_spaces_and_stays_in_a_broken_window():
    tokens = ["<unk>", "the", "time", "traveller", "machine"]
    stream = torch.tensor([1, 2, 3, 1, 4, 2, 1, 3, 2])  # the time traveller the machine ...

    def view(continuous):
        return LanguageModelInterpretation(tokens, stream[:-1], stream[1:], torch.zeros(8),
                                           torch.zeros(8, dtype=torch.long), torch.zeros(8),
                                           window=4, continuous=continuous, level="word")

    assert view(True).context(1, before=2) == "the time [traveller] …"
    assert view(True).context(5, before=3) == "… the machine time [the] …"
    assert view(False).context(5, before=3) == "… machine time [the] …"


def test_other_tasks_and_bad_arguments_are_one_line_errors(tmp_path, digits_run):
    run = tmp_path / "regression"
    config = RunConfig("linear-regression", "synthetic-regression", 32,
                       trainer=TrainerSettings(max_epochs=1, lr=0.03, device="cpu"))
    experiment.train(config, run, progress=False)
    with pytest.raises(DivekitError) as error:
        interpret_run(run)
    message = str(error.value)
    assert "\n" not in message and "regression run" in message
    assert "classification and language-model" in message
    assert not (run / "interpret").exists()
    for top in (0, -3, 2.5, True):
        with pytest.raises(DivekitError, match="--top must be a positive integer"):
            interpret_run(digits_run, top=top)
    data = load_data("synthetic-regression")
    with pytest.raises(DivekitError, match="regression data"):
        interpret.interpret(Trainer(task="regression", progress=False, device="cpu"), data,
                            torch.nn.Linear(2, 1))


def test_the_interpret_command_prints_the_report_and_writes_it(digits_run, tmp_path, capsys):
    from divekit.cli import main

    assert main(["interpret", str(digits_run), "--top", "4", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "best checkpoint" in printed and "accuracy" in printed and "most confused" in printed
    assert (tmp_path / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(tmp_path / "top_losses.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 4
    with pytest.raises(SystemExit) as exit_code:
        main(["interpret", str(digits_run), "--top", "0"])
    assert exit_code.value.code == 2 and "--top" in capsys.readouterr().err
