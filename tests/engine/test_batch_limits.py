"""--limit-batches (a smoke run on the first batches) and --overfit-batches (memorise a few)."""

from __future__ import annotations

import json

import pytest
import torch

import divekit as dk
from divekit.data import DataModule
from divekit.engine.batch_limits import FixedBatches, LimitedLoader
from divekit.errors import DivekitError
from tests.conftest import blobs, small_cnn


def test_limit_batches_trains_and_evaluates_on_the_first_batches_only(blob_data):
    trainer = dk.Trainer(max_epochs=2, lr=0.1, limit_batches=3, progress=False)
    history = trainer.fit(small_cnn(), blob_data)
    assert trainer.global_step == 6
    # Each epoch takes the first batches of its own shuffle.
    full = blob_data.train_dataloader()
    for epoch in (0, 1):
        trainer.train_loader.set_epoch(epoch)
        full.set_epoch(epoch)
        limited = [labels for _, labels in trainer.train_loader]
        first = [labels for _, labels in full][:3]
        assert len(limited) == 3 and all(map(torch.equal, limited, first))
    # Evaluation reads the first 3 batches too.
    model = trainer.model.eval()
    loader = dk.TensorLoader(*blob_data.test, batch_size=16)
    with torch.no_grad():
        logits = model(blob_data.test[0][:48])
    expected = torch.nn.functional.cross_entropy(logits, blob_data.test[1][:48]).item()
    assert trainer.evaluate(model, loader)["test_loss"] == pytest.approx(expected, rel=1e-5)
    assert history.last["epoch"] == 2


def test_overfit_batches_memorises_random_labels_on_the_same_batches():
    inputs, _ = blobs(256, sample_seed=2)
    labels = torch.randint(0, 4, (256,), generator=torch.Generator().manual_seed(9))
    data = DataModule("noise", train=(inputs, labels), test=(inputs, labels), batch_size=16,
                      class_names=list("abcd"))
    trainer = dk.Trainer(max_epochs=60, lr=0.01, optimizer="adam", overfit_batches=2,
                         progress=False)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 64), torch.nn.ReLU(),
                                torch.nn.Linear(64, 4))
    history = trainer.fit(model, data)
    assert trainer.global_step == 120
    full = data.train_dataloader()
    full.set_epoch(0)
    first = [labels for _, labels in full][:2]
    for epoch in (0, 7):  # every epoch is epoch 0's first two batches
        trainer.train_loader.set_epoch(epoch)
        assert all(map(torch.equal, [labels for _, labels in trainer.train_loader], first))
    # Random labels: nothing to learn, but 32 examples can be memorised.
    assert history.last["overfit_acc"] == 1.0
    assert history.last["overfit_loss"] < 0.1 * history[0]["overfit_loss"]
    assert "test_acc" not in history.last and trainer.monitor == "overfit_acc"


def test_loaders_resume_inside_an_epoch_where_an_uninterrupted_pass_would_be():
    x = torch.arange(40.0).reshape(40, 1)
    for wrapper in (lambda loader: LimitedLoader(loader, 4),
                    lambda loader: FixedBatches(loader, 4)):
        whole = wrapper(dk.TensorLoader(x, batch_size=5, shuffle=True, seed=1))
        whole.set_epoch(0)
        expected = [batch[0] for batch in whole][2:]
        resumed = wrapper(dk.TensorLoader(x, batch_size=5, shuffle=True, seed=1))
        resumed.set_epoch(0)
        resumed.skip_batches(2)
        got = [batch[0] for batch in resumed]
        assert len(got) == 2 and all(torch.equal(a, b) for a, b in zip(got, expected,
                                                                       strict=True))
        assert len(resumed) == 4


def test_both_limits_at_once_and_bad_counts_are_refused():
    with pytest.raises(DivekitError, match="limit_batches or overfit_batches, not both"):
        dk.Trainer(limit_batches=2, overfit_batches=2)
    with pytest.raises(DivekitError, match="overfit_batches must be a positive integer"):
        dk.Trainer(overfit_batches=0)


def test_cli_records_the_limit_and_loading_the_run_drops_it(tmp_path):
    from divekit import experiment
    from divekit.cli import main
    from divekit.engine import load_checkpoint

    out = tmp_path / "run"
    assert main(["train", "softmax-regression", "--data", "digits", "--epochs", "2",
                 "--batch-size", "16", "--limit-batches", "3",
                 "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "config.json").read_text())["trainer"]["limit_batches"] == 3
    assert load_checkpoint(out / "checkpoints" / "last.pt")["global_step"] == 6
    trainer, _, _ = experiment.load_run(out)
    assert trainer.limit_batches is None  # eval and predict read every batch
