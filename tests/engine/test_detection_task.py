"""The detection task: named losses summed, diagnostics logged, COCO mAP on held-out splits."""

import pytest
import torch
from torch import nn

import divekit as dk
from divekit.data import DataModule
from divekit.data.collate import detection_collate
from divekit.tasks import Detection


class BrightSquares(torch.utils.data.Dataset):
    """One white square of a seeded size and place per 32x32 black image, class = size > 10."""

    def __init__(self, n, seed):
        generator = torch.Generator().manual_seed(seed)
        self.corners = torch.randint(0, 16, (n, 2), generator=generator)
        self.sides = torch.randint(4, 16, (n,), generator=generator)

    def __len__(self):
        return len(self.sides)

    def __getitem__(self, i):
        (x, y), side = self.corners[i].tolist(), int(self.sides[i])
        image = torch.zeros(3, 32, 32)
        image[:, y:y + side, x:x + side] = 1
        box = torch.tensor([[x, y, x + side, y + side]], dtype=torch.float32)
        return image, {"boxes": box, "labels": torch.tensor([int(side > 10)])}


class ThresholdDetector(nn.Module):
    """Finds the bright pixels' box; a learned score bias and a learned size threshold.

    Training returns two named losses and a diagnostic; eval returns the one detection."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(()))
        self.threshold = nn.Parameter(torch.tensor(7.0))
        self.offset = 0.0

    def forward(self, images, targets=None):
        bright = images.mean(1) > 0.5
        rows, cols = bright.any(2), bright.any(1)
        first = lambda m: m.float().argmax(1)  # noqa: E731
        last = lambda m: m.shape[1] - m.flip(1).float().argmax(1)  # noqa: E731
        boxes = torch.stack([first(cols), first(rows), last(cols), last(rows)], 1).float()
        boxes = boxes + self.offset
        side = boxes[:, 2] - boxes[:, 0]
        big_logit = side - self.threshold
        detections = [{"boxes": box[None], "scores": torch.sigmoid(self.bias)[None].detach()
                       .expand(1), "labels": (logit > 0).long()[None]}
                      for box, logit in zip(boxes, big_logit, strict=True)]
        if targets is None:
            return detections
        labels = torch.cat([t["labels"] for t in targets]).float()
        losses = {"loss_cls": nn.functional.binary_cross_entropy_with_logits(big_logit, labels),
                  "loss_score": (self.bias - 2).square(),
                  "wrong": ((big_logit > 0).float() != labels).float().mean()}
        return losses if self.training else (detections, losses)


def squares(n_train=64, n_test=32):
    return DataModule("squares", train=BrightSquares(n_train, 0), test=BrightSquares(n_test, 1),
                      batch_size=16, task="detection", class_names=["small", "big"],
                      collate_fn=detection_collate)


def test_loss_is_the_sum_of_the_named_losses_and_diagnostics_are_logged(tmp_path):
    data = squares()
    model = ThresholdDetector()
    trainer = dk.Trainer(max_epochs=4, lr=1.0, out_dir=tmp_path, progress=False)
    history = trainer.fit(model, data)
    last = history[-1]
    assert last["train_loss"] == pytest.approx(last["train_loss_cls"] + last["train_loss_score"],
                                               rel=1e-5)
    assert "train_wrong" in last and "train_map" not in last  # no mAP on the training split
    assert last["test_loss"] == pytest.approx(last["test_loss_cls"] + last["test_loss_score"],
                                              rel=1e-5)
    # The boxes are exact, so AP@0.5 and AP@[.5:.95] are the class accuracy's doing: once the
    # learned threshold separates sides <= 10 from larger ones every detection is right.
    assert last["train_wrong"] < 0.2
    assert last["test_map_50"] == pytest.approx(last["test_map"])
    assert last["test_map_50"] > 0.8
    assert trainer.task.monitor == "map_50"


def test_a_perfect_detector_scores_map_one_and_a_wrong_one_zero():
    data = squares()
    model = ThresholdDetector()
    with torch.no_grad():
        model.threshold.fill_(10.5)
    trainer = dk.Trainer(progress=False, task="detection")
    assert trainer.evaluate(model, data.test_dataloader())["test_map"] == pytest.approx(1.0)
    model.offset = 20.0  # every box moved off its square: no detection overlaps its object
    assert trainer.evaluate(model, data.test_dataloader())["test_map_50"] == 0.0


def test_describe_lists_the_best_detections_with_class_names():
    task = Detection()
    outputs = [{"boxes": torch.tensor([[1.0, 2.0, 30.0, 40.0], [0.0, 0.0, 5.0, 5.0]]),
                "scores": torch.tensor([0.9, 0.2]), "labels": torch.tensor([1, 0])},
               {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
                "labels": torch.zeros(0, dtype=torch.long)}]
    data = squares()
    assert task.describe(outputs, data, top=1) == ["big 0.90 [1, 2, 30, 40]", "nothing found"]


def test_a_model_that_does_not_return_named_losses_gets_a_clear_error():
    data = squares()

    class NoLosses(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(()))

        def forward(self, images, targets=None):
            return [self.w]

    with pytest.raises(dk.DivekitError, match="dict of losses named 'loss_"):
        dk.Trainer(max_epochs=1, progress=False).fit(NoLosses(), data)
