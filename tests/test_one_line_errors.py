"""Problems a user causes end in one line naming the file and the fix, never a traceback, and
leave what was written as it was: damaged or foreign checkpoints, bad config.json, a full disk,
bad option values, and signals outside training."""

import hashlib
import os
import signal
import time
from pathlib import Path

import pytest
import torch

import divekit as dk
from divekit import experiment
from divekit.cli import build_parser
from divekit.data import DataModule
from divekit.engine import checkpoint
from divekit.engine.checkpoint import load_checkpoint, load_weights_checked, save_checkpoint
from divekit.errors import DivekitError
from divekit.models.registry import MODELS, ModelInfo
from tests.conftest import blobs, cli, small_cnn

RUN_FLAGS = ["--data", "digits", "--batch-size", "64", "--epochs", "1", "--limit-batches", "2",
             "--quiet"]


def one_line(stderr: str, *fragments: str) -> str:
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` by relative path, with its content's hash."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished one-epoch run folder of a small CNN on separable blobs."""
    out = tmp_path_factory.mktemp("run") / "cnn"
    data = DataModule("blobs", train=blobs(64), test=blobs(32, sample_seed=1), batch_size=32)
    dk.Trainer(max_epochs=1, progress=False, out_dir=out,
               config={"model": "mlp", "data": "digits"}).fit(small_cnn(), data)
    return out


class RunsCode:
    """Unpickling this calls ``open(marker, "w")``: a file appears if the pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def _corrupt(kind: str, state: dict, path: Path) -> str:
    """Write a damaged or foreign checkpoint of ``kind`` to ``path``; returns the expected
    words of the error."""
    if kind == "tensor":
        torch.save(torch.zeros(3), path)
        return "holds a Tensor, not a divekit checkpoint"
    if kind == "state dict":
        torch.save(state["model"], path)
        return "plain state dict"
    if kind == "missing keys":
        torch.save({k: v for k, v in state.items() if k not in ("optimizer", "rng")}, path)
        return "lacks optimizer, rng"
    if kind == "unsafe pickle":
        torch.save({"model": RunsCode(path.parent / "ran")}, path)
        return "unpickling that could run code"
    if kind == "cut short":
        path.write_bytes(path.read_bytes()[:3000])
        return "could not be read as a checkpoint"
    path.write_bytes(os.urandom(512))
    return "could not be read as a checkpoint"


@pytest.mark.parametrize("kind", ["tensor", "state dict", "missing keys", "unsafe pickle",
                                  "cut short", "random bytes"])
def test_a_bad_checkpoint_is_one_line_naming_it_and_is_left_alone(run, tmp_path, kind):
    path = tmp_path / "last.pt"
    path.write_bytes((run / "checkpoints" / "last.pt").read_bytes())
    expected = _corrupt(kind, torch.load(path, weights_only=True), path)
    before = path.read_bytes()
    with pytest.raises(DivekitError, match=expected) as error:
        load_checkpoint(path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)
    assert path.read_bytes() == before
    assert not (tmp_path / "ran").exists()  # nothing in the file was executed


def test_the_checkpoint_of_another_model_is_refused_with_the_mismatches(run):
    path = run / "checkpoints" / "last.pt"
    weights = load_checkpoint(path)["model"]
    with pytest.raises(DivekitError, match=r"another model \(size mismatch for 5.weight: "
                       r"file \(4, 256\), model \(3, 256\); size mismatch") as error:
        load_weights_checked(small_cnn(num_classes=3), weights, path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)
    with pytest.raises(DivekitError, match="another model .9 weights missing .0.weight, 0.bias"):
        load_weights_checked(small_cnn(), {}, path)
    same = small_cnn()
    load_weights_checked(same, weights, path)
    assert all(torch.equal(same.state_dict()[k], v) for k, v in weights.items())


@pytest.mark.parametrize(("text", "expected"), [
    ("null", "must hold a JSON object"), ("42", "got int 42"), ('"lenet"', "got str"),
    ('{"model": "mlp", "trainer": {"speed": 1}}', "trainer has no setting 'speed'"),
    ('{"model": "mlp", "trainer": {"lr": "fast"}}', "'lr' must be a number, got 'fast'"),
])
def test_a_bad_config_json_is_one_line_for_eval_and_resume(capsys, run, tmp_path, text,
                                                           expected):
    copy = tmp_path / "run"
    copy.mkdir()
    for path in run.rglob("*"):
        if path.is_file():
            (copy / path.relative_to(run)).parent.mkdir(parents=True, exist_ok=True)
            (copy / path.relative_to(run)).write_bytes(path.read_bytes())
    (copy / "config.json").write_text(text)
    before = digest(copy)
    for command in (["eval", copy], ["train", "--resume", copy]):
        status, _, err = cli(capsys, *command)
        assert status == 2
        one_line(err, f"{copy / 'config.json'}", expected)
    assert digest(copy) == before


def _writes_to_dev_full(monkeypatch, after: int) -> None:
    """From the ``after``-th checkpoint on, the temporary file is ``/dev/full`` (every write
    fails with ENOSPC), as on a full disk."""
    real, calls = checkpoint.tempfile.mkstemp, []

    def mkstemp(**kwargs):
        fd, tmp = real(**kwargs)
        if tmp.endswith(".tmp") and ".pt." in Path(tmp).name:
            calls.append(tmp)
            if len(calls) > after:
                os.close(fd)
                return os.open("/dev/full", os.O_WRONLY), tmp
        return fd, tmp

    monkeypatch.setattr(checkpoint.tempfile, "mkstemp", mkstemp)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_keeps_the_last_checkpoint_and_says_how_to_resume(
        blob_data, tmp_path, monkeypatch, one_thread):
    out = tmp_path / "run"
    dk.Trainer(max_epochs=1, progress=False, out_dir=out).fit(small_cnn(), blob_data)
    last = out / "checkpoints" / "last.pt"
    before = last.read_bytes()
    _writes_to_dev_full(monkeypatch, after=0)
    trainer = dk.Trainer(max_epochs=2, progress=False, out_dir=out)
    with pytest.raises(DivekitError) as error:
        trainer.fit(small_cnn(), blob_data, resume=True)
    assert str(error.value) == (f"no space left on device writing {last}; free space and "
                                f"resume with `divekit train --resume {out}`")
    assert last.read_bytes() == before
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_torch_reporting_a_failed_write_is_the_same_one_line(tmp_path, monkeypatch):
    path = tmp_path / "elsewhere" / "weights.pt"
    save_checkpoint({"a": torch.zeros(2)}, path)
    before = path.read_bytes()

    def failing_save(state, f):
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(checkpoint.torch, "save", failing_save)
    with pytest.raises(DivekitError, match=f"no space left on device writing {path}; free space "
                       "and try again"):
        save_checkpoint({"a": torch.ones(2)}, path)
    assert path.read_bytes() == before and os.listdir(path.parent) == ["weights.pt"]


def test_other_write_errors_are_not_disguised(tmp_path, monkeypatch):
    def failing_save(state, f):
        raise RuntimeError("a bug")

    monkeypatch.setattr(checkpoint.torch, "save", failing_save)
    with pytest.raises(RuntimeError, match="a bug"):
        save_checkpoint({}, tmp_path / "x.pt")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_start_up_is_one_line_and_exit_128_plus_it(
        capsys, tmp_path, monkeypatch, signum):
    def loading(*args, **kwargs):
        # Raised in this (the main) thread: os.kill may hand it to another thread of the test
        # process, and Python runs handlers only in the main thread, at its next instruction.
        signal.raise_signal(signum)
        raise AssertionError("the signal did not stop the start-up")

    monkeypatch.setattr(experiment, "build", loading)
    # As at a terminal: a shell starts background jobs with SIGINT ignored, which divekit
    # (like Python) then leaves ignored.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        handler = signal.getsignal(signal.SIGTERM)
        status, _, err = cli(capsys, "train", "mlp", *RUN_FLAGS, "--out", tmp_path / "run")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert status == 128 + signum
    line = one_line(err, f"divekit: stopped by {signal.Signals(signum).name}; files already "
                    "written are kept")
    assert "--resume" in line
    assert signal.getsignal(signal.SIGTERM) == handler  # main put the handler back


def test_bad_model_option_values_name_the_model_and_option(capsys, tmp_path):
    status, _, err = cli(capsys, "train", "mlp", *RUN_FLAGS, "-M", "hidden=abc",
                         "--out", tmp_path / "run")
    assert status == 2
    one_line(err, "model 'mlp' cannot be built with hidden='abc'", "TypeError")
    with pytest.raises(DivekitError, match=r"hidden=-3 \(RuntimeError: .*negative dimension"):
        dk.create_model("mlp", hidden=-3)


def test_a_model_failing_with_its_own_defaults_is_a_bug_and_is_not_disguised(monkeypatch):
    def broken(width: int = 4):
        raise TypeError("a bug in the factory")

    monkeypatch.setitem(MODELS._entries, "broken", ModelInfo(
        "broken", broken, "test", "-", "classification", (1, 8, 8), 1, ""))
    with pytest.raises(TypeError, match="a bug in the factory"):
        dk.create_model("broken")
    with pytest.raises(DivekitError, match=r"with width=8 \(TypeError: a bug in the factory\)"):
        dk.create_model("broken", width=8)


@pytest.mark.parametrize(("settings", "message"), [
    ({"lr": "0.1"}, "learning rate must be positive: a number > 0, got '0.1'"),
    ({"lr": 0}, "learning rate must be positive"),
    ({"momentum": "0.9"}, "momentum must be non-negative"),
    ({"weight_decay": -1e-4}, "weight_decay must be non-negative"),
    ({"warmup_epochs": None}, "warmup_epochs must be non-negative"),
    ({"seed": 1.5}, "seed must be an integer"),
    ({"ema": "0.99"}, r"ema is the decay of the weight average: a number in \[0, 1\), got .0.99."),
    ({"early_stopping": -2}, "early_stopping must be a positive integer"),
])
def test_trainer_settings_of_the_wrong_type_fail_when_made_not_in_fit(settings, message):
    with pytest.raises(DivekitError, match=message):
        dk.Trainer(progress=False, **settings)


def test_val_size_has_one_rule_for_the_command_line_and_load_data(capsys, tmp_path):
    for bad in ("1.5", "-1", "2.0"):
        status, _, err = cli(capsys, "train", "mlp", *RUN_FLAGS, "--val-size", bad,
                             "--out", tmp_path / "run")
        assert status == 2
        one_line(err, "--val-size", f"val_size must be 0 (none), a fraction in (0, 1) or a "
                 f"whole count of examples, got {float(bad) if '.' in bad else int(bad)}")
        with pytest.raises(DivekitError, match=f"got {bad}"):
            dk.load_data("digits", val_size=float(bad) if "." in bad else int(bad))
    assert not (tmp_path / "run").exists()
    parse = build_parser().parse_args
    assert parse(["train", "mlp", "--val-size", "100"]).val_size == 100
    assert parse(["train", "mlp", "--val-size", "0.25"]).val_size == 0.25
    assert dk.load_data("digits", val_size=100).val is not None


def test_a_file_given_as_data_dir_or_out_is_one_line(capsys, tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    status, _, err = cli(capsys, "train", "mlp", "--data", "mnist", "--data-dir", a_file,
                         "--epochs", "1", "--out", tmp_path / "run")
    assert status == 2
    one_line(err, f"--data-dir {a_file} is a file, not a folder")
    status, _, err = cli(capsys, "train", "mlp", *RUN_FLAGS, "--out", a_file)
    assert status == 2
    one_line(err, f"{a_file} is a file, not a run directory")
    assert a_file.read_text() == "mine"
    with pytest.raises(DivekitError, match="is a file, not a folder"):
        dk.load_data("mnist", data_dir=a_file)


def test_ctrl_c_while_pytorch_loads_is_one_line():
    import subprocess
    import sys

    # `import divekit` alone loads no PyTorch, so the launcher is running when Ctrl-C comes.
    probe = subprocess.run([sys.executable, "-c", "import sys, divekit; "
                            "print('torch' in sys.modules)"], capture_output=True, text=True)
    assert probe.stdout.strip() == "False"
    # SIGINT as at a terminal, also when the test itself runs as a shell's background job.
    command = subprocess.Popen([sys.executable, "-m", "divekit", "list", "models"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(0.3)  # importing PyTorch and the models takes seconds
    command.send_signal(signal.SIGINT)
    out, err = command.communicate(timeout=60)
    assert command.returncode == 130 and out == ""
    one_line(err, "divekit: stopped by SIGINT while starting; nothing was written")
