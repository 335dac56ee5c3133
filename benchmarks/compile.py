"""``torch.compile`` (what ``--compile`` turns on) against eager PyTorch, on this machine.

For each model: seconds per training step (forward, backward, SGD step) on Fashion-MNIST-sized
batches, eager and compiled, medians of ``--steps`` steps after a warm-up, alternating, in one
process; and the compiled model's first call, which pays for tracing and for compiling the C++
kernels (cached on disk afterwards, so a second process pays less).

    python benchmarks/compile.py --models lenet resnet-cpu --steps 20
    python benchmarks/compile.py --models resnet-cpu small-cnn densenet-cpu --amp bf16 \
        --channels-last --steps 15
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import divekit as dk
from machine import cpu_name


def step_seconds(model, optimizer, x, y, amp: str) -> float:
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16"):
        loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["lenet", "resnet-cpu"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--amp", choices=["off", "bf16"], default="off")
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args()
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    x = torch.rand(args.batch_size, 1, 28, 28).to(memory_format=memory_format)
    y = torch.randint(0, 10, (args.batch_size,))
    print(f"torch.compile vs eager, training steps, batch {args.batch_size} of 1x28x28, "
          f"amp {args.amp}, channels_last {args.channels_last}, {cpu_name()}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    for name in args.models:
        torch.manual_seed(0)
        eager = dk.create_model(name, num_classes=10).to(memory_format=memory_format)
        compiled_module = dk.create_model(name, num_classes=10).to(memory_format=memory_format)
        compiled_module.load_state_dict(eager.state_dict())
        compiled = torch.compile(compiled_module)
        optimizers = {"eager": torch.optim.SGD(eager.parameters(), lr=0.01),
                      "compiled": torch.optim.SGD(compiled_module.parameters(), lr=0.01)}
        first = step_seconds(compiled, optimizers["compiled"], x, y, args.amp)
        step_seconds(eager, optimizers["eager"], x, y, args.amp)
        times: dict[str, list[float]] = {"eager": [], "compiled": []}
        for _ in range(args.steps):
            times["eager"].append(step_seconds(eager, optimizers["eager"], x, y, args.amp))
            times["compiled"].append(step_seconds(compiled, optimizers["compiled"], x, y, args.amp))
        eager_s, compiled_s = (statistics.median(times[k]) for k in ("eager", "compiled"))
        print(f"  {name:<12} eager {1e3 * eager_s:7.1f} ms/step  compiled {1e3 * compiled_s:7.1f}"
              f" ms/step  -> {eager_s / compiled_s:.2f}x  (first compiled call {first:.1f} s)",
              flush=True)


if __name__ == "__main__":
    main()
