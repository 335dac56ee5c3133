"""The small YOLOX (``yolox-cpu``): parameter count, decoding, SimOTA and GIoU against naive
float64 loops, losses by hand, evaluation output, and learning on generated scenes."""

import math

import pytest
import torch
import torch.nn.functional as F

from divekit.models import yolo
from divekit.models.registry import count_parameters
from tests.models.test_ssd import (
    batch,
    check_detections,
    empty_target,
    iou,
    train_and_evaluate,
)

# Half of the held-out mAP@0.5 the learning test measured (0.127; random boxes score ~0).
YOLOX_FLOOR = 0.06


def expected_parameters(num_classes, w):
    def cbs(c_in, c_out, k=1):  # bias-free conv + BN
        return c_in * c_out * k * k + 2 * c_out

    def csp(c_in, c_out):  # two 1x1 splits, a 1x1 + 3x3 bottleneck, a 1x1 merge
        h = c_out // 2
        return cbs(c_in, h) * 2 + cbs(h, h) + cbs(h, h, 3) + cbs(2 * h, c_out)

    stages = (cbs(3, w, 3) + cbs(w, 2 * w, 3) + cbs(2 * w, 4 * w, 3) + cbs(4 * w, 8 * w, 3)
              + cbs(8 * w, 16 * w, 3) + sum(csp(c, c) for c in (2 * w, 4 * w, 8 * w, 16 * w)))
    neck = (cbs(16 * w, 8 * w) + csp(16 * w, 8 * w) + cbs(8 * w, 4 * w) + csp(8 * w, 4 * w)
            + cbs(4 * w, 4 * w, 3) + csp(8 * w, 8 * w) + cbs(8 * w, 8 * w, 3)
            + csp(16 * w, 16 * w))
    hidden = 4 * w
    heads = sum(cbs(c, hidden) + 4 * cbs(hidden, hidden, 3) + (hidden + 1) * (4 + 1 + num_classes)
                for c in (4 * w, 8 * w, 16 * w))
    return stages + neck + heads


def test_parameter_count_by_formula():
    assert count_parameters(yolo.yolox_cpu()) == expected_parameters(6, 16)
    assert count_parameters(yolo.yolox_cpu(num_classes=2, width=8)) == expected_parameters(2, 8)


def test_cells_and_decoding():
    torch.manual_seed(0)
    model = yolo.yolox_cpu(num_classes=3, width=4).eval()
    images = torch.rand(2, 3, 64, 96)
    points, strides, boxes, obj, cls = model.predict(images)
    # Strides 8, 16, 32 on 64x96: 8x12 + 4x6 + 2x3 cells, row-major per level.
    assert points.shape == (96 + 24 + 6, 2) and boxes.shape == (2, 126, 4)
    assert obj.shape == (2, 126) and cls.shape == (2, 126, 3)
    assert points[:2].tolist() == [[4.0, 4.0], [12.0, 4.0]] and points[12].tolist() == [4.0, 12.0]
    assert points[96].tolist() == [8.0, 8.0] and strides[96].item() == 16
    # A cell's box: centre = cell centre + offset * stride, size = exp(log size) * stride.
    raw = model.heads[0](model.feature_maps(images)[0])
    raw = raw[1, :, 2, 5].tolist()  # image 1, level 0, row 2, column 5: cell 29
    cx, cy = 5.5 * 8 + raw[0] * 8, 2.5 * 8 + raw[1] * 8
    w, h = math.exp(raw[2]) * 8, math.exp(raw[3]) * 8
    assert boxes[1, 29].tolist() == pytest.approx([cx - w / 2, cy - h / 2, cx + w / 2,
                                                   cy + h / 2], rel=1e-5)
    assert obj[1, 29].item() == pytest.approx(raw[4], rel=1e-5)
    assert cls[1, 29].tolist() == pytest.approx(raw[5:], rel=1e-5)


def naive_giou(a, b):
    """GIoU of two boxes with scalar torch ops (so autograd gives the naive gradient)."""
    iw = (torch.minimum(a[2], b[2]) - torch.maximum(a[0], b[0])).clamp(min=0)
    ih = (torch.minimum(a[3], b[3]) - torch.maximum(a[1], b[1])).clamp(min=0)
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    hull = ((torch.maximum(a[2], b[2]) - torch.minimum(a[0], b[0]))
            * (torch.maximum(a[3], b[3]) - torch.minimum(a[1], b[1])))
    return inter / union, inter / union - (hull - union) / hull


