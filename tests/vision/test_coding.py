"""14.4.3 / 14.4.4 labelling anchors and predicting boxes: offset encoding and decoding, the
course's greedy assignment, multibox_target and multibox_detection against naive float64
loops, the course's dog-and-cat examples, empty inputs and bad input."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from divekit.errors import DivekitError
from divekit.vision import (
    assign_anchor_to_bbox,
    decode_boxes,
    encode_boxes,
    multibox_detection,
    multibox_prior,
    multibox_target,
)
from tests.vision.test_boxes import examples, naive_iou, random_boxes
from tests.vision.test_nms import naive_nms

WEIGHTS = (10.0, 10.0, 5.0, 5.0)

# d2l 14.4.3: the dog and the cat, and five anchors.
GROUND_TRUTH = torch.tensor([[0, 0.1, 0.08, 0.52, 0.92], [1, 0.55, 0.2, 0.9, 0.88]])
ANCHORS = torch.tensor([[0, 0.1, 0.2, 0.3], [0.15, 0.2, 0.4, 0.4], [0.63, 0.05, 0.88, 0.98],
                        [0.66, 0.45, 0.8, 0.8], [0.57, 0.3, 0.92, 0.9]])


# --- Naive oracles: one box, one anchor at a time, in float64. ------------------------------

def naive_encode(anchor, box, weights=WEIGHTS, eps=1e-6):
    """The course's offset_boxes for one anchor and one box (torch scalars, so autograd works).
    """
    wa, ha = anchor[2] - anchor[0], anchor[3] - anchor[1]
    xa, ya = anchor[0] + wa / 2, anchor[1] + ha / 2
    w, h = box[2] - box[0], box[3] - box[1]
    x, y = box[0] + w / 2, box[1] + h / 2
    return torch.stack([weights[0] * (x - xa) / wa, weights[1] * (y - ya) / ha,
                        weights[2] * torch.log(eps + w / wa), weights[3] * torch.log(eps + h / ha)])


def naive_decode(anchor, offset, weights=WEIGHTS, clamp=None):
    """The course's offset_inverse for one anchor."""
    wa, ha = anchor[2] - anchor[0], anchor[3] - anchor[1]
    xa, ya = anchor[0] + wa / 2, anchor[1] + ha / 2
    x, y = offset[0] / weights[0] * wa + xa, offset[1] / weights[1] * ha + ya
    dw, dh = offset[2] / weights[2], offset[3] / weights[3]
    if clamp is not None:
        dw, dh = dw.clamp(max=clamp), dh.clamp(max=clamp)
    w, h = torch.exp(dw) * wa, torch.exp(dh) * ha
    return torch.stack([x - w / 2, y - h / 2, x + w / 2, y + h / 2])


def naive_assign(ground_truth: list, anchors: list, iou_threshold: float = 0.5) -> list[int]:
    """The course's assign_anchor_to_bbox as written there: threshold first, then take the
    largest entry of the IoU matrix (the first in row-major order on ties) and discard its row
    and column (set to -1), once per ground-truth box while anything is left."""
    jaccard = [[naive_iou(a, g) for g in ground_truth] for a in anchors]
    assigned = [-1] * len(anchors)
    for i, row in enumerate(jaccard):
        if row and max(row) >= iou_threshold:
            assigned[i] = row.index(max(row))
    for _ in range(len(ground_truth)):
        best, where = -1.0, None
        for i, row in enumerate(jaccard):
            for j, value in enumerate(row):
                if value > best:
                    best, where = value, (i, j)
        if where is None:  # every row or column discarded
            break
        i, j = where
        assigned[i] = j
        jaccard[i] = [-1.0] * len(ground_truth)
        for row in jaccard:
            row[j] = -1.0
    return assigned


