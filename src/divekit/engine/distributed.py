"""Data-parallel training across processes (``torchrun``), one model replica per process.

Under ``torchrun --nproc_per_node N`` every process runs the same script; the Trainer notices the
``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` variables, joins the process group (NCCL on GPUs, Gloo on
CPUs), wraps the model in ``DistributedDataParallel``, gives each process a disjoint shard of
every batch and sums the metrics over processes. Only rank 0 writes files and prints.
"""

from __future__ import annotations

import atexit
import os
from typing import Any

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """``(rank, world_size)``: ``(0, 1)`` outside ``torchrun``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def join(device: torch.device) -> torch.device:
    """Join the process group when launched by ``torchrun``; returns this process's device."""
    rank, world_size = world()
    if world_size == 1:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        # Left to interpreter shutdown, Gloo's threads sometimes outlive the group and the
        # process aborts ("terminate called without an active exception").
        atexit.register(_leave)
    return device


def _leave() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over processes (in place); a no-op in a single process."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor)
    return tensor


def gather(obj: Any) -> list[Any]:
    """Every process's ``obj``, in rank order (``[obj]`` in a single process)."""
    rank, world_size = world()
    if world_size == 1 or not dist.is_initialized():
        return [obj]
    objects: list[Any] = [None] * world_size
    dist.all_gather_object(objects, obj)
    return objects


def barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
