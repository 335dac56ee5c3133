"""SIGINT and SIGTERM during training: finish the step, checkpoint, stop with one message."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from divekit.engine import distributed
from divekit.engine.run_folder import RunFolder


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped the program; ``signum`` says which (exit status 128 + it)."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


class TrainingInterrupted(Interrupted):
    """``fit`` stopped at a step boundary on SIGINT or SIGTERM, after checkpointing."""


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Inside, SIGTERM raises :class:`Interrupted` as SIGINT raises ``KeyboardInterrupt``.

    A command stopped outside ``fit`` (loading data, evaluating) then ends the way Ctrl-C
    ends it, with one line, instead of dying silently. SIGINT's handler is installed again
    and both signals are unblocked in this thread: a library may have replaced the handler
    below Python or masked the signal, and Ctrl-C would then do nothing. A SIGINT that the
    parent ignores (a background job of a shell script) stays ignored. Only the main thread
    can set handlers; elsewhere the signals act as usual.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, _raise_interrupted)}
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    blocked = signal.pthread_sigmask(signal.SIG_UNBLOCK, set(previous))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def _raise_interrupted(signum: int, frame) -> None:
    raise Interrupted(f"stopped by {signal.Signals(signum).name}", signum)


class Signals:
    """SIGINT and SIGTERM during ``fit`` finish the current step, checkpoint and stop.

    A pre-empted cloud job gets SIGTERM and a few seconds: the run directory then holds a
    checkpoint of the last step, and ``--resume`` continues exactly. A second signal acts at
    once (the previous handler is back). Handlers can only be set from the main thread;
    elsewhere signals act as usual.
    """

    def __init__(self, trainer) -> None:
        self.trainer, self.received, self.previous = trainer, None, {}

    def __enter__(self) -> Signals:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}

    def _handle(self, signum: int, frame) -> None:
        self.received = signum
        signal.signal(signum, self.previous.get(signum, signal.SIG_DFL))

    def check(self, save: bool) -> None:
        """Stop here if a signal came (to any process); checkpoint first when ``save``."""
        received, trainer = self.received, self.trainer
        if trainer.world_size > 1:  # every process stops at the same step
            flag = torch.tensor(float(received is not None), device=trainer.device)
            if distributed.all_reduce_sum(flag).item() > 0:
                received = received or signal.SIGTERM
        if received is None:
            return
        folder = next((c for c in trainer.callbacks if isinstance(c, RunFolder)), None)
        where = "no run directory: nothing was saved"
        if folder is not None:
            if save:
                folder.save(trainer)
            where = (f"checkpoint of step {trainer.global_step} in "
                     f"{folder.out_dir / 'checkpoints' / 'last.pt'}; continue with "
                     f"`divekit train --resume {folder.out_dir}`")
        raise TrainingInterrupted(f"stopped by {signal.Signals(received).name} ({where})",
                                  received)
