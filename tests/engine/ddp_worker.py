"""Run by tests/engine/test_distributed.py under torchrun: train and write the final weights.

Usage: ddp_worker.py OUT_DIR PER_PROCESS_BATCH [blobs|streamed|tokens|translation]
"""

import sys

import torch

import divekit as dk
from divekit.data import DataModule
from tests.conftest import blobs
from tests.engine.test_interrupts import Examples
from tests.engine.test_tasks import Tagging, padded_tagging_data, tagger


def main(out_dir: str, per_process_batch: int, kind: str = "blobs") -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4))
    trainer = dk.Trainer(max_epochs=2, lr=0.5, momentum=0.9, out_dir=out_dir, progress=False)
    # 501 = 15 x 32 + 21: each epoch ends with a global batch the processes split 11 + 10.
    if kind == "blobs":
        data = DataModule("blobs", blobs(501), blobs(101, sample_seed=1),
                          batch_size=per_process_batch, class_names=list("abcd"))
    elif kind == "streamed":  # read through a worker process per replica
        data = DataModule("blobs", Examples(*blobs(501)), Examples(*blobs(101, sample_seed=1)),
                          batch_size=per_process_batch, class_names=list("abcd"), num_workers=1)
    elif kind == "translation":  # the book's fra-eng pairs; BLEU's statistics summed
        data = dk.load_data("fra-eng", per_process_batch, num_train=512, num_val=129,
                            num_steps=9)
        model = dk.create_model("seq2seq-gru", data, embed_size=32, num_hiddens=32,
                                dropout=0.0)
        trainer = dk.Trainer(max_epochs=3, lr=0.01, optimizer="adam", out_dir=out_dir,
                             progress=False)
    else:  # padded sentences: the replicas' shards hold different numbers of real tokens
        data = DataModule("tags", padded_tagging_data(), padded_tagging_data(seed=1),
                          batch_size=per_process_batch, task="unused")
        model = tagger()
        trainer = dk.Trainer(max_epochs=2, lr=0.5, task=Tagging(), out_dir=out_dir,
                             progress=False)
    trainer.fit(model, data)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), *sys.argv[3:])
