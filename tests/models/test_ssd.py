"""TinySSD (the course's, d2l 14.7) and the multiscale SSD: shapes, counts, losses against naive
float64 loops, evaluation output, and learning on generated data."""

import math
import time

import pytest
import torch
import torch.nn.functional as F

from divekit.data.augment import RandomHorizontalFlip
from divekit.errors import DivekitError
from divekit.models import ssd
from divekit.models.registry import count_parameters

# Held-out mAP@0.5 floors of the learning tests, about half of what they measured (random
# boxes score about 0): tiny-ssd 0.40, ssd 0.23 (1 thread, 2-core CPU).
TINY_SSD_FLOOR = 0.2
SSD_FLOOR = 0.12


def conv(c_in, c_out, k=3):
    return c_out * c_in * k * k + c_out


def bn(c):
    return 2 * c


def down_sample_blk_params(c_in, c_out):
    return conv(c_in, c_out) + bn(c_out) + conv(c_out, c_out) + bn(c_out)


def tiny_ssd_expected(num_classes):
    body = sum(down_sample_blk_params(a, b) for a, b in
               [(3, 16), (16, 32), (32, 64), (64, 128), (128, 128), (128, 128)])
    heads = sum(conv(c, 4 * (num_classes + 1)) + conv(c, 4 * 4) for c in (64, 128, 128, 128, 128))
    return body + heads


def ssd_expected(num_classes, w):
    def cbr(c_in, c_out, k=3):  # bias-free conv + BN
        return c_in * c_out * k * k + bn(c_out)

    backbone = (cbr(3, w) + cbr(w, 2 * w) + cbr(2 * w, 2 * w) + cbr(2 * w, 4 * w)
                + cbr(4 * w, 4 * w) + cbr(4 * w, 8 * w) + cbr(8 * w, 8 * w))
    extras = 4 * (cbr(8 * w, 4 * w, 1) + cbr(4 * w, 8 * w))
    heads = sum(conv(c, 6 * (num_classes + 1)) + conv(c, 6 * 4) for c in [4 * w] + [8 * w] * 5)
    return backbone + extras + heads


def batch(n, size=64, boxes=((8.0, 10.0, 40.0, 44.0), (30.0, 20.0, 62.0, 50.0)), labels=(0, 1),
          dtype=torch.float32, seed=0):
    """n random images with the same targets (boxes given for a 64x64 image, scaled)."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, size, size, generator=gen, dtype=dtype)
    box = torch.tensor(boxes, dtype=dtype).reshape(-1, 4) * size / 64
    targets = [{"boxes": box.clone(), "labels": torch.tensor(labels, dtype=torch.long)}
               for _ in range(n)]
    return images, targets


def empty_target():
    return {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}


# --- naive float64 versions of the course's labelling ----------------------------------------

def iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def naive_assign(gt, anchors, threshold=0.5):
    """The course's assign_anchor_to_bbox with Python loops."""
    table = [[iou(a, g) for g in gt] for a in anchors]
    assigned = [-1] * len(anchors)
    for i, row in enumerate(table):
        if row:
            j = max(range(len(row)), key=lambda k: (row[k], -k))
            if row[j] >= threshold:
                assigned[i] = j
    rows, cols = set(), set()
    for _ in range(min(len(anchors), len(gt))):
        best, where = -1.0, None
        for i, row in enumerate(table):
            for j, value in enumerate(row):
                if i not in rows and j not in cols and value > best:
                    best, where = value, (i, j)
        i, j = where
        assigned[i] = j
        rows.add(i)
        cols.add(j)
    return assigned


def naive_offset(anchor, box, eps=1e-6):
    """The course's offset_boxes for one anchor: 10 * centre shift, 5 * log size ratio."""
    acx, acy = (anchor[0] + anchor[2]) / 2, (anchor[1] + anchor[3]) / 2
    aw, ah = anchor[2] - anchor[0], anchor[3] - anchor[1]
    bcx, bcy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    bw, bh = box[2] - box[0], box[3] - box[1]
    return [10 * (bcx - acx) / aw, 10 * (bcy - acy) / ah,
            5 * math.log(eps + bw / aw), 5 * math.log(eps + bh / ah)]


