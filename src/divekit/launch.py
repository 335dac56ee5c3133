"""The ``divekit`` command's entry point: Ctrl-C while PyTorch is still loading is one line.

Importing the command line loads PyTorch and every model, which takes seconds. An interrupt
then, raised as KeyboardInterrupt inside a half-imported PyTorch, ended in a traceback, or in
an abort (SIGABRT) or a second SIGINT while the interpreter tore the half-loaded libraries
down. Nothing has been written at that point, so the start-up handler prints one line and
leaves at once, without running any clean-up; the CLI then gets Python's usual handler back.
"""

from __future__ import annotations

import os
import signal
import sys


def _stop_while_starting(signum: int, frame: object) -> None:
    sys.stderr.write("divekit: stopped by SIGINT while starting; nothing was written\n")
    sys.stderr.flush()
    os._exit(130)


def main() -> int:
    previous = signal.signal(signal.SIGINT, _stop_while_starting)
    from divekit.cli import main as run

    signal.signal(signal.SIGINT, previous)
    return run()