def naive_multibox_target(anchors: torch.Tensor, labels: torch.Tensor):
    """Image by image, anchor by anchor; padding rows (class -1) dropped first."""
    offsets, masks, classes = [], [], []
    for image in labels:
        real = image[image[:, 0] >= 0]
        assigned = naive_assign(real[:, 1:].tolist(), anchors.tolist())
        for anchor, j in zip(anchors, assigned, strict=True):
            if j < 0:
                offsets.append(torch.zeros(4, dtype=anchors.dtype))
                masks.append(torch.zeros(4, dtype=anchors.dtype))
                classes.append(0)
            else:
                offsets.append(naive_encode(anchor, real[j, 1:]))
                masks.append(torch.ones(4, dtype=anchors.dtype))
                classes.append(int(real[j, 0]) + 1)
    batch = len(labels)
    return (torch.stack(offsets).reshape(batch, -1), torch.stack(masks).reshape(batch, -1),
            torch.tensor(classes).reshape(batch, -1))


def naive_multibox_detection(cls_probs, offset_preds, anchors, nms_threshold=0.5,
                             pos_threshold=0.009999999):
    """The course's multibox_detection, image by image, with the naive NMS."""
    out = []
    for probs, offsets in zip(cls_probs, offset_preds, strict=True):
        offsets = offsets.reshape(-1, 4)
        conf = probs[1:].max(dim=0).values
        class_id = probs[1:].argmax(dim=0)
        boxes = torch.stack([naive_decode(a, o, clamp=math.log(1000 / 16))
                             for a, o in zip(anchors, offsets, strict=True)])
        keep = naive_nms(boxes, conf, nms_threshold)
        rest = [i for i in range(len(anchors)) if i not in keep]
        rows = []
        for i in keep + rest:
            label, score = (int(class_id[i]) if i in keep else -1), float(conf[i])
            if score < pos_threshold:
                label, score = -1, 1 - score
            rows.append([label, score, *boxes[i].tolist()])
        out.append(rows)
    return torch.tensor(out, dtype=torch.float64)


def positive_boxes(n: int, generator: torch.Generator) -> torch.Tensor:
    return random_boxes(n, generator, degenerate=0.0) + torch.tensor([0.0, 0.0, 0.1, 0.1],
                                                                     dtype=torch.float64)


# --- The course's examples. -----------------------------------------------------------------

def test_course_labelling_example():
    # d2l 14.4.3 prints class labels [0, 1, 2, 0, 2]: anchor 4 takes the cat greedily (IoU
    # 0.1914 / 0.2566 = 0.746, the largest), then anchor 1 the dog (0.05 / 0.3528 = 0.142, the
    # dog's best); anchor 2 overlaps the cat by 0.17 / 0.3005 = 0.566 >= 0.5; anchor 3 (0.206)
    # and anchor 0 stay background.
    offsets, mask, classes = multibox_target(ANCHORS[None], GROUND_TRUTH[None])
    assert classes.dtype == torch.int64
    assert classes.tolist() == [[0, 1, 2, 0, 2]]
    assert mask.tolist() == [[0.0] * 4 + [1.0] * 8 + [0.0] * 4 + [1.0] * 4]
    # The book prints these offsets to 3 digits; by hand, e.g. anchor 1 (centre (0.275, 0.3),
    # 0.25 x 0.2) to the dog (centre (0.31, 0.5), 0.42 x 0.84) gives 10 * 0.035 / 0.25 = 1.40,
    # 10 * 0.2 / 0.2 = 10.0, 5 log(0.42 / 0.25) = 2.59, 5 log(0.84 / 0.2) = 7.18.
    log = math.log
    dog_1 = [1.40, 10.0, 5 * log(0.42 / 0.25), 5 * log(0.84 / 0.2)]
    # Anchor 2: centre (0.755, 0.515), 0.25 x 0.93; the cat: centre (0.725, 0.54), 0.35 x 0.68.
    cat_2 = [10 * -0.03 / 0.25, 10 * 0.025 / 0.93, 5 * log(0.35 / 0.25), 5 * log(0.68 / 0.93)]
    # Anchor 4: centre (0.745, 0.6), 0.35 x 0.6 (the book prints 4.17e-06 for log(1 + eps)).
    cat_4 = [10 * -0.02 / 0.35, 10 * -0.06 / 0.6, 0.0, 5 * log(0.68 / 0.6)]
    book = torch.tensor([[0.0] * 4 + dog_1 + cat_2 + [0.0] * 4 + cat_4])
    torch.testing.assert_close(offsets, book, atol=2e-5, rtol=0)
    assert offsets[0, 4:12].tolist() == pytest.approx([1.40, 10.0, 2.59, 7.18, -1.20, 0.269,
                                                       1.68, -1.57], abs=5e-3)
    assert assign_anchor_to_bbox(GROUND_TRUTH[:, 1:], ANCHORS).tolist() == [-1, 0, 1, -1, 1]


