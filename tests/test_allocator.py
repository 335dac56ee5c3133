"""``import divekit`` turns on PyTorch's transparent-huge-page allocation unless told otherwise."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")

# Allocates 128 MiB through PyTorch after importing divekit, and reports the variable and how
# much of the process's anonymous memory the kernel backs with huge pages.
PROBE = """
import os
import divekit
import torch
x = torch.ones(1 << 25)
rollup = open("/proc/self/smaps_rollup").read().splitlines()
huge_kb = next(int(line.split()[1]) for line in rollup if line.startswith("AnonHugePages"))
print(os.environ.get("THP_MEM_ALLOC_ENABLE"), huge_kb)
"""


def probe(**env: str) -> tuple[str, int]:
    child_env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"} | env
    out = subprocess.run([sys.executable, "-c", PROBE], env=child_env, capture_output=True,
                         text=True, check=True, timeout=120).stdout.split()
    return out[0], int(out[1])


def kernel_mode() -> str | None:
    """The kernel's THP mode (``always``, ``madvise`` or ``never``), None where unknown."""
    if not THP_MODE.exists() or not Path("/proc/self/smaps_rollup").exists():
        return None
    return THP_MODE.read_text().split("[")[1].split("]")[0]


def test_import_sets_it_and_keeps_a_value_the_user_chose():
    assert probe()[0] == "1"
    assert probe(THP_MEM_ALLOC_ENABLE="0")[0] == "0"


@pytest.mark.skipif(kernel_mode() not in ("always", "madvise"),
                    reason="the kernel has no transparent huge pages to give")
def test_large_tensors_get_huge_pages_and_zero_turns_it_off():
    setting, huge_kb = probe()
    assert setting == "1" and huge_kb >= 64 * 1024  # most of the 128 MiB tensor
    if kernel_mode() == "madvise":  # nothing else asks for huge pages in that mode
        assert probe(THP_MEM_ALLOC_ENABLE="0")[1] == 0
