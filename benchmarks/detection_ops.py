"""Non-maximum suppression: divekit's ``nms`` against naive loops, on this machine (d2l 14.4.4).

1. book: the course's ``nms`` written out in plain PyTorch: sort, then while boxes remain take
   the first, compute its IoU row against the remaining boxes, keep those ``<=`` the threshold
   (one IoU row and one re-indexing per kept box).
2. python: the textbook double loop in plain Python floats (each box against the kept ones).
3. divekit: ``divekit.vision.nms``: boxes in blocks of 256 by score; within a block a small
   overlap matrix scanned over the kept boxes only, then one comparison of the block's kept
   boxes against every later box still alive.

Boxes in a 1000 x 1000 image, two layouts: ``uniform`` (random corners, sizes 10-160, most boxes
survive) and ``clustered`` (jittered copies around 50 objects, as a detector's raw output: most
are suppressed). All three agree on the kept indices (checked). Medians of ``--repeats``.

    python benchmarks/detection_ops.py --boxes 1000 5000 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from divekit.vision import box_iou, nms
from machine import cpu_name

IMAGE = 1000.0
THRESHOLD = 0.5


def book_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """d2l 14.4.4's loop (with a stable sort, so ties resolve as divekit's do)."""
    order = torch.sort(scores, descending=True, stable=True).indices
    keep = []
    while order.numel() > 0:
        i = order[0]
        keep.append(i)
        if order.numel() == 1:
            break
        iou = box_iou(boxes[i].reshape(-1, 4), boxes[order[1:]]).reshape(-1)
        order = order[1:][iou <= iou_threshold]
    return torch.stack(keep) if keep else torch.zeros(0, dtype=torch.long)


def python_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Box by box in Python floats: keep a box unless a kept one overlaps it too much."""
    rows, values = boxes.tolist(), scores.tolist()
    order = sorted(range(len(values)), key=lambda i: (-values[i], i))
    kept: list[int] = []
    for i in order:
        x1, y1, x2, y2 = rows[i]
        area = (x2 - x1) * (y2 - y1)
        for k in kept:
            a1, b1, a2, b2 = rows[k]
            inter = max(0.0, min(x2, a2) - max(x1, a1)) * max(0.0, min(y2, b2) - max(y1, b1))
            union = area + (a2 - a1) * (b2 - b1) - inter
            if union > 0 and inter / union > iou_threshold:
                break
        else:
            kept.append(i)
    return torch.tensor(kept, dtype=torch.long)


def make_boxes(count: int, layout: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    if layout == "uniform":
        xy = torch.rand(count, 2, generator=generator) * IMAGE
        wh = 10 + 150 * torch.rand(count, 2, generator=generator)
    else:
        objects = torch.rand(50, 4, generator=generator)
        centre, size = objects[:, :2] * IMAGE, 20 + 180 * objects[:, 2:]
        pick = torch.randint(0, 50, (count,), generator=generator)
        wh = size[pick] * (1 + 0.3 * torch.randn(count, 2, generator=generator)).clamp(min=0.2)
        xy = centre[pick] + 0.15 * size[pick] * torch.randn(count, 2, generator=generator)
        xy = xy - wh / 2
    scores = torch.rand(count, generator=generator)
    return torch.cat((xy, xy + wh), dim=1), scores


def median_time(fn: Callable, *args, repeats: int) -> tuple[float, torch.Tensor]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn(*args)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boxes", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (one avoids thread handoffs on a busy machine)")
    parser.add_argument("--no-python", action="store_true", help="skip the pure-Python loop")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"NMS at IoU {THRESHOLD}, float32 boxes in a {IMAGE:.0f} x {IMAGE:.0f} image, "
          f"median of {args.repeats}:")
    loops = {"book": book_nms} if args.no_python else {"book": book_nms, "python": python_nms}
    for layout in ("uniform", "clustered"):
        for count in args.boxes:
            boxes, scores = make_boxes(count, layout)
            nms(boxes, scores, THRESHOLD)  # warm-up
            ours, keep = median_time(nms, boxes, scores, THRESHOLD, repeats=args.repeats)
            line = (f"  {layout:<9} {count:>6} boxes, {len(keep):>5} kept: divekit "
                    f"{ours * 1e3:8.1f} ms")
            for name, loop in loops.items():
                seconds, theirs = median_time(loop, boxes, scores, THRESHOLD,
                                              repeats=args.repeats)
                if theirs.tolist() != keep.tolist():
                    raise SystemExit(f"{name} loop and divekit disagree on {layout} {count}")
                line += f" | {name} {seconds * 1e3:8.1f} ms = {seconds / ours:6.1f}x"
            print(line)


if __name__ == "__main__":
    main()
