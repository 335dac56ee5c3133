"""The book's TinySSD training loop against divekit's, on this machine (d2l 14.7; Liu et al.
2016, "SSD: Single Shot MultiBox Detector").

Measures training images per second on the same 1,000 generated banana images (256x256,
``divekit.data.scenes.generate_bananas``) and prints both sides with the CPU's name:

1. The book's loop, written out here in plain PyTorch from d2l 14.4 and 14.7 (PyTorch
   edition): its TinySSD (the same layers as divekit's ``tiny-ssd``), its ``multibox_prior``
   called inside every forward pass, its ``multibox_target`` (a Python loop over the images,
   and per image the greedy assignment as a loop over the ground-truth boxes), its
   ``calc_loss`` (cross-entropy over all anchors + masked L1, ``reduction='none'``, each
   averaged per image), and the per-batch ``cls_eval``/``bbox_eval`` sums it accumulates for
   its printout; a ``torch.utils.data.DataLoader`` over the images (uint8 turned into float per
   example, as the book's ``BananasDataset`` does) with labels ``(1, 5)`` divided by 256, SGD
   lr 0.2, wd 5e-4, batch 32, fp32.
2. divekit: ``Trainer`` with ``tiny-ssd`` on ``load_data("bananas")`` (same images, same
   settings, as the ``tiny-ssd-bananas`` recipe: ``channels_last``), fp32, and in bf16
   autocast when asked (``--amp``).

Timing: each side trains ``--epochs`` epochs (the first one also warms up and is not counted
when more than one is run); the table shows the median images/s of the counted epochs and the
ratio to the book. divekit's per-epoch evaluation on the validation images is excluded (only
the training epochs are timed, by a callback).

    python benchmarks/book_tiny_ssd.py --epochs 3 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

import divekit as dk
from divekit.data.scenes import generate_bananas
from divekit.engine import Callback
from machine import cpu_name

SIZES = [[0.2, 0.272], [0.37, 0.447], [0.54, 0.619], [0.71, 0.79], [0.88, 0.961]]
RATIOS = [[1, 2, 0.5]] * 5


# ------------------------------------------------------------------ the book's code, in plain torch
def book_multibox_prior(data, sizes, ratios):
    in_height, in_width = data.shape[-2:]
    device, num_sizes, num_ratios = data.device, len(sizes), len(ratios)
    boxes_per_pixel = num_sizes + num_ratios - 1
    size_tensor = torch.tensor(sizes, device=device)
    ratio_tensor = torch.tensor(ratios, device=device)
    steps_h, steps_w = 1.0 / in_height, 1.0 / in_width
    center_h = (torch.arange(in_height, device=device) + 0.5) * steps_h
    center_w = (torch.arange(in_width, device=device) + 0.5) * steps_w
    shift_y, shift_x = torch.meshgrid(center_h, center_w, indexing="ij")
    shift_y, shift_x = shift_y.reshape(-1), shift_x.reshape(-1)
    w = torch.cat((size_tensor * torch.sqrt(ratio_tensor[0]),
                   sizes[0] * torch.sqrt(ratio_tensor[1:]))) * in_height / in_width
    h = torch.cat((size_tensor / torch.sqrt(ratio_tensor[0]),
                   sizes[0] / torch.sqrt(ratio_tensor[1:])))
    anchor_manipulations = torch.stack((-w, -h, w, h)).T.repeat(in_height * in_width, 1) / 2
    out_grid = torch.stack([shift_x, shift_y, shift_x, shift_y],
                           dim=1).repeat_interleave(boxes_per_pixel, dim=0)
    return (out_grid + anchor_manipulations).unsqueeze(0)


def book_box_iou(boxes1, boxes2):
    area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])  # noqa: E731
    inter_upperlefts = torch.max(boxes1[:, None, :2], boxes2[:, :2])
    inter_lowerrights = torch.min(boxes1[:, None, 2:], boxes2[:, 2:])
    inters = (inter_lowerrights - inter_upperlefts).clamp(min=0)
    inter_areas = inters[:, :, 0] * inters[:, :, 1]
    return inter_areas / (area(boxes1)[:, None] + area(boxes2) - inter_areas)


def book_assign_anchor_to_bbox(ground_truth, anchors, device, iou_threshold=0.5):
    num_anchors, num_gt_boxes = anchors.shape[0], ground_truth.shape[0]
    jaccard = book_box_iou(anchors, ground_truth)
    anchors_bbox_map = torch.full((num_anchors,), -1, dtype=torch.long, device=device)
    max_ious, indices = torch.max(jaccard, dim=1)
    anc_i = torch.nonzero(max_ious >= iou_threshold).reshape(-1)
    anchors_bbox_map[anc_i] = indices[max_ious >= iou_threshold]
    col_discard = torch.full((num_anchors,), -1)
    row_discard = torch.full((num_gt_boxes,), -1)
    for _ in range(num_gt_boxes):
        max_idx = torch.argmax(jaccard)
        box_idx = (max_idx % num_gt_boxes).long()
        anc_idx = (max_idx / num_gt_boxes).long()
        anchors_bbox_map[anc_idx] = box_idx
        jaccard[:, box_idx] = col_discard
        jaccard[anc_idx, :] = row_discard
    return anchors_bbox_map


def book_offset_boxes(anchors, assigned_bb, eps=1e-6):
    def center(b):
        return torch.stack(((b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2,
                            b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]), axis=-1)

    c_anc, c_assigned_bb = center(anchors), center(assigned_bb)
    offset_xy = 10 * (c_assigned_bb[:, :2] - c_anc[:, :2]) / c_anc[:, 2:]
    offset_wh = 5 * torch.log(eps + c_assigned_bb[:, 2:] / c_anc[:, 2:])
    return torch.cat([offset_xy, offset_wh], axis=1)


def book_multibox_target(anchors, labels):
    batch_size, anchors = labels.shape[0], anchors.squeeze(0)
    batch_offset, batch_mask, batch_class_labels = [], [], []
    device, num_anchors = anchors.device, anchors.shape[0]
    for i in range(batch_size):
        label = labels[i, :, :]
        anchors_bbox_map = book_assign_anchor_to_bbox(label[:, 1:], anchors, device)
        bbox_mask = ((anchors_bbox_map >= 0).float().unsqueeze(-1)).repeat(1, 4)
        class_labels = torch.zeros(num_anchors, dtype=torch.long, device=device)
        assigned_bb = torch.zeros((num_anchors, 4), dtype=torch.float32, device=device)
        indices_true = torch.nonzero(anchors_bbox_map >= 0)
        bb_idx = anchors_bbox_map[indices_true]
        class_labels[indices_true] = label[bb_idx, 0].long() + 1
        assigned_bb[indices_true] = label[bb_idx, 1:]
        offset = book_offset_boxes(anchors, assigned_bb) * bbox_mask
        batch_offset.append(offset.reshape(-1))
        batch_mask.append(bbox_mask.reshape(-1))
        batch_class_labels.append(class_labels)
    return torch.stack(batch_offset), torch.stack(batch_mask), torch.stack(batch_class_labels)


def cls_predictor(num_inputs, num_anchors, num_classes):
    return nn.Conv2d(num_inputs, num_anchors * (num_classes + 1), kernel_size=3, padding=1)


def bbox_predictor(num_inputs, num_anchors):
    return nn.Conv2d(num_inputs, num_anchors * 4, kernel_size=3, padding=1)


def flatten_pred(pred):
    return torch.flatten(pred.permute(0, 2, 3, 1), start_dim=1)


def concat_preds(preds):
    return torch.cat([flatten_pred(p) for p in preds], dim=1)


def down_sample_blk(in_channels, out_channels):
    blk = []
    for _ in range(2):
        blk += [nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
                nn.BatchNorm2d(out_channels), nn.ReLU()]
        in_channels = out_channels
    blk.append(nn.MaxPool2d(2))
    return nn.Sequential(*blk)


def base_net():
    blk, num_filters = [], [3, 16, 32, 64]
    for i in range(len(num_filters) - 1):
        blk.append(down_sample_blk(num_filters[i], num_filters[i + 1]))
    return nn.Sequential(*blk)


def get_blk(i):
    if i == 0:
        return base_net()
    if i == 1:
        return down_sample_blk(64, 128)
    if i == 4:
        return nn.AdaptiveMaxPool2d((1, 1))
    return down_sample_blk(128, 128)


class BookTinySSD(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.num_classes = num_classes
        idx_to_in_channels = [64, 128, 128, 128, 128]
        for i in range(5):
            setattr(self, f"blk_{i}", get_blk(i))
            setattr(self, f"cls_{i}", cls_predictor(idx_to_in_channels[i], 4, num_classes))
            setattr(self, f"bbox_{i}", bbox_predictor(idx_to_in_channels[i], 4))

    def forward(self, X):
        anchors, cls_preds, bbox_preds = [None] * 5, [None] * 5, [None] * 5
        for i in range(5):
            X = getattr(self, f"blk_{i}")(X)
            anchors[i] = book_multibox_prior(X, SIZES[i], RATIOS[i])
            cls_preds[i] = getattr(self, f"cls_{i}")(X)
            bbox_preds[i] = getattr(self, f"bbox_{i}")(X)
        anchors = torch.cat(anchors, dim=1)
        cls_preds = concat_preds(cls_preds)
        cls_preds = cls_preds.reshape(cls_preds.shape[0], -1, self.num_classes + 1)
        return anchors, cls_preds, concat_preds(bbox_preds)


def calc_loss(cls_preds, cls_labels, bbox_preds, bbox_labels, bbox_masks):
    batch_size, num_classes = cls_preds.shape[0], cls_preds.shape[2]
    cls = F.cross_entropy(cls_preds.reshape(-1, num_classes), cls_labels.reshape(-1),
                          reduction="none").reshape(batch_size, -1).mean(dim=1)
    bbox = F.l1_loss(bbox_preds * bbox_masks, bbox_labels * bbox_masks,
                     reduction="none").mean(dim=1)
    return cls + bbox


class BookBananas(torch.utils.data.Dataset):
    def __init__(self, images, targets):
        self.images = images
        self.labels = [torch.cat([t["labels"][:, None].float(), t["boxes"]], 1) / torch.tensor(
            [1.0, 256, 256, 256, 256]) for t in targets]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i].float() / 255, self.labels[i]


def book_epochs(images, targets, epochs: int) -> list[float]:
    torch.manual_seed(0)
    net = BookTinySSD(num_classes=1)
    trainer = torch.optim.SGD(net.parameters(), lr=0.2, weight_decay=5e-4)
    loader = torch.utils.data.DataLoader(BookBananas(images, targets), batch_size=32,
                                         shuffle=True)
    rates = []
    for _ in range(epochs):
        net.train()
        start, seen, metric = time.perf_counter(), 0, torch.zeros(4)
        for X, Y in loader:
            trainer.zero_grad()
            anchors, cls_preds, bbox_preds = net(X)
            bbox_labels, bbox_masks, cls_labels = book_multibox_target(anchors, Y)
            loss = calc_loss(cls_preds, cls_labels, bbox_preds, bbox_labels, bbox_masks)
            loss.mean().backward()
            trainer.step()
            metric += torch.tensor([
                float((cls_preds.argmax(dim=-1).type(cls_labels.dtype) == cls_labels).sum()),
                cls_labels.numel(),
                float((torch.abs((bbox_labels - bbox_preds.detach()) * bbox_masks)).sum()),
                bbox_labels.numel()])
            seen += len(X)
        rates.append(seen / (time.perf_counter() - start))
        print(f"  book epoch: {rates[-1]:.1f} images/s, class err "
              f"{1 - metric[0] / metric[1]:.2e}, bbox mae {metric[2] / metric[3]:.2e}")
    return rates


class EpochTimer(Callback):
    """Images per second from an epoch's start to its last optimizer step (before evaluation)."""

    def __init__(self, images_per_epoch: int):
        self.images_per_epoch, self.rates, self.start, self.last = images_per_epoch, [], 0.0, 0.0

    def on_epoch_start(self, trainer):
        self.start = time.perf_counter()

    def on_step_end(self, trainer):
        self.last = time.perf_counter()

    def on_epoch_end(self, trainer, metrics):
        self.rates.append(self.images_per_epoch / (self.last - self.start))
        print(f"  divekit epoch: {self.rates[-1]:.1f} images/s, class err "
              f"{metrics.get('train_class_err', float('nan')):.2e}, bbox mae "
              f"{metrics.get('train_box_mae', float('nan')):.2e}")


