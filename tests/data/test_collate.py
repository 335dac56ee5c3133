from functools import partial

import pytest
import torch
from torch.utils.data import Dataset

from divekit import DivekitError
from divekit.data.collate import detection_collate, pad_collate, stack_collate
from divekit.data.streaming import DatasetLoader

t = torch.tensor


def test_pad_collate_pads_each_sequence_and_gives_its_lengths():
    examples = [(t([5, 6, 7]), t([1])), (t([8]), t([2, 3])), (t([9, 4]), t([7, 7, 7, 7]))]
    src, src_len, tgt, tgt_len = pad_collate(examples)
    assert torch.equal(src, t([[5, 6, 7], [8, 0, 0], [9, 4, 0]]))
    assert torch.equal(src_len, t([3, 1, 2]))
    assert torch.equal(tgt, t([[1, 0, 0, 0], [2, 3, 0, 0], [7, 7, 7, 7]]))
    assert torch.equal(tgt_len, t([1, 2, 4]))
    assert src.dtype == src_len.dtype == torch.long


def test_pad_collate_stacks_scalars_and_takes_a_pad_value():
    examples = [([4, 4], 1), ([], 0), (t([3]), 1)]  # lists and Python numbers are accepted
    tokens, lengths, labels = partial(pad_collate, pad_value=-1)(examples)
    assert torch.equal(tokens, t([[4, 4], [-1, -1], [3, -1]]))
    assert torch.equal(lengths, t([2, 0, 1]))
    assert torch.equal(labels, t([1, 0, 1]))


def test_pad_collate_pads_sequences_of_vectors_and_bare_tensors():
    padded, lengths = pad_collate([torch.ones(2, 3), torch.full((1, 3), 2.0)])
    expected = t([[[1.0, 1, 1], [1, 1, 1]], [[2, 2, 2], [0, 0, 0]]])
    assert torch.equal(padded, expected) and torch.equal(lengths, t([2, 1]))
    # All sequences empty: a (B, 0) batch, lengths 0.
    padded, lengths = pad_collate([(torch.zeros(0, dtype=torch.long),)] * 2)
    assert padded.shape == (2, 0) and lengths.tolist() == [0, 0]


@pytest.mark.parametrize(
    ("examples", "message"),
    [([(t([1]), t([2])), (t([1]),)], r"one number of fields, got \[1, 2\]"),
     ([(t([1]), 3), (t(2), 3)], "field 0 is a scalar in some examples"),
     ([], "no examples")],
)
def test_pad_collate_errors(examples, message):
    with pytest.raises(DivekitError, match=message):
        pad_collate(examples)


def test_stack_collate_keeps_tuples_tuples():
    batch = stack_collate([(t([1, 2]), t(0)), (t([3, 4]), t(1))])
    assert type(batch) is tuple
    assert torch.equal(batch[0], t([[1, 2], [3, 4]])) and torch.equal(batch[1], t([0, 1]))
    assert torch.equal(stack_collate([{"a": t(1)}, {"a": t(2)}])["a"], t([1, 2]))


def box_target(count, label=1, masks=False):
    target = {"boxes": torch.arange(4.0 * count).view(count, 4),
              "labels": torch.full((count,), label)}
    if masks:
        target["masks"] = torch.ones(count, 5, 6, dtype=torch.uint8)
    return target


def test_detection_collate_stacks_equal_images_and_lists_targets():
    images = [torch.rand(3, 5, 6) for _ in range(3)]
    targets = [box_target(2, masks=True), box_target(0), box_target(1, label=4)]
    batch_images, batch_targets = detection_collate(list(zip(images, targets, strict=True)))
    assert torch.equal(batch_images, torch.stack(images))
    assert isinstance(batch_targets, list) and len(batch_targets) == 3
    assert batch_targets[1]["boxes"].shape == (0, 4) and batch_targets[1]["labels"].shape == (0,)
    assert batch_targets[0]["masks"].shape == (2, 5, 6)
    for got, target in zip(batch_targets, targets, strict=True):
        assert got.keys() == target.keys()
        assert all(torch.equal(got[key], target[key]) for key in target)


