"""The readable average precision of divekit.scratch.detection against pycocotools' COCOeval."""

from __future__ import annotations

import pytest
import torch

from divekit.scratch.detection import (
    average_precision,
    interpolated_average_precision,
    match_detections,
    mean_average_precision,
    precision_recall,
)
from tests.vision.test_metrics import coco_reference, random_set

# The hand-worked example. Two images; ground truth G1 = (0, 0, 10, 10) and G2 = (20, 0, 30, 10)
# in image A, G3 = (0, 0, 10, 10) in image B, all of one class. Five detections:
#
#   det  image  score  box              IoU with its object
#   d1   A      0.9    (0, 0, 10, 10)   G1: 1.0
#   d2   A      0.8    (50, 50, 60, 60) none: 0
#   d3   B      0.7    (0, 0, 10, 8.2)  G3: 0.82
#   d4   A      0.6    (0, 0, 10, 9)    G1: 0.9, but d1 took G1 already
#   d5   A      0.5    (20, 0, 30, 6.3) G2: 0.63
#
# At IoU 0.5, by decreasing score (3 ground-truth boxes):
#
#   rank  det  TP/FP  TP so far  FP so far  precision  recall   envelope
#   1     d1   TP     1          0          1/1        1/3      1
#   2     d2   FP     1          1          1/2        1/3      2/3
#   3     d3   TP     2          1          2/3        2/3      2/3
#   4     d4   FP     2          2          2/4        2/3      3/5
#   5     d5   TP     3          2          3/5        3/3      3/5
#
# (envelope: the best precision at this rank or any later one.) COCO reads the envelope at the
# recalls 0, 0.01, ..., 1 at the first rank reaching each: 0-0.33 (34 points) at rank 1 -> 1,
# 0.34-0.66 (33 points) at rank 3 -> 2/3, 0.67-1 (34 points) at rank 5 -> 3/5, so
#   AP@0.5 = (34 * 1 + 33 * 2/3 + 34 * 3/5) / 101 = 76.4 / 101.
# The same holds at 0.55 and 0.6. From 0.65 to 0.8 d5 is a false positive: recall stops at 2/3
# and the last 34 points read 0: AP = (34 + 22) / 101 = 56 / 101. From 0.85 to 0.95 only d1 is
# right: AP = 34 / 101. AP@[.5:.95] = (3 * 76.4 + 4 * 56 + 3 * 34) / (10 * 101) = 555.2 / 1010.
HAND_TRUTH = [{"boxes": torch.tensor([[0.0, 0, 10, 10], [20, 0, 30, 10]]),
               "labels": torch.tensor([0, 0])},
              {"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([0])}]
HAND_PREDS = [{"boxes": torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60], [0, 0, 10, 9],
                                      [20, 0, 30, 6.3]]),
               "scores": torch.tensor([0.9, 0.8, 0.6, 0.5]), "labels": torch.tensor([0, 0, 0, 0])},
              {"boxes": torch.tensor([[0.0, 0, 10, 8.2]]), "scores": torch.tensor([0.7]),
               "labels": torch.tensor([0])}]


def test_hand_worked_example():
    a, b = HAND_PREDS
    assert match_detections(a["boxes"], a["scores"], HAND_TRUTH[0]["boxes"], 0.5).tolist() == [
        True, False, False, True]
    scores = torch.cat([a["scores"], b["scores"]])
    hits = torch.tensor([True, False, False, True, True])  # d1 d2 d4 d5 d3
    precision, recall = precision_recall(scores, hits, 3)
    torch.testing.assert_close(precision, torch.tensor([1, 1 / 2, 2 / 3, 2 / 4, 3 / 5],
                                                       dtype=torch.float64))
    torch.testing.assert_close(recall, torch.tensor([1 / 3, 1 / 3, 2 / 3, 2 / 3, 1],
                                                    dtype=torch.float64))
    assert interpolated_average_precision(precision, recall) == pytest.approx(76.4 / 101)
    assert mean_average_precision(HAND_PREDS, HAND_TRUTH, (0.5,)) == pytest.approx(76.4 / 101)
    assert mean_average_precision(HAND_PREDS, HAND_TRUTH, (0.75,)) == pytest.approx(56 / 101)
    assert mean_average_precision(HAND_PREDS, HAND_TRUTH, (0.9,)) == pytest.approx(34 / 101)
    assert mean_average_precision(HAND_PREDS, HAND_TRUTH) == pytest.approx(555.2 / 1010)
    reference = coco_reference(HAND_PREDS, HAND_TRUTH)
    assert reference[0] == pytest.approx(555.2 / 1010) and reference[1] == pytest.approx(
        76.4 / 101)


@pytest.mark.parametrize("seed", range(40))
def test_equals_cocoeval_on_random_sets(seed):
    # Several classes, 0-4 objects and 0-many detections per image: images without ground
    # truth, without detections, classes found only among the detections.
    preds, targets = random_set(1000 + seed, images=1 + seed % 7, classes=1 + seed % 4)
    if any(len(p["labels"]) for p in preds):
        reference = coco_reference(preds, targets)
    else:  # loadRes refuses an empty result list; COCO's answer: 0, or -1 without ground truth
        reference = [0.0 if any(len(t["labels"]) for t in targets) else -1.0] * 2
    assert mean_average_precision(preds, targets) == pytest.approx(reference[0], abs=1e-9)
    assert mean_average_precision(preds, targets, (0.5,)) == pytest.approx(reference[1],
                                                                          abs=1e-9)


def test_no_detections_or_no_truth():
    truth = [{"boxes": torch.tensor([[0.0, 0, 5, 5]]), "labels": torch.tensor([2])}]
    nothing = [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
                "labels": torch.zeros(0, dtype=torch.long)}]
    assert mean_average_precision(nothing, truth) == 0.0
    no_truth = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    assert mean_average_precision(nothing, no_truth) == -1.0
    assert average_precision([(torch.zeros(0, 4), torch.zeros(0))], [torch.zeros(0, 4)]) is None


def test_only_the_best_detections_per_image_count():
    # Three false alarms outscore the hit: with max_detections=3 the hit is never seen.
    truth = [torch.tensor([[0.0, 0, 10, 10]])]
    boxes = torch.tensor([[50.0, 50, 60, 60]] * 3 + [[0.0, 0, 10, 10]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    assert average_precision([(boxes, scores)], truth) == pytest.approx(0.25)
    assert average_precision([(boxes, scores)], truth, max_detections=3) == 0.0


def test_the_readable_iou_equals_the_library_one():
    from divekit.scratch.detection import iou
    from divekit.vision import box_iou

    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(40, 2, 2, generator=generator, dtype=torch.float64) * 50
    boxes = torch.cat([corners.min(1).values, corners.max(1).values], 1)
    boxes[:3, 2:] = boxes[:3, :2]  # zero-area boxes overlap nothing
    torch.testing.assert_close(iou(boxes, boxes.flip(0)), box_iou(boxes, boxes.flip(0)))