def test_course_detection_example():
    # d2l 14.4.4: zero offsets (boxes = anchors), dog probabilities 0.9, 0.8, 0.7, 0.1 and cat
    # 0.1, 0.2, 0.3, 0.9; the book prints the kept dog (0.9) and cat (0.9) boxes, then the two
    # suppressed boxes with class -1 and their scores.
    anchors = torch.tensor([[0.1, 0.08, 0.52, 0.92], [0.08, 0.2, 0.56, 0.95],
                            [0.15, 0.3, 0.62, 0.91], [0.55, 0.2, 0.9, 0.88]])
    cls_probs = torch.tensor([[0.0] * 4, [0.9, 0.8, 0.7, 0.1], [0.1, 0.2, 0.3, 0.9]])
    output = multibox_detection(cls_probs[None], torch.zeros(1, 16), anchors[None], 0.5)
    book = torch.tensor([[[0, 0.9, 0.1, 0.08, 0.52, 0.92], [1, 0.9, 0.55, 0.2, 0.9, 0.88],
                          [-1, 0.8, 0.08, 0.2, 0.56, 0.95], [-1, 0.7, 0.15, 0.3, 0.62, 0.91]]])
    torch.testing.assert_close(output, book)


# --- Encoding and decoding. -----------------------------------------------------------------

@pytest.mark.parametrize("weights", [WEIGHTS, (1.0, 1.0, 1.0, 1.0), (2.0, 3.0, 0.5, 4.0)])
def test_encode_decode_match_naive_loop(weights):
    generator = torch.Generator().manual_seed(0)
    anchors, boxes = positive_boxes(20, generator), random_boxes(20, generator)
    expected = torch.stack([naive_encode(a, b, weights) for a, b in zip(anchors, boxes,
                                                                         strict=True)])
    torch.testing.assert_close(encode_boxes(anchors, boxes, weights), expected, rtol=1e-12,
                               atol=1e-12)
    offsets = torch.randn(20, 4, generator=generator, dtype=torch.float64) * 3
    expected = torch.stack([naive_decode(a, o, weights, clamp=math.log(1000 / 16))
                            for a, o in zip(anchors, offsets, strict=True)])
    torch.testing.assert_close(decode_boxes(anchors, offsets, weights), expected, rtol=1e-12,
                               atol=1e-12)


def test_encode_decode_gradients_match_naive_loop():
    generator = torch.Generator().manual_seed(1)
    anchors, boxes = positive_boxes(8, generator), positive_boxes(8, generator)
    offsets = torch.randn(8, 4, generator=generator, dtype=torch.float64)
    weights = torch.rand(8, 4, generator=generator, dtype=torch.float64)

    def grads(encode, decode):
        a, b, o = (t.clone().requires_grad_() for t in (anchors, boxes, offsets))
        ((encode(a, b) + decode(a, o)) * weights).sum().backward()
        return a.grad, b.grad, o.grad

    mine = grads(encode_boxes, lambda a, o: decode_boxes(a, o, clamp=None))
    naive = grads(lambda a, b: torch.stack([naive_encode(x, y) for x, y in zip(a, b,
                                                                               strict=True)]),
                  lambda a, o: torch.stack([naive_decode(x, y) for x, y in zip(a, o,
                                                                               strict=True)]))
    torch.testing.assert_close(mine, naive, rtol=1e-10, atol=1e-12)


