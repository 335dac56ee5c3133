"""``amp="auto"`` / ``channels_last="auto"``: measure which precision and memory format pay here.

CPUs of the same kind differ: bf16 autocast is ~6x faster than fp32 on one with AVX-512 BF16 and
~12x slower on one with AVX2 only. So the choice is measured, not assumed: :func:`probe` times a
few forward+backward steps of each candidate on a copy of the real model and the real first
training batch, and :func:`choose` keeps fp32 (contiguous) unless another candidate is clearly
faster, since a lower precision changes results. With ``compile="auto"``, :func:`probe_compile`
then times the chosen setting under ``torch.compile`` and :func:`compile_verdict` keeps it only
when the run is long enough for the faster steps to repay the compiling (on one 2-core CPU
compiling made DenseNet's bf16 steps 1.25x faster and a small CNN's 0.57x as fast). Results are
cached per machine, model and batch shape in ``$DIVEKIT_CACHE/autotune.json`` (default
``~/.cache/divekit``).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from divekit.engine.checkpoint import rng_state, set_rng_state, write_atomically
from divekit.engine.device import autocast, cpu_name
from divekit.engine.task import Task, to_device

Candidate = tuple[str, bool]  # (amp, channels_last)
PRECISION_NAMES = {"off": "fp32", "bf16": "bf16", "fp16": "fp16"}
GIVE_UP = 4.0  # times the baseline's step: timed once, not ``steps`` times
# Compiling takes 10-25 s on a CPU (less with a warm disk cache); a run shorter than this, in
# seconds of training at the chosen setting's step time, is not worth trying it on.
COMPILE_WORTH = 120.0


@dataclass
class ProbeResult:
    """What the probe chose, the seconds per step it measured, and why, in one line."""

    choice: Candidate
    timings: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    compile: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The record kept in ``config.json`` and the cache."""
        amp, channels_last = self.choice
        return {"amp": amp, "channels_last": channels_last, "compile": self.compile,
                "timings": self.timings, "reason": self.reason}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ProbeResult:
        """The inverse of :meth:`to_dict` (a ``KeyError``/``TypeError`` on a foreign record;
        a record written before ``compile`` was measured reads as not compiled)."""
        amp, channels_last = values["amp"], values["channels_last"]
        compiled = values.get("compile", False)
        if amp not in PRECISION_NAMES or not isinstance(channels_last, bool) \
                or not isinstance(compiled, bool):
            raise TypeError(f"not an autotune record: {values!r:.80}")
        return cls((amp, channels_last), dict(values["timings"]), str(values["reason"]),
                   compiled)


def label(candidate: Candidate) -> str:
    """``"bf16 + channels_last"``, ``"fp32"``, ...: a candidate as people read it."""
    amp, channels_last = candidate
    return PRECISION_NAMES[amp] + (" + channels_last" if channels_last else "")


def candidates(device: torch.device, batch: Any, amp: str, channels_last: bool | str
               ) -> list[Candidate]:
    """The settings worth timing: every precision the device may run fast when ``amp`` is
    ``"auto"`` (on CPU bf16 and fp16 are tried: each is fast only where the CPU has units for
    it, and dropped by the probe if it fails), and both memory formats when ``channels_last``
    is ``"auto"`` and the batch holds 4-D images."""
    if amp != "auto":
        precisions = [amp]
    elif device.type == "cuda":
        precisions = ["off", *(["bf16"] if torch.cuda.is_bf16_supported() else []), "fp16"]
    elif device.type == "cpu":
        precisions = ["off", "bf16", "fp16"]
    else:  # MPS: no autocast worth measuring
        precisions = ["off"]
    if channels_last != "auto":
        formats = [bool(channels_last)]
    else:
        formats = [False, True] if _has_images(batch) else [False]
    return [(precision, fmt) for fmt in formats for precision in precisions]


def choose(timings: dict[Candidate, float], baseline: Candidate = ("off", False),
           margin: float = 0.9, where: str = "this machine") -> ProbeResult:
    """The fastest candidate if it takes under ``margin`` x the ``baseline``'s time, else the
    baseline (a lower precision changes results, so it must pay clearly); ties go to the
    earlier candidate.

    Args:
        timings: seconds per step of each candidate; must hold ``baseline``.
        where: the machine, for the reason line (e.g. ``"this CPU (AMD EPYC 7B13)"``).
    """
    base = timings[baseline]
    others = [(seconds, index, candidate) for index, (candidate, seconds)
              in enumerate(timings.items()) if candidate != baseline]
    recorded = {label(candidate): seconds for candidate, seconds in timings.items()}
    if not others:
        return ProbeResult(baseline, recorded, f"{label(baseline)}: no other candidate to try "
                                               f"on {where}")
    seconds, _, best = min(others)
    ratio = seconds / base if base > 0 else float("inf")
    chosen = best if seconds < margin * base else baseline
    verdict = "using it" if chosen == best else f"staying in {label(baseline)}"
    return ProbeResult(chosen, recorded, f"{label(best)}: {ratio:.2f}x the time of "
                                         f"{label(baseline)} on {where}, {verdict}")


