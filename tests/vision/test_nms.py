"""14.4.4 non-maximum suppression: nms and class-aware batched_nms against naive float64 loops
(random boxes with zero-area boxes, duplicates and tied scores), the course's example, empty
inputs and bad input."""

import importlib

import pytest
import torch

from divekit.errors import DivekitError
from divekit.vision import batched_nms, nms
from tests.vision.test_boxes import naive_iou, random_boxes

# The package's `nms` attribute is the function (as in torchvision.ops), so fetch the module.
nms_module = importlib.import_module("divekit.vision.nms")


def naive_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> list[int]:
    """The textbook loop: visit boxes by decreasing score (ties: lower index first), keep a box
    unless a kept box overlaps it by more than the threshold."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    kept: list[int] = []
    rows = boxes.tolist()
    for i in order:
        if all(naive_iou(rows[k], rows[i]) <= iou_threshold for k in kept):
            kept.append(i)
    return kept


def naive_batched_nms(boxes, scores, idxs, iou_threshold) -> list[int]:
    """One naive NMS per category, merged by decreasing score (ties: lower index first)."""
    kept = []
    for category in sorted(set(idxs.tolist())):
        members = [i for i in range(len(idxs)) if idxs[i] == category]
        chosen = naive_nms(boxes[members], scores[members], iou_threshold)
        kept += [members[i] for i in chosen]
    return sorted(kept, key=lambda i: (-float(scores[i]), i))


def clustered(n: int, generator: torch.Generator) -> torch.Tensor:
    """float64 boxes in a few clusters (so that suppression chains happen) plus degenerate ones."""
    centres = torch.rand(4, 2, generator=generator, dtype=torch.float64) * 20
    pick = torch.randint(0, 4, (n,), generator=generator)
    xy = centres[pick] + torch.randn(n, 2, generator=generator, dtype=torch.float64)
    wh = 2 + 4 * torch.rand(n, 2, generator=generator, dtype=torch.float64)
    boxes = torch.cat((xy, xy + wh), dim=1)
    return torch.cat((boxes, random_boxes(n // 4, generator, degenerate=0.5, scale=20)))


def test_course_example():
    # d2l 14.4.4: four predicted boxes, the dog's max probabilities 0.9, 0.8, 0.7 and the cat's
    # 0.9; NMS at 0.5 keeps box 0 (dog) and box 3 (cat). Box 1 overlaps box 0 by
    # 0.3024 / 0.4104 = 0.737, box 2 by 0.2257 / 0.4138 = 0.545, box 3 does not touch it.
    boxes = torch.tensor([[0.1, 0.08, 0.52, 0.92], [0.08, 0.2, 0.56, 0.95],
                          [0.15, 0.3, 0.62, 0.91], [0.55, 0.2, 0.9, 0.88]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.9])
    keep = nms(boxes, scores, 0.5)
    assert keep.dtype == torch.int64
    assert keep.tolist() == [0, 3]
    # At 0.6 box 2 (0.545) survives box 0; box 1 (0.737) still does not.
    assert nms(boxes, scores, 0.6).tolist() == [0, 3, 2]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("iou_threshold", [0.0, 0.3, 0.5, 0.7, 1.0])
def test_nms_matches_naive_loop(seed, iou_threshold):
    generator = torch.Generator().manual_seed(seed)
    boxes = clustered(60, generator)
    # Few distinct scores: many ties, broken by position.
    scores = torch.randint(0, 8, (len(boxes),), generator=generator).double() / 8
    keep = nms(boxes, scores, iou_threshold)
    assert keep.tolist() == naive_nms(boxes, scores, iou_threshold)
    assert nms(boxes.float(), scores.float(), iou_threshold).tolist() == keep.tolist()


def test_nms_across_blocks(monkeypatch):
    # Boxes are taken in blocks; block edges must not change the answer.
    generator = torch.Generator().manual_seed(7)
    boxes = clustered(80, generator)
    scores = torch.rand(len(boxes), generator=generator, dtype=torch.float64)
    expected = naive_nms(boxes, scores, 0.4)
    for block in (1, 7, 64):
        monkeypatch.setattr(nms_module, "BLOCK", block)
        assert nms(boxes, scores, 0.4).tolist() == expected


def test_nms_keeps_duplicates_apart_only_above_threshold():
    box = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    boxes = box.repeat(3, 1)
    assert nms(boxes, torch.tensor([0.5, 0.5, 0.9]), 0.5).tolist() == [2]
    assert nms(boxes, torch.tensor([0.5, 0.5, 0.5]), 1.0).tolist() == [0, 1, 2]
    # Zero-area boxes overlap nothing, so they are all kept.
    points = torch.tensor([[1.0, 1.0, 1.0, 1.0]]).repeat(3, 1)
    assert nms(points, torch.tensor([0.1, 0.3, 0.2]), 0.0).tolist() == [1, 2, 0]


def test_nms_empty_inputs():
    keep = nms(torch.zeros(0, 4), torch.zeros(0), 0.5)
    assert keep.dtype == torch.int64 and keep.shape == (0,)
    keep = batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.5)
    assert keep.dtype == torch.int64 and keep.shape == (0,)
    assert nms(torch.ones(1, 4), torch.ones(1), 0.5).tolist() == [0]


@pytest.mark.parametrize("seed", range(6))
def test_batched_nms_matches_naive_per_class_loop(seed):
    generator = torch.Generator().manual_seed(seed)
    boxes = clustered(60, generator) - 10  # negative coordinates too
    scores = torch.randint(0, 10, (len(boxes),), generator=generator).double() / 10
    idxs = torch.randint(0, 4, (len(boxes),), generator=generator) * 3  # sparse class ids
    for threshold in (0.0, 0.5):
        keep = batched_nms(boxes, scores, idxs, threshold)
        assert keep.tolist() == naive_batched_nms(boxes, scores, idxs, threshold)


def test_batched_nms_is_class_aware():
    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0]]).repeat(4, 1)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    assert batched_nms(boxes, scores, torch.tensor([0, 1, 0, 1]), 0.5).tolist() == [0, 1]
    assert nms(boxes, scores, 0.5).tolist() == [0]


def test_bad_input():
    boxes, scores = torch.rand(3, 4) + torch.tensor([0.0, 0.0, 1.0, 1.0]), torch.rand(3)
    for threshold in (-0.1, 1.5):
        with pytest.raises(DivekitError, match="iou_threshold must be an IoU in") as error:
            nms(boxes, scores, threshold)
        assert "\n" not in str(error.value)
        with pytest.raises(DivekitError, match="iou_threshold"):
            batched_nms(boxes, scores, torch.zeros(3, dtype=torch.long), threshold)
    with pytest.raises(DivekitError, match=r"\(N, 4\)"):
        nms(boxes.reshape(4, 3), scores, 0.5)
    with pytest.raises(DivekitError, match="scores must be a 1-D tensor"):
        nms(boxes, scores[:2], 0.5)
    with pytest.raises(DivekitError, match="idxs must be a 1-D tensor"):
        batched_nms(boxes, scores, torch.zeros(3, 1, dtype=torch.long), 0.5)
    with pytest.raises(DivekitError, match="integer"):
        batched_nms(boxes, scores, torch.zeros(3), 0.5)
    with pytest.raises(DivekitError, match="row 0 has x2 < x1"):
        nms(torch.tensor([[2.0, 0.0, 1.0, 1.0]]), torch.ones(1), 0.5)
