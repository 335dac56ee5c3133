import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

import divekit as dk
from divekit.data import DataModule
from divekit.engine import Callback, TrainingDiverged, load_checkpoint
from divekit.engine.finetune import load_weights
from tests.conftest import KillAtStartOf, blobs, small_cnn


def fit(data, model=None, **settings):
    settings.setdefault("progress", False)
    trainer = dk.Trainer(**settings)
    history = trainer.fit(model if model is not None else small_cnn(), data)
    return trainer, history


def test_learns_separable_blobs_and_reports_example_weighted_metrics(blob_data):
    trainer, history = fit(blob_data, max_epochs=4, lr=0.1, momentum=0.9)
    assert [row["epoch"] for row in history] == [1, 2, 3, 4]
    assert history.last["test_acc"] > 0.95
    assert history.column("train_loss")[-1] < history.column("train_loss")[0]

    # The reported test metrics are exact over all 200 examples, though batches are uneven.
    model = trainer.model.eval()
    with torch.no_grad():
        logits = model(blob_data.test[0])
    expected_loss = F.cross_entropy(logits, blob_data.test[1]).item()
    expected_acc = (logits.argmax(1) == blob_data.test[1]).float().mean().item()
    loader = dk.TensorLoader(*blob_data.test, batch_size=64)  # 64, 64, 64, 8
    metrics = trainer.evaluate(model, loader)
    assert metrics["test_loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert metrics["test_acc"] == pytest.approx(expected_acc)


def test_validation_split_is_the_per_epoch_evaluation(blob_data):
    blob_data.train, blob_data.val = blob_data.train, blobs(100, sample_seed=5)
    _, history = fit(blob_data, max_epochs=1, lr=0.1)
    assert "val_acc" in history.last and "test_acc" not in history.last


def full_and_resumed(data, folder, max_epochs, kill_at, **settings):
    """An uninterrupted run, and one killed at the start of epoch ``kill_at`` then resumed."""
    full, full_history = fit(data, max_epochs=max_epochs, out_dir=folder / "full", **settings)
    with pytest.raises(KeyboardInterrupt):
        fit(data, max_epochs=max_epochs, out_dir=folder / "cut", **settings,
            callbacks=[KillAtStartOf(epoch=kill_at)])
    resumed = dk.Trainer(max_epochs=max_epochs, out_dir=folder / "cut", progress=False,
                         **settings)
    # A fresh model with other weights: everything must come from the checkpoint.
    resumed_history = resumed.fit(small_cnn(), data, resume=True)
    for name, tensor in full.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name
    return full, full_history, resumed_history


def test_resume_equals_uninterrupted_run_bitwise(blob_data, tmp_path):
    settings = dict(lr=0.05, momentum=0.9, schedule="cosine", warmup_epochs=0.5, seed=3)
    _, full_history, resumed_history = full_and_resumed(blob_data, tmp_path, 4, 3, **settings)
    drop = ("train_time", "examples_per_s")
    strip = [{k: v for k, v in row.items() if k not in drop} for row in resumed_history]
    assert strip == [{k: v for k, v in row.items() if k not in drop} for row in full_history]
    written = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert [row["test_loss"] for row in written] == full_history.column("test_loss")


def linear_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4))


def test_gradient_accumulation_equals_the_large_batch(blob_data):
    # 512 examples: batches of 64, or 8 accumulated batches of 8 -> the same 8 updates per epoch.
    big = DataModule("b", blob_data.train, blob_data.test, batch_size=64, class_names=list("abcd"))
    small = DataModule("s", blob_data.train, blob_data.test, batch_size=8, class_names=list("abcd"))
    large_batch, _ = fit(big, linear_model(), max_epochs=2, lr=0.5, momentum=0.9)
    accumulated, _ = fit(small, linear_model(), max_epochs=2, lr=0.5, momentum=0.9, accumulate=8)
    unaccumulated, _ = fit(small, linear_model(), max_epochs=2, lr=0.5, momentum=0.9)
    for a, b, c in zip(large_batch.model.parameters(), accumulated.model.parameters(),
                       unaccumulated.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(a, c, atol=1e-3)


def test_accumulation_weights_an_uneven_last_group_by_examples():
    # 100 examples, batch 30, accumulate 4: one step over 30+30+30+10 must equal batch 100.
    data_small = DataModule("s", blobs(100), blobs(10), batch_size=30, class_names=list("abcd"))
    data_big = DataModule("b", blobs(100), blobs(10), batch_size=100, class_names=list("abcd"))
    a, _ = fit(data_small, linear_model(), max_epochs=1, lr=1.0, accumulate=4)
    b, _ = fit(data_big, linear_model(), max_epochs=1, lr=1.0)
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_gradient_clipping_bounds_the_update(blob_data):
    blob_data.batch_size = 512  # one step per epoch
    model = linear_model()
    before = [p.detach().clone() for p in model.parameters()]
    fit(blob_data, model, max_epochs=1, lr=1.0, grad_clip=0.01)
    step = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before,
                                                                  strict=True)])
    assert step.norm().item() == pytest.approx(0.01, rel=1e-4)