def test_aligned_giou_matches_a_loop_on_values_and_gradients():
    gen = torch.Generator().manual_seed(0)
    a = torch.cat([torch.rand(20, 2, generator=gen, dtype=torch.float64) * 10,
                   torch.rand(20, 2, generator=gen, dtype=torch.float64) * 5 + 0.5], 1)
    b = torch.cat([torch.rand(20, 2, generator=gen, dtype=torch.float64) * 10,
                   torch.rand(20, 2, generator=gen, dtype=torch.float64) * 5 + 0.5], 1)
    a = torch.cat([a[:, :2], a[:, :2] + a[:, 2:]], 1).requires_grad_()
    b = torch.cat([b[:, :2], b[:, :2] + b[:, 2:]], 1)
    b[0] = a[0].detach()  # identical boxes: IoU = GIoU = 1
    iou_, giou = yolo.aligned_giou(a, b)
    (giou.sum() + iou_.sum()).backward()
    grad = a.grad.clone()
    a.grad = None
    expected = [naive_giou(a[i], b[i]) for i in range(20)]
    torch.testing.assert_close(iou_, torch.stack([e[0] for e in expected]))
    torch.testing.assert_close(giou, torch.stack([e[1] for e in expected]))
    assert giou[0].item() == pytest.approx(1.0) and (giou < iou_ + 1e-12).all()
    sum(e[0] + e[1] for e in expected).backward()
    torch.testing.assert_close(grad, a.grad)


def naive_simota(gt, labels, points, strides, pred, cls_logits, obj_logits, radius=2.5):
    """YOLOX's SimOTA with Python loops over boxes and cells."""
    num_classes = len(cls_logits[0])
    candidates = []
    in_both = {}
    for p, ((x, y), s) in enumerate(zip(points, strides, strict=True)):
        flags = []
        for g in gt:
            inside = g[0] < x < g[2] and g[1] < y < g[3]
            cx, cy = (g[0] + g[2]) / 2, (g[1] + g[3]) / 2
            near = abs(x - cx) < radius * s and abs(y - cy) < radius * s
            flags.append((inside, near))
        if any(i or n for i, n in flags):
            candidates.append(p)
            in_both[p] = [i and n for i, n in flags]
    cost, ious = {}, {}
    for j, g in enumerate(gt):
        for p in candidates:
            value = iou(g, pred[p])
            ious[j, p] = value
            prob = [math.sqrt(1 / (1 + math.exp(-c)) / (1 + math.exp(-obj_logits[p])))
                    for c in cls_logits[p]]
            bce = -sum(math.log(q) if labels[j] == k else math.log(1 - q)
                       for k, q in enumerate(prob))
            cost[j, p] = (bce + 3 * -math.log(value + 1e-8)
                          + (0 if in_both[p][j] else 1e5))
    chosen = {}  # cell -> list of boxes that took it
    for j in range(len(gt)):
        top = sorted((ious[j, p] for p in candidates), reverse=True)[:10]
        k = max(int(sum(top)), 1)
        for p in sorted(candidates, key=lambda p: cost[j, p])[:k]:
            chosen.setdefault(p, []).append(j)
    result = {}
    for p, boxes in chosen.items():
        j = min(boxes, key=lambda j: cost[j, p])
        result[p] = (j, ious[j, p])
    assert num_classes
    return result


def test_simota_matches_a_loop():
    torch.manual_seed(0)
    points = torch.tensor([[(x + 0.5) * 8, (y + 0.5) * 8] for y in range(8) for x in range(8)],
                          dtype=torch.float64)
    strides = torch.full((64,), 8.0, dtype=torch.float64)
    # Predictions near two objects so that IoUs (and the dynamic k) are well above zero.
    gt = torch.tensor([[6.0, 10.0, 40.0, 38.0], [22.0, 18.0, 60.0, 62.0]], dtype=torch.float64)
    labels = torch.tensor([2, 0])
    centre = points + torch.randn(64, 2, dtype=torch.float64) * 3
    size = torch.rand(64, 2, dtype=torch.float64) * 30 + 15
    pred = torch.cat([centre - size / 2, centre + size / 2], 1)
    cls_logits = torch.randn(64, 3, dtype=torch.float64)
    obj_logits = torch.randn(64, dtype=torch.float64)
    foreground, matched, ious = yolo.simota(gt, labels, points, strides, pred, cls_logits,
                                            obj_logits)
    expected = naive_simota(gt.tolist(), labels.tolist(), points.tolist(), strides.tolist(),
                            pred.tolist(), cls_logits.tolist(), obj_logits.tolist())
    cells = foreground.nonzero()[:, 0].tolist()
    assert cells == sorted(expected) and len(cells) > 2
    assert matched.tolist() == [expected[p][0] for p in cells]
    assert ious.tolist() == pytest.approx([expected[p][1] for p in cells])
    # No candidate at all (a box far outside every cell's reach): nothing is foreground.
    far = torch.tensor([[1000.0, 1000.0, 1010.0, 1010.0]], dtype=torch.float64)
    foreground, matched, _ = yolo.simota(far, labels[:1], points, strides, pred, cls_logits,
                                         obj_logits)
    assert not foreground.any() and matched.numel() == 0


