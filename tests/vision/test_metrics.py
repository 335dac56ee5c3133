"""divekit.vision.metrics.MeanAveragePrecision against pycocotools' COCOeval called directly."""

from __future__ import annotations

import contextlib
import copy
import io
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from divekit.engine import distributed
from divekit.errors import DivekitError
from divekit.vision.metrics import MeanAveragePrecision

STAT_NAMES = ["map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_1",
              "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large"]


def random_set(seed: int, images: int = 6, classes: int = 3, size: int = 64,
               masks: bool = False) -> tuple[list[dict], list[dict]]:
    """Detections near (and far from) the ground truth; some images have no boxes of a kind."""
    gen = torch.Generator().manual_seed(seed)
    preds, targets = [], []
    for _ in range(images):
        k = int(torch.randint(0, 5, (1,), generator=gen))
        corner = torch.rand(k, 2, generator=gen) * size * 0.6
        # Sizes from a few pixels to most of the image: COCO's small, medium and large ranges
        # scale with the image, so boxes are drawn on a 0-64 grid and then scaled up.
        wh = 2 + torch.rand(k, 2, generator=gen) * size * 0.4
        boxes = torch.cat([corner, corner + wh], 1) * 4
        labels = torch.randint(0, classes, (k,), generator=gen)
        copies = int(torch.randint(0, 3, (1,), generator=gen))
        # Corners moved by about a tenth of the box's size: IoUs spread over COCO's thresholds.
        jitter = torch.randn(k * copies, 4, generator=gen) * (wh * 0.4).repeat(copies, 2)
        noise = int(torch.randint(0, 3, (1,), generator=gen))
        far = torch.rand(noise, 2, generator=gen) * size * 3
        det = torch.cat([boxes.repeat(copies, 1) + jitter,
                         torch.cat([far, far + 20 + torch.rand(noise, 2, generator=gen) * 60], 1)])
        det = torch.cat([det[:, :2], torch.maximum(det[:, 2:], det[:, :2] + 1)], 1)
        det_labels = torch.cat([labels.repeat(copies),
                                torch.randint(0, classes, (noise,), generator=gen)])
        keep = torch.rand(len(det), generator=gen) < 0.85
        pred = {"boxes": det[keep], "scores": torch.rand(int(keep.sum()), generator=gen),
                "labels": det_labels[keep]}
        target = {"boxes": boxes, "labels": labels}
        if masks:
            target["masks"] = box_masks(boxes, size * 4, gen, 0.0)
            pred["masks"] = box_masks(pred["boxes"], size * 4, gen, 0.3)
        preds.append(pred)
        targets.append(target)
    return preds, targets


def box_masks(boxes: torch.Tensor, size: int, gen: torch.Generator, noise: float
              ) -> torch.Tensor:
    """Soft masks filling each box (ellipse-ish blobs with random holes), values in [0, 1]."""
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    out = torch.zeros(len(boxes), size, size)
    for i, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
        inside = ((xs - cx) / max(rx, 1)) ** 2 + ((ys - cy) / max(ry, 1)) ** 2
        out[i] = (1.2 - inside).clamp(0, 1) - noise * torch.rand(size, size, generator=gen)
    return out.clamp(0, 1)