@pytest.mark.parametrize("schedule", ["cosine", "onecycle", "constant", "step"])
def test_schedules_step_once_per_optimizer_step(blob_data, schedule):
    lrs = []

    class RecordLR(Callback):
        def on_step_end(self, trainer):
            lrs.append(trainer.optimizer.param_groups[0]["lr"])

    # 512 / 32 = 16 batches, accumulate 2 -> 8 steps per epoch, 24 in all.
    fit(blob_data, linear_model(), max_epochs=3, lr=0.4, schedule=schedule, warmup_epochs=0.5,
        accumulate=2, callbacks=[RecordLR()])
    assert len(lrs) == 24
    if schedule == "constant":
        assert lrs[:4] == pytest.approx([0.2, 0.3, 0.4, 0.4])  # lr after steps 1..4 of warm-up
    elif schedule == "cosine":
        assert lrs[3] == pytest.approx(0.4)  # peak at the end of a 4-step warm-up
        middle = 3 + 10  # half of the 20 cosine steps
        assert lrs[middle] == pytest.approx(0.2, abs=1e-6) and lrs[-1] == pytest.approx(0.0)
    elif schedule == "onecycle":
        # lrs[k] is the rate the (k + 2)-th step uses: the 24th and last one anneals to ~0.
        assert max(lrs) == pytest.approx(0.4, rel=1e-3) and lrs[-2] < 1e-5
        assert lrs.index(max(lrs)) in (2, 3)
    else:
        assert lrs[-1] == pytest.approx(0.4 * 0.01)


def test_early_stopping_stops_when_the_metric_stalls(blob_data):
    # lr so small that test accuracy never changes: patience 2 -> 3 epochs instead of 20.
    trainer, history = fit(blob_data, linear_model(), max_epochs=20, lr=1e-12, early_stopping=2)
    assert len(history) == 3
    assert "early stopping" in trainer.stop_reason


def test_nan_guard_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path):
    x, y = blobs(256)
    data = DataModule("d", (x, y), (x, y), batch_size=32, class_names=list("abcd"))
    bad_x = x.clone()
    bad_x[200] = math.nan
    good = dk.Trainer(max_epochs=1, lr=0.1, out_dir=tmp_path, progress=False)
    good.fit(linear_model(), data)
    saved = (tmp_path / "checkpoints" / "last.pt").read_bytes()

    poisoned = DataModule("d", (bad_x, y), (x, y), batch_size=32, class_names=list("abcd"))
    trainer = dk.Trainer(max_epochs=3, lr=0.1, out_dir=tmp_path, progress=False)
    with pytest.raises(TrainingDiverged, match="loss became nan.*learning rate.*last good"):
        trainer.fit(linear_model(), poisoned, resume=True)
    assert (tmp_path / "checkpoints" / "last.pt").read_bytes() == saved


def test_run_directory_contents(blob_data, tmp_path):
    fit(blob_data, max_epochs=3, lr=0.1, out_dir=tmp_path, config={"model": "small-cnn"})
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model"] == "small-cnn" and config["trainer"]["max_epochs"] == 3
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,train_loss,train_acc,test_loss,test_acc,lr")
    assert len(rows) == 4
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    last = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    best = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=True)
    assert last["epoch"] == 3 and {"model", "optimizer", "scheduler", "rng"} <= set(last)
    accs = [row["test_acc"] for row in last["history"]]
    assert best["epoch"] == accs.index(max(accs)) + 1


def test_piped_progress_prints_one_line_per_epoch(blob_data, capsys):
    fit(blob_data, max_epochs=3, lr=0.1, progress=True)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == 3
    assert lines[0].startswith("epoch 1/3  train loss") and "test loss" in lines[0]
    assert "ex/s" in lines[-1]


