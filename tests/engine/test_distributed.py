import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from divekit.data.loaders import TensorLoader
from divekit.data.streaming import DatasetLoader
from tests.engine.test_interrupts import Examples

ROOT = Path(__file__).resolve().parents[2]


def run_worker(out_dir: Path, processes: int, per_process_batch: int, kind="blobs") -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={processes}", str(ROOT / "tests" / "engine" / "ddp_worker.py"),
               str(out_dir), str(per_process_batch), kind]
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")
@pytest.mark.slow  # ~17 s each: torchrun starts two training processes
@pytest.mark.parametrize("kind", ["blobs", "streamed"])
def test_two_processes_equal_one_process_with_the_global_batch(tmp_path, kind):
    # 2 processes x 16 examples per step == 1 process x 32: same batches, same averaged gradient,
    # for tensors in memory and for a dataset read by worker processes, the odd last batch of
    # each epoch (501 examples) included.
    run_worker(tmp_path / "ddp", processes=2, per_process_batch=16, kind=kind)
    run_worker(tmp_path / "single", processes=1, per_process_batch=32, kind=kind)

    ddp = torch.load(tmp_path / "ddp" / "checkpoints" / "last.pt", weights_only=True)
    single = torch.load(tmp_path / "single" / "checkpoints" / "last.pt", weights_only=True)
    for name, tensor in single["model"].items():
        torch.testing.assert_close(ddp["model"][name], tensor, rtol=0, atol=1e-6)
    assert len(ddp["rng"]) == 2  # both replicas' generators, for exact resume

    # Metrics are sums over both processes: the same numbers as the single process.
    ddp_rows = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    single_rows = json.loads((tmp_path / "single" / "metrics.json").read_text())
    for a, b in zip(ddp_rows, single_rows, strict=True):
        assert a["test_acc"] == pytest.approx(b["test_acc"])  # 101 test examples, uneven shards
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        # Every training example once per epoch: examples/s x seconds is the epoch's count.
        assert round(a["examples_per_s"] * a["train_time"]) == 501


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")
@pytest.mark.slow  # ~17 s: torchrun starts two training processes
def test_token_weighted_loss_under_two_processes_equals_the_global_batch(tmp_path):
    # The replicas' shards of a batch hold different numbers of real (unpadded) tokens: each
    # replica's mean is weighted by its share of the step's tokens over both processes.
    run_worker(tmp_path / "ddp", processes=2, per_process_batch=8, kind="tokens")
    run_worker(tmp_path / "single", processes=1, per_process_batch=16, kind="tokens")
    ddp = torch.load(tmp_path / "ddp" / "checkpoints" / "last.pt", weights_only=True)
    single = torch.load(tmp_path / "single" / "checkpoints" / "last.pt", weights_only=True)
    for name, tensor in single["model"].items():
        torch.testing.assert_close(ddp["model"][name], tensor, rtol=1e-5, atol=1e-6)
    ddp_rows = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    single_rows = json.loads((tmp_path / "single" / "metrics.json").read_text())
    for a, b in zip(ddp_rows, single_rows, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["test_loss"] == pytest.approx(b["test_loss"], rel=1e-5)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")
@pytest.mark.skipif(not (Path(os.environ.get("DIVEKIT_DATA", "/nonexistent")) / "fra-eng"
                         / "fra.txt").is_file(), reason="needs fra-eng/fra.txt under DIVEKIT_DATA")
def test_bleu_under_two_processes_equals_one_process_decoding_every_sentence(tmp_path):
    # Each replica decodes its shard of the test sentences; the sums of sacreBLEU's statistics
    # over both must give the BLEU of all of them, as one process evaluating the same weights.
    import divekit as dk
    from divekit.engine.checkpoint import inference_weights

    run_worker(tmp_path / "ddp", processes=2, per_process_batch=16, kind="translation")
    last = json.loads((tmp_path / "ddp" / "metrics.json").read_text())[-1]
    data = dk.load_data("fra-eng", 16, num_train=512, num_val=129, num_steps=9)
    model = dk.create_model("seq2seq-gru", data, embed_size=32, num_hiddens=32, dropout=0.0)
    state = torch.load(tmp_path / "ddp" / "checkpoints" / "last.pt", weights_only=True)
    model.load_state_dict(inference_weights(state))
    trainer = dk.Trainer(progress=False, device="cpu")
    task = dk.create_task("translation")
    task.setup(data)
    single = trainer.evaluate(model, data.test_dataloader(), task=task)
    assert single["test_bleu"] > 0
    assert last["test_bleu"] == pytest.approx(single["test_bleu"], abs=1e-9)
    assert last["test_loss"] == pytest.approx(single["test_loss"], rel=1e-5)


def _shard_batches(loader, rank: int, world_size: int) -> list[list[int]]:
    loader.shard(rank, world_size).set_epoch(3)
    batches = [batch[0].tolist() for batch in loader]
    assert len(batches) == len(loader)
    return batches


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("world_size,batch_size", [(2, 16), (2, 1), (3, 4)])
@pytest.mark.parametrize("make", ["tensors", "dataset"])
def test_sharded_steps_hold_the_global_batch_for_every_dataset_size(make, world_size,
                                                                      batch_size, drop_last):
    # The rule: step k of the processes together reads global batch k of one process with
    # world_size x batch_size; a last global batch smaller than world_size is dropped.
    global_batch = world_size * batch_size
    for size in [*range(1, 3 * global_batch + 2), 101, 1437]:
        def loader(per_process: int, size=size):
            if make == "tensors":
                return TensorLoader(torch.arange(size), batch_size=per_process, shuffle=True,
                                    drop_last=drop_last, seed=5)
            return DatasetLoader(Examples(torch.arange(size), torch.zeros(size)),
                                 batch_size=per_process, shuffle=True, drop_last=drop_last,
                                 seed=5)

        single = _shard_batches(loader(global_batch), 0, 1)
        if single and len(single[-1]) < (global_batch if drop_last else world_size):
            single = single[:-1]
        shards = [_shard_batches(loader(batch_size), rank, world_size)
                  for rank in range(world_size)]
        assert all(len(batches) == len(single) for batches in shards), size
        for step, expected in enumerate(single):
            parts = [batches[step] for batches in shards]
            assert sorted(sum(parts, [])) == sorted(expected), (size, step)
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
            assert min(map(len, parts)) >= 1
        seen = sorted(sum((sum(batches, []) for batches in shards), []))
        assert len(seen) == len(set(seen))  # no example twice in an epoch
        if not drop_last and size % global_batch >= world_size:
            assert seen == list(range(size))  # every example once
