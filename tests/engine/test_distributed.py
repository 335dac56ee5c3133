import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def run_worker(out_dir: Path, processes: int, per_process_batch: int, kind="blobs") -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={processes}", str(ROOT / "tests" / "engine" / "ddp_worker.py"),
               str(out_dir), str(per_process_batch), kind]
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")
@pytest.mark.parametrize("kind", ["blobs", "streamed"])
def test_two_processes_equal_one_process_with_the_global_batch(tmp_path, kind):
    # 2 processes x 16 examples per step == 1 process x 32: same batches, same averaged gradient,
    # for tensors in memory and for a dataset read by worker processes.
    run_worker(tmp_path / "ddp", processes=2, per_process_batch=16, kind=kind)
    run_worker(tmp_path / "single", processes=1, per_process_batch=32, kind=kind)

    ddp = torch.load(tmp_path / "ddp" / "checkpoints" / "last.pt", weights_only=True)
    single = torch.load(tmp_path / "single" / "checkpoints" / "last.pt", weights_only=True)
    for name, tensor in single["model"].items():
        torch.testing.assert_close(ddp["model"][name], tensor, rtol=1e-5, atol=1e-6)
    assert len(ddp["rng"]) == 2  # both replicas' generators, for exact resume

    # Metrics are sums over both processes: the same numbers as the single process.
    ddp_rows = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    single_rows = json.loads((tmp_path / "single" / "metrics.json").read_text())
    for a, b in zip(ddp_rows, single_rows, strict=True):
        assert a["test_acc"] == pytest.approx(b["test_acc"])  # 101 test examples, uneven shards
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")
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
