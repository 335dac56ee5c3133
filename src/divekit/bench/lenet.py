"""LeNet on Fashion-MNIST (d2l 6.6, LeCun et al. 1998): the book's training loop against the
Trainer.

The book's loop (``train_ch6``) reads a ``DataLoader`` over a per-example dataset (each image
uint8 -> PIL -> array -> float tensor, 4 workers, batch 256) and pulls loss and accuracy to
Python with ``.item()``/``float()`` after every batch. divekit's Trainer batches the preloaded
tensors by index and runs the convolutions ``channels_last``; both train with SGD, lr 0.9.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

import divekit as dk

NAME, UNIT = "lenet", "images/s"
WHAT = "LeNet, Fashion-MNIST, batch 256, SGD"
WARMUP, STEPS, QUICK_STEPS = 3, 40, 5
RESTART_BOOK = True  # its DataLoader workers would prefetch during divekit's spans
LR = 0.9


class PerExampleDataset(Dataset):
    """The per-example path of ``torchvision.datasets.FashionMNIST`` with ``ToTensor``
    (torchvision has no CPU build here): uint8 array -> PIL image -> array -> float tensor."""

    def __init__(self, images_uint8: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images_uint8.squeeze(1).numpy(), labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        image = Image.fromarray(self.images[index], mode="L")
        tensor = torch.from_numpy(np.array(image, copy=True)).unsqueeze(0)
        return tensor.float().div(255), int(self.labels[index])


def book_loaders(data, workers: int = 4) -> tuple[DataLoader, DataLoader]:
    """The book's training (shuffled) and test loaders over the images of ``data``."""
    def loader(split, shuffle):
        images_uint8 = (split[0] * 255).round().to(torch.uint8)
        return DataLoader(PerExampleDataset(images_uint8, split[1]), batch_size=data.batch_size,
                          shuffle=shuffle, num_workers=workers)

    return loader(data.train, True), loader(data.test, False)


def book_steps(model: nn.Module, train_loader, lr: float,
               device: str | torch.device = "cpu") -> Iterator[int]:
    """One epoch of the book's training loop; yields each batch's image count after its step.

    Loss and accuracy are summed on the Python side every batch, as ``train_ch6`` does for
    its printout: ``.item()`` waits for the step to finish before the next one is queued.
    """
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    loss_sum = correct = count = 0.0
    for x, y in train_loader:
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad()
        y_hat = model(x)
        loss = F.cross_entropy(y_hat, y)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            loss_sum += loss.item() * x.shape[0]
            correct += float((y_hat.argmax(1) == y).sum())
            count += x.shape[0]
        yield x.shape[0]


def book_evaluate(model: nn.Module, test_loader) -> float:
    """The book's test accuracy: batches from the loader, counts pulled to Python."""
    model.eval()
    test_correct = test_count = 0.0
    with torch.no_grad():
        for x, y in test_loader:
            test_correct += float((model(x).argmax(1) == y).sum())
            test_count += y.numel()
    return test_correct / test_count


def prepare(batches: int) -> dict:
    """Fashion-MNIST (batch 256, from ``DIVEKIT_DATA``) and the book's loaders over it."""
    data = dk.load_data("fashion-mnist", batch_size=256)
    return {"data": data, "train_loader": book_loaders(data)[0]}


def book_run(state: dict, device: torch.device) -> Iterator[int]:
    return book_steps(dk.create_model("lenet").to(device), state["train_loader"], LR, device)


def divekit_run(state: dict) -> tuple[nn.Module, object, dict]:
    return dk.create_model("lenet"), state["data"], {"lr": LR, "channels_last": True}
