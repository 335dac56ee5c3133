"""RoIAlign vectorised against a naive loop, its adaptive-sampling strategies, and mAP's speed.

1. roi_align: ``divekit.vision.roi_align`` against the loop a reader would write from
   torchvision's C++ kernel (one box, bin and sample at a time, channels as a vector), forward
   and forward + backward, median of ``--repeats``; then at a Faster R-CNN head's size (512
   boxes, 128 channels, a 16 x 16 map) each of its two paths (separable matrix products,
   grid_sample) against the loop.
2. Adaptive sampling (``sampling_ratio=-1``, grids of 1 to 5 per bin) on the grid_sample path:
   one grid padded to the largest box's against one pass per grid size.
3. ``MeanAveragePrecision`` (pycocotools' COCOeval) on 100 and 500 images of 100 detections.

    python benchmarks/roi_ops.py --repeats 5
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import torch

from divekit.vision import roi
from divekit.vision.metrics import MeanAveragePrecision
from machine import cpu_name


def naive_roi_align(x: torch.Tensor, rois: torch.Tensor, out: int, scale: float,
                    sampling_ratio: int, aligned: bool) -> torch.Tensor:
    """RoIAlign one box, bin and bilinear sample at a time (torchvision's kernel as a loop)."""
    _, C, H, W = x.shape
    offset = 0.5 if aligned else 0.0
    results = []
    for b, x1, y1, x2, y2 in rois.tolist():
        fm = x[int(b)]
        sx, sy = x1 * scale - offset, y1 * scale - offset
        w, h = x2 * scale - offset - sx, y2 * scale - offset - sy
        if not aligned:
            w, h = max(w, 1.0), max(h, 1.0)
        gh = sampling_ratio if sampling_ratio > 0 else math.ceil(h / out)
        gw = sampling_ratio if sampling_ratio > 0 else math.ceil(w / out)
        bins = []
        for ph in range(out):
            for pw in range(out):
                total = fm.new_zeros(C)
                for iy in range(gh):
                    yy = sy + ph * h / out + (iy + 0.5) * h / out / gh
                    for ix in range(gw):
                        xx = sx + pw * w / out + (ix + 0.5) * w / out / gw
                        total = total + bilinear(fm, yy, xx, H, W)
                bins.append(total / max(gh * gw, 1))
        results.append(torch.stack(bins, 1).view(C, out, out))
    return torch.stack(results)


def bilinear(fm: torch.Tensor, y: float, x: float, H: int, W: int) -> torch.Tensor:
    if y < -1.0 or y > H or x < -1.0 or x > W:
        return fm.new_zeros(fm.shape[0])
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = min(int(y), H - 1), min(int(x), W - 1)
    y1, x1 = min(y0 + 1, H - 1), min(x0 + 1, W - 1)
    ly, lx = (y - y0 if y0 < H - 1 else 0.0), (x - x0 if x0 < W - 1 else 0.0)
    return ((1 - ly) * (1 - lx) * fm[:, y0, x0] + (1 - ly) * lx * fm[:, y0, x1]
            + ly * (1 - lx) * fm[:, y1, x0] + ly * lx * fm[:, y1, x1])


def random_boxes(gen: torch.Generator, count: int, batch: int, image: float, smallest: float,
                 largest: float) -> torch.Tensor:
    size = smallest + torch.rand(count, 2, generator=gen) * (largest - smallest)
    corner = torch.rand(count, 2, generator=gen) * (image - size)
    index = torch.randint(batch, (count, 1), generator=gen).float()
    return torch.cat([index, corner, corner + size], 1)


def timed(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def forward_backward(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
                     ) -> Callable[[], object]:
    def run() -> None:
        x.grad = None
        fn(x).sum().backward()
    return run


def detections(gen: torch.Generator, images: int) -> tuple[list[dict], list[dict]]:
    """100 scored boxes per image around 6 objects of 5 classes (256 x 256 images)."""
    preds, targets = [], []
    for _ in range(images):
        truth = random_boxes(gen, 6, 1, 256, 16, 128)[:, 1:]
        labels = torch.randint(5, (6,), generator=gen)
        near = truth.repeat(10, 1) + torch.randn(60, 4, generator=gen) * 8
        far = random_boxes(gen, 40, 1, 256, 8, 128)[:, 1:]
        boxes = torch.cat([near, far])
        boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        preds.append({"boxes": boxes, "scores": torch.rand(100, generator=gen),
                      "labels": torch.cat([labels.repeat(10),
                                           torch.randint(5, (40,), generator=gen)])})
        targets.append({"boxes": truth, "labels": labels})
    return preds, targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rois", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    print(f"{cpu_name()}, {torch.get_num_threads()} threads, median of {args.repeats}")

    # A stride-4 map of a 200 x 200 image; boxes of 16 to 128 pixels.
    x = torch.randn(2, 64, 50, 50, generator=gen, requires_grad=True)
    rois = random_boxes(gen, args.rois, 2, 200, 16, 128)
    print(f"roi_align: {args.rois} boxes on {tuple(x.shape)}, output 7x7, sampling_ratio 2, "
          "aligned, float32")
    ours = lambda t: roi.roi_align(t, rois, 7, 0.25, 2, True)  # noqa: E731
    naive = lambda t: naive_roi_align(t, rois, 7, 0.25, 2, True)  # noqa: E731
    torch.testing.assert_close(ours(x), naive(x), rtol=1e-4, atol=1e-5)
    for label, make in (("forward", lambda fn: lambda: fn(x.detach())),
                        ("forward+backward", lambda fn: forward_backward(fn, x))):
        fast, slow = timed(make(ours), args.repeats), timed(make(naive), args.repeats)
        print(f"  {label:<17} vectorised {fast * 1e3:8.2f} ms   naive loop {slow * 1e3:9.1f} ms"
              f"   {slow / fast:6.0f}x")

    # Faster R-CNN's RoI head: 512 proposals of a 256 x 256 image on its stride-16 map.
    head = torch.randn(4, 128, 16, 16, generator=gen, requires_grad=True)
    proposals = random_boxes(gen, 512, 4, 256, 16, 200)
    print(f"roi_align: 512 boxes on {tuple(head.shape)}, output 7x7, sampling_ratio 2, "
          "spatial_scale 1/16, float32")
    naive = lambda t: naive_roi_align(t, proposals, 7, 1 / 16, 2, False)  # noqa: E731
    reference = naive(head.detach())
    slow = {label: timed(make(naive), args.repeats) for label, make in (
        ("forward", lambda fn: lambda: fn(head.detach())),
        ("forward+backward", lambda fn: forward_backward(fn, head)))}
    for path, ratio in (("separable (default here)", math.inf), ("grid_sample", 0.0)):
        roi._SEPARABLE_RATIO = ratio
        ours = lambda t: roi.roi_align(t, proposals, 7, 1 / 16, 2, False)  # noqa: E731
        torch.testing.assert_close(ours(head.detach()), reference, rtol=1e-4, atol=1e-5)
        for label, make in (("forward", lambda fn: lambda: fn(head.detach())),
                            ("forward+backward", lambda fn: forward_backward(fn, head))):
            fast = timed(make(ours), args.repeats)
            print(f"  {path:<24} {label:<17} {fast * 1e3:8.2f} ms   naive loop "
                  f"{slow[label] * 1e3:9.1f} ms   {slow[label] / fast:6.0f}x")
    roi._SEPARABLE_RATIO = 128.0

    # Adaptive grids: mostly small boxes (1 x 1 samples per bin) and a few large ones (up to 5).
    mixed = torch.cat([random_boxes(gen, args.rois - 16, 2, 200, 8, 28),
                       random_boxes(gen, 16, 2, 200, 60, 150)])
    print(f"adaptive sampling ({args.rois} boxes, 16 of them large), grid_sample path, "
          "forward+backward:")
    roi._SEPARABLE_RATIO = 0.0  # the separable path's cost does not depend on the grids
    for label, boxes in (("mixed sizes", mixed), ("uniform sizes", rois)):
        row = []
        for name, waste in (("padded", math.inf), ("grouped", 0.0)):
            roi._PADDED_WASTE = waste
            row.append((name, timed(forward_backward(
                lambda t, b=boxes: roi.roi_align(t, b, 7, 0.25, -1, True), x), args.repeats)))
        roi._PADDED_WASTE = 2.0
        print(f"  {label:<14} " + "   ".join(f"{n} {s * 1e3:7.2f} ms" for n, s in row))
    roi._SEPARABLE_RATIO = 128.0

    print("MeanAveragePrecision (bbox, 100 detections per image, 5 classes):")
    for images in (100, 500):
        preds, targets = detections(gen, images)

        def evaluate(preds: list[dict] = preds, targets: list[dict] = targets) -> None:
            metric = MeanAveragePrecision(class_metrics=True)
            for first in range(0, len(preds), 32):
                metric.update(preds[first:first + 32], targets[first:first + 32])
            metric.compute()
        print(f"  {images} images: {timed(evaluate, min(args.repeats, 3)):.2f} s "
              "(update + compute)")


if __name__ == "__main__":
    main()
