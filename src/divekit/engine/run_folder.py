"""The run directory as callbacks: config, checkpoints, metrics, curves and TensorBoard events.

:class:`RunFolder` writes what a run needs to be rebuilt and resumed: ``config.json``,
``checkpoints/last.pt`` after every epoch (and every ``every_n_steps`` optimizer steps when
asked), ``checkpoints/best.pt`` when the monitored metric improved, ``metrics.csv/json``,
``curves.png``, and the training loss of every optimizer step with its named parts in
``steps.csv`` (drawn in ``steps.png`` when the loss has parts, e.g. BERT's ``mlm`` and ``nsp``).
:class:`TensorBoardLogger` adds TensorBoard event files beside them. Under
``torchrun`` only process 0 writes; every process takes part in gathering the state.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from divekit.engine import distributed
from divekit.engine.callbacks import Callback
from divekit.engine.checkpoint import save_checkpoint, write_atomically
from divekit.engine.plots import plot_history, plot_steps


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
            save_checkpoint(state, folder / "last.pt")
            if best:
                save_checkpoint(state, folder / "best.pt")
            if trainer.step_in_epoch == 0:
                trainer.history.write(self.out_dir)
                self._write_steps()
        distributed.barrier()

    def _rows(self) -> list[dict]:
        return [{key: float(value) for key, value in row.items()} | {"step": row["step"],
                "epoch": row["epoch"]} for row in self.steps]

    def _write_steps(self) -> None:
        rows = self._rows()
        if not rows:
            return
        keys = list(dict.fromkeys(key for row in rows for key in row))  # parts may come later
        tmp = self.out_dir / f".steps.csv.{os.getpid()}.tmp"
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.out_dir / "steps.csv")

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
