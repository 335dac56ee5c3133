"""What the process setting ``THP_MEM_ALLOC_ENABLE=1`` (set by ``import divekit``) is worth:
the plain ``nn.LSTM`` language-model loop of :mod:`divekit.bench.lstm`, timed in two child
processes, one with transparent huge pages for PyTorch's CPU allocator and one without.

Both sides of the in-process comparisons share the setting (PyTorch reads it once, at its first
allocation), so only separate processes can show it. Run as ``python -m
divekit.bench.allocator`` this module is such a child: it prints the loop's tokens/s, one line
per repeat. It trains on random tokens of The Time Machine's shapes (vocabulary 28, batch
1024 x 32 steps): the speed does not depend on the text, and the child then loads no data.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import torch

from divekit.bench import lstm
from divekit.bench.timing import book_rate
from divekit.errors import DivekitError

NAME, UNIT = "allocator", "tokens/s"
WHAT = ("plain nn.LSTM LM loop (as lstm) in child processes, THP_MEM_ALLOC_ENABLE=0 (book "
        "loop column) vs 1 (divekit column)")
SETTINGS = ("0", "1")
VOCAB_SIZE = 28  # The Time Machine's characters: 26 letters, space and <unk>


def child_rates(setting: str, warmup: int, steps: int, repeats: int,
                threads: int) -> list[float]:
    """Tokens/s of each repeat in a child process with ``THP_MEM_ALLOC_ENABLE=setting``."""
    command = [sys.executable, "-m", "divekit.bench.allocator", "--warmup", str(warmup),
               "--steps", str(steps), "--repeats", str(repeats), "--threads", str(threads)]
    result = subprocess.run(command, capture_output=True, text=True, check=False,
                            env=os.environ | {"THP_MEM_ALLOC_ENABLE": setting})
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or [f"exit status {result.returncode}"]
        raise DivekitError(f"the allocator child process failed: {lines[-1]}")
    return [float(line) for line in result.stdout.split()]


def main() -> None:
    parser = argparse.ArgumentParser(description="tokens/s of the plain nn.LSTM loop")
    parser.add_argument("--warmup", type=int, default=lstm.WARMUP)
    parser.add_argument("--steps", type=int, default=lstm.STEPS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tokens = torch.randint(VOCAB_SIZE, (args.warmup + args.repeats * args.steps, 2,
                                        lstm.BATCH_SIZE, lstm.NUM_STEPS))
    model = lstm.PlainLSTMLM(VOCAB_SIZE, lstm.HIDDEN)
    steps = lstm.book_steps(model, (batch.unbind(0) for batch in tokens), lstm.LR)
    for repeat in range(args.repeats):
        warmup = args.warmup if repeat == 0 else 0
        print(book_rate(steps, warmup, args.steps, torch.device("cpu")), flush=True)


if __name__ == "__main__":
    main()