def naive_labels(anchors, target, size):
    """Per anchor: class (0 background, else label + 1) and offsets (None for background)."""
    gt = [[v / size for v in box] for box in target["boxes"].tolist()]
    assigned = naive_assign(gt, anchors)
    classes = [0 if j < 0 else int(target["labels"][j]) + 1 for j in assigned]
    offsets = [None if j < 0 else naive_offset(a, gt[j])
               for a, j in zip(anchors, assigned, strict=True)]
    return classes, offsets


def log_softmax(row):
    top = max(row)
    log_sum = top + math.log(sum(math.exp(v - top) for v in row))
    return [v - log_sum for v in row]


# --- TinySSD ---------------------------------------------------------------------------------

def test_tiny_ssd_shapes_are_the_books():
    model = ssd.tiny_ssd()
    # The book prints these for its blocks and for a batch of 32 (here 2) 256x256 images.
    assert ssd.down_sample_blk(3, 10)(torch.zeros(2, 3, 20, 20)).shape == (2, 10, 10, 10)
    assert model.blk_0(torch.zeros(2, 3, 256, 256)).shape == (2, 64, 32, 32)
    anchors, cls_preds, bbox_preds = model.predict(torch.zeros(2, 3, 256, 256))
    assert anchors.shape == (1, 5444, 4)
    assert cls_preds.shape == (2, 5444, 2)
    assert bbox_preds.shape == (2, 21776)
    assert model.detect_normalised(torch.zeros(1, 3, 256, 256)).shape == (1, 5444, 6)
    # Anchors are fractions of the image: a 128x128 input has maps 16, 8, 4, 2, 1.
    assert model.predict(torch.zeros(1, 3, 128, 128))[0].shape == (1, 4 * 341, 4)


def test_tiny_ssd_parameter_count_by_formula():
    assert count_parameters(ssd.tiny_ssd()) == tiny_ssd_expected(1) == 1_010_376
    assert count_parameters(ssd.tiny_ssd(num_classes=3)) == tiny_ssd_expected(3)


def test_tiny_ssd_anchors_at_the_first_pixel_are_the_courses():
    anchors = ssd.tiny_ssd().predict(torch.zeros(1, 3, 256, 256))[0][0]
    # First map is 32x32: pixel (0, 0) is centred at 0.5 / 32; sizes 0.2, 0.272 at ratio 1,
    # then size 0.2 at ratios 2 and 0.5 (width s * sqrt(r), height s / sqrt(r)).
    c = 0.5 / 32
    expected = []
    for s, r in [(0.2, 1), (0.272, 1), (0.2, 2), (0.2, 0.5)]:
        w, h = s * math.sqrt(r), s / math.sqrt(r)
        expected.append([c - w / 2, c - h / 2, c + w / 2, c + h / 2])
    torch.testing.assert_close(anchors[:4], torch.tensor(expected))
    # The global max-pool's single pixel is centred on the image.
    torch.testing.assert_close(anchors[-4], torch.tensor([0.06, 0.06, 0.94, 0.94]))


