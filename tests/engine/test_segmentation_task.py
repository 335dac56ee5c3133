"""The segmentation task: per-pixel cross-entropy without ignored pixels, pixel accuracy and
mean IoU equal to a confusion matrix counted by hand, per-class IoU named by class."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import divekit as dk
from divekit.data import DataModule
from divekit.engine.task import Output
from divekit.tasks import Segmentation

IGNORE = 255


def random_maps(seed, n=3, classes=4, size=(9, 11), ignored=0.2):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, *size, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, classes, (n, *size), generator=generator)
    labels[torch.rand(n, *size, generator=generator) < ignored] = IGNORE
    return logits, labels


def confusion(predictions, labels, classes):
    """Counts[i, j]: pixels of class i predicted as j, ignored pixels left out (numpy loop)."""
    counts = np.zeros((classes, classes), dtype=np.int64)
    for p, t in zip(predictions.flatten().tolist(), labels.flatten().tolist(), strict=True):
        if t != IGNORE:
            counts[t, p] += 1
    return counts


def test_loss_and_count_leave_ignored_pixels_out():
    logits, labels = random_maps(0)
    task = Segmentation(num_classes=4)
    counted = labels != IGNORE
    expected = -logits.log_softmax(1).gather(1, labels.clamp(max=3)[:, None])[:, 0][counted].mean()
    torch.testing.assert_close(task.loss(logits, labels).double(), expected)
    assert int(task.count((None, labels))) == int(counted.sum())
    with pytest.raises(dk.DivekitError, match="logits \\(N, C, H, W\\) and label maps"):
        task.loss(logits[..., :5], labels)


@pytest.mark.parametrize("seed", range(4))
def test_pixel_accuracy_and_mean_iou_equal_the_confusion_matrix(seed):
    task = Segmentation(num_classes=5, class_metrics=True)
    task.class_names = ["background", "a", "b", "c", "d"]
    metrics = task.metrics("test")
    counts = np.zeros((5, 5), dtype=np.int64)
    for batch in range(3):  # over several batches, as over a split
        logits, labels = random_maps(10 * seed + batch, classes=4)  # class 4 never occurs
        task.update(metrics, Output(torch.zeros(()), logits.float()), (None, labels))
        counts += confusion(logits.argmax(1), labels, 5)
    true_positive = np.diag(counts)
    union = counts.sum(0) + counts.sum(1) - true_positive
    iou = true_positive[union > 0] / union[union > 0]
    assert float(metrics["pixel_acc"].compute()) == pytest.approx(
        true_positive.sum() / counts.sum(), abs=1e-6)
    assert float(metrics["miou"].compute()) == pytest.approx(iou.mean(), abs=1e-6)
    per_class = {key: float(value) for key, value in metrics["iou"].compute().items()}
    assert set(per_class) == {"iou_background", "iou_a", "iou_b", "iou_c"}  # d never occurs
    assert list(per_class.values()) == pytest.approx(iou.tolist(), abs=1e-6)


def test_predict_and_describe_give_class_maps_and_their_shares():
    task = Segmentation(num_classes=3)
    model = nn.Conv2d(3, 3, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
    images = torch.zeros(1, 3, 4, 5)
    images[0, 2, :, :2] = 1  # 8 of 20 pixels are class 2, the rest class 0
    maps = task.predict(model, images)
    assert maps.shape == (1, 4, 5) and maps.dtype == torch.int64
    data = DataModule("toy", train=(images, maps), test=(images, maps), task="segmentation",
                      class_names=["sky", "grass", "road"])
    assert task.describe(maps, data) == ["sky 60.0%, road 40.0%"]


def test_trainer_learns_a_per_pixel_rule_and_reports_the_metrics():
    # A pixel's class is which of its three channels is brightest; ignored where two tie.
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(64, 3, 8, 8, generator=generator)
    labels = images.argmax(1)
    images[:, 1, :2, :2] = images[:, 0, :2, :2]
    labels[:, :2, :2] = torch.where(images[:, :, :2, :2].argmax(1) > 1, 2, IGNORE)
    data = DataModule("bright", train=(images[:48], labels[:48]), test=(images[48:], labels[48:]),
                      batch_size=16, task="segmentation", class_names=["r", "g", "b"])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 1), nn.ReLU(), nn.Conv2d(16, 3, 1))
    history = dk.Trainer(max_epochs=30, lr=0.05, optimizer="adam", progress=False).fit(model, data)
    last = history[-1]
    assert last["test_pixel_acc"] > 0.9 and last["test_miou"] > 0.8
    expected = (F.conv2d(F.relu(F.conv2d(images[48:], model[0].weight, model[0].bias)),
                         model[2].weight, model[2].bias).argmax(1) == labels[48:])
    counted = labels[48:] != IGNORE
    assert last["test_pixel_acc"] == pytest.approx(
        float(expected[counted].float().mean()), abs=1e-6)