def test_decode_clamps_huge_sizes_and_broadcasts():
    anchor = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    box = decode_boxes(anchor, torch.tensor([[0.0, 0.0, 500.0, 0.0]]))
    # 500 / 5 = 100 is clamped to log(62.5): width 2 * 62.5, centred on the anchor's.
    torch.testing.assert_close(box, torch.tensor([[1 - 62.5, 0.0, 1 + 62.5, 2.0]]))
    offsets = torch.zeros(3, 5, 4)
    assert decode_boxes(anchor[None], offsets).shape == (3, 5, 4)
    torch.testing.assert_close(decode_boxes(anchor, offsets[0]), anchor.expand(5, 4))
    assert encode_boxes(torch.zeros(0, 4), torch.zeros(0, 4)).shape == (0, 4)
    assert decode_boxes(torch.zeros(0, 4), torch.zeros(0, 4)).shape == (0, 4)


corner = st.floats(-100, 100, allow_nan=False)
extent = st.floats(0.5, 40, allow_nan=False)
xyxy = st.tuples(corner, corner, extent, extent).map(
    lambda t: [t[0], t[1], t[0] + t[2], t[1] + t[3]])


@examples(150)
@given(st.lists(st.tuples(xyxy, xyxy), min_size=1, max_size=6),
       st.sampled_from([WEIGHTS, (1.0, 1.0, 1.0, 1.0), (0.1, 20.0, 2.0, 0.3)]))
def test_decode_inverts_encode(pairs, weights):
    reference = torch.tensor([p[0] for p in pairs], dtype=torch.float64)
    boxes = torch.tensor([p[1] for p in pairs], dtype=torch.float64)
    back = decode_boxes(reference, encode_boxes(reference, boxes, weights, eps=0.0), weights,
                        clamp=None)
    torch.testing.assert_close(back, boxes, rtol=1e-9, atol=1e-9)
    # With the course's eps the sizes come back larger by at most eps * the reference's.
    back = decode_boxes(reference, encode_boxes(reference, boxes, weights), weights, clamp=None)
    torch.testing.assert_close(back, boxes, rtol=0, atol=1e-6 * 40 + 1e-9)


# --- Assignment and targets. ----------------------------------------------------------------

@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize(("num_gt", "num_anchors"), [(3, 40), (6, 4), (1, 1)])
def test_assign_matches_naive_loop(seed, num_gt, num_anchors):
    generator = torch.Generator().manual_seed(seed)
    # Quantised corners make equal IoUs (ties) and shared edges common.
    ground_truth = (random_boxes(num_gt, generator, 0.1) * 2).round() / 2
    anchors = (random_boxes(num_anchors, generator, 0.1) * 2).round() / 2
    for threshold in (0.0, 0.3, 0.5, 1.0):
        assigned = assign_anchor_to_bbox(ground_truth, anchors, threshold)
        assert assigned.dtype == torch.int64
        assert assigned.tolist() == naive_assign(ground_truth.tolist(), anchors.tolist(),
                                                 threshold)


def test_assign_empty_inputs():
    anchors = ANCHORS
    assert assign_anchor_to_bbox(torch.zeros(0, 4), anchors).tolist() == [-1] * 5
    assert assign_anchor_to_bbox(GROUND_TRUTH[:, 1:], torch.zeros(0, 4)).shape == (0,)


def random_labels(batch: int, rows: int, generator: torch.Generator) -> torch.Tensor:
    """(B, M, 5) course labels, normalised, with padding rows (class -1) anywhere."""
    xy = torch.rand(batch, rows, 2, generator=generator, dtype=torch.float64) * 0.7
    wh = 0.05 + torch.rand(batch, rows, 2, generator=generator, dtype=torch.float64) * 0.4
    classes = torch.randint(-1, 3, (batch, rows, 1), generator=generator).double()
    labels = torch.cat((classes, xy, xy + wh), dim=-1)
    labels[0, :, 0] = -1  # an image with no objects
    labels[labels[..., 0] < 0, 1:] = -1  # padding rows hold garbage, even x2 < x1 is fine
    labels[labels[..., 0] < 0, 3] = -3
    return labels


@pytest.mark.parametrize("seed", range(4))
def test_multibox_target_matches_naive_loop(seed):
    generator = torch.Generator().manual_seed(seed)
    data = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    anchors = multibox_prior(data, [0.3, 0.15], [1, 2, 0.5])
    labels = random_labels(5, 4, generator)
    mine = multibox_target(anchors, labels)
    naive = naive_multibox_target(anchors[0], labels)
    torch.testing.assert_close(mine[0], naive[0], rtol=1e-12, atol=1e-12)
    assert torch.equal(mine[1], naive[1]) and torch.equal(mine[2], naive[2])
    assert mine[0].dtype == mine[1].dtype == torch.float64
    assert not mine[2][0].any()  # the image without objects is all background


