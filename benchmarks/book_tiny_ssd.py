"""The book's TinySSD training loop against divekit's, on this machine (d2l 14.7; Liu et al.
2016, "SSD: Single Shot MultiBox Detector").

Measures training images per second on the same 1,000 generated banana images (256x256,
``divekit.data.scenes.generate_bananas``) and prints both sides with the CPU's name:

1. The book's loop (d2l 14.4 and 14.7 in plain PyTorch: ``multibox_prior`` in every forward,
   ``multibox_target`` as a Python loop per image, a ``DataLoader`` per example, SGD lr 0.2,
   wd 5e-4, batch 32, fp32), from :mod:`divekit.bench.tiny_ssd`, whose docstring details it
   (the case ``divekit bench tiny-ssd``).
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

import divekit as dk
from divekit.bench.tiny_ssd import book_setup, book_steps
from divekit.data.scenes import generate_bananas
from divekit.engine import Callback
from machine import cpu_name


def book_epochs(images, targets, epochs: int) -> list[float]:
    torch.manual_seed(0)
    net, optimizer, loader = book_setup(images, targets)
    rates = []
    for _ in range(epochs):
        start, metric = time.perf_counter(), torch.zeros(4)
        seen = sum(book_steps(net, loader, optimizer, metric))
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