def probe(model: nn.Module, batch: Any, task: Task, device: torch.device,
          options: list[Candidate], steps: int = 3, warmup: int = 1,
          timer: Callable[[], float] = time.perf_counter) -> ProbeResult:
    """Time ``steps`` forward+backward passes (after ``warmup``) of each candidate on a copy
    of ``model`` and choose with :func:`choose`; the model, its gradients and every random
    generator are left exactly as they were.

    Args:
        batch: a training batch (on any device); ``options``: from :func:`candidates`, the
            first being the baseline. A candidate that fails to run (an unsupported autocast)
            is left out.
    """
    generators = rng_state()
    timings: dict[Candidate, float] = {}
    try:
        for candidate in options:
            # A candidate this much slower than the baseline cannot win: one timed step will do
            # (bf16 on a CPU without bf16 units is ~12x slower, so its steps are costly).
            hopeless = GIVE_UP * timings[options[0]] if options[0] in timings else math.inf
            times = _time_candidate(model, batch, task, device, candidate, steps, warmup,
                                    timer, hopeless)
            if times is not None:
                timings[candidate] = statistics.median(times[warmup:])
    finally:
        set_rng_state(generators)
    if options[0] not in timings:  # the model fails in its own precision: training will say why
        return ProbeResult(options[0], {}, f"{label(options[0])}: could not be timed")
    return choose(timings, baseline=options[0], where=machine_name(device))


def compile_verdict(eager: float, compiled: float, first_call: float, steps: int,
                    margin: float = 0.9) -> tuple[bool, str]:
    """Whether to compile, and why in a few words: the compiled step must take under
    ``margin`` x the ``eager`` one, and the seconds it saves over the run's ``steps`` must
    exceed twice the ``first_call`` (the compiling is paid again in training: for the real
    model and for an epoch's last, smaller batch)."""
    saved, cost = (eager - compiled) * steps, 2 * first_call
    use = compiled < margin * eager and saved > cost
    outcome = f"saves ~{saved:.0f} s" if saved > 0 else f"loses ~{-saved:.0f} s"
    return use, (f"compile: {compiled / eager:.2f}x the step time, {outcome} over {steps:,} "
                 f"steps for ~{cost:.0f} s of compiling, "
                 f"{'compiling' if use else 'not compiling'}")


def add_compile_verdict(result: ProbeResult, model: nn.Module, batch: Any, task: Task,
                        device: torch.device, key: str, steps: int) -> tuple[ProbeResult, bool]:
    """``result`` (the chosen candidate, cached under ``key``) with the compile verdict for a
    run of ``steps`` steps: not tried for a run estimated under :data:`COMPILE_WORTH`
    seconds, else timed by :func:`probe_compile` (or read from the cache) and judged by
    :func:`compile_verdict`; and whether the compiled step was timed now."""
    name = label(result.choice)
    eager = result.timings.get(name)
    if eager is None:  # the model could not be timed: nothing to compare
        return result, False
    if eager * steps < COMPILE_WORTH:
        verdict = (f"compile: not tried, the run is ~{eager * steps:.0f} s of steps, too short "
                   f"to repay compiling")
        return replace(result, reason=f"{result.reason}; {verdict}"), False
    compile_key = f"{key} compile {name}"
    timed, measured = cached(compile_key), False
    if timed is None:
        seconds, measured = probe_compile(model, batch, task, device, result.choice), True
        timed = ProbeResult(result.choice, {} if seconds is None else {
            "first compiled call": seconds[0], f"compiled {name}": seconds[1]},
            "could not be compiled" if seconds is None else "")
        store(compile_key, timed)
    if not timed.timings:
        use, verdict = False, "compile: failed here, not compiling"
    else:
        use, verdict = compile_verdict(eager, timed.timings[f"compiled {name}"],
                                       timed.timings["first compiled call"], steps)
    return replace(result, timings={**result.timings, **timed.timings},
                   reason=f"{result.reason}; {verdict}", compile=use), measured