def divekit_epochs(epochs: int, amp: str) -> list[float]:
    data = dk.load_data("bananas", batch_size=32, num_val=32)
    model = dk.create_model("tiny-ssd", data=data)
    timer = EpochTimer(len(data.train))
    trainer = dk.Trainer(max_epochs=epochs, lr=0.2, weight_decay=5e-4, amp=amp,
                         channels_last=True, progress=False, callbacks=[timer], seed=0)
    trainer.fit(model, data)
    return timer.rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--amp", action="store_true", help="also time divekit in bf16 autocast")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    images, targets = generate_bananas(1000, seed=0)
    counted = slice(1, None) if args.epochs > 1 else slice(None)
    rows = [("book loop (plain PyTorch)", book_epochs(images, targets, args.epochs)[counted]),
            ("divekit fp32 channels_last", divekit_epochs(args.epochs, "off")[counted])]
    if args.amp:
        rows.append(("divekit bf16 channels_last", divekit_epochs(args.epochs, "bf16")[counted]))
    print(f"\nTinySSD training on 1,000 generated bananas, batch 32; {cpu_name()}, "
          f"{args.threads} threads, torch {torch.__version__}")
    book = statistics.median(rows[0][1])
    for name, rates in rows:
        rate = statistics.median(rates)
        print(f"  {name:28s} {rate:8.1f} images/s  {rate / book:5.2f}x")


if __name__ == "__main__":
    main()
