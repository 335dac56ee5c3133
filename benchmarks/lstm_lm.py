"""Training throughput of the course's LSTM language model (10.1) on The Time Machine, three ways.

1. divekit: the registered ``lstm-lm`` (one-hot input, fused ``nn.LSTM``) trained by
   ``Trainer(...).fit``; its own per-epoch ``train_time`` (evaluation excluded) is the time.
2. scratch: the course's hand-written LSTM (``divekit.scratch.rnn.LSTMScratch``, a Python loop
   over the time steps) with an output layer, in a hand-written training loop.
3. plain: ``nn.LSTM`` + ``nn.Linear`` in the same hand-written loop (both from
   :mod:`divekit.bench.lstm`, whose case ``divekit bench lstm`` is): what the fused kernel
   gives without any engine, so ``divekit / plain`` is the Trainer's own overhead.

All three train one epoch of SGD with the gradient norm clipped to 1 on the same batches: the
book's setting (hidden 32, batch 1024, 32 steps, 10,000 training windows) unless told
otherwise. Runs alternate and the medians of ``--repeats`` are reported, in tokens per second.

``import divekit`` turns on huge pages for PyTorch's allocator (``THP_MEM_ALLOC_ENABLE=1``), and
PyTorch reads that once per process: the plain and scratch loops are therefore also timed in a
child process with PyTorch's default allocator, as a script without divekit runs them, and
divekit's speed-up is given against the faster of those two baselines.

    DIVEKIT_DATA=../shared/data python benchmarks/lstm_lm.py --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

import divekit as dk
import divekit.data.text  # noqa: F401  (registers the timemachine dataset)
import divekit.models.rnn  # noqa: F401  (registers lstm-lm)
from divekit.bench.lstm import PlainLSTMLM, book_steps
from divekit.scratch.rnn import LSTMScratch


class ScratchLSTMLM(nn.Module):
    """One-hot characters -> the from-scratch LSTM (time-major) -> a linear output layer."""

    def __init__(self, vocab_size: int, hidden_size: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.rnn = LSTMScratch(vocab_size, hidden_size)
        self.output = nn.Linear(hidden_size, vocab_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs, _ = self.rnn(F.one_hot(x.T, self.vocab_size).float())
        return self.output(outputs).transpose(0, 1)


def hand_written_epoch(model: nn.Module, data, lr: float) -> float:
    """Seconds for one epoch of the loop a learner writes: forward, loss, backward, clip, step."""
    start = time.perf_counter()
    for _ in book_steps(model, data.train_dataloader(), lr):
        pass
    return time.perf_counter() - start


def divekit_epoch(model: nn.Module, data, lr: float) -> float:
    trainer = dk.Trainer(max_epochs=1, lr=lr, optimizer="sgd", grad_clip=1.0, progress=False)
    return trainer.fit(model, data)[-1]["train_time"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--num-steps", type=int, default=32)
    parser.add_argument("--num-train", type=int, default=10000, help="training windows")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--baselines-only", action="store_true",
                        help="(the child process) time plain and scratch, print JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data = dk.load_data("timemachine", batch_size=args.batch_size, num_steps=args.num_steps,
                        stride=1, num_train=args.num_train)
    vocab_size, lr = data.num_classes, 4.0
    tokens = data.train[1].numel()
    builders = {
        "divekit": lambda: dk.create_model("lstm-lm", data, hidden_size=args.hidden),
        "scratch": lambda: ScratchLSTMLM(vocab_size, args.hidden),
        "plain": lambda: PlainLSTMLM(vocab_size, args.hidden),
    }
    if args.baselines_only:
        del builders["divekit"]
    times: dict[str, list[float]] = {name: [] for name in builders}
    for repeat in range(args.repeats):
        for name, build in builders.items():
            torch.manual_seed(repeat)
            model = build()
            if name == "divekit":
                seconds = divekit_epoch(model, data, lr)
            else:
                seconds = hand_written_epoch(model, data, lr)
            times[name].append(seconds)
            print(f"repeat {repeat + 1}: {name:<8} {seconds:6.2f} s", flush=True,
                  file=sys.stderr if args.baselines_only else sys.stdout)
    if args.baselines_only:
        print(json.dumps(times))
        return
    child = subprocess.run([sys.executable, *sys.argv, "--baselines-only"], check=True,
                           capture_output=True, text=True,
                           env=os.environ | {"THP_MEM_ALLOC_ENABLE": "0"})
    for name, values in json.loads(child.stdout).items():
        times[f"{name}, default allocator"] = values

    median = {name: statistics.median(values) for name, values in times.items()}
    best = min(median["plain, default allocator"], median["scratch, default allocator"])
    print(f"\nLSTM language model, The Time Machine, 1 epoch = {tokens:,} tokens (hidden "
          f"{args.hidden}, batch {args.batch_size}, {args.num_steps} steps), "
          f"{args.threads} threads, median of {args.repeats}:")
    print(f"  {'':<27} {'seconds':>8} {'tokens/s':>10} {'vs scratch':>11} {'vs best baseline':>17}")
    for name, seconds in median.items():
        print(f"  {name:<27} {seconds:8.2f} {tokens / seconds:10,.0f} "
              f"{median['scratch'] / seconds:10.2f}x {best / seconds:16.2f}x")
    overhead = 100 * (median["divekit"] / median["plain"] - 1)
    print(f"  Trainer overhead vs the plain loop: {overhead:+.1f}%")


if __name__ == "__main__":
    main()
