"""A training loss that explodes without becoming NaN: one warning, or with
``stop_on_divergence`` a stop that keeps the last good checkpoint."""

import json

import pytest
import torch

import divekit as dk
from divekit.cli import main
from divekit.data import DataModule
from divekit.engine import TrainingDiverged, load_checkpoint
from tests.conftest import blobs


@pytest.fixture
def noisy_data():
    """Blobs with random labels: no weights fit them, so a huge step makes huge losses
    (on separable data the loss of ever larger logits would only fall)."""
    inputs, _ = blobs(512)
    labels = torch.randint(0, 4, (512,), generator=torch.Generator().manual_seed(7))
    return DataModule("noisy", train=(inputs, labels), test=blobs(200, sample_seed=1),
                      batch_size=32, class_names=list("abcd"))


def linear_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4))


def test_a_huge_learning_rate_warns_once_and_the_run_completes(noisy_data, capsys):
    trainer = dk.Trainer(max_epochs=3, lr=1e6, progress=False)
    history = trainer.fit(linear_model(), noisy_data)
    err = capsys.readouterr().err
    assert len(history) == 3
    # Four classes: the first loss is near ln 4; logits of ~1e6 give wrong answers losses of
    # that size, finite, so the NaN guard says nothing.
    assert 1 < trainer.first_loss < 3 and history.column("train_loss")[0] > 1e4
    assert err.count("warning") == 1 and len(err.splitlines()) == 1
    assert "the run is diverging" in err and "lower the learning rate (now 1e+06)" in err


def test_a_run_that_learns_nothing_is_not_diverging(noisy_data, capsys):
    # lr 10 overshoots (losses of ~50, 30x the first) but stays under the 100x bound.
    history = dk.Trainer(max_epochs=2, lr=10, progress=False).fit(linear_model(), noisy_data)
    assert history.column("train_loss")[0] > 10
    dk.Trainer(max_epochs=2, lr=0.1, progress=False).fit(linear_model(), noisy_data)
    assert capsys.readouterr().err == ""


def test_stop_on_divergence_keeps_the_last_good_checkpoint_and_resume_keeps_the_reference(
        noisy_data, tmp_path, capsys):
    # Checkpoints every step: the first step's (its loss, at the initial weights, is fine)
    # is written; the second step's mean loss is huge, so its checkpoint must not be.
    trainer = dk.Trainer(max_epochs=2, lr=1e6, stop_on_divergence=True, out_dir=tmp_path,
                         checkpoint_every=1, progress=False)
    last = tmp_path / "checkpoints" / "last.pt"
    with pytest.raises(TrainingDiverged, match=r"epoch 1 \(step 2\).*diverging.*stopped.*"
                                               rf"learning rate.*last good checkpoint is {last}"):
        trainer.fit(linear_model(), noisy_data)
    state = load_checkpoint(last)
    assert state["global_step"] == 1 and state["first_loss"] == pytest.approx(trainer.first_loss)
    assert capsys.readouterr().err == ""  # the error is the message, no warning besides

    # The reference loss comes back with the checkpoint: measured afresh from the diverged
    # weights it would be huge, and the run would go on.
    resumed = dk.Trainer(max_epochs=2, lr=1e6, stop_on_divergence=True, out_dir=tmp_path,
                         checkpoint_every=1, progress=False)
    with pytest.raises(TrainingDiverged, match=r"\(step 2\).*diverging"):
        resumed.fit(linear_model(), noisy_data, resume=True)
    assert load_checkpoint(last)["global_step"] == 1


def cli(capsys, *args):
    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


def test_the_command_line_warns_or_stops(capsys, tmp_path):
    args = ["train", "softmax-regression", "--data", "digits", "--epochs", "2", "--lr", "1e6",
            "--quiet"]
    status, out, err = cli(capsys, *args, "--out", tmp_path / "warned")
    assert status == 0 and out.startswith("test acc")
    assert err.startswith("divekit: warning: training loss") and len(err.splitlines()) == 1

    status, out, err = cli(capsys, *args, "--out", tmp_path / "stopped", "--stop-on-divergence")
    assert status == 2 and out == "" and len(err.splitlines()) == 1
    assert err.startswith("divekit: error: training loss") and "diverging" in err
    config = json.loads((tmp_path / "stopped" / "config.json").read_text())
    assert config["trainer"]["stop_on_divergence"] is True