def test_losses_by_hand():
    torch.manual_seed(0)
    model = yolo.yolox_cpu(num_classes=2, width=4).double().train()
    images, targets = batch(2, dtype=torch.float64)
    targets[1] = empty_target()
    targets[1]["boxes"] = targets[1]["boxes"].double()
    losses = model(images, targets)
    points, strides, boxes, obj, cls = model.predict(images)
    match = naive_simota(targets[0]["boxes"].tolist(), targets[0]["labels"].tolist(),
                         points.tolist(), strides.tolist(), boxes[0].tolist(),
                         cls[0].tolist(), obj[0].tolist())
    num_fg = len(match)
    assert num_fg >= 2

    def bce(logit, target):
        return -(target * math.log(1 / (1 + math.exp(-logit)))
                 + (1 - target) * math.log(1 - 1 / (1 + math.exp(-logit))))

    obj_sum = sum(bce(obj[i, p].item(), float(i == 0 and p in match))
                  for i in range(2) for p in range(len(points)))
    box_sum = cls_sum = 0.0
    for p, (j, quality) in match.items():
        gt = targets[0]["boxes"][j]
        box_sum += 1 - naive_giou(boxes[0, p], gt)[1].item()
        label = targets[0]["labels"][j].item()
        cls_sum += sum(bce(cls[0, p, k].item(), quality if k == label else 0.0)
                       for k in range(2))
    assert losses["loss_obj"].item() == pytest.approx(obj_sum / num_fg, rel=1e-9)
    assert losses["loss_box"].item() == pytest.approx(5 * box_sum / num_fg, rel=1e-9)
    assert losses["loss_cls"].item() == pytest.approx(cls_sum / num_fg, rel=1e-9)
    assert losses["positives"].item() == num_fg / 2


def test_zero_boxes_train_and_eval_output():
    torch.manual_seed(0)
    model = yolo.yolox_cpu(num_classes=3, width=4, max_detections=15,
                           score_threshold=0.0).train()
    images, targets = batch(2)
    losses = model(images, [empty_target(), empty_target()])
    assert losses["loss_box"].item() == 0.0 and losses["loss_cls"].item() == 0.0
    # Only objectness is taught: BCE towards 0 over every cell, divided by max(fg, 1) = 1.
    obj = model.predict(images)[3]
    expected = F.binary_cross_entropy_with_logits(obj, torch.zeros_like(obj), reduction="sum")
    assert losses["loss_obj"].item() == pytest.approx(expected.item(), rel=1e-5)
    losses = model(images, targets)
    sum(v for k, v in losses.items() if k.startswith("loss")).backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    check_detections(model(images), 2, 64, 3, max_detections=15)
    detections = model(images[:1])
    check_detections(detections, 1, 64, 3, max_detections=15)
    assert len(detections[0]["scores"]) == 15
    detections, losses = model(images, targets)
    assert len(detections) == 2 and set(losses) >= {"loss_box", "loss_obj", "loss_cls"}


@pytest.mark.slow
def test_yolox_learns_scenes():
    from divekit.data.scenes import generate_scenes

    torch.manual_seed(0)
    train = generate_scenes(400, size=128, seed=0)
    held_out = generate_scenes(100, size=128, seed=1)
    model = yolo.yolox_cpu(image_size=128)
    map_50, seconds = train_and_evaluate(model, train, held_out, epochs=6)
    print(f"yolox-cpu scenes: mAP@0.5 {map_50:.3f} after {seconds:.0f} s")
    assert map_50 > YOLOX_FLOOR