def test_tiny_ssd_loss_equals_the_courses_formula_by_hand():
    torch.manual_seed(0)
    model = ssd.tiny_ssd(num_classes=2).double().train()
    images, targets = batch(2, dtype=torch.float64)
    targets[1] = {"boxes": torch.tensor([[20.0, 4.0, 60.0, 30.0]], dtype=torch.float64),
                  "labels": torch.tensor([1])}
    losses = model(images, targets)
    anchors, logits, offsets = model.predict(images)
    cls_terms, box_terms, correct, abs_error = [], [], 0, 0.0
    anchor_list = anchors[0].tolist()
    for i, target in enumerate(targets):
        classes, wanted = naive_labels(anchor_list, target, 64)
        ce, l1 = 0.0, 0.0
        for a, (label, offset) in enumerate(zip(classes, wanted, strict=True)):
            row = logits[i, a].tolist()
            ce -= log_softmax(row)[label]
            correct += max(range(len(row)), key=lambda k: row[k]) == label
            if offset is not None:
                for k in range(4):
                    l1 += abs(offsets[i, 4 * a + k].item() - offset[k])
        cls_terms.append(ce / len(classes))
        box_terms.append(l1 / (4 * len(classes)))
        abs_error += l1
    total = 2 * len(anchor_list)
    assert losses["loss_cls"].item() == pytest.approx(sum(cls_terms) / 2, rel=1e-9)
    assert losses["loss_box"].item() == pytest.approx(sum(box_terms) / 2, rel=1e-9)
    assert losses["class_err"].item() == pytest.approx(1 - correct / total, rel=1e-9)
    assert losses["box_mae"].item() == pytest.approx(abs_error / (4 * total), rel=1e-9)


