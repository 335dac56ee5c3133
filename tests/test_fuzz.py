"""Fuzzing what users feed divekit: command lines, config values, checkpoint and data files.

Whatever the input, the answer is a result or a :class:`DivekitError` (one line, no
traceback), and nothing is written outside the folder a test works in. Each property runs a
bounded number of random examples (about a second each) and hypothesis keeps no database.
"""

import gzip
import json
import os
import string
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import divekit as dk
from divekit import experiment
from divekit.cli import _apply_flags, build_parser
from divekit.config import RunConfig, TrainerSettings
from divekit.data import glue, tagging, translation
from divekit.data.tabular import read_table
from divekit.data.text import text_file
from divekit.data.vision import read_idx
from divekit.engine.checkpoint import load_checkpoint
from divekit.errors import DivekitError
from tests.conftest import blobs, small_cnn

# DIVEKIT_FUZZ_EXAMPLES=5000 searches longer (the default keeps the suite quick).
FUZZ = settings(max_examples=int(os.environ.get("DIVEKIT_FUZZ_EXAMPLES", "60")), deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])

# Flags of `train` with values of the kinds users type, and wrong ones.
NUMBERS = st.sampled_from(["0", "1", "-1", "0.5", "1.5", "3", "1e9", "nan", "inf", "abc", ""])
WORDS = st.sampled_from(["sgd", "adam", "cosine", "onecycle", "auto", "cpu", "cuda:7", "max",
                         "min", "acc", "fp8", "bf16", "off", "mnist", "digits", "nonsense", ""])
OPTIONS = st.sampled_from(["hidden=32", "hidden=abc", "dropout=0.5", "num_classes=[1]", "x=",
                           "=3", "normalize=true", "label_smoothing=0.1", "lr", "a.b=1"])
FLAGS = {"--epochs": NUMBERS, "--max-steps": NUMBERS, "--lr": NUMBERS, "--batch-size": NUMBERS,
         "--momentum": NUMBERS, "--weight-decay": NUMBERS, "--warmup-epochs": NUMBERS,
         "--grad-clip": NUMBERS, "--accumulate": NUMBERS, "--ema": NUMBERS,
         "--label-smoothing": NUMBERS, "--val-size": NUMBERS, "--seed": NUMBERS,
         "--limit-batches": NUMBERS, "--overfit-batches": NUMBERS,
         "--early-stopping": NUMBERS, "--checkpoint-every": NUMBERS,
         "--optimizer": WORDS, "--schedule": WORDS, "--device": WORDS, "--amp": WORDS,
         "--mode": WORDS, "--monitor": WORDS, "--data": WORDS,
         "-M": OPTIONS, "-D": OPTIONS, "-T": OPTIONS, "--lr-mult": OPTIONS,
         "--augment": st.sampled_from(["flip", "crop=0.5", "mixup=2", "bogus", ""]),
         "--nesterov": st.none(), "--channels-last": st.none(), "--quiet": st.none()}


@st.composite
def command_lines(draw) -> list[str]:
    args = ["train", draw(st.sampled_from(["mlp", "lenet", "softmax-regression", "nope"]))]
    for flag in draw(st.lists(st.sampled_from(sorted(FLAGS)), max_size=6)):
        value = draw(FLAGS[flag])
        args += [flag] if value is None else [flag, value]
    return args


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """An empty current folder; on exit it must hold only what the test itself wrote."""
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], ["input"])


@FUZZ
@given(args=command_lines())
def test_any_train_command_line_parses_into_a_checked_config_and_trainer(workdir, args):
    try:
        parsed = build_parser().parse_args(args)
    except SystemExit as exit:  # argparse's one-line usage error
        assert exit.code == 2
        return
    try:
        config = _apply_flags(RunConfig(parsed.model), parsed)
        written = json.dumps(config.to_dict())  # as config.json holds it (NaN included)
        assert json.dumps(RunConfig.from_dict(json.loads(written)).to_dict()) == written
        experiment.trainer_for(config, progress=False)
    except DivekitError as e:
        assert "\n" not in str(e)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 10**6) | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3),
    max_leaves=8)
TRAINER_KEYS = [name for name in TrainerSettings.__dataclass_fields__]


@st.composite
def configs(draw):
    """Mostly well-formed config.json contents with random values in real settings."""
    values = draw(st.dictionaries(st.sampled_from(
        ["model", "data", "batch_size", "val_size", "model_options", "finetune", "augment",
         "data_dir", "task_options", "unknown"]), json_values, max_size=5))
    values["trainer"] = draw(st.dictionaries(st.sampled_from(TRAINER_KEYS + ["label_smoothing"]),
                                             json_values, max_size=4))
    return draw(st.sampled_from([values, {**values, "model": "mlp"}, values["trainer"]]))


