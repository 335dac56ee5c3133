"""Times the book's loops against divekit's Trainer and prints a Markdown table of ratios.

Each case trains the same model sizes and batches on both sides: the book's loop in plain
PyTorch (fp32) and ``Trainer.fit`` (fp32, and bf16 autocast when asked). Both sides first take
warm-up steps (not timed); then, ``repeats`` times, the book's loop takes a fixed number of
timed training steps and the Trainer as many (the book's run from a callback between the
Trainer's timed spans). Evaluation is excluded on both sides (the Trainer evaluates after its
last step, outside every span). The table shows the median throughputs and the median of the
paired ratios divekit / book: on a shared machine a slow phase slows both sides of a pair alike.
"""

from __future__ import annotations

import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from types import ModuleType

import torch

import divekit as dk
from divekit.bench import allocator, lenet, lstm, tiny_ssd, transformer
from divekit.bench.timing import book_rate, synchronize
from divekit.engine import Callback
from divekit.engine.device import cpu_name
from divekit.errors import DivekitError

CASES: dict[str, ModuleType] = {case.NAME: case for case in (lenet, lstm, transformer, tiny_ssd)}
NAMES = (*CASES, allocator.NAME)
QUICK_REPEATS, FULL_REPEATS = 3, 5
BOOK = "book"


@dataclass
class Row:
    """One line of the table: the book loop's throughputs (``book``) and, per divekit column
    (``divekit off``, ``divekit bf16``), pairs ``(book, divekit)`` measured back to back."""

    name: str
    what: str
    unit: str
    book: list[float] = field(default_factory=list)
    pairs: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    def median(self, side: str) -> float:
        if side == BOOK:
            return statistics.median(self.book)
        return statistics.median(ours for _, ours in self.pairs[side])

    def ratio(self, side: str) -> float:
        """Median over repeats of ``divekit / book`` measured in the same repeat."""
        return statistics.median(ours / book for book, ours in self.pairs[side])


class Alternate(Callback):
    """Times the Trainer in spans of ``steps`` optimizer steps and runs ``steps`` steps of the
    book's loop before each span (outside it), so that each pair is measured back to back.

    The first ``warmup`` steps of each side are not timed. The Trainer's evaluation comes
    after its last step, outside every span. ``restart``: a new book loop (its own warm-up
    included) for every span, the previous one closed first: a loop with ``DataLoader``
    workers would otherwise keep them busy prefetching during the Trainer's span.
    """

    def __init__(self, book_run: Callable[[], Iterator[int]], warmup: int, steps: int,
                 repeats: int, restart: bool = False) -> None:
        self.book_run, self.warmup, self.steps = book_run, warmup, steps
        self.repeats, self.restart = repeats, restart
        self.book = book_run()
        self.book_rates: list[float] = []
        self.seconds: list[float] = []
        self.start = 0.0

    def on_step_end(self, trainer) -> None:
        done = trainer.global_step - self.warmup
        if done < 0 or done % self.steps:
            return
        synchronize(trainer.device)
        if done:
            self.seconds.append(time.perf_counter() - self.start)
        if len(self.book_rates) < self.repeats:
            if self.restart and self.book_rates:
                self.book = self.book_run()
            warmup = self.warmup if self.restart or not self.book_rates else 0
            self.book_rates.append(book_rate(self.book, warmup, self.steps, trainer.device))
            if self.restart:
                self.book.close()  # stops its loader's workers before the Trainer's span
        self.start = time.perf_counter()


def check_names(names: Sequence[str]) -> list[str]:
    """The cases to run, in the table's order; all of them when none are named."""
    unknown = [name for name in names if name not in NAMES]
    if unknown:
        raise DivekitError(f"unknown benchmark case {unknown[0]!r}: choose from "
                           f"{', '.join(NAMES)}")
    return [name for name in NAMES if name in names or not names]


def measure(case: ModuleType, state: dict, warmup: int, steps: int, repeats: int,
            amps: Sequence[str], device: torch.device,
            report: Callable[[str], None] = lambda line: None) -> Row:
    """One ``Trainer.fit`` per precision in ``amps`` (with a fresh book model beside it) that
    takes ``warmup + repeats * steps`` steps, each span of ``steps`` paired with the book's."""
    row = Row(case.NAME, f"{case.WHAT}, {_steps(steps)}", case.UNIT)
    data = state["data"]
    needed = warmup + repeats * steps
    if needed > len(data.train_dataloader()):
        raise DivekitError(f"{case.NAME}: {warmup} warm-up + {repeats} x {steps} timed steps, "
                           f"but an epoch has {len(data.train_dataloader())} batches")
    for amp in amps:
        torch.manual_seed(0)
        alternate = Alternate(lambda: case.book_run(state, device), warmup, steps, repeats,
                              case.RESTART_BOOK)
        model, data, options = case.divekit_run(state)
        # limit_batches: one epoch of exactly the steps the spans need.
        trainer = dk.Trainer(max_epochs=1, limit_batches=needed, amp=amp, device=device.type,
                             progress=False, callbacks=[alternate], **options)
        trainer.fit(model, data)
        # The loader's order depends only on (seed, epoch): these are the batches it trained on.
        counts = [int(trainer.task.count(batch)) for batch in islice(data.train_dataloader(),
                                                                      warmup, needed)]
        rates = [sum(counts[k * steps:(k + 1) * steps]) / seconds
                 for k, seconds in enumerate(alternate.seconds)]
        side = f"divekit {amp}"
        row.pairs[side] = list(zip(alternate.book_rates, rates, strict=True))
        row.book = row.book or alternate.book_rates
        for repeat, (book, ours) in enumerate(row.pairs[side]):
            report(f"{case.NAME} repeat {repeat + 1}/{repeats}: book {book:,.1f}, {side} "
                   f"{ours:,.1f} {case.UNIT}")
    return row


