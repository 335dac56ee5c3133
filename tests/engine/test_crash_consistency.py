"""A run killed at any moment, inside any file write, and resumed leaves the folder an
uninterrupted run leaves (issue 15, item 1: ``last.pt`` is the commit record)."""

import csv
import json
import os
import signal
from pathlib import Path

import pytest
import torch

from divekit import experiment
from divekit.config import RunConfig, TrainerSettings
from divekit.engine import load_checkpoint

# 2 epochs of 6 steps with a mid-epoch checkpoint each, keeping a weight average. The best
# epoch is the one of the highest training loss, the first, so best.pt stays at epoch 1 while
# last.pt moves on.
CONFIG = RunConfig("small-cnn", data="digits", batch_size=256, trainer=TrainerSettings(
    max_epochs=2, lr=0.3, momentum=0.9, ema=0.9, seed=1, device="cpu", checkpoint_every=4,
    monitor="train_loss", mode="max"))
TIMES = ("train_time", "examples_per_s")


def killed_at(out: Path, write: int, when: str) -> bool:
    """Train ``CONFIG`` into ``out`` in a forked process that SIGKILLs itself just before
    (``when="before"``: the temporary file is complete, not yet renamed) or just after its
    ``write``-th file replacement; returns whether it was killed (False: it finished)."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status = 1
        try:
            real, calls = os.replace, []

            def replace(source, target):
                calls.append(target)
                if len(calls) == write and when == "before":
                    os.kill(os.getpid(), signal.SIGKILL)
                real(source, target)
                if len(calls) == write and when == "after":
                    os.kill(os.getpid(), signal.SIGKILL)

            os.replace = replace
            experiment.train(CONFIG, out, progress=False)
            status = 0
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    if os.WIFEXITED(status):
        assert os.WEXITSTATUS(status) == 0, "the training child failed"
        return False
    assert os.WTERMSIG(status) == signal.SIGKILL
    return True


def resume(out: Path) -> None:
    """What a user does after a kill: ``--resume``, or start again when there was no
    checkpoint yet."""
    if (out / "checkpoints" / "last.pt").is_file():
        experiment.train(CONFIG, out, resume=True, progress=False)
    else:
        experiment.train(CONFIG, out, overwrite=True, progress=False)


def snapshot(out: Path) -> dict:
    """Everything a run folder holds, less the wall-clock timings."""
    with open(out / "metrics.csv", newline="") as f:
        metrics_csv = [{k: v for k, v in row.items() if k not in TIMES}
                       for row in csv.DictReader(f)]
    with open(out / "steps.csv", newline="") as f:
        steps = list(csv.DictReader(f))
    checkpoints = {}
    for name in ("last", "best"):
        state = load_checkpoint(out / "checkpoints" / f"{name}.pt")
        checkpoints[name] = {
            "epoch": state["epoch"], "step": state["global_step"], "best": state["best"],
            "weights": {f"{part}.{key}": value for part in ("model", "ema")
                        for key, value in state[part].items()},
            "history": [{k: v for k, v in row.items() if k not in TIMES}
                        for row in state["history"]]}
    return {
        "files": sorted(str(p.relative_to(out)) for p in out.rglob("*")),
        "config": json.loads((out / "config.json").read_text()),
        "metrics.csv": metrics_csv,
        "metrics.json": [{k: v for k, v in row.items() if k not in TIMES}
                         for row in json.loads((out / "metrics.json").read_text())],
        "steps.csv": steps,
        "test_metrics": json.loads((out / "test_metrics.json").read_text()),
        "checkpoints": checkpoints,
    }


def assert_same(a: dict, b: dict) -> None:
    for key in a:
        if key != "checkpoints":
            assert a[key] == b[key], key
    for name, checkpoint in a["checkpoints"].items():
        other = b["checkpoints"][name]
        assert {k: v for k, v in checkpoint.items() if k != "weights"} == {
            k: v for k, v in other.items() if k != "weights"}, name
        assert checkpoint["weights"].keys() == other["weights"].keys()
        for tensor, value in checkpoint["weights"].items():
            assert torch.equal(value, other["weights"][tensor]), (name, tensor)


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """The uninterrupted run: its folder's snapshot and its file replacements in order."""
    out = tmp_path_factory.mktemp("full")
    real, writes = os.replace, []

    def replace(source, target):
        writes.append(Path(target).name)
        real(source, target)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # also in the forked children: a tiny model, a busy machine
    os.replace = replace
    try:
        experiment.train(CONFIG, out, progress=False)
    finally:
        os.replace = real
    yield snapshot(out), writes
    torch.set_num_threads(threads)


def test_the_run_writes_last_pt_before_best_pt(full):
    _, writes = full
    checkpoints = [name for name in writes if name.endswith(".pt")]
    # Each epoch has its mid-epoch last.pt (step 4); only epoch 1 is the best.
    assert checkpoints == ["last.pt", "last.pt", "best.pt", "last.pt", "last.pt"]
    assert full[0]["checkpoints"]["best"]["epoch"] == 1
    assert full[0]["checkpoints"]["last"]["epoch"] == 2


def kill_points(writes: list[str]) -> list[tuple[int, str]]:
    return [(n, when) for n in range(1, len(writes) + 1) for when in ("before", "after")]


def check_kill_and_resume(tmp_path: Path, full, write: int, when: str) -> None:
    expected, writes = full
    out = tmp_path / f"{when}-{write}"
    assert killed_at(out, write, when), f"no kill at write {write} ({writes[write - 1]})"
    resume(out)
    assert not list(out.rglob("*.tmp"))
    assert_same(snapshot(out), expected)


@pytest.mark.parametrize("name, nth, when", [
    ("best.pt", 1, "before"),      # epoch 1 committed, its best.pt half done (a tmp file)
    ("metrics.json", 2, "before"),  # epoch 2 committed, metrics.csv new, metrics.json old
    ("test_metrics.json", 1, "before"),  # every epoch done, the final evaluation not written
])
def test_a_kill_inside_a_write_then_resume_equals_the_uninterrupted_run(tmp_path, full, name,
                                                                      nth, when):
    _, writes = full
    write = [i for i, written in enumerate(writes, 1) if written == name][nth - 1]
    check_kill_and_resume(tmp_path, full, write, when)


def test_eval_after_a_kill_between_last_pt_and_best_pt_reports_the_committed_best(
        tmp_path, full):
    # Epoch 1 improved and its last.pt is written; its best.pt is not (a tmp file is left).
    _, writes = full
    out = tmp_path / "cut"
    assert killed_at(out, writes.index("best.pt") + 1, "before")
    assert not (out / "checkpoints" / "best.pt").exists()
    assert list((out / "checkpoints").glob(".best.pt.*.tmp"))
    assert not (out / "metrics.json").exists()
    test = experiment.evaluate_run(out, "best", device="cpu")
    # The oracle: the uninterrupted run's evaluation of its epoch-1 (best) weights.
    assert test["test_acc"] == pytest.approx(
        full[0]["checkpoints"]["best"]["history"][0]["test_acc"], abs=1e-6)
    # eval also repaired the folder: best.pt is epoch 1's, no temporary file is left.
    assert load_checkpoint(out / "checkpoints" / "best.pt")["epoch"] == 1
    assert not list(out.rglob("*.tmp"))
    assert len(json.loads((out / "metrics.json").read_text())) == 1


@pytest.mark.slow  # 40-100 s: a kill before and after each of the run's 15 file replacements
def test_the_kill_campaign_every_write_before_and_after(tmp_path, full):
    for write, when in kill_points(full[1]):
        check_kill_and_resume(tmp_path, full, write, when)
