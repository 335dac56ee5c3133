"""Progress reporting: a live bar on a terminal, one plain line per epoch otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from divekit.engine.callbacks import Callback


def format_metrics(metrics: dict[str, float]) -> str:
    """``train loss 0.4210 acc 0.8460 | test loss ...`` from a flat metrics dict: every
    metric of each split (the loss, its named parts and the task's metrics)."""
    parts = []
    for split in ("train", "val", "test"):
        values = [f"{k.split('_', 1)[1]} {v:.4f}" for k, v in metrics.items()
                  if k.startswith(split + "_") and k != "train_time"]
        if values:
            parts.append(f"{split} " + " ".join(values))
    return " | ".join(parts)


class ProgressReporter(Callback):
    """Show training progress: a live bar while an epoch runs (on a terminal), a summary line
    after each epoch, and why a run stopped early.

    The bar goes to standard error and the lines to standard output, so that
    ``divekit train ... > train.log`` at a terminal shows the bar and logs every epoch.

    Args:
        stream: write the bar and the lines here instead (default: as above).
        live: draw a live bar; default: only when the bar's stream is a terminal.
        refresh_seconds: how often the live bar's loss is refreshed (each refresh syncs).
    """

    def __init__(self, stream: TextIO | None = None, live: bool | None = None,
                 refresh_seconds: float = 0.5) -> None:
        self.stream = stream
        self.live = self.bar_stream.isatty() if live is None else bool(live)
        self.refresh_seconds = refresh_seconds
        self.bar = None

    # Looked up when used, so a redirected sys.stdout/sys.stderr is honoured.
    @property
    def bar_stream(self) -> TextIO:
        return self.stream or sys.stderr

    @property
    def line_stream(self) -> TextIO:
        return self.stream or sys.stdout

    def on_epoch_start(self, trainer) -> None:
        if self.live:
            from tqdm import tqdm

            self.bar = tqdm(total=trainer.steps_per_epoch, file=self.bar_stream, leave=False,
                            desc=f"epoch {trainer.epoch + 1}/{trainer.max_epochs}",
                            dynamic_ncols=True, unit="step", mininterval=self.refresh_seconds)
            self.last_refresh = time.perf_counter()

    def on_step_end(self, trainer) -> None:
        if self.bar is not None:
            self.bar.update(1)
            now = time.perf_counter()
            if now - self.last_refresh > self.refresh_seconds:
                self.bar.set_postfix(loss=f"{trainer.running_loss():.4f}", refresh=False)
                self.last_refresh = now

    def on_epoch_end(self, trainer, metrics: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        width = len(str(trainer.max_epochs))
        line = (f"epoch {metrics['epoch']:>{width}}/{trainer.max_epochs}  {format_metrics(metrics)}"
                f" | lr {metrics['lr']:.3g} | {metrics['train_time']:.1f} s, "
                f"{metrics['examples_per_s']:,.0f} ex/s")
        print(line, file=self.line_stream, flush=True)

    def on_fit_end(self, trainer) -> None:
        if trainer.stop_reason:
            print(trainer.stop_reason, file=self.line_stream, flush=True)