def measure_allocator(warmup: int, steps: int, repeats: int, threads: int,
                      report: Callable[[str], None] = lambda line: None) -> Row:
    """The allocator row: the ``book`` side without huge pages, ``divekit off`` with them."""
    row = Row(allocator.NAME, f"{allocator.WHAT}, {_steps(steps)}", allocator.UNIT)
    off, on = (allocator.child_rates(setting, warmup, steps, repeats, threads)
               for setting in allocator.SETTINGS)
    row.book, row.pairs["divekit off"] = off, list(zip(off, on, strict=True))
    for setting, rates in zip(allocator.SETTINGS, (off, on), strict=True):
        report(f"allocator THP_MEM_ALLOC_ENABLE={setting}: "
               f"{', '.join(f'{rate:,.1f}' for rate in rates)} {allocator.UNIT}")
    return row


def header(threads: int) -> list[str]:
    """The machine: CPU, GPU (when CUDA is present), PyTorch version and threads."""
    lines = [f"CPU: {cpu_name()}"]
    if torch.cuda.is_available():
        lines.append(f"GPU: {torch.cuda.get_device_name(0)}")
    lines.append(f"torch {torch.__version__}, {threads} threads")
    return lines


def _steps(count: int) -> str:
    return f"{count} timed step{'s' if count > 1 else ''} per run"


def _rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def table(rows: Sequence[Row], amps: Sequence[str]) -> list[str]:
    """The Markdown table: median throughputs and median paired ratios to the book loop."""
    columns = ["case", "what", "unit", "book loop"]
    for amp in amps:
        name = "divekit" if amp == "off" else f"divekit {amp}"
        columns += [name, "ratio"]
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for row in rows:
        cells = [row.name, row.what, row.unit, _rate(row.median(BOOK))]
        for amp in amps:
            side = f"divekit {amp}"
            if side in row.pairs:
                cells += [_rate(row.median(side)), f"{row.ratio(side):.2f}x"]
            else:
                cells += ["-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _measure_all(cases: Sequence[str], quick: bool, repeats: int, amps: Sequence[str],
                 threads: int, steps: int | None, report: Callable[[str], None]) -> list[Row]:
    """The rows of ``cases``: each case's data is loaded first, then each is measured."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def timed_steps(case: ModuleType) -> int:
        return steps or (case.QUICK_STEPS if quick else case.STEPS)

    # All data first, so that a missing dataset stops the command before any timing.
    states = {name: CASES[name].prepare(CASES[name].WARMUP + repeats * timed_steps(CASES[name]))
              for name in cases if name in CASES}
    rows = []
    for name in cases:
        if name == allocator.NAME:
            rows.append(measure_allocator(lstm.WARMUP, timed_steps(lstm), repeats, threads,
                                          report))
        else:
            case = CASES[name]
            rows.append(measure(case, states[name], case.WARMUP, timed_steps(case), repeats,
                                amps, device, report))
    return rows


def run(names: Sequence[str] = (), quick: bool = False, repeats: int | None = None,
        amp: str | None = None, threads: int | None = None, steps: int | None = None) -> int:
    """``divekit bench``: print the machine, then measure the cases and print the table.

    Args:
        names: cases (``lenet``, ``lstm``, ``transformer``, ``tiny-ssd``, ``allocator``);
            none: all.
        quick: few steps per run (the whole table in about a minute on 2 cores).
        repeats: measurements per side (default 3 quick, 5 full).
        amp: ``"bf16"`` adds a divekit column in bf16 autocast (the book loop stays fp32).
        threads: PyTorch's CPU threads (default: as set).
        steps: timed steps per measurement in every case, instead of each case's own count.
    """
    cases = check_names(names)
    if threads is not None:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    repeats = repeats or (QUICK_REPEATS if quick else FULL_REPEATS)
    amps = ["off", *([amp] if amp else [])]
    for line in header(threads):
        print(line, flush=True)

    def report(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    with warnings.catch_warnings():
        # PyTorch warns when a DataLoader has more workers than there are cores: the book's
        # LeNet loader has 4, as the book's, and that is what is being compared.
        warnings.filterwarnings("ignore", message="This DataLoader will create")
        rows = _measure_all(cases, quick, repeats, amps, threads, steps, report)
    print(f"\nMedians of {repeats} runs after warm-up steps; ratio: median of the paired ratios "
          "divekit / book loop (allocator: THP on / off).\n")
    for line in table(rows, amps):
        print(line)
    return 0
