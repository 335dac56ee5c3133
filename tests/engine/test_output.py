"""What a run prints and where: the live bar on a terminal's standard error, a line per epoch
on standard output (also when it is redirected to a file), one line under ``--quiet``; and the
history's columns by name."""

import io
import json
import sys

import pytest
import torch
import torch.nn.functional as F

import divekit as dk
from divekit.cli import main
from divekit.engine import History


class Terminal(io.StringIO):
    """Captures text like a stream attached to a terminal."""

    def isatty(self) -> bool:
        return True


def linear_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4))


def train_with_default_progress(blob_data, monkeypatch, stderr, **settings):
    stdout = io.StringIO()
    monkeypatch.setattr(sys, "stdout", stdout)
    monkeypatch.setattr(sys, "stderr", stderr)
    dk.Trainer(max_epochs=2, lr=0.1, **settings).fit(linear_model(), blob_data)
    return stdout.getvalue(), stderr.getvalue()


def test_epoch_lines_go_to_stdout_while_the_bar_draws_on_a_terminal(blob_data, monkeypatch):
    # `divekit train ... > train.log` at a terminal: stdout is a file, stderr the terminal.
    out, err = train_with_default_progress(blob_data, monkeypatch, Terminal())
    lines = out.splitlines()
    assert [line.split("  ")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"]
    assert all("train loss" in line and "| test loss" in line for line in lines)
    assert "epoch 2/2:" in err and "/16 " in err and "train loss" not in err  # the bar only


def test_piped_output_has_the_lines_and_no_bar(blob_data, monkeypatch):
    out, err = train_with_default_progress(blob_data, monkeypatch, io.StringIO())
    assert out.count("train loss") == 2 and err == ""


def cli(capsys, *args):
    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


STALLING = ["softmax-regression", "--data", "digits", "--epochs", "4", "--lr", "1e-12",
            "--early-stopping", "1"]


def test_a_run_prints_its_folder_epochs_stop_reason_and_final_line(capsys, tmp_path):
    status, out, err = cli(capsys, "train", *STALLING, "--out", tmp_path / "r")
    assert status == 0, err
    lines = out.splitlines()
    # An lr of 1e-12 changes nothing: epoch 2 does not improve and patience 1 stops the run.
    assert lines[0] == f"run directory: {tmp_path / 'r'}"
    assert [line.split("  ")[0] for line in lines[1:3]] == ["epoch 1/4", "epoch 2/4"]
    assert lines[3].startswith("early stopping: test_acc did not improve for 1 epochs")
    assert lines[4].startswith("test acc ") and len(lines) == 5


def test_quiet_prints_only_the_final_line(capsys, tmp_path):
    status, out, err = cli(capsys, "train", *STALLING, "--out", tmp_path / "r", "--quiet")
    assert status == 0, err
    assert len(out.splitlines()) == 1 and out.startswith("test acc ")
    assert err == ""


def test_a_misspelt_column_is_an_error_listing_the_columns():
    history = History([{"epoch": 1, "train_loss": 0.5, "test_acc": 0.8},
                       {"epoch": 2, "train_loss": 0.4, "test_acc": 0.9, "extra": 1.0}])
    assert history.column("test_acc") == [0.8, 0.9]
    assert history.column("extra") == [1.0]  # a metric some epochs lack
    with pytest.raises(dk.DivekitError,
                       match="no column 'test_accuracy'.*epoch, train_loss, test_acc, extra"):
        history.column("test_accuracy")
    assert History().column("test_acc") == []  # nothing trained yet: nothing to list


def test_a_trainer_with_a_run_folder_writes_the_test_metrics(blob_data, tmp_path):
    blob_data.val = (blob_data.test[0][:50], blob_data.test[1][:50])
    trainer = dk.Trainer(max_epochs=2, lr=0.1, out_dir=tmp_path, progress=False)
    trainer.fit(linear_model(), blob_data)
    assert "test_acc" not in trainer.history.last  # epochs were evaluated on val only
    written = json.loads((tmp_path / "test_metrics.json").read_text())
    with torch.no_grad():
        logits = trainer.model.eval()(blob_data.test[0])
    assert written == trainer.test_metrics
    assert written["test_loss"] == pytest.approx(F.cross_entropy(logits, blob_data.test[1]).item(),
                                                 rel=1e-5)
    assert written["test_acc"] == pytest.approx(
        (logits.argmax(1) == blob_data.test[1]).float().mean().item())


def test_the_final_test_evaluation_leaves_the_random_generators_alone(blob_data, tmp_path):
    # A dropout model draws from the global generator; writing the run folder must not.
    def run(out_dir):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(0.3),
                                    torch.nn.Linear(64, 4))
        dk.Trainer(max_epochs=1, lr=0.1, out_dir=out_dir, progress=False).fit(model, blob_data)
        return torch.get_rng_state(), torch.rand(3)

    with_folder, without = run(tmp_path), run(None)
    assert torch.equal(with_folder[0], without[0]) and torch.equal(with_folder[1], without[1])
    assert (tmp_path / "test_metrics.json").is_file()