def test_tiny_ssd_trains_on_images_without_boxes():
    torch.manual_seed(0)
    model = ssd.tiny_ssd().train()
    images, targets = batch(2)
    targets = [{"boxes": targets[0]["boxes"][:1], "labels": torch.tensor([0])}, empty_target()]
    losses = model(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(v for k, v in losses.items() if k.startswith("loss")).backward()
    assert all(p.grad is not None for p in model.parameters())
    # All empty: every anchor is background, the box loss is exactly zero.
    losses = model(images, [empty_target(), empty_target()])
    assert losses["loss_box"].item() == 0.0
    logits = model.predict(images)[1]
    expected = F.cross_entropy(logits.reshape(-1, 2),
                               torch.zeros(logits.shape[0] * logits.shape[1], dtype=torch.long))
    assert losses["loss_cls"].item() == pytest.approx(expected.item(), rel=1e-5)


def check_detections(detections, count, size, num_classes, max_detections=100):
    assert len(detections) == count
    for det in detections:
        assert set(det) == {"boxes", "scores", "labels"}
        boxes, scores, labels = det["boxes"], det["scores"], det["labels"]
        assert boxes.shape == (len(scores), 4) and labels.shape == scores.shape
        assert len(scores) <= max_detections
        assert labels.dtype == torch.int64
        assert not scores.requires_grad and not boxes.requires_grad
        if len(scores):
            assert (scores[:-1] >= scores[1:]).all()
            assert labels.min() >= 0 and labels.max() < num_classes
            assert boxes.min() >= 0 and boxes.max() <= size
            assert (boxes[:, 2:] >= boxes[:, :2]).all()


def test_tiny_ssd_eval_output_is_pixels_from_the_courses_output():
    torch.manual_seed(0)
    model = ssd.tiny_ssd(num_classes=2, max_detections=7).eval()
    images, targets = batch(2, size=128)
    detections = model(images)
    check_detections(detections, 2, 128, 2, max_detections=7)
    raw = model.detect_normalised(images)
    for det, rows in zip(detections, raw, strict=True):
        rows = [r for r in rows.tolist() if r[0] >= 0 and r[1] > 0.01]
        rows.sort(key=lambda r: -r[1])
        assert len(det["scores"]) == min(7, len(rows)) > 0
        for k, r in enumerate(rows[: len(det["scores"])]):
            assert det["labels"][k].item() == int(r[0])
            assert det["scores"][k].item() == pytest.approx(r[1])
            box = [min(max(v * 128, 0), 128) for v in r[2:]]
            assert det["boxes"][k].tolist() == pytest.approx(box, abs=1e-4)
    one = model(images[:1])
    check_detections(one, 1, 128, 2, max_detections=7)
    with_targets, losses = model(images, targets)
    assert len(with_targets) == 2 and set(losses) >= {"loss_cls", "loss_box"}


def test_detectors_reject_bad_input():
    model = ssd.tiny_ssd().train()
    images, targets = batch(2)
    with pytest.raises(DivekitError, match="needs targets"):
        model(images)
    with pytest.raises(DivekitError, match="labels must be in 0..0"):
        model(images, [{"boxes": t["boxes"], "labels": torch.tensor([0, 3])} for t in targets])
    with pytest.raises(DivekitError, match="one dict"):
        model(images, targets[:1])
    with pytest.raises(DivekitError, match=r"\(B, 3, H, W\)"):
        model(images[0], targets)
    with pytest.raises(DivekitError, match="num_classes must be a positive integer"):
        ssd.tiny_ssd(num_classes=0)
    with pytest.raises(DivekitError, match="nms_threshold must be in"):
        ssd.ssd(nms_threshold=1.5)


# --- the multiscale SSD ----------------------------------------------------------------------

def test_ssd_parameter_count_anchors_and_shapes():
    model = ssd.ssd()
    assert count_parameters(model) == ssd_expected(6, 16)
    assert count_parameters(ssd.ssd(num_classes=2, width=8)) == ssd_expected(2, 8)
    anchors, logits, offsets = model.predict(torch.zeros(2, 3, 256, 256))
    # Maps 32, 16, 8, 4, 2, 1 with 6 anchors per pixel.
    count = 6 * (32 * 32 + 16 * 16 + 8 * 8 + 4 * 4 + 2 * 2 + 1)
    assert anchors.shape == (count, 4)
    assert logits.shape == (2, count, 7) and offsets.shape == (2, count, 4)
    # The paper's scales: s_k linear from 0.1 to 0.9 over 6 maps, extra sqrt(s_k s_k+1), and
    # ratios 1, 2, 1/2, 3, 1/3 at s_k; the last map's single pixel is centred.
    s = [0.1 + 0.16 * k for k in range(6)] + [1.0]
    last = anchors[-6:]
    widths, heights = (last[:, 2] - last[:, 0]).tolist(), (last[:, 3] - last[:, 1]).tolist()
    expected = [(s[5], s[5]), (math.sqrt(s[5] * s[6]),) * 2]
    expected += [(s[5] * math.sqrt(r), s[5] / math.sqrt(r)) for r in (2, 0.5, 3, 1 / 3)]
    assert widths == pytest.approx([w for w, _ in expected], abs=1e-6)
    assert heights == pytest.approx([h for _, h in expected], abs=1e-6)
    torch.testing.assert_close((last[:, :2] + last[:, 2:]) / 2, torch.full((6, 2), 0.5))


def smooth_l1(x):
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def test_ssd_loss_equals_hard_negative_mining_by_hand():
    torch.manual_seed(0)
    model = ssd.ssd(num_classes=2, width=4).double().train()
    images, targets = batch(2, dtype=torch.float64)
    targets[1] = empty_target()
    targets[1]["boxes"] = targets[1]["boxes"].double()
    losses = model(images, targets)
    anchors, logits, offsets = model.predict(images)
    anchor_list = anchors.tolist()
    cls_sum, box_sum, positives = 0.0, 0.0, 0
    for i, target in enumerate(targets):
        classes, wanted = naive_labels(anchor_list, target, 64)
        ce = [-log_softmax(logits[i, a].tolist())[c] for a, c in enumerate(classes)]
        pos = [a for a, c in enumerate(classes) if c > 0]
        neg = sorted((a for a, c in enumerate(classes) if c == 0), key=lambda a: -ce[a])
        quota = 3 * max(len(pos), 1)  # an empty image still mines 3 negatives
        cls_sum += sum(ce[a] for a in pos) + sum(ce[a] for a in neg[:quota])
        for a in pos:
            box_sum += sum(smooth_l1(offsets[i, a, k].item() - wanted[a][k]) for k in range(4))
        positives += len(pos)
    assert positives >= 2  # every box takes at least its best anchor
    assert losses["loss_cls"].item() == pytest.approx(cls_sum / positives, rel=1e-9)
    assert losses["loss_box"].item() == pytest.approx(box_sum / positives, rel=1e-9)
    assert losses["positives"].item() == positives / 2


def test_ssd_zero_boxes_and_eval_output():
    torch.manual_seed(0)
    model = ssd.ssd(num_classes=3, width=8, max_detections=20).train()
    images, targets = batch(2)
    losses = model(images, [empty_target(), empty_target()])
    assert losses["loss_box"].item() == 0.0 and torch.isfinite(losses["loss_cls"])
    losses = model(images, targets)
    sum(v for k, v in losses.items() if k.startswith("loss")).backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    check_detections(model(images), 2, 64, 3, max_detections=20)
    detections = model(images[:1])
    check_detections(detections, 1, 64, 3, max_detections=20)
    assert len(detections[0]["scores"]) > 0


def test_class_aware_detections_by_hand():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]])
    probs = torch.tensor([[0.9, 0.8], [0.7, 0.002], [0.3, 0.6]])
    det = ssd.class_aware_detections(boxes, probs, score_threshold=0.01, nms_threshold=0.5,
                                     max_detections=10)
    # Class 0: box 1 overlaps box 0 (IoU 81/119) and goes; class 1: box 1 is under the
    # threshold; NMS never compares boxes of different classes.
    assert det["scores"].tolist() == pytest.approx([0.9, 0.8, 0.6, 0.3])
    assert det["labels"].tolist() == [0, 1, 1, 0]
    assert det["boxes"].tolist() == [boxes[i].tolist() for i in (0, 0, 2, 2)]
    assert len(ssd.class_aware_detections(boxes, probs, 0.01, 0.5, 2)["scores"]) == 2


