"""TinySSD on generated bananas (d2l 14.7; Liu et al. 2016, "SSD: Single Shot MultiBox
Detector"): the book's training loop against the Trainer.

The book's loop, written out here in plain PyTorch from d2l 14.4 and 14.7 (PyTorch edition):
its TinySSD (the same layers as divekit's ``tiny-ssd``), its ``multibox_prior`` called inside
every forward pass, its ``multibox_target`` (a Python loop over the images, and per image the
greedy assignment as a loop over the ground-truth boxes), its ``calc_loss`` (cross-entropy over
all anchors + masked L1, ``reduction='none'``, each averaged per image), and the per-batch
``cls_eval``/``bbox_eval`` sums it accumulates for its printout; a
``torch.utils.data.DataLoader`` over the images (uint8 turned into float per example, as the
book's ``BananasDataset`` does) with labels ``(1, 5)`` divided by 256, SGD lr 0.2, wd 5e-4,
batch 32, fp32. divekit: the Trainer with ``tiny-ssd`` on ``load_data("bananas")`` (the same
generated 256x256 images, :func:`divekit.data.scenes.generate_bananas`), ``channels_last``
as the ``tiny-ssd-bananas`` recipe. The steps of both are slow (a second or more on 2 cores), so
one warm-up step suffices.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

import divekit as dk

NAME, UNIT = "tiny-ssd", "images/s"
WHAT = "TinySSD, generated bananas 256x256, batch 32, SGD"
WARMUP, STEPS, QUICK_STEPS = 1, 6, 1
RESTART_BOOK = False
LR, WEIGHT_DECAY, BATCH_SIZE = 0.2, 5e-4, 32


SIZES = [[0.2, 0.272], [0.37, 0.447], [0.54, 0.619], [0.71, 0.79], [0.88, 0.961]]
RATIOS = [[1, 2, 0.5]] * 5


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


def book_steps(net: nn.Module, loader, optimizer: torch.optim.Optimizer, metric: torch.Tensor,
               device: str | torch.device = "cpu") -> Iterator[int]:
    """One epoch of the book's loop; adds (correct classes, anchors, box L1 error, box values)
    of every batch to ``metric`` as the book does for its printout, and yields each batch's
    image count after its step."""
    net.train()
    for X, Y in loader:
        X, Y = X.to(device), Y.to(device)
        optimizer.zero_grad()
        anchors, cls_preds, bbox_preds = net(X)
        bbox_labels, bbox_masks, cls_labels = book_multibox_target(anchors, Y)
        loss = calc_loss(cls_preds, cls_labels, bbox_preds, bbox_labels, bbox_masks)
        loss.mean().backward()
        optimizer.step()
        metric += torch.tensor([
            float((cls_preds.argmax(dim=-1).type(cls_labels.dtype) == cls_labels).sum()),
            cls_labels.numel(),
            float((torch.abs((bbox_labels - bbox_preds.detach()) * bbox_masks)).sum()),
            bbox_labels.numel()])
        yield len(X)


def book_setup(images, targets, device: str | torch.device = "cpu"):
    """The book's network, optimizer and shuffled loader (batch 32)."""
    net = BookTinySSD(num_classes=1).to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    loader = torch.utils.data.DataLoader(BookBananas(images, targets), batch_size=BATCH_SIZE,
                                         shuffle=True)
    return net, optimizer, loader


def prepare(batches: int) -> dict:
    """Generated training images for ``batches`` batches (the book's set has 1,000; a step
    costs the same with fewer) and one validation image for divekit's evaluation after the
    timed steps; the book reads the same uint8 images and boxes."""
    return {"data": dk.load_data("bananas", batch_size=BATCH_SIZE, num_train=batches * BATCH_SIZE,
                                 num_val=1)}


def book_run(state: dict, device: torch.device) -> Iterator[int]:
    train = state["data"].train
    net, optimizer, loader = book_setup(train.images, train.targets, device)
    return book_steps(net, loader, optimizer, torch.zeros(4), device)


def divekit_run(state: dict) -> tuple[nn.Module, object, dict]:
    model = dk.create_model("tiny-ssd", data=state["data"])
    return model, state["data"], {"lr": LR, "weight_decay": WEIGHT_DECAY, "channels_last": True}