def test_multibox_target_empty_inputs():
    offsets, mask, classes = multibox_target(ANCHORS[None], torch.zeros(2, 0, 5))
    assert offsets.shape == mask.shape == (2, 20) and classes.shape == (2, 5)
    assert not offsets.any() and not mask.any() and not classes.any()
    offsets, mask, classes = multibox_target(torch.zeros(1, 0, 4), GROUND_TRUTH[None])
    assert offsets.shape == mask.shape == classes.shape == (1, 0)


# --- Detection. -----------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(4))
def test_multibox_detection_matches_naive_loop(seed):
    generator = torch.Generator().manual_seed(seed)
    anchors = positive_boxes(30, generator) / 20
    logits = torch.randn(3, 4, 30, generator=generator, dtype=torch.float64) * 3
    cls_probs = logits.softmax(dim=1)
    offsets = torch.randn(3, 120, generator=generator, dtype=torch.float64)
    for nms_threshold, pos_threshold in ((0.5, 0.009999999), (0.2, 0.3)):
        mine = multibox_detection(cls_probs, offsets, anchors[None], nms_threshold,
                                  pos_threshold)
        naive = naive_multibox_detection(cls_probs, offsets, anchors, nms_threshold,
                                         pos_threshold)
        assert mine.shape == (3, 30, 6)
        torch.testing.assert_close(mine, naive, rtol=1e-12, atol=1e-12)


def test_multibox_detection_empty():
    output = multibox_detection(torch.zeros(2, 3, 0), torch.zeros(2, 0), torch.zeros(1, 0, 4))
    assert output.shape == (2, 0, 6)


# --- Bad input. -----------------------------------------------------------------------------

def test_bad_input():
    def one_line(error):
        assert "\n" not in str(error.value)

    with pytest.raises(DivekitError, match="iou_threshold must be an IoU") as error:
        assign_anchor_to_bbox(GROUND_TRUTH[:, 1:], ANCHORS, 1.2)
    one_line(error)
    with pytest.raises(DivekitError, match="iou_threshold"):
        multibox_target(ANCHORS, GROUND_TRUTH[None], iou_threshold=-0.5)
    with pytest.raises(DivekitError, match="nms_threshold"):
        multibox_detection(torch.ones(1, 2, 5), torch.zeros(1, 20), ANCHORS, nms_threshold=2)
    with pytest.raises(DivekitError, match=r"ground_truth must be an \(N, 4\)"):
        assign_anchor_to_bbox(GROUND_TRUTH, ANCHORS)
    with pytest.raises(DivekitError, match=r"labels must be \(B, M, 5\)") as error:
        multibox_target(ANCHORS[None], GROUND_TRUTH)
    one_line(error)
    bad = GROUND_TRUTH.clone()[None]
    bad[0, 1, 1] = 0.95  # x1 > x2 in a real row
    with pytest.raises(DivekitError, match=r"labels\[0, 1\] has x2 < x1") as error:
        multibox_target(ANCHORS[None], bad)
    one_line(error)
    with pytest.raises(DivekitError, match=r"cls_probs must be \(B, C\+1, A\)"):
        multibox_detection(torch.ones(1, 2, 4), torch.zeros(1, 20), ANCHORS)
    with pytest.raises(DivekitError, match=r"offset_preds must be \(B, A\*4\)"):
        multibox_detection(torch.ones(1, 2, 5), torch.zeros(1, 5, 4), ANCHORS)
    with pytest.raises(DivekitError, match="positive width and height"):
        encode_boxes(torch.tensor([[0.0, 0.0, 0.0, 1.0]]), torch.ones(1, 4))
    with pytest.raises(DivekitError, match=r"\(\.\.\., 4\)"):
        decode_boxes(torch.ones(2, 4), torch.ones(2, 3))