def test_detection_collate_keeps_images_of_different_sizes_as_a_list():
    images = [torch.rand(3, 5, 6), torch.rand(3, 8, 4)]
    batch_images, targets = detection_collate([(images[0], box_target(1)),
                                               (images[1], box_target(0))])
    assert isinstance(batch_images, list)
    assert all(torch.equal(a, b) for a, b in zip(batch_images, images, strict=True))
    assert [len(target["boxes"]) for target in targets] == [1, 0]


@pytest.mark.parametrize(
    ("example", "message"),
    [((torch.rand(3, 4, 4), {"boxes": torch.zeros(0)}), "has no labels"),
     ((torch.rand(3, 4, 4), {"boxes": t([]), "labels": t([])}), r"shape \(N, 4\), got \(0,\)"),
     ((torch.rand(3, 4, 4), {"boxes": torch.zeros(2, 4), "labels": t([1])}), "2 boxes but"),
     ((torch.rand(4, 4), box_target(1)), r"must be \(C, H, W\), got \(4, 4\)"),
     ((torch.rand(3, 4, 4), dict(box_target(2), masks=torch.ones(1, 4, 4))), "masks of shape"),
     (torch.rand(3, 4, 4), r"must be \(image, target dict\)")],
)
def test_detection_collate_names_a_malformed_example(example, message):
    with pytest.raises(DivekitError, match=f"detection example 1.*{message}"):
        detection_collate([(torch.rand(3, 4, 4), box_target(1)), example])


class Sentences(Dataset):
    """Pair ``i``: source ``i+1`` tokens, all ``i``; target ``3 - i % 3`` tokens, all ``-i``."""

    def __len__(self):
        return 7

    def __getitem__(self, i):
        return torch.full((i + 1,), i), torch.full((3 - i % 3,), -i)


class Scenes(Dataset):
    """Image ``i`` of size 4x4 (or 4x6 when ``mixed`` and ``i`` is odd) with ``i % 3`` boxes."""

    def __init__(self, mixed):
        self.mixed = mixed

    def __len__(self):
        return 6

    def __getitem__(self, i):
        width = 6 if self.mixed and i % 2 else 4
        target = box_target(i % 3, label=i)
        target["image_id"] = torch.tensor(i)
        return torch.full((3, 4, width), float(i)), target


@pytest.mark.parametrize("num_workers", [0, 2])
def test_pad_collate_through_worker_processes(num_workers):
    loader = DatasetLoader(Sentences(), batch_size=3, shuffle=True, seed=1,
                           collate_fn=partial(pad_collate, pad_value=99), num_workers=num_workers)
    seen = []
    for src, src_len, tgt, tgt_len in loader:
        for row, length, target, target_length in zip(src, src_len, tgt, tgt_len, strict=True):
            i = int(row[0])
            seen.append(i)
            assert length == i + 1 and target_length == 3 - i % 3
            assert row[:length].eq(i).all() and row[length:].eq(99).all()
            assert target[:target_length].eq(-i).all() and target[target_length:].eq(99).all()
        assert src.shape[1] == src_len.max() and tgt.shape[1] == tgt_len.max()
    assert sorted(seen) == list(range(7))


@pytest.mark.parametrize("mixed", [False, True])
def test_detection_collate_through_worker_processes(mixed):
    batches = list(DatasetLoader(Scenes(mixed), batch_size=4, shuffle=True, seed=2,
                                 collate_fn=detection_collate, num_workers=2))
    assert len(batches) == 2
    seen = []
    for images, targets in batches:
        # Four of the six images always mix both widths; two may share one.
        widths = {int(target["image_id"]) % 2 for target in targets}
        assert isinstance(images, list) == (mixed and len(widths) > 1)
        for image, target in zip(images, targets, strict=True):
            i = int(target["image_id"])
            seen.append(i)
            assert torch.equal(image, Scenes(mixed)[i][0])
            assert torch.equal(target["boxes"], box_target(i % 3)["boxes"])
            assert target["labels"].tolist() == [i] * (i % 3)
    assert sorted(seen) == list(range(6))
    assert isinstance(batches[0][0], list) == mixed
