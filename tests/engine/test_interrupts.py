"""Mid-epoch checkpoints, SIGTERM/SIGINT, streamed-data resume, TensorBoard and config on resume."""

import csv
import json
import os
import signal

import pytest
import torch
from torch.utils.data import Dataset

import divekit as dk
from divekit.data import DataModule
from divekit.engine import Callback, TrainingInterrupted, load_checkpoint
from tests.conftest import blobs, small_cnn

DROP = ("train_time", "examples_per_s")


class StopAtStep(Callback):
    """Ends the run after optimizer step ``step`` as a kill would: nothing more is written."""

    def __init__(self, step, how="kill"):
        self.step, self.how = step, how

    def on_step_end(self, trainer):
        if trainer.global_step == self.step:
            if self.how == "kill":
                raise KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGTERM)  # handled at the end of this step


def rows(history):
    return [{k: v for k, v in row.items() if k not in DROP} for row in history]


def run(data, out_dir, callbacks=(), resume=False, **settings):
    trainer = dk.Trainer(out_dir=out_dir, progress=False, callbacks=list(callbacks), **settings)
    history = trainer.fit(small_cnn(), data, resume=resume)
    return trainer, history


def assert_same_run(a, b, history_a, history_b):
    for name, tensor in a.model.state_dict().items():
        assert torch.equal(tensor, b.model.state_dict()[name]), name
    assert rows(history_a) == rows(history_b)


SETTINGS = dict(max_epochs=3, lr=0.05, momentum=0.9, schedule="cosine", seed=4, ema=0.9)