def coco_reference(preds: list[dict], targets: list[dict], iou_type: str = "bbox",
                   class_id: int | None = None) -> list[float]:
    """COCOeval's 12 summary numbers, through its own loading path (``loadRes``)."""
    images, annotations, results = [], [], []
    classes = sorted({int(c) for t in targets + preds for c in t["labels"]})
    for image, (pred, target) in enumerate(zip(preds, targets, strict=True)):
        images.append({"id": image, "height": 256, "width": 256})
        for j, (box, label) in enumerate(zip(target["boxes"].tolist(),
                                             target["labels"].tolist(), strict=True)):
            x1, y1, x2, y2 = box
            annotation = {"id": len(annotations) + 1, "image_id": image, "category_id": label,
                          "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                          "iscrowd": 0}
            if iou_type == "segm":
                rle = rle_of(target["masks"][j])
                annotation.update(segmentation=rle, area=float(mask_utils.area(rle)))
            annotations.append(annotation)
        for j, (box, label, score) in enumerate(zip(pred["boxes"].tolist(),
                                                    pred["labels"].tolist(),
                                                    pred["scores"].tolist(), strict=True)):
            x1, y1, x2, y2 = box
            result = {"image_id": image, "category_id": label, "score": score}
            if iou_type == "segm":
                result["segmentation"] = rle_of(pred["masks"][j])
            else:
                result["bbox"] = [x1, y1, x2 - x1, y2 - y1]
            results.append(result)
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO()
        truth.dataset = {"images": images, "annotations": annotations,
                         "categories": [{"id": c} for c in classes]}
        truth.createIndex()
        evaluation = COCOeval(truth, truth.loadRes(copy.deepcopy(results)), iou_type)
        if class_id is not None:
            evaluation.params.catIds = [class_id]
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation.stats.tolist()


def rle_of(mask: torch.Tensor) -> dict:
    binary = np.asfortranarray((mask > 0.5).numpy().astype(np.uint8))
    return mask_utils.encode(binary)


def ours(preds, targets, batch: int = 2, **kwargs) -> dict[str, torch.Tensor]:
    metric = MeanAveragePrecision(**kwargs)
    for first in range(0, len(preds), batch):
        metric.update(preds[first:first + batch], targets[first:first + batch])
    return metric.compute()


@pytest.mark.parametrize("seed", range(12))
def test_bbox_equals_pycocotools(seed):
    preds, targets = random_set(seed)
    result = ours(preds, targets)
    reference = coco_reference(preds, targets)
    for name, value in zip(STAT_NAMES, reference, strict=True):
        assert result[name].dtype == torch.float32
        assert result[name].item() == pytest.approx(value, abs=1e-6), name


@pytest.mark.parametrize("seed", range(3))
def test_segm_equals_pycocotools(seed):
    preds, targets = random_set(100 + seed, images=5, size=24, masks=True)
    result = ours(preds, targets, iou_type="segm")
    reference = coco_reference(preds, targets, "segm")
    for name, value in zip(STAT_NAMES, reference, strict=True):
        assert result[name].item() == pytest.approx(value, abs=1e-6), name
    boxes = ours(preds, targets)  # boxes and masks give different numbers on the same set
    assert boxes["map"].item() != pytest.approx(result["map"].item(), abs=1e-3)


@pytest.mark.parametrize("seed", range(4))
def test_class_metrics_equal_pycocotools_per_class(seed):
    preds, targets = random_set(200 + seed, images=8, classes=4)
    result = ours(preds, targets, class_metrics=True)
    classes = sorted({int(c) for t in targets + preds for c in t["labels"]})
    assert result["classes"].tolist() == classes
    assert result["map_per_class"].shape == result["map_50_per_class"].shape == (len(classes),)
    for k, c in enumerate(classes):
        reference = coco_reference(preds, targets, class_id=c)
        assert result["map_per_class"][k].item() == pytest.approx(reference[0], abs=1e-6)
        assert result["map_50_per_class"][k].item() == pytest.approx(reference[1], abs=1e-6)


def test_empty_cases():
    box = torch.tensor([[10.0, 10.0, 50.0, 60.0]])
    nothing = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
               "labels": torch.zeros(0, dtype=torch.long)}
    truth = {"boxes": box, "labels": torch.tensor([1])}
    no_truth = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    hit = {"boxes": box, "scores": torch.tensor([0.9]), "labels": torch.tensor([1])}
    # No detections anywhere: every class with ground truth scores 0.
    result = ours([nothing, nothing], [truth, no_truth], class_metrics=True)
    assert result["map"].item() == result["map_50"].item() == result["mar_100"].item() == 0.0
    assert result["map_per_class"].tolist() == [0.0]
    # Detections but no ground truth anywhere: nothing to score (-1, COCO's convention).
    result = ours([hit], [no_truth])
    assert result["map"].item() == result["map_50"].item() == -1.0
    # Nothing at all, and a metric never updated.
    assert ours([nothing], [no_truth])["map"].item() == -1.0
    assert MeanAveragePrecision().compute()["map_50"].item() == -1.0
    # A perfect detection, and a more confident false alarm on an image without ground truth:
    # ranked first, it halves the precision at every recall (AP 0.5).
    alarm = {"boxes": box, "scores": torch.tensor([0.95]), "labels": torch.tensor([1])}
    result = ours([hit, alarm], [truth, no_truth])
    assert result["map_50"].item() == pytest.approx(0.5)
    assert result["map_50"].item() == pytest.approx(coco_reference([hit, alarm],
                                                                   [truth, no_truth])[1])


