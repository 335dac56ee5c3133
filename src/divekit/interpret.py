"""Error analysis of a trained run (4.4 classification, 9.3 language models): where the model
goes wrong on the test split, after fastai's ``ClassificationInterpretation``.

A classification run gets its confusion matrix (rows: true class, columns: predicted), the
pairs of classes it confuses most, per-class precision / recall / F1 (torchmetrics) and the
test examples with the highest cross-entropy, drawn as a grid for image data. A language-model
run gets the test tokens with the highest loss, each shown in the text that preceded it.

    lines = interpret_run(Path("runs/lenet-digits"), top=16)   # what `divekit interpret` prints
    view = interpret(*load_run(Path("runs/lenet-digits")))      # the numbers themselves
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from divekit.data.preview import draw_grid
from divekit.data.registry import DataModule
from divekit.engine.plots import save_png
from divekit.errors import DivekitError

# Logits held at once (floats): a word-level test split has ~250k tokens x ~33k words.
LOGIT_BUDGET = 1 << 24
# Tokens of text shown before a high-loss token: ~8 words, or a few words' worth of characters.
CONTEXT_TOKENS = {"word": 8, "char": 24}
TABLE_CLASSES = 30  # more classes: print the worst by F1 and leave the rest to the CSV file


@dataclass
class Interpretation:
    """A classifier's answers on the test split, example by example.

    Attributes:
        class_names: one name per class ``C``.
        confusion: ``(C, C)`` int64 counts, rows = true class, columns = predicted class.
        losses: ``(N,)`` cross-entropy of each test example (float32).
        predictions: ``(N,)`` predicted class (the logits' argmax).
        targets: ``(N,)`` true class.
        probabilities: ``(N,)`` softmax probability of the predicted class.
    """

    class_names: list[str]
    confusion: torch.Tensor
    losses: torch.Tensor
    predictions: torch.Tensor
    targets: torch.Tensor
    probabilities: torch.Tensor

    @property
    def accuracy(self) -> float:
        """Fraction of test examples classified correctly."""
        return float(self.confusion.diagonal().sum()) / max(int(self.confusion.sum()), 1)

    def most_confused(self, k: int = 10, min_count: int = 1) -> list[tuple[str, str, int]]:
        """The ``k`` most frequent mistakes as ``(true, predicted, count)``, largest first
        (ties in class order), counting only pairs seen at least ``min_count`` times."""
        off_diagonal = self.confusion.clone()
        off_diagonal.fill_diagonal_(0)
        counts = off_diagonal.flatten()
        # A stable sort keeps equal counts in (true, predicted) order.
        order = torch.sort(counts, descending=True, stable=True).indices
        size = len(self.class_names)
        return [(self.class_names[i // size], self.class_names[i % size], int(counts[i]))
                for i in order[:k].tolist() if counts[i] >= max(min_count, 1)]

    def per_class(self) -> dict[str, dict[str, float]]:
        """Precision, recall, F1 (torchmetrics, 0 where undefined) and support of each class."""
        from torchmetrics.classification import (
            MulticlassF1Score,
            MulticlassPrecision,
            MulticlassRecall,
        )

        size = len(self.class_names)
        scores = {name: metric(size, average=None)(self.predictions, self.targets)
                  for name, metric in (("precision", MulticlassPrecision),
                                       ("recall", MulticlassRecall), ("f1", MulticlassF1Score))}
        support = self.confusion.sum(1)
        return {name: {**{key: float(values[c]) for key, values in scores.items()},
                       "support": float(support[c])}
                for c, name in enumerate(self.class_names)}

    def top_losses(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` highest per-example losses, largest first, and their test indices."""
        values, indices = self.losses.topk(min(k, len(self.losses)))
        return values, indices


@dataclass
class TokenLoss:
    """One test token the language model found hard: where it is, what came and what the
    model expected instead."""

    position: int
    target: str
    predicted: str
    probability: float
    loss: float
    context: str


@dataclass
class LanguageModelInterpretation:
    """A language model's next-token predictions over the test split, token by token.

    Attributes:
        tokens: the vocabulary, position = index.
        inputs: ``(N,)`` the test windows' input tokens, window after window.
        targets: ``(N,)`` the token that follows each input (what the model predicts).
        losses: ``(N,)`` cross-entropy of each target token.
        predictions: ``(N,)`` the most probable next token.
        probabilities: ``(N,)`` its probability.
        window: tokens per window (the model sees no further back than its window's start).
        continuous: the windows follow each other in the text, so context may cross them.
        level: ``"char"`` or ``"word"``: how tokens are joined back into text.
    """

    tokens: list[str]
    inputs: torch.Tensor
    targets: torch.Tensor
    losses: torch.Tensor
    predictions: torch.Tensor
    probabilities: torch.Tensor
    window: int
    continuous: bool
    level: str

    @property
    def perplexity(self) -> float:
        """exp(mean cross-entropy per token) over the test split."""
        return math.exp(float(self.losses.double().mean()))

    def context(self, position: int, before: int | None = None) -> str:
        """The text before the target token at ``position``, the target in brackets:
        ``… the time [traveller] …``.

        Args:
            before: tokens of context (default ``CONTEXT_TOKENS[level]``).
        """
        before = CONTEXT_TOKENS[self.level] if before is None else before
        first = 0 if self.continuous else position // self.window * self.window
        start = max(first, position - before + 1)
        # inputs[p] is the token right before targets[p].
        words = [self.tokens[i] for i in self.inputs[start : position + 1].tolist()]
        joiner = "" if self.level == "char" else " "
        lead = "… " if start > 0 else ""
        return f"{lead}{joiner.join(words)}{joiner}[{self.tokens[int(self.targets[position])]}] …"

    def top_losses(self, k: int) -> list[TokenLoss]:
        """The ``k`` test tokens with the highest loss, largest first."""
        values, indices = self.losses.topk(min(k, len(self.losses)))
        return [TokenLoss(p, self.tokens[int(self.targets[p])],
                          self.tokens[int(self.predictions[p])], float(self.probabilities[p]),
                          float(loss), self.context(p))
                for loss, p in zip(values.tolist(), indices.tolist(), strict=True)]


def interpret(trainer, data: DataModule,
              model: nn.Module) -> Interpretation | LanguageModelInterpretation:
    """Run ``model`` over ``data``'s test split and gather what went wrong.

    The arguments are what :func:`~divekit.experiment.load_run` returns, in its order:
    ``interpret(*load_run(run_dir))``.

    Returns:
        An :class:`Interpretation` for classification data, a
        :class:`LanguageModelInterpretation` for language-model data.
    """
    if data.task not in ("classification", "language-model"):
        raise DivekitError(f"interpret works for classification and language-model runs; "
                           f"dataset {data.name!r} is {data.task} data")
    losses, predictions, probabilities, targets, inputs = [], [], [], [], []
    num_outputs = None
    for batch_inputs, batch_targets in _test_batches(trainer, data):
        logits = trainer.predict(model, batch_inputs)
        num_outputs = logits.shape[-1]
        logits = logits.flatten(0, -2)
        labels = batch_targets.cpu()
        labels = (labels.argmax(-1) if labels.is_floating_point() else labels).flatten()
        losses.append(F.cross_entropy(logits, labels, reduction="none"))
        predictions.append(logits.argmax(-1))
        # The predicted class's probability, from the same logits that chose it.
        probabilities.append(logits.softmax(-1).gather(1, predictions[-1][:, None])[:, 0])
        targets.append(labels)
        if data.task == "language-model":
            inputs.append(batch_inputs.cpu())
    if num_outputs is None:
        raise DivekitError(f"dataset {data.name!r} has an empty test split; nothing to interpret")
    losses, predictions = torch.cat(losses), torch.cat(predictions)
    probabilities, targets = torch.cat(probabilities), torch.cat(targets)
    names = list(data.class_names or [])
    names += [str(c) for c in range(len(names), num_outputs)]
    if data.task == "language-model":
        windows = torch.cat(inputs)
        follows = bool((windows[1:, 0] == targets.view(len(windows), -1)[:-1, -1]).all())
        return LanguageModelInterpretation(names, windows.flatten(), targets, losses,
                                           predictions, probabilities, windows.shape[1],
                                           follows, _level(names))
    confusion = torch.bincount(targets * num_outputs + predictions,
                               minlength=num_outputs * num_outputs).reshape(num_outputs, -1)
    return Interpretation(names, confusion, losses, predictions, targets, probabilities)


def _test_batches(trainer, data: DataModule):
    """``(inputs, targets)`` of the test split in order, cut so that one piece's logits stay
    within ``LOGIT_BUDGET`` floats."""
    task = trainer.task
    classes = max(len(data.class_names or []), 1)
    for batch in data.test_dataloader():
        inputs, targets = task.inputs(batch), task.targets(batch)
        if not isinstance(inputs, torch.Tensor):
            yield [batch], targets  # trainer.predict reads a loader's batches as they are
            continue
        per_row = max(targets[0].numel(), 1) * classes
        rows = max(LOGIT_BUDGET // per_row, 1)
        yield from zip(inputs.split(rows), targets.split(rows), strict=True)


def _level(tokens: list[str]) -> str:
    """``"char"`` when every token but the ``<special>`` ones is one character."""
    plain = [t for t in tokens if not (t.startswith("<") and t.endswith(">"))]
    return "char" if all(len(t) == 1 for t in plain) else "word"


def display_images(data: DataModule, indices: torch.Tensor) -> torch.Tensor | None:
    """The test images at ``indices`` as stored before standardisation (``(k, C, H, W)``,
    for display), or ``None`` when the data's inputs are not 1- or 3-channel images."""
    split = data.test
    if isinstance(split, tuple | list):
        images = split[0][indices.to(split[0].device)].float().cpu()
    else:  # a dataset read lazily: only the examples shown are loaded
        images = torch.stack([split[i][0] for i in indices.tolist()]).float()
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        return None
    if data.normalization is not None:
        mean, std = (t.float().reshape(1, -1, 1, 1) for t in data.normalization)
        images = (images * std + mean).clamp(0, 1)  # undo the standardisation, not rounding
    return images


def plot_confusion(confusion: torch.Tensor, class_names: list[str], path: Path,
                   title: str = "") -> Path:
    """Draw a confusion matrix with class names on both axes and the count in each cell."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    size = len(class_names)
    inches = min(max(0.45 * size + 2.5, 4.5), 14.0)
    fig, axis = plt.subplots(figsize=(inches + 1, inches))
    counts = confusion.cpu().numpy()
    image = axis.imshow(counts, cmap="Blues", interpolation="nearest")
    fig.colorbar(image, ax=axis)
    if size <= 60:  # beyond that, tick labels overlap into a black band
        axis.set_xticks(range(size), class_names, rotation=90)
        axis.set_yticks(range(size), class_names)
    if size <= TABLE_CLASSES:
        threshold = counts.max() / 2
        for (row, column), count in zip(((r, c) for r in range(size) for c in range(size)),
                                        counts.flatten().tolist(), strict=True):
            axis.text(column, row, str(count), ha="center", va="center", fontsize=8,
                      color="white" if count > threshold else "black")
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title)
    fig.tight_layout()
    return save_png(fig, path)


def interpret_run(run_dir: Path, out_dir: Path | None = None, top: int = 16,
                  checkpoint: str = "best", data_dir: str | None = None,
                  device: str = "auto") -> list[str]:
    """Interpret a run's test predictions and write the figures and tables into ``out_dir``.

    Classification writes ``confusion.png``, ``per_class.csv``, ``top_losses.csv`` and, for
    image data, ``top_losses.png``; a language model writes ``top_losses.txt``.

    Args:
        run_dir: a run folder; ``out_dir``: where to write (default ``run_dir/interpret``).
        top: how many of the highest-loss examples (tokens) to show.
        checkpoint: ``best`` or ``last``.

    Returns:
        The lines for the command line to print.
    """
    from divekit.config import RunConfig
    from divekit.experiment import load_run
    from divekit.models import model_info

    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise DivekitError(f"--top must be a positive integer, got {top!r}")
    run_dir = Path(run_dir)
    task = model_info(RunConfig.read(run_dir).model).task
    if task not in ("classification", "language-model"):
        raise DivekitError(f"interpret works for classification and language-model runs; "
                           f"{run_dir} is a {task} run")
    trainer, data, model = load_run(run_dir, checkpoint, data_dir, device)
    lines = [f"interpreting {run_dir} with its {checkpoint} checkpoint "
             f"({run_dir / 'checkpoints' / f'{checkpoint}.pt'}) on the test split of "
             f"{data.name}"]
    result = interpret(trainer, data, model)
    out_dir = run_dir / "interpret" if out_dir is None else Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(result, LanguageModelInterpretation):
        return lines + report_language_model(result, out_dir, top)
    return lines + report_classification(result, data, out_dir, top)


def report_classification(view: Interpretation, data: DataModule, out_dir: Path,
                          top: int) -> list[str]:
    """Write a classifier's figures and tables into ``out_dir``; returns the lines to print."""
    total = int(view.confusion.sum())
    lines = [f"accuracy {view.accuracy:.4f} ({int(view.confusion.trace())} of {total} "
             f"test examples)"]
    scores = view.per_class()
    shown = list(scores)
    if len(shown) > TABLE_CLASSES:
        shown = sorted(shown, key=lambda name: scores[name]["f1"])[:10]
        lines.append(f"the 10 classes of {len(scores)} with the lowest F1 (all in per_class.csv):")
    width = max(len("class"), *(len(name) for name in shown))
    lines.append(f"{'class':<{width}}  precision  recall      f1  support")
    lines += [f"{name:<{width}}  {s['precision']:9.4f}  {s['recall']:6.4f}  {s['f1']:6.4f}  "
              f"{int(s['support']):7d}" for name, s in ((n, scores[n]) for n in shown)]
    confused = view.most_confused()
    lines.append("most confused (true -> predicted: count): " + (", ".join(
        f"{true} -> {predicted}: {count}" for true, predicted, count in confused) or "none"))

    written = [plot_confusion(view.confusion, view.class_names, out_dir / "confusion.png",
                              title=f"accuracy {view.accuracy:.3f} on {total} test examples")]
    with open(out_dir / "per_class.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "precision", "recall", "f1", "support"])
        writer.writerows([name, f"{s['precision']:.6f}", f"{s['recall']:.6f}", f"{s['f1']:.6f}",
                          int(s["support"])] for name, s in scores.items())
    written.append(out_dir / "per_class.csv")

    losses, indices = view.top_losses(top)
    names = view.class_names
    rows = [(index, names[int(view.targets[index])], names[int(view.predictions[index])],
             float(view.probabilities[index]), loss)
            for index, loss in zip(indices.tolist(), losses.tolist(), strict=True)]
    with open(out_dir / "top_losses.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "label", "prediction", "probability", "loss"])
        writer.writerows([i, label, pred, f"{p:.6f}", f"{loss:.6f}"]
                         for i, label, pred, p, loss in rows)
    written.append(out_dir / "top_losses.csv")
    images = display_images(data, indices)
    if images is not None:
        titles = [f"{_short(pred)} / {_short(label)}\n{p:.2f} / loss {loss:.2f}"
                  for _, label, pred, p, loss in rows]
        written.append(draw_grid(images, titles, names, out_dir / "top_losses.png",
                                 title_lines=2))
    else:  # tables and other non-image inputs: the rows themselves
        lines.append("highest-loss test rows (index: label, prediction probability, loss):")
        lines += [f"  {i}: {label}, predicted {pred} {p:.3f}, loss {loss:.3f}"
                  for i, label, pred, p, loss in rows]
    return lines + [f"wrote {path}" for path in written]


def _short(name: str, width: int = 9) -> str:
    """A class name cut to fit a grid cell's title beside another one."""
    return name if len(name) <= width else name[: width - 1] + "…"


def report_language_model(view: LanguageModelInterpretation, out_dir: Path,
                          top: int) -> list[str]:
    """Write a language model's hardest test tokens into ``out_dir/top_losses.txt``; returns
    the lines to print."""
    hardest = [f"{t.loss:6.2f}  {t.context}  predicted {t.predicted!r} {t.probability:.2f}"
               for t in view.top_losses(top)]
    header = (f"test perplexity {view.perplexity:.2f} (mean loss "
              f"{float(view.losses.double().mean()):.4f} over {len(view.losses):,} tokens)")
    heading = "highest-loss test tokens (loss, [token] after its context, the prediction):"
    path = out_dir / "top_losses.txt"
    path.write_text("\n".join([header, heading, *hardest]) + "\n", encoding="utf-8")
    return [header, heading, *(f"  {line}" for line in hardest), f"wrote {path}"]
