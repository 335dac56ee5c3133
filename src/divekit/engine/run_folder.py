"""The run directory as callbacks: config, checkpoints, metrics, curves and TensorBoard events.

:class:`RunFolder` writes what a run needs to be rebuilt and resumed: ``config.json``,
``checkpoints/last.pt`` after every epoch (and every ``every_n_steps`` optimizer steps when
asked), ``checkpoints/best.pt`` when the monitored metric improved, ``metrics.csv/json``,
``curves.png``, and the training loss of every optimizer step with its named parts in
``steps.csv`` (drawn in ``steps.png`` when the loss has parts, e.g. BERT's ``mlm`` and ``nsp``).
:class:`TensorBoardLogger` adds TensorBoard event files beside them. Under
``torchrun`` only process 0 writes; every process takes part in gathering the state.

Crash consistency: ``last.pt`` is the commit record. Every file is replaced atomically, and
after an epoch ``last.pt`` is written first, then ``best.pt`` when the epoch improved, then the
metrics files. A kill between two of these writes leaves ``best.pt`` behind only when
``last.pt``'s best epoch is its own epoch, so ``best.pt`` can be rebuilt from ``last.pt``
(which holds the same state, the weight average included) and needs no second copy of the
weights. :func:`reconcile` does this on resume and before ``eval``, rewrites the metrics files
and ``steps.csv`` from ``last.pt``'s history, redraws ``curves.png`` and removes the temporary
files a kill left.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path
from typing import Any

from divekit.engine import distributed
from divekit.engine.callbacks import Callback
from divekit.engine.checkpoint import (
    load_checkpoint,
    replace_file,
    save_checkpoint,
    write_atomically,
)
from divekit.engine.history import History, _json_safe
from divekit.engine.plots import plot_history, plot_steps
from divekit.errors import DivekitError

# What a run writes into its folder (besides data artifacts such as tokenizer.json).
RUN_OUTPUTS = ("config.json", "metrics.csv", "metrics.json", "test_metrics.json", "curves.png",
               "steps.csv", "steps.png", "checkpoints", "tensorboard")


class RunFolder(Callback):
    """Keep ``out_dir`` up to date with the run (see the module docstring).

    Args:
        out_dir: the run directory.
        every_n_steps: also write ``last.pt`` every this many optimizer steps inside an epoch,
            so a kill loses at most that many steps; ``None``: at epoch ends only.
    """

    def __init__(self, out_dir: str | Path, every_n_steps: int | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.every_n_steps = every_n_steps
        self.steps: list[dict] = []  # per optimizer step: step, loss and parts (tensors)

    def on_fit_start(self, trainer) -> None:
        if trainer.rank == 0:  # also on resume: the settings now in force
            self.out_dir.mkdir(parents=True, exist_ok=True)
            config = {**trainer.config(), "data_summary": trainer.data_summary}
            write_atomically(self.out_dir / "config.json", json.dumps(config, indent=2) + "\n")

    def on_step_end(self, trainer) -> None:
        self.steps.append({"step": trainer.global_step, "epoch": trainer.epoch + 1,
                           **trainer.step_losses})
        if (self.every_n_steps and trainer.global_step % self.every_n_steps == 0
                and trainer.step_in_epoch < trainer.steps_per_epoch):
            self.save(trainer)

    def on_epoch_end(self, trainer, metrics: dict[str, float]) -> None:
        self.save(trainer, best=trainer.improved)

    def save(self, trainer, best: bool = False) -> None:
        """Write ``last.pt`` (and ``best.pt``) from the trainer's current state; after an
        epoch also the metrics files. Collective under ``torchrun``."""
        state = trainer.state_dict()
        if trainer.rank == 0:
            folder = self.out_dir / "checkpoints"
            save_checkpoint(state, folder / "last.pt")  # the commit: see the module docstring
            if best:
                save_checkpoint(state, folder / "best.pt")
            if trainer.step_in_epoch == 0:
                trainer.history.write(self.out_dir)
                write_steps(self.out_dir, self._rows())
        distributed.barrier()

    def _rows(self) -> list[dict]:
        return [{key: float(value) for key, value in row.items()} | {"step": row["step"],
                "epoch": row["epoch"]} for row in self.steps]

    def state_dict(self) -> dict:
        return {"steps": self._rows()}

    def load_state_dict(self, state: dict) -> None:
        self.steps = list(state.get("steps", []))

    def on_fit_end(self, trainer) -> None:
        self._plot(trainer)

    def on_exception(self, trainer, error: BaseException) -> None:
        self._plot(trainer)

    def _plot(self, trainer) -> None:
        # Drawn once per fit, also when it stops early or fails: a plot costs ~0.5 s.
        if trainer.rank == 0 and trainer.history:
            plot_history(trainer.history, self.out_dir / "curves.png")
        if trainer.rank == 0 and any(len(row) > 3 for row in self.steps):  # the loss has parts
            plot_steps(self._rows(), self.out_dir / "steps.png")


class TensorBoardLogger(Callback):
    """Every per-epoch metric as a TensorBoard scalar (step = epoch) in ``log_dir``, and the
    training loss and its parts of every optimizer step (``step/train_loss``, step = step).

    Open it with ``tensorboard --logdir RUN_DIR/tensorboard``. A resumed run appends a new
    event file holding the epochs after the checkpoint.
    """

    def __init__(self, log_dir: str | Path) -> None:
        self.log_dir = Path(log_dir)
        self.writer = None

    def on_fit_start(self, trainer) -> None:
        if trainer.rank == 0:
            from torch.utils.tensorboard import SummaryWriter  # slow to import: only when used

            self.writer = SummaryWriter(str(self.log_dir))

    def on_step_end(self, trainer) -> None:
        if self.writer is not None:
            for name, value in trainer.step_losses.items():
                self.writer.add_scalar(f"step/train_{name}", float(value), trainer.global_step)

    def on_epoch_end(self, trainer, metrics: dict[str, float]) -> None:
        if self.writer is not None:
            epoch = metrics["epoch"]
            for key, value in metrics.items():
                if key != "epoch":
                    self.writer.add_scalar(key, value, epoch)
            self.writer.flush()

    def on_fit_end(self, trainer) -> None:
        self._close()

    def on_exception(self, trainer, error: BaseException) -> None:
        self._close()

    def _close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def write_steps(out_dir: Path, rows: list[dict]) -> None:
    """Replace ``steps.csv`` with ``rows`` (one per optimizer step); nothing when empty."""
    if not rows:
        return
    keys = list(dict.fromkeys(key for row in rows for key in row))  # parts may come later
    tmp = out_dir / f".steps.csv.{os.getpid()}.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, out_dir / "steps.csv")


def holds_run(folder: Path) -> bool:
    """Whether ``folder`` holds (part of) a run: its config or a checkpoint."""
    folder = Path(folder)
    return (folder / "config.json").is_file() or any((folder / "checkpoints").glob("*.pt"))


def claim(out_dir: Path, resume: bool | str | Path, overwrite: bool) -> None:
    """Check that a run may write into ``out_dir`` (call with its :class:`RunLock` held): a
    folder holding another run is refused unless resuming it, or emptied of the old run's
    files with ``overwrite``. A resumed run's ``test_metrics.json`` (of its final weights) is
    removed until the run writes it again, so a kill cannot leave a stale one; so are the
    temporary files a killed run left."""
    out_dir = Path(out_dir)
    remove_temporary_files(out_dir)
    if resume is True and not (out_dir / "checkpoints" / "last.pt").is_file():
        raise DivekitError(f"{out_dir} has no checkpoint to resume from (the run stopped before "
                           f"its first one); start it again with --overwrite (overwrite=True)")
    if resume:
        (out_dir / "test_metrics.json").unlink(missing_ok=True)
    if resume or not holds_run(out_dir):
        return
    if not overwrite:
        raise DivekitError(f"{out_dir} already holds a run; continue it with --resume "
                           f"(resume=True), replace it with --overwrite (overwrite=True), or "
                           f"write to another --out")
    for name in RUN_OUTPUTS:
        path = out_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def read_checkpoint(run_dir: Path, name: str = "best") -> tuple[dict[str, Any], str]:
    """The committed state of a run's ``best`` or ``last`` checkpoint and a description of it
    (``"best.pt (epoch 3, step 84)"``).

    A ``best.pt`` that a kill left behind ``last.pt`` is not used: its state comes from
    ``last.pt`` (see the module docstring)."""
    folder = Path(run_dir) / "checkpoints"
    state = _load(folder / f"{name}.pt") if (folder / f"{name}.pt").is_file() else None
    last = _load(folder / "last.pt") if name == "best" and (folder / "last.pt").is_file() \
        else None
    note = ""
    if last is not None and _best_is_stale(state, last):
        state, note = last, "; rebuilt from last.pt"
    if state is None:
        raise DivekitError(f"no checkpoint at {folder / f'{name}.pt'}: {run_dir} is not a run "
                           f"folder, or it was stopped before its first checkpoint")
    return state, f"{name}.pt (epoch {state['epoch']}, step {state['global_step']}{note})"


def reconcile(out_dir: Path, state: dict[str, Any] | None = None, plot: bool = True) -> list[str]:
    """Make a run folder agree with its commit record ``last.pt`` (``state``: its contents,
    read when not given); call with the folder's :class:`RunLock` held.

    Returns:
        What was repaired, e.g. ``["best.pt", "metrics.csv/json"]`` (empty when nothing).
    """
    out_dir = Path(out_dir)
    repaired = remove_temporary_files(out_dir)
    last_path = out_dir / "checkpoints" / "last.pt"
    if not last_path.is_file():
        return repaired
    state = _load(last_path) if state is None else state
    best_path = out_dir / "checkpoints" / "best.pt"
    best = _load(best_path) if best_path.is_file() else None
    if _best_is_stale(best, state):
        replace_file(best_path, "wb", lambda f: f.write(last_path.read_bytes()))
        repaired.append("best.pt")
    history = History(state["history"])
    if history and not _metrics_current(out_dir, history):
        history.write(out_dir)
        repaired.append("metrics.csv/json")
    steps = state["callbacks"].get("RunFolder", {}).get("steps", [])
    if steps and _csv_rows(out_dir / "steps.csv") != len(steps):
        write_steps(out_dir, steps)
        repaired.append("steps.csv")
    curves = out_dir / "curves.png"
    if plot and history and (not curves.is_file()
                             or curves.stat().st_mtime_ns < last_path.stat().st_mtime_ns):
        plot_history(history, curves)
        repaired.append("curves.png")
    return repaired


def remove_temporary_files(out_dir: Path) -> list[str]:
    """Delete the half-written files (``.NAME.*.tmp``) a killed run left; returns their names."""
    found = [*Path(out_dir).glob(".*.tmp"), *(Path(out_dir) / "checkpoints").glob(".*.tmp")]
    for tmp in found:
        tmp.unlink(missing_ok=True)
    return [tmp.name for tmp in found]


def _best_is_stale(best: dict | None, last: dict) -> bool:
    """``best.pt`` misses ``last.pt``'s best epoch, and that epoch is ``last.pt``'s own."""
    recorded = last.get("best") or {}
    return (recorded.get("epoch") is not None and recorded["epoch"] == last["epoch"]
            and not last.get("step_in_epoch") and (best is None or best.get("best") != recorded))


def _metrics_current(out_dir: Path, history: History) -> bool:
    path = out_dir / "metrics.json"
    if not path.is_file() or not (out_dir / "metrics.csv").is_file():
        return False
    try:  # the files written last in History.write: current means both are
        rows = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return rows == [{k: _json_safe(v) for k, v in row.items()} for row in history]


def _csv_rows(path: Path) -> int:
    if not path.is_file():
        return -1
    with open(path, newline="") as f:
        return sum(1 for _ in csv.DictReader(f))


def _load(path: Path) -> dict[str, Any]:
    """A checkpoint's contents; memory-mapped, so looking at its epoch reads no weights."""
    return load_checkpoint(path, mmap=True)
