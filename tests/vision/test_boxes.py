"""14.3 / 14.4.1 boxes: format conversions, areas, pairwise IoU against a naive loop (values and
gradients), clipping, small-box removal, empty inputs and bad input."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from divekit.errors import DivekitError
from divekit.vision import (
    box_area,
    box_convert,
    box_iou,
    clip_boxes_to_image,
    remove_small_boxes,
)


def examples(count: int) -> settings:
    """Reproducible runs (CI never meets a new example) that write no example database."""
    return settings(max_examples=count, deadline=None, derandomize=True, database=None)


def naive_iou(a: list[float], b: list[float]) -> float:
    """IoU of two xyxy boxes in plain Python, 0 when the union is empty."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def naive_iou_matrix(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """The same, box pair by box pair, built from tensor scalars so autograd sees it."""
    rows = []
    for a in boxes1:
        row = []
        for b in boxes2:
            iw = (torch.minimum(a[2], b[2]) - torch.maximum(a[0], b[0])).clamp(min=0)
            ih = (torch.minimum(a[3], b[3]) - torch.maximum(a[1], b[1])).clamp(min=0)
            union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - iw * ih
            row.append(iw * ih / union if union > 0 else union * 0)
        rows.append(torch.stack(row) if row else torch.zeros(0, dtype=boxes1.dtype))
    return torch.stack(rows) if rows else torch.zeros(0, len(boxes2), dtype=boxes1.dtype)


def random_boxes(n: int, generator: torch.Generator, degenerate: float = 0.2,
                 scale: float = 10.0) -> torch.Tensor:
    """float64 xyxy boxes, some with zero width and/or height, some sharing corners."""
    xy = torch.rand(n, 2, generator=generator, dtype=torch.float64) * scale
    wh = torch.rand(n, 2, generator=generator, dtype=torch.float64) * scale / 2
    wh[torch.rand(n, 2, generator=generator) < degenerate] = 0
    boxes = torch.cat((xy, xy + wh), dim=1)
    if n > 3:
        boxes[1] = boxes[0]  # an exact duplicate
        boxes[3] = boxes[2].round()  # integer corners meet other boxes' edges
        boxes[3, 2:] += 1
    return boxes


def test_box_convert_by_hand():
    xyxy = torch.tensor([[1.0, 2.0, 5.0, 8.0]])
    assert box_convert(xyxy, "xyxy", "cxcywh").tolist() == [[3.0, 5.0, 4.0, 6.0]]
    assert box_convert(xyxy, "xyxy", "xywh").tolist() == [[1.0, 2.0, 4.0, 6.0]]
    assert box_convert(torch.tensor([[3.0, 5.0, 4.0, 6.0]]), "cxcywh", "xyxy").tolist() == [
        [1.0, 2.0, 5.0, 8.0]]
    assert box_convert(torch.tensor([[1.0, 2.0, 4.0, 6.0]]), "xywh", "cxcywh").tolist() == [
        [3.0, 5.0, 4.0, 6.0]]
    # The course's example (14.3): the dog and cat boxes survive the round trip.
    boxes = torch.tensor([[60.0, 45.0, 378.0, 516.0], [400.0, 112.0, 655.0, 493.0]])
    back = box_convert(box_convert(boxes, "xyxy", "cxcywh"), "cxcywh", "xyxy")
    assert torch.equal(back, boxes)


@pytest.mark.parametrize("fmt", ["xyxy", "xywh", "cxcywh"])
def test_box_convert_round_trips_and_batches(fmt):
    boxes = random_boxes(7, torch.Generator().manual_seed(0)).reshape(7, 1, 4)
    for other in ("xyxy", "xywh", "cxcywh"):
        there = box_convert(boxes, fmt, other)
        assert there.shape == (7, 1, 4)
        torch.testing.assert_close(box_convert(there, other, fmt), boxes)
    assert box_convert(torch.zeros(0, 4), fmt, "cxcywh").shape == (0, 4)


def test_box_area():
    boxes = torch.tensor([[0.0, 0.0, 4.0, 3.0], [1.0, 1.0, 1.0, 5.0], [0.5, 0.5, 1.0, 2.0]])
    assert box_area(boxes).tolist() == [12.0, 0.0, 0.75]
    # Continuous coordinates, no "+1": the whole W x H image has area W * H.
    assert box_area(torch.tensor([[0.0, 0.0, 640.0, 480.0]])).item() == 640 * 480
    assert box_area(torch.zeros(0, 4)).shape == (0,)


def test_box_iou_by_hand():
    # Intersection [2, 4] x [1, 3] = 4; areas 16 and 12; union 24.
    a = torch.tensor([[0.0, 0.0, 4.0, 4.0]])
    b = torch.tensor([[2.0, 1.0, 8.0, 3.0], [4.0, 0.0, 6.0, 4.0], [0.0, 0.0, 4.0, 4.0]])
    iou = box_iou(a, b)
    assert iou.shape == (1, 3)
    torch.testing.assert_close(iou, torch.tensor([[4 / 24, 0.0, 1.0]]))


@pytest.mark.parametrize("seed", range(4))
def test_box_iou_matches_naive_loop(seed):
    generator = torch.Generator().manual_seed(seed)
    boxes1, boxes2 = random_boxes(13, generator), random_boxes(9, generator)
    expected = torch.tensor([[naive_iou(a, b) for b in boxes2.tolist()] for a in boxes1.tolist()],
                            dtype=torch.float64)
    iou = box_iou(boxes1, boxes2)
    assert iou.dtype == torch.float64
    torch.testing.assert_close(iou, expected, rtol=1e-12, atol=1e-12)
    # float32 agrees to float32 precision.
    torch.testing.assert_close(box_iou(boxes1.float(), boxes2.float()), expected.float())


def test_box_iou_gradients_match_naive_loop():
    generator = torch.Generator().manual_seed(5)
    boxes1, boxes2 = random_boxes(6, generator, 0.0), random_boxes(5, generator, 0.0)
    weights = torch.rand(6, 5, generator=generator, dtype=torch.float64)
    grads = []
    for fn in (box_iou, naive_iou_matrix):
        a, b = boxes1.clone().requires_grad_(), boxes2.clone().requires_grad_()
        (fn(a, b) * weights).sum().backward()
        grads.append((a.grad, b.grad))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-12)
    assert grads[0][0].abs().sum() > 0


def test_box_iou_degenerate_and_empty():
    point = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    line = torch.tensor([[0.0, 1.0, 3.0, 1.0]])
    box = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    # Empty unions give 0 (torchvision gives NaN); a zero-area box never overlaps anything.
    assert box_iou(point, point).item() == 0.0
    assert box_iou(line, point).item() == 0.0
    assert box_iou(point, box).item() == 0.0
    assert box_iou(torch.zeros(0, 4), box).shape == (0, 1)
    assert box_iou(box, torch.zeros(0, 4)).shape == (1, 0)
    assert box_iou(torch.zeros(0, 4), torch.zeros(0, 4)).shape == (0, 0)
    # Integer boxes are computed in floating point.
    ints = torch.tensor([[0, 0, 4, 4], [2, 2, 6, 6]])
    torch.testing.assert_close(box_iou(ints, ints)[0, 1], torch.tensor(4 / 28))


coordinate = st.floats(-50, 50, allow_nan=False, width=64)
size = st.one_of(st.just(0.0), st.floats(0, 30, width=64))
box = st.tuples(coordinate, coordinate, size, size).map(
    lambda t: [t[0], t[1], t[0] + t[2], t[1] + t[3]])


@examples(150)
@given(st.lists(box, min_size=1, max_size=8), st.lists(box, min_size=1, max_size=8))
def test_box_iou_properties(boxes1, boxes2):
    a = torch.tensor(boxes1, dtype=torch.float64)
    b = torch.tensor(boxes2, dtype=torch.float64)
    iou = box_iou(a, b)
    assert iou.shape == (len(boxes1), len(boxes2))
    assert torch.equal(iou, box_iou(b, a).T)
    assert bool(((iou >= 0) & (iou <= 1 + 1e-12)).all())
    diagonal = box_iou(a, a).diagonal()
    positive = box_area(a) > 0
    torch.testing.assert_close(diagonal[positive], torch.ones_like(diagonal[positive]))
    assert bool((diagonal[~positive] == 0).all())


def test_clip_boxes_to_image():
    boxes = torch.tensor([[-5.0, -2.0, 30.0, 10.0], [3.0, 4.0, 5.0, 25.0]])
    clipped = clip_boxes_to_image(boxes, (20, 28))  # size is (H, W)
    assert clipped.tolist() == [[0.0, 0.0, 28.0, 10.0], [3.0, 4.0, 5.0, 20.0]]
    assert clip_boxes_to_image(torch.zeros(0, 4), (5, 5)).shape == (0, 4)
    assert clip_boxes_to_image(boxes[None], (20, 28)).shape == (1, 2, 4)


def test_remove_small_boxes():
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0], [0.0, 0.0, 0.5, 4.0], [1.0, 1.0, 2.0, 2.0],
                          [0.0, 0.0, 4.0, 0.9]])
    keep = remove_small_boxes(boxes, 1.0)
    assert keep.dtype == torch.int64
    assert keep.tolist() == [0, 2]
    assert remove_small_boxes(torch.zeros(0, 4), 1.0).tolist() == []


@pytest.mark.parametrize("bad", [torch.zeros(4), torch.zeros(3, 5), torch.zeros(2, 2, 4),
                                 [[0.0, 0.0, 1.0, 1.0]]])
def test_box_iou_rejects_wrong_shapes(bad):
    with pytest.raises(DivekitError, match=r"\(N, 4\)") as error:
        box_iou(bad, torch.zeros(1, 4))
    assert "\n" not in str(error.value)


def test_bad_boxes_and_formats():
    with pytest.raises(DivekitError, match="boxes2 row 1 has x2 < x1") as error:
        box_iou(torch.zeros(1, 4), torch.tensor([[0.0, 0.0, 1.0, 1.0], [2.0, 0.0, 1.0, 1.0]]))
    assert "\n" not in str(error.value)
    with pytest.raises(DivekitError, match="y2 < y1"):
        box_iou(torch.tensor([[0.0, 3.0, 1.0, 1.0]]), torch.zeros(1, 4))
    with pytest.raises(DivekitError, match="unknown box format 'xywh2'"):
        box_convert(torch.zeros(1, 4), "xyxy", "xywh2")
    with pytest.raises(DivekitError, match="4 numbers"):
        box_convert(torch.zeros(1, 3), "xyxy", "xywh")
