"""Who may write a run folder: one writer at a time (a lock), no silent replacement of a run,
and ``--resume`` continuing a run as it was configured (issue 15, items 4, 7 and 8)."""

import json
import os
import shutil
import signal
import socket
import time

import pytest
import torch

import divekit as dk
from divekit.engine.run_lock import RunLock
from divekit.errors import DivekitError
from tests.conftest import small_cnn
from tests.test_cli import cli, one_line_error

# One epoch of 3 batches: a run folder in about a second.
SMALL = ["small-cnn", "--data", "digits", "--batch-size", "64", "--lr", "0.3", "--epochs", "1",
         "--limit-batches", "3", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("base") / "run"
    assert main_status("train", *SMALL, "--out", run) == 0
    return run


def main_status(*args) -> int:
    from divekit.cli import main

    return main([str(a) for a in args])


@pytest.fixture
def run(base_run, tmp_path):
    """A copy of a finished one-epoch run, to change freely."""
    return shutil.copytree(base_run, tmp_path / "run")


def files(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def other_writer(tmp_path):
    """Start a process that holds a folder's run lock until killed; yields (start, pid)."""
    children = []

    def start(folder):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                RunLock(folder).acquire()
                os.write(write, b"locked")
                time.sleep(120)
            finally:
                os._exit(0)
        os.close(write)
        assert os.read(read, 10) == b"locked"
        os.close(read)
        children.append(pid)
        return pid

    yield start
    for pid in children:
        stop(pid)


def stop(pid):
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass  # already stopped by the test


def can_lock_elsewhere(folder) -> bool:
    """Whether another process can take the folder's lock now."""
    pid = os.fork()
    if pid == 0:
        try:
            RunLock(folder).acquire()
            os._exit(0)
        except DivekitError:
            os._exit(3)
    return os.waitpid(pid, 0)[1] == 0


def test_a_second_writer_is_refused_until_the_first_dies(blob_data, tmp_path, other_writer):
    folder = tmp_path / "run"
    pid = other_writer(folder)
    trainer = dk.Trainer(max_epochs=1, out_dir=folder, progress=False)
    with pytest.raises(DivekitError, match=f"being written by another divekit run \\(pid {pid} "
                                           f"on {socket.gethostname()}\\)"):
        trainer.fit(small_cnn(), blob_data)
    assert [p.name for p in folder.iterdir()] == [".lock"]  # nothing was written
    stop(pid)  # SIGKILL: its lock file stays, but no process holds it any more
    trainer.fit(small_cnn(), blob_data)
    assert (folder / "checkpoints" / "last.pt").is_file()
    assert not (folder / ".lock").exists() and can_lock_elsewhere(folder)


def test_the_lock_is_given_back_when_fit_fails(blob_data, tmp_path):
    trainer = dk.Trainer(max_epochs=1, out_dir=tmp_path, progress=False, monitor="val_nothing")
    with RunLock(tmp_path):  # held twice by this process: fit's own taking nests
        with pytest.raises(DivekitError, match="monitor 'val_nothing' is not a metric"):
            trainer.fit(small_cnn(), blob_data)
        assert not can_lock_elsewhere(tmp_path)
    assert can_lock_elsewhere(tmp_path)


def test_two_trainings_on_one_out_the_second_fails_with_one_line(run, capsys, other_writer):
    pid = other_writer(run)  # as if `divekit train --out RUN` were running there
    before = files(run)
    status, _, err = cli(capsys, "train", "--resume", run, "--epochs", "2", "--quiet")
    one_line_error(status, err, f"{run} is being written by another divekit run (pid {pid}")
    status, _, err = cli(capsys, "train", *SMALL, "--out", run, "--overwrite")
    one_line_error(status, err, "being written by another divekit run")
    assert files(run) == before


def test_train_into_an_existing_run_is_refused_and_nothing_is_lost(run, capsys):
    before = files(run)
    status, _, err = cli(capsys, "train", *SMALL, "--lr", "0.1", "--out", run)
    one_line_error(status, err, f"{run} already holds a run", "--resume", "--overwrite")
    assert files(run) == before
    # The Python API refuses it too.
    trainer = dk.Trainer(max_epochs=1, out_dir=run, progress=False)
    with pytest.raises(DivekitError, match="already holds a run"):
        trainer.fit(small_cnn(10), dk.load_data("digits", batch_size=64))
    assert files(run) == before


def test_overwrite_replaces_the_run_and_keeps_nothing_of_the_old_one(run, capsys):
    (run / "tensorboard").mkdir()  # a file the new run does not write
    (run / "tensorboard" / "events.old").write_text("old")
    status, _, err = cli(capsys, "train", *SMALL, "--lr", "0.1", "--limit-batches", "2",
                         "--out", run, "--overwrite")
    assert status == 0, err
    assert json.loads((run / "config.json").read_text())["trainer"]["lr"] == 0.1
    for name in ("last", "best"):
        state = torch.load(run / "checkpoints" / f"{name}.pt", weights_only=True)
        assert state["global_step"] == 2 and state["config"]["trainer"]["lr"] == 0.1
    assert not (run / "tensorboard").exists()


@pytest.mark.parametrize("flags, name, value", [
    (["--data", "mnist"], "--data", "data 'digits'"),
    (["--lr", "0.5"], "--lr", "lr 0.3"),
    (["--optimizer", "adam"], "--optimizer", "optimizer 'sgd'"),
    (["--batch-size", "32"], "--batch-size", "batch_size 64"),
    (["-M", "num_classes=4"], "-M/--model-option", "model_options {}"),
])
def test_resume_refuses_flags_that_change_the_run(run, capsys, flags, name, value):
    before = files(run)
    status, _, err = cli(capsys, "train", "--resume", run, "--epochs", "2", *flags)
    one_line_error(status, err, "--resume continues a run as it was configured; "
                   f"{name} cannot change ({run} has {value}); start a new run with "
                   f"--weights {run} to fine-tune")
    assert files(run) == before


def test_resume_applies_and_records_what_it_may_change(run, capsys):
    status, _, err = cli(capsys, "train", "--resume", run, "--epochs", "2", "--lr", "0.3",
                         "--device", "cpu", "--checkpoint-every", "2", "--quiet")
    assert status == 0, err  # --lr as the run has it is no change
    config = json.loads((run / "config.json").read_text())
    assert config["trainer"]["max_epochs"] == 2 and config["trainer"]["checkpoint_every"] == 2
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert (state["epoch"], state["global_step"]) == (2, 6)


def test_resume_before_the_first_checkpoint_says_to_start_again(run, capsys):
    for path in (run / "checkpoints").iterdir():  # killed inside its first epoch
        path.unlink()
    one_line_error(*cli(capsys, "train", "--resume", run)[::2],
                   f"{run} has no checkpoint to resume from", "--overwrite")
    status, _, err = cli(capsys, "train", *SMALL, "--out", run, "--overwrite")
    assert status == 0, err


@pytest.mark.parametrize("flags, fragment", [
    (["--overwrite"], "--overwrite does not go with it"),
    (["--out", "elsewhere"], "--out does not go with it"),
])
def test_resume_writes_only_into_its_own_run(run, capsys, flags, fragment):
    one_line_error(*cli(capsys, "train", "--resume", run, *flags)[::2],
                   f"--resume continues the run in {run}", fragment)


def test_eval_names_the_checkpoint_it_evaluated(run, capsys):
    status, out, err = cli(capsys, "eval", run, "--device", "cpu")
    assert status == 0, err
    first, last = out.strip().splitlines()
    assert first == "evaluated best.pt (epoch 1, step 3)" and last.startswith("test acc ")