def test_channels_last_and_bf16_run_and_agree(blob_data):
    plain, _ = fit(blob_data, max_epochs=1, lr=0.1)
    nhwc, _ = fit(blob_data, max_epochs=1, lr=0.1, channels_last=True)
    for a, b in zip(plain.model.parameters(), nhwc.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    _, history = fit(blob_data, max_epochs=2, lr=0.1, amp="bf16")
    assert history.last["test_acc"] > 0.9


def test_fp16_with_its_grad_scaler_learns_and_checkpoints_the_scale(blob_data, tmp_path):
    trainer, history = fit(blob_data, max_epochs=2, lr=0.1, amp="fp16", out_dir=tmp_path)
    assert history.last["test_acc"] > 0.9
    # No overflow on this data: GradScaler's documented start, 2**16, held for 32 steps.
    assert trainer.scaler.is_enabled() and trainer.scaler.get_scale() == 2.0 ** 16
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["scaler"]["scale"] == 2.0 ** 16


class Amplify(torch.nn.Module):
    """Multiplies by 1e3: the gradients reaching the linear layer overflow fp16 once scaled."""

    def forward(self, x):
        return x * 1e3


def test_an_fp16_overflow_skips_the_step_and_halves_the_scale(blob_data):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4), Amplify())
    before = copy.deepcopy(model.state_dict())
    trainer, _ = fit(blob_data, model, max_epochs=1, max_steps=1, lr=0.1, amp="fp16")
    assert trainer.scaler.get_scale() == 2.0 ** 15
    assert trainer.scheduler.last_epoch == 0  # the schedule did not move either
    for name, value in before.items():  # the step with infinite gradients was not taken
        assert torch.equal(model.state_dict()[name], value), name
    # Without the scaler's check the same step writes infinities or NaN into the weights.
    torch.manual_seed(0)
    unscaled = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4), Amplify())
    x, y = blob_data.train[0][:32], blob_data.train[1][:32]
    with torch.autocast("cpu", dtype=torch.float16):
        loss = F.cross_entropy(unscaled(x), y)
    (loss * 2.0 ** 16).backward()
    assert not torch.isfinite(unscaled[1].weight.grad).all()


