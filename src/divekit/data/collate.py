"""Collation: a list of examples of varying size becomes one batch (10.5 padding, 14.3 boxes).

Machine translation pads sentences of different lengths to the longest one in the minibatch and
keeps their valid lengths for masking (section 10.5); object detection (14.3) keeps a
different number of boxes per image, so the targets stay a list (torchvision's convention).

Every function here is module level, so a ``DataLoader`` pickles it for 'spawn' workers; fix
options with ``functools.partial(pad_collate, pad_value=1)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import default_collate

from divekit.errors import DivekitError


def stack_collate(examples: Sequence[Any]) -> Any:
    """Stack examples of equal shapes, as torch's ``default_collate``, keeping tuples tuples.

    ``default_collate`` turns a batch of tuples into a list; TensorLoader yields tuples, so
    this gives a tuple there and anything else (dicts, single tensors) as ``default_collate``.

    Shape:
        examples ``[(x (*), y ()), ...]`` of length ``B`` -> ``(x (B, *), y (B,))``.
    """
    batch = default_collate(examples)
    return tuple(batch) if isinstance(batch, list) and isinstance(examples[0], tuple) else batch


def pad_collate(examples: Sequence[Any], *, pad_value: float = 0) -> tuple[torch.Tensor, ...]:
    """Pad every sequence field of the examples to the longest in the batch, with its lengths.

    An example is a tuple of fields (a bare tensor is one field). A field that is a tensor
    (or list) with at least one dimension is a sequence along its first dimension: it is
    padded on the right with ``pad_value`` and followed in the output by its valid lengths
    (int64). A scalar field (0-d tensor or a Python number) is stacked. Dtypes are kept.

    Args:
        examples: the batch's examples, e.g. ``(source_tokens, target_tokens)`` pairs.
        pad_value: the value of padded positions (usually the ``<pad>`` token's index).

    Returns:
        For each field in order, ``(padded, lengths)`` for a sequence, ``stacked`` for a
        scalar: ``(src, tgt)`` examples give ``(src, src_len, tgt, tgt_len)`` and
        ``(tokens, label)`` examples give ``(tokens, tokens_len, label)``.

    Shape:
        a sequence field ``(L_i, *)`` -> padded ``(B, max_i L_i, *)`` and lengths ``(B,)``;
        a scalar field -> ``(B,)``.
    """
    if not examples:
        raise DivekitError("pad_collate got no examples")
    rows = [_fields(example) for example in examples]
    num_fields = len(rows[0])
    if any(len(row) != num_fields for row in rows):
        counts = sorted({len(row) for row in rows})
        raise DivekitError(f"pad_collate needs examples with one number of fields, got {counts}")
    batch: list[torch.Tensor] = []
    for index, column in enumerate(zip(*rows, strict=True)):
        dims = {value.ndim for value in column}
        if 0 in dims and len(dims) > 1:
            raise DivekitError(f"field {index} is a scalar in some examples and a sequence in "
                               f"others; pad_collate needs one kind per field")
        if dims == {0}:
            batch.append(torch.stack(column))
            continue
        batch.append(pad_sequence(list(column), batch_first=True, padding_value=pad_value))
        batch.append(torch.tensor([len(value) for value in column], dtype=torch.long))
    return tuple(batch)


def _fields(example: Any) -> list[torch.Tensor]:
    fields = example if isinstance(example, (tuple, list)) else (example,)
    return [torch.as_tensor(field) for field in fields]


def detection_collate(
    examples: Sequence[tuple[torch.Tensor, dict[str, torch.Tensor]]],
) -> tuple[torch.Tensor | list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Batch detection examples: images stacked when they can be, targets kept per image.

    Each target is a dict holding ``"boxes"`` ``(N_i, 4)`` (corner coordinates
    ``x1, y1, x2, y2``) and ``"labels"`` ``(N_i,)``, optionally ``"masks"``
    ``(N_i, H, W)`` and any other keys; ``N_i`` may be 0 (use ``torch.zeros(0, 4)``).
    Targets are passed on unchanged, as torchvision's detection models take them.

    Returns:
        ``(images, targets)``: images stacked into one tensor when they share a shape, else
        the list of images; targets the list of the examples' dicts.

    Shape:
        images ``(C, H, W)`` each -> ``(B, C, H, W)`` or a list of ``B`` ``(C, H_i, W_i)``.
    """
    if not examples:
        raise DivekitError("detection_collate got no examples")
    images, targets = [], []
    for i, example in enumerate(examples):
        if not (isinstance(example, (tuple, list)) and len(example) == 2
                and isinstance(example[1], dict)):
            raise DivekitError(f"detection example {i} must be (image, target dict), got "
                               f"{type(example).__name__}")
        image, target = example
        _check_target(i, image, target)
        images.append(image)
        targets.append(target)
    if len({image.shape for image in images}) == 1:
        return torch.stack(images), targets
    return images, targets


def _check_target(i: int, image: torch.Tensor, target: dict[str, torch.Tensor]) -> None:
    # Caught here, a malformed target names its example; later it fails deep inside a loss.
    if not isinstance(image, torch.Tensor) or image.ndim != 3:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise DivekitError(f"detection example {i}: the image must be (C, H, W), got {shape}")
    missing = [key for key in ("boxes", "labels") if key not in target]
    if missing:
        raise DivekitError(f"detection example {i}: the target has no {', '.join(missing)}")
    boxes, labels = target["boxes"], target["labels"]
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise DivekitError(f"detection example {i}: boxes must have shape (N, 4), got "
                           f"{tuple(boxes.shape)} (no boxes: torch.zeros(0, 4))")
    if labels.shape != (len(boxes),):
        raise DivekitError(f"detection example {i}: {len(boxes)} boxes but labels of shape "
                           f"{tuple(labels.shape)}")
    masks = target.get("masks")
    if masks is not None and (masks.ndim != 3 or len(masks) != len(boxes)):
        raise DivekitError(f"detection example {i}: {len(boxes)} boxes but masks of shape "
                           f"{tuple(masks.shape)}; expected (N, H, W)")