# --- learning --------------------------------------------------------------------------------

def train_and_evaluate(model, data, held_out, epochs, batch_size=16, lr=3e-3):
    """Train with a plain loop on uint8 images (AdamW, one-cycle, random flips), return the
    held-out mAP@0.5 and the seconds."""
    from divekit.vision.metrics import MeanAveragePrecision

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, lr, total_steps=epochs * math.ceil(len(data[0]) / batch_size), pct_start=0.1)
    flip = RandomHorizontalFlip()
    images, targets = data
    start = time.perf_counter()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(images))
        for i in range(0, len(images), batch_size):
            index = order[i:i + batch_size]
            x = images[index].float() / 255
            y = [targets[j] for j in index.tolist()]
            x, y = flip.apply(x, y)
            losses = model(x, y)
            loss = sum(v for k, v in losses.items() if k.startswith("loss"))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
    seconds = time.perf_counter() - start
    model.eval()
    metric = MeanAveragePrecision()
    with torch.no_grad():
        for i in range(0, len(held_out[0]), 50):
            metric.update(model(held_out[0][i:i + 50].float() / 255), held_out[1][i:i + 50])
    return metric.compute()["map_50"].item(), seconds


@pytest.mark.slow
def test_tiny_ssd_learns_bananas():
    # 320 generated bananas at 128x128 (a quarter of the book's pixels), 5 epochs of AdamW
    # (measured 0.40 in 31 s): the book's SGD (lr 0.2, batch 32) reached 0.001 in this budget.
    from divekit.data.scenes import generate_bananas

    torch.manual_seed(0)
    train = generate_bananas(320, size=128, seed=0)
    held_out = generate_bananas(64, size=128, seed=1)
    model = ssd.tiny_ssd()
    map_50, seconds = train_and_evaluate(model, train, held_out, epochs=5)
    print(f"tiny-ssd bananas: mAP@0.5 {map_50:.3f} after {seconds:.0f} s")
    assert map_50 > TINY_SSD_FLOOR


@pytest.mark.slow
def test_ssd_learns_scenes():
    from divekit.data.scenes import generate_scenes

    torch.manual_seed(0)
    train = generate_scenes(400, size=128, seed=0)
    held_out = generate_scenes(100, size=128, seed=1)
    model = ssd.ssd(image_size=128)
    map_50, seconds = train_and_evaluate(model, train, held_out, epochs=6)
    print(f"ssd scenes: mAP@0.5 {map_50:.3f} after {seconds:.0f} s")
    assert map_50 > SSD_FLOOR