@FUZZ
@given(values=json_values | configs())
@example(values={"task_options": True, "trainer": {"label_smoothing": 0.1}})  # found by it
def test_any_json_value_is_a_config_or_one_line(workdir, values):
    try:
        config = RunConfig.from_dict(values, source="config.json")
    except DivekitError as e:
        assert "\n" not in str(e) and str(e).startswith("config.json")
        return
    assert RunConfig.from_dict(config.to_dict()) == config


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory) -> bytes:
    out = tmp_path_factory.mktemp("run")
    data = dk.DataModule("blobs", train=blobs(32), test=blobs(8), batch_size=32)
    dk.Trainer(max_epochs=1, progress=False, out_dir=out).fit(small_cnn(), data)
    return (out / "checkpoints" / "last.pt").read_bytes()


def _mutated(data: st.DataObject, original: bytes) -> bytes:
    """``original`` cut short, or with a few bytes changed."""
    raw = bytearray(original)
    if data.draw(st.booleans()):
        return bytes(raw[: data.draw(st.integers(0, len(raw) - 1))])
    for _ in range(data.draw(st.integers(1, 8))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    return bytes(raw)


@FUZZ
@given(data=st.data())
def test_any_damaged_checkpoint_is_refused_in_one_line(workdir, checkpoint_bytes, data):
    path = workdir / "input"
    path.write_bytes(data.draw(st.binary(max_size=300)) if data.draw(st.booleans())
                     else _mutated(data, checkpoint_bytes))
    try:
        state = load_checkpoint(path)
    except DivekitError as e:
        assert "\n" not in str(e) and str(path) in str(e)
        return
    assert isinstance(state["model"], dict)  # a change the format does not notice


def _idx(data: st.DataObject) -> bytes:
    """An idx header with random dimensions, then random data of about the declared size."""
    dims = data.draw(st.lists(st.integers(0, 6), min_size=0, max_size=3))
    size = 1
    for dim in dims:
        size *= dim
    header = bytes([0, 0, data.draw(st.sampled_from([8, 8, 9])), len(dims)]) + b"".join(
        d.to_bytes(4, "big") for d in dims)
    return header + data.draw(st.binary(min_size=max(size - 2, 0), max_size=size + 2))


@FUZZ
@given(data=st.data())
def test_any_idx_file_is_read_or_refused_in_one_line(workdir, data):
    raw = data.draw(st.binary(max_size=64)) if data.draw(st.booleans()) else _idx(data)
    compressed = data.draw(st.booleans())
    path = workdir / "input" / ("file.gz" if compressed else "file")
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(gzip.compress(raw) if compressed and data.draw(st.booleans()) else raw)
    try:
        images = read_idx(path)
    except DivekitError as e:
        assert "\n" not in str(e)
        return
    assert images.dtype == torch.uint8 and images.numel() == len(raw) - 4 - 4 * raw[3]


TEXT = st.text(st.sampled_from(string.printable + "\t\t\t\n\n éß\ufeff\x00"), max_size=120)
READERS = {
    "csv": lambda path: read_table(path),
    "conll": lambda path: tagging.read_conll(path, ["O", "B-x"]),
    "conllu": lambda path: tagging.read_conllu(path),
    "tsv": lambda path: glue.read_tsv(path),
    "sst2": lambda path: glue.read_sst2(path),
    "pairs": lambda path: glue.read_sentence_pairs(path),
    "jsonl": lambda path: glue.read_sentence_pairs(path.rename(path.with_suffix(".jsonl"))),
    "fra": lambda path: translation.read_pairs(path, max_pairs=3),
    "text": lambda path: text_file(path=str(path), num_steps=2, level="word"),
    "chars": lambda path: text_file(path=str(path), num_steps=3, preprocess=False),
}


@FUZZ
@given(reader=st.sampled_from(sorted(READERS)), text=TEXT, binary=st.binary(max_size=40))
def test_any_text_file_is_read_or_refused_in_one_line(workdir, reader, text, binary):
    folder = workdir / "input"
    folder.mkdir(exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    path = folder / "file.txt"
    path.write_bytes(text.encode() + (binary if len(text) % 3 == 0 else b""))
    try:
        READERS[reader](path)
    except DivekitError as e:
        assert "\n" not in str(e) and str(Path(e.args[0]).name) != ""
