"""One epoch of the course's LeNet on Fashion-MNIST, three ways, in one process.

1. book: the loop as the book writes it (``train_ch6``, in :mod:`divekit.bench.lenet`): a
   ``DataLoader`` over a per-example dataset, loss and accuracy pulled to Python with
   ``.item()``/``float()`` every batch.
2. divekit: ``Trainer(...).fit`` on the preloaded tensors, ``channels_last``.
3. bare: a hand-written loop over the same preloaded tensors with no metrics at all, which
   bounds what any trainer can do; ``divekit / bare - 1`` is the Trainer's own overhead.

Each epoch trains on all 60,000 images and then evaluates the 10,000 test images. Runs alternate
and the medians of ``--repeats`` are reported, as ratios.

    DIVEKIT_DATA=../shared/data python benchmarks/lenet_epoch.py --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import divekit as dk
from divekit.bench.lenet import book_evaluate, book_loaders, book_steps


def book_epoch(model, train_loader, test_loader, lr: float) -> float:
    start = time.perf_counter()
    for _ in book_steps(model, train_loader, lr):
        pass
    book_evaluate(model, test_loader)
    return time.perf_counter() - start


def divekit_epoch(model, data, lr: float) -> float:
    trainer = dk.Trainer(max_epochs=1, lr=lr, channels_last=True, progress=False)
    start = time.perf_counter()
    trainer.fit(model, data)
    return time.perf_counter() - start


def bare_epoch(model, data, lr: float) -> float:
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    x_train, y_train = data.train
    x_test, y_test = data.test
    start = time.perf_counter()
    model.train()
    order = torch.randperm(len(y_train))
    for i in range(0, len(order), data.batch_size):
        index = order[i : i + data.batch_size]
        x = x_train[index].contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(model(x), y_train[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        for i in range(0, len(y_test), 1024):
            model(x_test[i : i + 1024].contiguous(memory_format=torch.channels_last)).argmax(1)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=4,
                        help="DataLoader workers of the book loop (the book uses 4)")
    args = parser.parse_args()

    data = dk.load_data("fashion-mnist", batch_size=256)
    train_loader, test_loader = book_loaders(data, args.workers)

    # One untimed divekit epoch first: the first fit imports the metrics library (~1 s once
    # per process), which is start-up, not the Trainer's cost per epoch.
    divekit_epoch(dk.create_model("lenet"), data, 0.9)
    times: dict[str, list[float]] = {"book": [], "divekit": [], "bare": []}
    for repeat in range(args.repeats):
        for name in times:
            torch.manual_seed(repeat)
            model = dk.create_model("lenet")
            if name == "book":
                seconds = book_epoch(model, train_loader, test_loader, 0.9)
            elif name == "divekit":
                seconds = divekit_epoch(model, data, 0.9)
            else:
                seconds = bare_epoch(model, data, 0.9)
            times[name].append(seconds)
            print(f"repeat {repeat + 1}: {name:<8} {seconds:6.2f} s", flush=True)

    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"\nLeNet, Fashion-MNIST, 1 epoch (60k train + 10k test), {torch.get_num_threads()} "
          f"threads, median of {args.repeats}:")
    for name, seconds in median.items():
        print(f"  {name:<8} {seconds:6.2f} s  {70000 / seconds:8,.0f} images/s")
    print(f"  divekit vs book loop ({args.workers} workers): "
          f"{median['book'] / median['divekit']:.2f}x the throughput")
    # Each repeat runs the two back to back: the median of their ratios cancels slow phases of
    # a shared machine better than a ratio of medians.
    paired = statistics.median(d / b for d, b in zip(times["divekit"], times["bare"], strict=True))
    print(f"  Trainer overhead vs bare loop: {100 * (paired - 1):+.1f}% (median of paired "
          f"ratios; ratio of medians {100 * (median['divekit'] / median['bare'] - 1):+.1f}%)")


if __name__ == "__main__":
    main()