@pytest.mark.slow  # compiling the C++ kernels takes ~20 s on 2 cores
def test_compile_trains_to_the_eager_weights_and_saves_plain_state(blob_data, tmp_path):
    eager, history = fit(blob_data, small_cnn(dropout=0.0), max_epochs=2, lr=0.1)
    compiled, compiled_history = fit(blob_data, small_cnn(dropout=0.0), max_epochs=2, lr=0.1,
                                     compile=True, out_dir=tmp_path)
    # Same arithmetic in another order (fused kernels): equal up to float rounding.
    for a, b in zip(eager.model.parameters(), compiled.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
    assert compiled_history.last["test_acc"] == pytest.approx(history.last["test_acc"], abs=0.01)
    saved = load_checkpoint(tmp_path / "checkpoints" / "last.pt")["model"]
    small_cnn().load_state_dict(saved)  # the module's own names, no torch.compile wrapper's


def test_predict_returns_logits_for_every_input(blob_data):
    trainer, _ = fit(blob_data, linear_model(), max_epochs=1, lr=0.1)
    logits = trainer.predict(trainer.model, blob_data.test[0])
    assert logits.shape == (200, 4)
    from_loader = trainer.predict(trainer.model, blob_data.test_dataloader())
    torch.testing.assert_close(logits, from_loader)


@pytest.mark.parametrize(
    ("settings", "message"),
    [({"max_epochs": 0}, "max_epochs must be a positive integer"),
     ({"accumulate": 1.5}, "accumulate must be a positive integer"),
     ({"device": "cuda:7"} if not torch.cuda.is_available() else {"device": "tpu"}, "device"),
     ({"device": "tpu"}, "unknown device 'tpu'"),
     ({"amp": "fp8"}, "unknown amp mode 'fp8'; choose from: off, bf16, fp16"),
     ({"grad_clip": -1}, "grad_clip must be positive")],
)
def test_bad_settings_are_named(settings, message):
    with pytest.raises(dk.DivekitError, match=message):
        dk.Trainer(**settings)


def test_bad_optimizer_and_schedule_are_named(blob_data):
    with pytest.raises(dk.DivekitError, match="unknown optimizer 'lion'; choose from: sgd"):
        fit(blob_data, optimizer="lion")
    with pytest.raises(dk.DivekitError, match="unknown schedule 'exp'"):
        fit(blob_data, schedule="exp")
    with pytest.raises(dk.DivekitError, match="learning rate must be positive"):
        fit(blob_data, lr=0.0)


def test_live_progress_bar_on_a_terminal(blob_data):
    import io

    from divekit.engine import ProgressReporter

    stream = io.StringIO()
    fit(blob_data, max_epochs=2, lr=0.1, progress=False,
        callbacks=[ProgressReporter(stream=stream, live=True, refresh_seconds=0)])
    text = stream.getvalue()
    assert "epoch 1/2" in text and "16/16" in text and "loss=" in text  # the bar and its postfix
    assert text.count("epoch 2/2  train loss") == 1  # the per-epoch summary line


def test_unknown_monitor_lists_the_metrics(blob_data):
    with pytest.raises(dk.DivekitError, match="monitor 'val_f1' is not a metric.*test_acc"):
        fit(blob_data, linear_model(), max_epochs=1, monitor="val_f1")


class RecordWeights(Callback):
    """Keeps a copy of the trained (raw) weights after every optimizer step."""

    def __init__(self):
        self.steps = []

    def on_step_end(self, trainer):
        self.steps.append({k: v.detach().clone() for k, v in trainer.model.state_dict().items()})


def test_ema_is_the_warmed_up_moving_average_of_every_step(blob_data):
    recorder = RecordWeights()
    trainer, history = fit(blob_data, small_cnn(), max_epochs=2, lr=0.1, momentum=0.9, ema=0.9,
                           callbacks=[recorder])
    # The average by its definition, from the raw weights of each of the 32 steps.
    average = {k: v.clone() for k, v in small_cnn().state_dict().items()}
    for step, weights in enumerate(recorder.steps):
        decay = min(0.9, (1 + step) / (10 + step))
        for name, value in weights.items():
            if value.is_floating_point():
                average[name] = decay * average[name] + (1 - decay) * value
            else:
                average[name] = value
    assert len(recorder.steps) == 32
    for name, value in trainer.model.state_dict().items():  # fit leaves the average in the model
        torch.testing.assert_close(value, average[name], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(recorder.steps[-1]["5.weight"], average["5.weight"], atol=1e-3)
    # The reported evaluation is the average's, not the raw weights'.
    model = small_cnn()
    model.load_state_dict(average)
    loss = trainer.evaluate(model, blob_data.test_dataloader())["test_loss"]
    assert history.last["test_loss"] == pytest.approx(loss, rel=1e-5)


def test_ema_run_resumes_exactly_and_its_checkpoints_predict_with_the_average(
        blob_data, tmp_path):
    full, full_history, resumed_history = full_and_resumed(
        blob_data, tmp_path, 3, 3, lr=0.05, momentum=0.9, ema=0.95, seed=1)
    assert resumed_history.column("test_loss") == full_history.column("test_loss")

    state = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")
    assert not torch.equal(state["ema"]["5.weight"], state["model"]["5.weight"])
    model = small_cnn()
    load_weights(model, tmp_path / "full" / "checkpoints" / "last.pt")
    for name, tensor in full.model.state_dict().items():
        assert torch.equal(tensor, model.state_dict()[name]), name


@pytest.mark.parametrize("ema", [1, 1.5, -0.1])
def test_ema_outside_zero_one_is_refused(ema):
    with pytest.raises(dk.DivekitError, match=r"ema is the decay .* must be in \[0, 1\)"):
        dk.Trainer(ema=ema)


def test_ema_zero_is_plain_training(blob_data, tmp_path):
    plain, _ = fit(blob_data, small_cnn(), max_epochs=1, lr=0.1, out_dir=tmp_path / "a")
    zero, _ = fit(blob_data, small_cnn(), max_epochs=1, lr=0.1, out_dir=tmp_path / "b", ema=0)
    for name, tensor in plain.model.state_dict().items():
        assert torch.equal(tensor, zero.model.state_dict()[name]), name
    assert "ema" not in load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")


def test_ema_averages_a_tied_weight_once(blob_data):
    torch.manual_seed(0)
    shared = torch.nn.Linear(64, 64)
    model = torch.nn.Sequential(torch.nn.Flatten(), shared, torch.nn.Tanh(), shared,
                                torch.nn.Linear(64, 4))
    start = shared.weight.detach().clone()
    blob_data.batch_size = 512  # one step: average = 0.1 * start + 0.9 * trained
    recorder = RecordWeights()
    trainer, _ = fit(blob_data, model, max_epochs=1, lr=0.1, ema=0.9, callbacks=[recorder])
    trained = recorder.steps[0]["1.weight"]
    torch.testing.assert_close(trainer.model[1].weight, 0.1 * start + 0.9 * trained)
    assert trainer.model[1] is trainer.model[3]


def test_atomic_writes_give_files_the_permissions_of_a_plain_write(tmp_path):
    from divekit.engine.checkpoint import replace_file

    (tmp_path / "plain.txt").write_text("x")
    replace_file(tmp_path / "atomic.txt", "w", lambda f: f.write("x"))
    plain, atomic = ((tmp_path / name).stat().st_mode for name in ("plain.txt", "atomic.txt"))
    assert atomic == plain  # not mkstemp's owner-only 0600
