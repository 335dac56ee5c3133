"""Run by tests/engine/test_distributed.py under torchrun: train and write the final weights."""

import sys

import torch

import divekit as dk
from divekit.data import DataModule
from tests.conftest import blobs


def main(out_dir: str, per_process_batch: int) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4))
    data = DataModule("blobs", blobs(512), blobs(101, sample_seed=1), batch_size=per_process_batch,
                      class_names=list("abcd"))
    dk.Trainer(max_epochs=2, lr=0.5, momentum=0.9, out_dir=out_dir, progress=False).fit(model, data)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