def probe_compile(model: nn.Module, batch: Any, task: Task, device: torch.device,
                  candidate: Candidate, steps: int = 3,
                  timer: Callable[[], float] = time.perf_counter) -> tuple[float, float] | None:
    """The seconds of the first step of ``candidate`` under ``torch.compile`` (tracing and
    compiling included) and the median of the ``steps`` after it; ``None`` if it does not
    compile here (no C++ compiler, an unsupported operator). Like :func:`probe`, it works on
    a copy and leaves every random generator as it was."""
    generators = rng_state()
    # Dynamo's advice on graph breaks is for someone who chose to compile, not for a probe.
    dynamo_log = logging.getLogger("torch._dynamo")
    level = dynamo_log.level
    dynamo_log.setLevel(logging.ERROR)
    try:
        times = _time_candidate(model, batch, task, device, candidate, steps, 1, timer,
                                math.inf, compiled=True)
    finally:
        set_rng_state(generators)
        dynamo_log.setLevel(level)
    return None if times is None else (times[0], statistics.median(times[1:]))


def _time_candidate(model: nn.Module, batch: Any, task: Task, device: torch.device,
                    candidate: Candidate, steps: int, warmup: int,
                    timer: Callable[[], float], hopeless: float,
                    compiled: bool = False) -> list[float] | None:
    """The seconds of each step of ``candidate``, warm-up steps first (the timed steps stop
    after the first that takes over ``hopeless`` seconds); ``None`` if it cannot run here."""
    amp, channels_last = candidate
    copied = copy.deepcopy(model)
    if channels_last:
        copied = copied.to(memory_format=torch.channels_last)
    copied.train()
    forward = torch.compile(copied) if compiled else copied
    inputs = to_device(batch, device, channels_last)
    times = []
    try:
        for step in range(warmup + steps):
            start = timer()
            with autocast(device, amp):
                loss = task.step(forward, inputs).loss
            loss.float().backward()
            copied.zero_grad(set_to_none=True)
            if device.type == "cuda":  # kernels run asynchronously
                torch.cuda.synchronize(device)
            times.append(timer() - start)
            # The first steps pay for allocation and kernel selection (and compiling).
            if step >= warmup and times[-1] > hopeless:
                break
    except Exception as error:
        # No bf16 kernel for an operator on this CPU (a RuntimeError), or any failure of
        # torch.compile (no C++ compiler, ...); in eager mode anything else is a real bug.
        if compiled or isinstance(error, RuntimeError):
            return None
        raise
    return times


def _has_images(batch: Any) -> bool:
    """Whether ``batch`` holds a 4-D floating-point tensor (what channels_last reorders)."""
    if isinstance(batch, torch.Tensor):
        return batch.ndim == 4 and batch.is_floating_point()
    if isinstance(batch, dict):
        return any(_has_images(value) for value in batch.values())
    if isinstance(batch, list | tuple):
        return any(_has_images(value) for value in batch)
    return False


def machine_name(device: torch.device) -> str:
    """``"this CPU (AMD EPYC 7B13)"`` or ``"this GPU (NVIDIA H200)"``: for reasons and keys."""
    if device.type == "cuda":
        return f"this GPU ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"this CPU ({cpu_name()}, {torch.get_num_threads()} threads)"
    return f"this {device.type} device"


def cache_key(model: nn.Module, batch: Any, device: torch.device,
              options: list[Candidate]) -> str:
    """What the timings depend on: machine, torch, model, batch shapes and the candidates."""
    shapes = [list(t.shape) for t in _tensors(batch)]
    params = sum(p.numel() for p in model.parameters())
    return json.dumps([machine_name(device), torch.__version__, type(model).__name__, params,
                       shapes, [list(option) for option in options]])


def _tensors(batch: Any) -> list[torch.Tensor]:
    if isinstance(batch, torch.Tensor):
        return [batch]
    if isinstance(batch, dict):
        batch = list(batch.values())
    if isinstance(batch, list | tuple):
        return [t for item in batch for t in _tensors(item)]
    return []


def cache_path() -> Path:
    """``$DIVEKIT_CACHE/autotune.json``, default ``~/.cache/divekit/autotune.json``."""
    root = os.environ.get("DIVEKIT_CACHE") or Path.home() / ".cache" / "divekit"
    return Path(root).expanduser() / "autotune.json"


def cached(key: str) -> ProbeResult | None:
    """The cached result for ``key``; ``None`` when absent or the file is unreadable (it is
    then re-measured and rewritten, never an error)."""
    try:
        return ProbeResult.from_dict(json.loads(cache_path().read_text())[key])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def store(key: str, result: ProbeResult) -> None:
    """Add ``result`` to the cache file (atomically); a cache that cannot be written is
    skipped: the next run measures again."""
    path = cache_path()
    try:
        entries = json.loads(path.read_text())
        if not isinstance(entries, dict):
            entries = {}
    except (OSError, ValueError):
        entries = {}
    entries[key] = result.to_dict()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, json.dumps(entries, indent=1) + "\n")
    except OSError:
        pass