def test_reset_prefix_and_max_detections():
    preds, targets = random_set(7)
    metric = MeanAveragePrecision(prefix="mask_", max_detections=1)
    metric.update(preds, targets)
    first = metric.compute()
    assert "mask_map" in first and "mask_mar_1" in first and "mask_mar_100" not in first
    metric.reset()
    assert metric.compute()["mask_map"].item() == -1.0
    # Keeping only the best detection per image and class never raises recall.
    many = ours(preds, targets)
    assert first["mask_mar_1"].item() <= many["mar_100"].item()


def test_records_pickle_for_checkpoints_and_gathering(tmp_path):
    preds, targets = random_set(3, masks=True, size=16)
    metric = MeanAveragePrecision(iou_type="segm")
    metric.update(preds, targets)
    torch.save(metric.metric_state, tmp_path / "state.pt")
    restored = MeanAveragePrecision(iou_type="segm")
    for name, value in torch.load(tmp_path / "state.pt", weights_only=True).items():
        setattr(restored, name, value)
    assert restored.compute()["map"].item() == metric.compute()["map"].item()


def test_images_split_across_processes_give_the_whole_set(monkeypatch):
    preds, targets = random_set(11, images=9)
    halves = [MeanAveragePrecision(), MeanAveragePrecision()]
    halves[0].update(preds[:4], targets[:4])
    halves[1].update(preds[4:], targets[4:])

    def gather(obj):  # what all_gather_object returns on rank 0 of two processes
        for name in ("detections", "groundtruths"):
            if obj is getattr(halves[0], name):
                return [obj, getattr(halves[1], name)]
        raise AssertionError("gathered something else")

    monkeypatch.setattr(distributed, "gather", gather)
    split = halves[0].compute()
    monkeypatch.undo()
    whole = ours(preds, targets)
    assert {k: v.item() for k, v in split.items()} == {k: v.item() for k, v in whole.items()}


def _process(rank: int, port: int, world: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    preds, targets = random_set(11, images=9)
    metric = MeanAveragePrecision()
    metric.update(preds[rank::world], targets[rank::world])
    queue.put((rank, {k: v.item() for k, v in metric.compute().items()}))
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_agree_with_one():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.get_context("spawn")
    queue = context.Queue()
    mp.start_processes(_process, args=(port, 2, queue), nprocs=2, start_method="spawn")
    results = dict(queue.get() for _ in range(2))
    preds, targets = random_set(11, images=9)
    # Interleaved shards reorder the images; COCO's numbers do not depend on image order
    # except through score ties, which random scores do not have.
    whole = {k: v.item() for k, v in ours(preds, targets).items()}
    for values in results.values():
        assert values == pytest.approx(whole, abs=1e-9)


def test_bad_input_is_named():
    with pytest.raises(DivekitError, match="iou_type"):
        MeanAveragePrecision(iou_type="keypoints")
    metric = MeanAveragePrecision()
    with pytest.raises(DivekitError, match="2 predictions for 1 targets"):
        metric.update([{}, {}], [{}])
    with pytest.raises(DivekitError, match=r"preds\[0\] lacks \['scores'\]"):
        metric.update([{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}],
                      [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}])
    segm = MeanAveragePrecision(iou_type="segm")
    with pytest.raises(DivekitError, match="masks"):
        segm.update([{"boxes": torch.zeros(1, 4), "scores": torch.ones(1),
                      "labels": torch.zeros(1), "masks": torch.zeros(2, 8, 8)}],
                    [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0),
                      "masks": torch.zeros(0, 8, 8)}])
