"""The ``divekit`` command's entry point: Ctrl-C while PyTorch is still loading is one line.

Importing the command line loads PyTorch and every model, which takes seconds; an interrupt
then would otherwise end in a traceback. Nothing has been written at that point.
"""

from __future__ import annotations

import sys


def main() -> int:
    try:
        from divekit.cli import main as run
    except KeyboardInterrupt:
        print("divekit: stopped by SIGINT while starting; nothing was written", file=sys.stderr)
        return 130
    return run()