@pytest.mark.parametrize("accumulate", [1, 3])
def test_a_kill_inside_an_epoch_resumes_from_the_last_step_checkpoint(blob_data, tmp_path,
                                                                      accumulate):
    # 512 examples, batch 32: 16 batches; with accumulate 3: 6 steps per epoch (3+3+...+1).
    full, full_history = run(blob_data, tmp_path / "full", accumulate=accumulate, **SETTINGS)
    steps = 16 if accumulate == 1 else 6
    kill_at = steps + 4  # epoch 2, after the checkpoint at its 3rd step
    with pytest.raises(KeyboardInterrupt):
        run(blob_data, tmp_path / "cut", [StopAtStep(kill_at)], checkpoint_every=3,
            accumulate=accumulate, **SETTINGS)
    state = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")
    last_checkpointed = (kill_at // 3) * 3
    assert (state["epoch"], state["global_step"]) == (1, last_checkpointed)
    assert state["step_in_epoch"] == last_checkpointed - steps > 0
    resumed, resumed_history = run(blob_data, tmp_path / "cut", resume=True,
                                   checkpoint_every=3, accumulate=accumulate, **SETTINGS)
    assert_same_run(full, resumed, full_history, resumed_history)


def test_sigterm_finishes_the_step_checkpoints_and_stops(blob_data, tmp_path):
    full, full_history = run(blob_data, tmp_path / "full", **SETTINGS)
    with pytest.raises(TrainingInterrupted, match="stopped by SIGTERM .*checkpoint of step 21"
                       ) as stopped:
        run(blob_data, tmp_path / "cut", [StopAtStep(21, how="sigterm")], **SETTINGS)
    assert stopped.value.signum == signal.SIGTERM
    # The handler is gone once fit returns: the test process's own SIGTERM handling is back.
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    state = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")
    assert (state["global_step"], state["step_in_epoch"]) == (21, 5)
    resumed, resumed_history = run(blob_data, tmp_path / "cut", resume=True, **SETTINGS)
    assert_same_run(full, resumed, full_history, resumed_history)


class Examples(Dataset):
    """The blob tensors served one example at a time (the streamed path)."""

    def __init__(self, inputs, labels):
        self.inputs, self.labels = inputs, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return self.inputs[index], self.labels[index]


@pytest.mark.parametrize("kill", ["epoch", "step"])
def test_a_streamed_dataset_with_workers_resumes_exactly(tmp_path, kill):
    def streamed():
        return DataModule("streamed", train=Examples(*blobs(256)),
                          test=Examples(*blobs(64, sample_seed=1)), batch_size=32,
                          class_names=list("abcd"), num_workers=2)

    full, full_history = run(streamed(), tmp_path / "full", checkpoint_every=3, **SETTINGS)
    kill_at = 8 if kill == "epoch" else 13  # after epoch 1's checkpoint, or step 12's
    with pytest.raises(KeyboardInterrupt):
        run(streamed(), tmp_path / "cut", [StopAtStep(kill_at)], checkpoint_every=3,
            **SETTINGS)
    resumed, resumed_history = run(streamed(), tmp_path / "cut", resume=True,
                                   checkpoint_every=3, **SETTINGS)
    assert_same_run(full, resumed, full_history, resumed_history)
    # And the streamed run is the in-memory run: same order, same batches (the in-memory test
    # split is evaluated in one batch of 64, not two of 32: sums in another order).
    in_memory = DataModule("mem", train=blobs(256), test=blobs(64, sample_seed=1),
                           batch_size=32, class_names=list("abcd"))
    _, memory_history = run(in_memory, tmp_path / "memory", **SETTINGS)
    assert rows(memory_history) == [pytest.approx(row, rel=1e-6) for row in rows(full_history)]


def test_tensorboard_events_hold_every_epoch_metric(blob_data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, history = run(blob_data, tmp_path, tensorboard=True, max_epochs=2, lr=0.05)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert set(events.Tags()["scalars"]) == set(history.last) - {"epoch"} | {"step/train_loss"}
    for key in ("train_loss", "test_acc", "lr"):
        logged = [(e.step, e.value) for e in events.Scalars(key)]
        assert logged == [(row["epoch"], pytest.approx(row[key])) for row in history]
    assert [e.step for e in events.Scalars("step/train_loss")] == list(range(1, 33))  # 2 x 16


def test_steps_csv_holds_every_step_and_its_mean_is_the_epoch_loss(blob_data, tmp_path):
    _, history = run(blob_data, tmp_path, max_epochs=2, lr=0.05)
    with open(tmp_path / "steps.csv") as f:
        logged = list(csv.DictReader(f))
    assert [int(row["step"]) for row in logged] == list(range(1, 33))
    for epoch, row in enumerate(history, start=1):
        # 16 batches of 32 images per epoch: the epoch's loss is the mean of its steps'.
        losses = [float(r["loss"]) for r in logged if int(r["epoch"]) == epoch]
        assert sum(losses) / len(losses) == pytest.approx(row["train_loss"], rel=1e-5)


def test_max_steps_stops_inside_an_epoch_and_evaluates_it(blob_data, tmp_path):
    trainer, history = run(blob_data, tmp_path, max_epochs=5, max_steps=20, lr=0.05,
                           schedule="cosine")
    assert trainer.global_step == 20 and len(history) == 2  # 16 steps, then 4 of epoch 2
    assert "test_acc" in history.last
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-9)  # cosine end
    with open(tmp_path / "steps.csv") as f:
        assert len(list(csv.DictReader(f))) == 20


def test_resuming_with_more_epochs_records_the_new_settings(blob_data, tmp_path):
    run(blob_data, tmp_path, max_epochs=1, lr=0.05)
    _, history = run(blob_data, tmp_path, resume=True, max_epochs=2, lr=0.05)
    assert len(history) == 2
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["trainer"]["max_epochs"] == 2
    assert config["task"] == "classification"


def test_engine_options_that_need_a_run_directory_say_so():
    with pytest.raises(dk.DivekitError, match="give out_dir as well"):
        dk.Trainer(checkpoint_every=10)
    with pytest.raises(dk.DivekitError, match="checkpoint_every must be a positive integer"):
        dk.Trainer(checkpoint_every=0, out_dir="x")
