"""What the benchmarks print about the machine they ran on (run them as ``python
benchmarks/NAME.py``, which puts this folder on the import path)."""

from divekit.engine.device import cpu_name

__all__ = ["cpu_name"]
