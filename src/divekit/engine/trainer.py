"""The training engine: ``Trainer(...).fit(model, data)`` with exact resume.

One loop serves every task. The Trainer knows no task by name: a :class:`~divekit.engine.task.Task`
(from the data's ``task`` field, or given as ``Trainer(task=...)``) turns a batch into a mean
loss, says how many examples the batch holds, and names the metrics that evaluate a split. A
batch may be any structure of tensors. The loss and every metric cover a whole split (never a
mean of per-batch means), stay on the device until the end of the epoch, and are summed over
processes under ``torchrun``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from torch import nn

from divekit.config import TrainerSettings
from divekit.engine import autotune, distributed
from divekit.engine.batch_limits import limited, set_epoch
from divekit.engine.callbacks import Callback, EarlyStopping
from divekit.engine.checkpoint import (
    inference_weights,
    load_checkpoint,
    load_weights_checked,
    rng_state,
    seed_everything,
    set_rng_state,
    write_atomically,
)
from divekit.engine.device import AMP_SETTINGS, autocast, select_device
from divekit.engine.ema import WeightAverage
from divekit.engine.finetune import param_groups
from divekit.engine.history import History
from divekit.engine.lr_finder import LRFinderResult, lr_find
from divekit.engine.metrics import SplitMeters
from divekit.engine.progress import ProgressReporter
from divekit.engine.run_folder import RunFolder, TensorBoardLogger, claim, reconcile
from divekit.engine.run_lock import RunLock
from divekit.engine.signals import Signals, TrainingInterrupted
from divekit.engine.task import Output, Task, create_task, to_device
from divekit.errors import DivekitError
from divekit.optim import build_optimizer, build_scheduler

CHECKPOINT_FORMAT = 1
# A training loss this many times the first step's means the run diverges.
DIVERGENCE_FACTOR = 100.0


__all__ = ["Trainer", "TrainingDiverged", "TrainingInterrupted"]


class TrainingDiverged(DivekitError):
    """The loss became NaN or infinite, or (``stop_on_divergence``) grew past
    ``DIVERGENCE_FACTOR`` times its first step's value."""


class Trainer:
    """Fit, evaluate and predict with one set of engine settings.

    Args:
        max_epochs: passes over the training set.
        max_steps: stop after this many optimizer steps, inside an epoch if need be (that
            epoch is then evaluated and recorded as the last); ``None``: ``max_epochs`` decides.
            Schedules span the steps actually taken.
        lr: peak learning rate.
        optimizer: ``sgd``, ``adam``, ``adamw``, ``rmsprop``, ``adagrad``, or a callable
            ``params -> torch.optim.Optimizer``.
        task: what a batch means: a registered task name (``classification``,
            ``regression``, ``language-model``, ...) or a :class:`~divekit.engine.task.Task`;
            default: the ``task`` of the data given to ``fit`` (see :mod:`divekit.engine.task`).
        lr_mult: ``{pattern: multiplier}`` over parameter names: matched parameters train at
            ``lr * multiplier`` under every schedule, e.g. ``{"fc.*": 10}`` for a new head
            when fine-tuning (see :func:`divekit.engine.finetune.param_groups`). Frozen
            parameters (``requires_grad=False``) are left out of the optimizer.
        momentum, weight_decay, nesterov: optimizer hyperparameters.
        schedule: ``constant``, ``cosine``, ``onecycle`` or ``step``, stepped per optimizer step.
        warmup_epochs: linear warm-up length (may be fractional).
        grad_clip: clip the global gradient norm to this value.
        stop_on_divergence: stop with :class:`TrainingDiverged` (the last good checkpoint
            kept) when the epoch's mean training loss so far exceeds ``DIVERGENCE_FACTOR``
            (100) times the first step's; ``False``: only warn, once, on standard error.
        accumulate: optimizer step every ``accumulate`` batches; each batch's loss is weighted
            by its example count (``Task.count``: images, tokens, ...), so the gradient equals
            that of one batch ``accumulate`` times as large.
        ema: keep an exponential moving average of the weights with this decay (e.g. 0.99,
            0.999): after each optimizer step ``avg = d * avg + (1 - d) * weights`` with
            ``d = min(ema, (1 + step) / (10 + step))``, so the first steps do not drag the
            average back to the initial weights. Evaluation, the best checkpoint and the
            weights ``fit`` leaves in the model are the average's; checkpoints keep the raw
            weights too, for exact resume. ``0`` or ``None``: no average. Averaging removes
            the epoch-to-epoch noise of SGD at a high constant learning rate (Polyak &
            Juditsky 1992); the :class:`~divekit.engine.ema.WeightAverage` callback.
        limit_batches: train and evaluate on only the first this many batches of every epoch
            and split (a quick smoke run of the whole pipeline).
        overfit_batches: train on the same this many batches every epoch (the first ones of
            epoch 0, augmented once) and evaluate on them, reported as ``overfit_*``: a model
            that cannot drive their loss towards zero has a bug.
        early_stopping: stop after this many epochs without improvement of ``monitor``.
        monitor: the metric that picks the best checkpoint: a full name (``"val_acc"``) or a
            metric of the per-epoch evaluation split (``"acc"``, ``"loss"``, ``"bleu"``);
            default: the task's (accuracy for classification, loss for regression, perplexity
            for language models).
        mode: ``"max"`` or ``"min"``: whether a larger ``monitor`` is better; default: the
            metric's own ``higher_is_better`` (losses are minimised).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        amp: ``off``, ``bf16`` or ``fp16`` autocast (fp16 with a ``GradScaler``: a step whose
            scaled gradients overflow is skipped, with its schedule step, and the scale
            halved), or ``auto``: ``fit`` times a few steps
            of each precision on the first training batch (see :mod:`divekit.engine.autotune`)
            and keeps fp32 unless another is over 10% faster; the choice, its timings and
            reason are printed (with ``progress``), recorded as ``autotune`` in
            ``config.json`` and reused on resume. Before ``fit`` resolves it: fp32.
        channels_last: store conv weights and image batches NHWC (faster conv kernels), or
            ``auto``: measured with the precision, as ``amp="auto"`` is.
        compile: wrap the model in ``torch.compile``, or ``auto``: after the precision and
            memory format are chosen, time their steps compiled and compile only if the run
            (``max_epochs`` x batches, or ``max_steps``) is long enough for the faster steps
            to repay twice the compiling time (:func:`~divekit.engine.autotune.compile_verdict`;
            runs under two minutes are not tried); printed and recorded as ``amp`` is.
        seed: seeds every generator at the start of ``fit``.
        out_dir: run directory for config, metrics, plots and checkpoints, and at the end of
            ``fit`` the test split's metrics of the final weights (``test_metrics.json``, also
            the attribute ``test_metrics``); ``None`` writes nothing.
        checkpoint_every: also checkpoint every this many optimizer steps inside an epoch
            (needs ``out_dir``), so a kill loses at most that many steps; a resumed run still
            ends exactly as an uninterrupted one.
        tensorboard: write TensorBoard event files to ``out_dir/tensorboard``.
        progress: show progress: a live bar on standard error when it is a terminal, one line
            per epoch and the reason for an early stop on standard output.
        callbacks: extra :class:`Callback` objects.
        config: extra entries recorded in ``config.json`` (the CLI stores model and data here).
        nan_check_every: check the running loss for NaN/inf every this many steps.
    """

    def __init__(
        self,
        max_epochs: int = 10,
        max_steps: int | None = None,
        lr: float = 0.1,
        optimizer: str | Callable[[Iterable], torch.optim.Optimizer] = "sgd",
        *,
        task: str | Task | None = None,
        lr_mult: dict[str, float] | None = None,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        schedule: str = "constant",
        warmup_epochs: float = 0.0,
        grad_clip: float | None = None,
        stop_on_divergence: bool = False,
        accumulate: int = 1,
        ema: float | None = None,
        limit_batches: int | None = None,
        overfit_batches: int | None = None,
        early_stopping: int | None = None,
        monitor: str | None = None,
        mode: str | None = None,
        device: str = "auto",
        amp: str = "off",
        channels_last: bool | str = False,
        compile: bool | str = False,
        seed: int = 0,
        out_dir: str | Path | None = None,
        checkpoint_every: int | None = None,
        tensorboard: bool = False,
        progress: bool = True,
        callbacks: Sequence[Callback] = (),
        config: dict[str, Any] | None = None,
        nan_check_every: int = 50,
    ) -> None:
        _check_positive_int("max_epochs", max_epochs)
        if max_steps is not None:
            _check_positive_int("max_steps", max_steps)
        _check_positive_int("accumulate", accumulate)
        # Checked here, so a wrong type (lr="0.1" from a hand-made config) fails before fit.
        _check_number("learning rate", lr, positive=True)
        for name, value in (("momentum", momentum), ("weight_decay", weight_decay),
                            ("warmup_epochs", warmup_epochs)):
            _check_number(name, value)
        if grad_clip is not None:
            _check_number("grad_clip", grad_clip, positive=True)
        if ema is not None and (isinstance(ema, bool) or not isinstance(ema, numbers.Real)):
            # Its range, [0, 1), is the weight average's own check (with the decay's meaning).
            raise DivekitError(f"ema is the decay of the weight average: a number in [0, 1), "
                               f"got {ema!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise DivekitError(f"seed must be an integer, got {seed!r}")
        if early_stopping is not None and early_stopping != 0:
            _check_positive_int("early_stopping", early_stopping)
        for name, value in (("limit_batches", limit_batches), ("overfit_batches", overfit_batches)):
            if value is not None:
                _check_positive_int(name, value)
        if limit_batches and overfit_batches:
            raise DivekitError("give limit_batches or overfit_batches, not both: overfitting "
                               "already uses only its own batches")
        self.limit_batches, self.overfit_batches = limit_batches, overfit_batches
        if mode not in (None, "max", "min"):
            raise DivekitError(f"mode must be 'max' or 'min' (is a larger {monitor or 'metric'} "
                               f"better?), got {mode!r}")
        self.max_epochs, self.lr, self.optimizer_spec = max_epochs, lr, optimizer
        self.max_steps = max_steps
        self.early_stopping = early_stopping
        self.task_spec = create_task(task) if task is not None else None
        self.task: Task | None = self.task_spec
        self.ema = ema or None  # a decay of 0 averages nothing: the weights themselves
        # First: its average is updated before any other callback sees the step.
        averaging = [WeightAverage(ema)] if ema is not None and ema != 0 else []
        if lr_mult and callable(optimizer):
            raise DivekitError("lr_mult needs a named optimizer; build a callable's parameter "
                               "groups with divekit.engine.finetune.param_groups instead")
        self.lr_mult = dict(lr_mult) if lr_mult else None
        self.momentum, self.weight_decay, self.nesterov = momentum, weight_decay, nesterov
        self.schedule, self.warmup_epochs = schedule, warmup_epochs
        self.grad_clip, self.accumulate = grad_clip, accumulate
        self.stop_on_divergence = stop_on_divergence
        self.monitor_spec, self.monitor, self.mode = monitor, monitor, mode
        self.device = distributed.join(select_device(device))
        self.rank, self.world_size = distributed.world()
        if amp not in AMP_SETTINGS:
            raise DivekitError(f"unknown amp mode {amp!r}; choose from: {', '.join(AMP_SETTINGS)}")
        if amp != "auto":
            autocast(self.device, amp)  # validates amp for this device now, not mid-run
        if channels_last not in (True, False, "auto"):
            raise DivekitError(f"channels_last must be true, false or 'auto', got "
                               f"{channels_last!r}")
        if compile not in (True, False, "auto"):
            raise DivekitError(f"compile must be true, false or 'auto', got {compile!r}")
        # The settings as given; ``amp``/``channels_last``/``compile`` are what runs (``fit``
        # resolves auto).
        self.amp_setting, self.channels_last_setting = amp, channels_last
        self.compile_setting = compile
        self.amp = "off" if amp == "auto" else amp
        self.channels_last, self.compile = channels_last is True, compile is True
        self.autotune: autotune.ProbeResult | None = None
        self.progress = progress
        self.seed = seed
        self.out_dir = Path(out_dir) if out_dir is not None else None
        if checkpoint_every is not None:
            _check_positive_int("checkpoint_every", checkpoint_every)
        if (checkpoint_every or tensorboard) and self.out_dir is None:
            raise DivekitError("checkpoint_every and tensorboard write into the run directory: "
                               "give out_dir as well")
        self.checkpoint_every, self.tensorboard = checkpoint_every, tensorboard
        self.callbacks: list[Callback] = averaging + list(callbacks)
        if early_stopping:
            self.callbacks.append(EarlyStopping(patience=early_stopping))
        if progress and self.rank == 0:
            self.callbacks.append(ProgressReporter())
        if tensorboard:
            self.callbacks.append(TensorBoardLogger(self.out_dir / "tensorboard"))
        if self.out_dir is not None:  # last: it checkpoints what the others decided
            self.callbacks.append(RunFolder(self.out_dir, every_n_steps=checkpoint_every))
        self.extra_config = dict(config or {})
        self.nan_check_every = nan_check_every
        self.history = History()
        self.directions: dict[str, bool | None] = {}
        self.epoch = 0
        self.global_step = 0
        self.stop_reason: str | None = None
        self.test_metrics: dict[str, float] | None = None

    # ----------------------------------------------------------------- public API
    def fit(self, model: nn.Module, data, resume: bool | str | Path = False,
            overwrite: bool = False) -> History:
        """Train ``model`` on ``data``; returns the per-epoch history.

        ``out_dir`` is locked for this process while it trains (another run writing there
        fails at once), and a folder that holds another run is refused unless resuming it.

        Args:
            data: a ``DataModule``, or any object with ``train_dataloader()``,
                ``val_dataloader()`` (may return ``None``), ``test_dataloader()`` and, unless
                the Trainer was given a task, ``task``. A loader may be divekit's or a
                ``torch.utils.data.DataLoader``.
            resume: ``True`` continues from ``out_dir/checkpoints/last.pt`` (first making the
                folder agree with it, see :func:`~divekit.engine.run_folder.reconcile`); a path
                continues from that checkpoint. The result equals an uninterrupted run's.
            overwrite: replace the run already in ``out_dir`` (its files are deleted).
        """
        if self.out_dir is None or self.rank != 0:
            return self._fit(model, data, resume)
        with RunLock(self.out_dir):
            claim(self.out_dir, resume, overwrite)
            return self._fit(model, data, resume)

    def _fit(self, model: nn.Module, data, resume: bool | str | Path) -> History:
        self.task = self._task_for(data)
        self.data_summary = repr(data)
        train_loader = self._shard(data.train_dataloader())
        self.train_loader = limited(train_loader, self.limit_batches, self.overfit_batches)
        self.steps_per_epoch = math.ceil(len(self.train_loader) / self.accumulate)
        self.total_steps = self.max_epochs * self.steps_per_epoch
        if self.max_steps is not None:
            self.total_steps = min(self.total_steps, self.max_steps)
        state = self._checkpoint(resume) if resume else None
        self._resolve_auto(model.to(self.device), train_loader, state, self.total_steps)
        self.model = self._prepare(model)
        self.forward = self.model
        self.eval_model = self.model  # a callback may evaluate other weights (WeightAverage)
        if self.world_size > 1:
            self.forward = nn.parallel.DistributedDataParallel(self.model)
        if self.compile:
            self.forward = torch.compile(self.forward)
        eval_loader = data.val_dataloader()
        self.eval_split = "val" if eval_loader is not None else "test"
        if eval_loader is None:
            eval_loader = data.test_dataloader()
        if self.overfit_batches:  # evaluated on the batches it memorises
            eval_loader, self.eval_split = self.train_loader, "overfit"
        self.monitor = self.monitor_spec or self.task.monitor
        if not self.monitor.startswith(("train_", "val_", "test_", "overfit_")):
            self.monitor = f"{self.eval_split}_{self.monitor}"
        self.optimizer = self._build_optimizer()
        warmup_steps = round(self.warmup_epochs * self.steps_per_epoch)
        self.scheduler = build_scheduler(self.schedule, self.optimizer, self.total_steps,
                                         warmup_steps=warmup_steps)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == "fp16")
        self.history, self.stop_reason = History(), None
        self.first_loss, self._warned_divergence = None, False
        self.epoch = self.global_step = self.step_in_epoch = 0
        self.best, self.improved, self._resumed_meters = {"value": None, "epoch": None}, False, None
        if not resume:
            seed_everything(self.seed + self.rank)  # other dropout masks on every replica
        for callback in self.callbacks:
            callback.on_fit_start(self)
        if resume:  # after on_fit_start: callbacks have built what the checkpoint restores
            self.load_state_dict(state, source=self._checkpoint_path(resume))
            own = self.out_dir is not None and Path(self._checkpoint_path(resume)).resolve() \
                == (self.out_dir / "checkpoints" / "last.pt").resolve()
            if own and self.rank == 0:  # curves.png is drawn at the end of fit anyway
                reconcile(self.out_dir, state, plot=False)
        with Signals(self) as self._signals:
            try:
                while (self.epoch < self.max_epochs and self.global_step < self.total_steps
                       and self.stop_reason is None):
                    metrics = self._train_epoch()
                    metrics.update(self.evaluate(self.eval_model, eval_loader,
                                                 prefix=self.eval_split))
                    self.epoch += 1
                    self.step_in_epoch = 0
                    metrics["epoch"] = self.epoch
                    self.history.append(dict(sorted(metrics.items(), key=_column_order)))
                    self._track_best(metrics)
                    for callback in self.callbacks:
                        callback.on_epoch_end(self, metrics)
                    self._signals.check(save=False)  # the epoch's checkpoint is written
            except BaseException as error:
                for callback in self.callbacks:
                    callback.on_exception(self, error)
                raise
        for callback in self.callbacks:
            callback.on_fit_end(self)
        if self.out_dir is not None:
            self._write_test_metrics(data)
        return self.history

    def _write_test_metrics(self, data) -> None:
        """Evaluate the final weights on the test split into ``out_dir/test_metrics.json``
        (also kept as ``test_metrics``); every random generator is left as it was."""
        loader = data.test_dataloader()
        self.test_metrics = None
        if loader is None:
            return
        generators = rng_state()
        self.test_metrics = self.evaluate(self.model, loader, prefix="test")
        set_rng_state(generators)
        if self.rank == 0:
            write_atomically(self.out_dir / "test_metrics.json",
                             json.dumps(self.test_metrics, indent=2) + "\n")

    def lr_find(self, model: nn.Module, data, **options: Any) -> LRFinderResult:
        """The learning-rate range test with these settings; the model, this Trainer and every
        random generator are left as they were, so a following ``fit`` is unchanged.

        Args:
            options: ``min_lr``, ``max_lr``, ``num_steps``, ``beta`` (smoothing), ``diverge``
                and ``rule`` (``"valley"`` or ``"steep"``): see
                :func:`divekit.engine.lr_finder.lr_find`.
        """
        return lr_find(self, model, data, **options)

    def stop(self, reason: str) -> None:
        """Ask ``fit`` to stop after the current epoch (used by callbacks)."""
        self.stop_reason = reason

    def higher_is_better(self, metric: str) -> bool:
        """Whether a larger value of ``metric`` (e.g. ``"val_acc"``) is better: ``mode`` for
        the monitored metric when given, else the metric's own direction."""
        if self.mode is not None and metric == self.monitor:
            return self.mode == "max"
        direction = self.directions.get(metric)
        if direction is None:
            known = ", ".join(sorted(self.directions)) or "none yet"
            raise DivekitError(f"the direction of {metric!r} is not known (metrics with a "
                               f"direction: {known}); pass mode='max' or 'min'")
        return direction

    @torch.no_grad()
    def evaluate(
        self, model: nn.Module, loader: Iterable, prefix: str = "test",
        task: str | Task | None = None,
    ) -> dict[str, float]:
        """The loss and the task's metrics over every example of ``loader``.

        Args:
            task: default: the Trainer's task (the data's, after ``fit``).
        """
        task = create_task(task) if task is not None else self.task
        if task is None:
            raise DivekitError("evaluate needs a task: call fit first, or pass task= "
                               "(e.g. 'classification') to the Trainer or to evaluate")
        model = self._prepare(model)
        was_training = model.training
        model.eval()
        meters = SplitMeters(task, prefix, self.device)
        batches = self._shard(loader)
        if self.limit_batches:
            batches = islice(batches, self.limit_batches)
        for batch in batches:
            batch = to_device(batch, self.device, self.channels_last)
            with autocast(self.device, self.amp):
                output = task.step(model, batch)
            meters.add(output, batch, task.count(batch))
        model.train(was_training)
        return self._computed(meters, prefix)

    @torch.no_grad()
    def predict(self, model: nn.Module, inputs: torch.Tensor | Iterable) -> Any:
        """Model outputs for a tensor of inputs or a loader of batches (the task's inputs).

        Returns one tensor when every output is a tensor, else a list (e.g. detections).
        """
        task = self.task or Task()
        model = self._prepare(model)
        was_training = model.training
        model.eval()
        batches = inputs.split(1024) if isinstance(inputs, torch.Tensor) else (
            task.inputs(batch) for batch in inputs)
        outputs = []
        for x in batches:
            with autocast(self.device, self.amp):
                out = task.predict(model, to_device(x, self.device, self.channels_last))
            if isinstance(out, torch.Tensor):
                outputs.append(out.float().cpu())
            else:
                outputs.extend(out)
        model.train(was_training)
        if outputs and all(isinstance(out, torch.Tensor) for out in outputs):
            return torch.cat(outputs)
        return outputs

    def running_loss(self) -> float:
        """This process's mean training loss of the epoch so far (synchronises the device)."""
        return self._meters.loss.local()

    # ----------------------------------------------------------------- the loop
    def _train_epoch(self) -> dict[str, float]:
        self.model.train()
        set_epoch(self.train_loader, self.epoch)
        for callback in self.callbacks:
            callback.on_epoch_start(self)
        self._meters = SplitMeters(self.task, "train", self.device)
        if self._resumed_meters is not None:  # resumed inside this epoch
            self._meters.load_state_dict(self._resumed_meters)
            self._resumed_meters = None
        batches = _skip(self.train_loader, self.step_in_epoch * self.accumulate)
        start = time.perf_counter()
        for group in _groups(batches, self.accumulate):
            group = [to_device(batch, self.device, self.channels_last) for batch in group]
            counts = [self.task.count(batch) for batch in group]
            total = self._total(counts)
            step_losses: dict[str, torch.Tensor] = {}
            for batch, count in zip(group, counts, strict=True):
                with autocast(self.device, self.amp):
                    output = self.task.step(self.forward, batch)
                self._meters.add(output, batch, count)
                self.scaler.scale(output.loss * self._weight(count, total, output)).backward()
                for name, value in {"loss": output.loss, **output.parts}.items():
                    share = value.detach().float() * (count / sum(counts))
                    step_losses[name] = step_losses.get(name, 0) + share
            # This process's mean loss (and parts) of the step, for the per-step log.
            self.step_losses = step_losses
            if self.grad_clip is not None:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            # fp16: a step whose gradients overflowed was skipped (and the scale lowered);
            # the schedule waits for the next step that is taken.
            if scale is None or self.scaler.get_scale() >= scale:
                self.scheduler.step()
            self.global_step += 1
            self.step_in_epoch += 1
            if self.first_loss is None:  # the reference of the divergence check
                self.first_loss = self._meters.loss.compute().item()
            # Also before a step's checkpoint, so that none holds a NaN or diverged model.
            if self.step_in_epoch % self.nan_check_every == 0 or (
                    self.checkpoint_every and self.global_step % self.checkpoint_every == 0):
                self._check_finite()
            for callback in self.callbacks:
                callback.on_step_end(self)
            self._signals.check(save=True)
            if self.global_step >= self.total_steps:
                break
        self._check_finite()
        seconds = time.perf_counter() - start
        metrics = self._computed(self._meters, "train")
        metrics["lr"] = self.optimizer.param_groups[0]["lr"]
        metrics["train_time"] = seconds
        metrics["examples_per_s"] = self._meters.loss.examples() / max(seconds, 1e-9)
        return metrics

    def _total(self, counts: list) -> int | torch.Tensor:
        """Examples in one optimizer step's batches, over all processes."""
        total = sum(counts)
        if self.world_size > 1:
            total = distributed.all_reduce_sum(
                torch.as_tensor(total, dtype=torch.float64, device=self.device))
        return total

    def _weight(self, count, total, output: Output):
        """The share of one batch in the step's gradient: its examples over the step's.

        DistributedDataParallel averages gradients over processes, hence the world size.
        """
        weight = count * self.world_size / total
        return weight.to(output.loss.dtype) if isinstance(weight, torch.Tensor) else weight

    def _computed(self, meters: SplitMeters, prefix: str) -> dict[str, float]:
        values, directions = meters.compute(prefix)
        self.directions.update(directions)
        return values

    def _task_for(self, data) -> Task:
        if self.task_spec is not None:
            task = self.task_spec
        else:
            name = getattr(data, "task", None)
            if name is None:
                raise DivekitError("the data has no task attribute; pass task= to the Trainer "
                                   "(e.g. 'classification' or a Task object)")
            task = create_task(name)
        task.setup(data)
        return task

    def _shard(self, loader):
        """This process's share of ``loader`` under ``torchrun``; the loader itself otherwise."""
        if self.world_size == 1:
            return loader
        if hasattr(loader, "shard"):
            return loader.shard(self.rank, self.world_size)
        sampler = getattr(loader, "sampler", None)
        if isinstance(sampler, torch.utils.data.DistributedSampler):
            return loader
        raise DivekitError("distributed training needs loaders that shard: divekit's "
                           "TensorLoader/DatasetLoader, or a DataLoader with a DistributedSampler")

    def _check_finite(self) -> None:
        """Stop on a NaN/inf training loss; warn or stop on one that grew past
        ``DIVERGENCE_FACTOR`` times the first step's (collective under ``torchrun``)."""
        loss = self._meters.loss.compute().item()
        where = self.out_dir / "checkpoints" / "last.pt" if self.out_dir else None
        kept = f" The last good checkpoint is {where}." if where and where.exists() else ""
        lr = f"{self.optimizer.param_groups[0]['lr']:.3g}"
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"training loss became {loss} in epoch {self.epoch + 1} "
                f"(step {self.global_step}); lower the learning rate (now {lr}), set a "
                f"gradient clip, or check the data for NaN/inf.{kept}"
            )
        # A first loss <= 0 (a loss that can be negative) gives no scale to compare with.
        if (self.first_loss is None or self.first_loss <= 0
                or loss <= DIVERGENCE_FACTOR * self.first_loss):
            return
        problem = (f"training loss {loss:.3g} in epoch {self.epoch + 1} (step "
                   f"{self.global_step}) is {loss / self.first_loss:.3g}x its first step's "
                   f"({self.first_loss:.3g}): the run is diverging")
        if self.stop_on_divergence:
            raise TrainingDiverged(f"{problem}; stopped (stop_on_divergence). Lower the "
                                   f"learning rate (now {lr}) or set a gradient clip.{kept}")
        if self.rank == 0 and not self._warned_divergence:
            print(f"divekit: warning: {problem}; lower the learning rate (now {lr}) or set a "
                  f"gradient clip; --stop-on-divergence (stop_on_divergence=True) stops such "
                  f"a run", file=sys.stderr, flush=True)
        self._warned_divergence = True

    def _resolve_auto(self, model: nn.Module, loader, state: dict[str, Any] | None,
                      steps: int | None = None) -> None:
        """Set ``amp``/``channels_last``/``compile`` for ``auto``: the checkpoint's recorded
        choice on resume (so it continues exactly), else measured on the first training batch
        (or cached), ``compile`` for a run of ``steps`` optimizer steps (``None``: not
        compiled); under ``torchrun`` rank 0 measures and every process takes its choice."""
        self.amp = "off" if self.amp_setting == "auto" else self.amp_setting
        self.channels_last = self.channels_last_setting is True
        self.compile = self.compile_setting is True
        self.autotune = None
        settings = [self.amp_setting, self.channels_last_setting]
        if steps is not None:  # compiling is judged for a run (lr_find runs uncompiled)
            settings.append(self.compile_setting)
        if "auto" not in settings:
            return
        if self.use_recorded_choice(state):
            note = " (recorded in the run)"
        else:
            result, note = self._measure(model, loader, steps) if self.rank == 0 else (None, "")
            if self.world_size > 1:
                result = autotune.ProbeResult.from_dict(
                    distributed.gather(result.to_dict() if result else None)[0])
            self._use(result)
        if self.progress and self.rank == 0:
            print(f"autotune: {self.autotune.reason}{note}", flush=True)

    def use_recorded_choice(self, state: dict[str, Any] | None) -> bool:
        """Run in the precision, memory format and compilation that the checkpoint
        ``state``'s run chose with ``auto``; ``False`` (nothing changed) when it recorded no
        choice."""
        recorded = (state or {}).get("config", {}).get("autotune")
        if recorded is None:
            return False
        self._use(autotune.ProbeResult.from_dict(recorded))
        return True

    def _use(self, result: autotune.ProbeResult) -> None:
        self.autotune = result
        self.amp, self.channels_last = result.choice
        if self.compile_setting == "auto":
            self.compile = result.compile

    def _measure(self, model: nn.Module, loader, steps: int | None
                 ) -> tuple[autotune.ProbeResult, str]:
        """The probe's (or the cache's) result on ``loader``'s first batch, and a note
        saying which; reading the batch leaves every random generator as it was."""
        generators = rng_state()
        batch = next(iter(loader), None)
        set_rng_state(generators)
        fallback = ("off" if self.amp_setting == "auto" else self.amp_setting,
                    self.channels_last_setting is True)
        if batch is None:
            return autotune.ProbeResult(fallback, {}, "no training batch to measure"), ""
        options = autotune.candidates(self.device, batch, self.amp_setting,
                                      self.channels_last_setting)
        key = autotune.cache_key(model, batch, self.device, options)
        result, note = autotune.cached(key), " (cached)"
        if result is None:
            result, note = autotune.probe(model, batch, self.task, self.device, options), ""
            autotune.store(key, result)
        if self.compile_setting != "auto" or steps is None:
            return result, note
        result, measured = autotune.add_compile_verdict(result, model, batch, self.task,
                                                        self.device, key, steps)
        return result, "" if measured else note

    def _prepare(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def _build_optimizer(self) -> torch.optim.Optimizer:
        if callable(self.optimizer_spec):
            return self.optimizer_spec([p for p in self.model.parameters() if p.requires_grad])
        return build_optimizer(self.optimizer_spec,
                               param_groups(self.model, self.lr, self.lr_mult), self.lr,
                               momentum=self.momentum, weight_decay=self.weight_decay,
                               nesterov=self.nesterov)

    # ----------------------------------------------------------------- run directory
    def config(self) -> dict[str, Any]:
        """The resolved settings, as written to ``config.json``: the extra entries given to
        the Trainer, the task and its options, and every :class:`TrainerSettings` field."""
        attributes = {"optimizer": "optimizer_spec", "amp": "amp_setting",
                      "channels_last": "channels_last_setting", "compile": "compile_setting"}
        settings = {item.name: getattr(self, attributes.get(item.name, item.name))
                    for item in dataclasses.fields(TrainerSettings)}
        if not isinstance(self.optimizer_spec, str):
            settings["optimizer"] = repr(self.optimizer_spec)
        settings["device"] = str(self.device)
        config = dict(self.extra_config)
        if self.task is not None:
            config["task"] = getattr(self.task, "name", type(self.task).__name__)
            config["task_options"] = self.task.options()
        if self.autotune is not None:
            config["autotune"] = self.autotune.to_dict()
        return {**config, "trainer": settings}

    def _track_best(self, metrics: dict[str, float]) -> None:
        if self.monitor not in metrics:
            raise DivekitError(f"monitor {self.monitor!r} is not a metric of this run; "
                               f"choose from: {', '.join(sorted(metrics))}")
        value, best = metrics[self.monitor], self.best["value"]
        sign = 1 if self.higher_is_better(self.monitor) else -1
        self.improved = best is None or sign * (value - best) > 0
        if self.improved:
            self.best = {"value": value, "epoch": self.epoch}

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue exactly (collective under ``torchrun``:
        every replica's random generators and, inside an epoch, its running sums)."""
        rng = distributed.gather(rng_state())
        meters = distributed.gather(self._meters.state_dict()) if self.step_in_epoch else None
        return {
            "format": CHECKPOINT_FORMAT,
            "model": self.model.state_dict(),
            # The evaluated weights when they are not the trained ones (the weight average).
            **({"ema": self.eval_model.state_dict()} if self.eval_model is not self.model
               else {}),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng,
            "epoch": self.epoch,
            "global_step": self.global_step,
            "step_in_epoch": self.step_in_epoch,
            "meters": meters,
            "history": list(self.history),
            "best": self.best,
            "first_loss": self.first_loss,
            "stop_reason": self.stop_reason,
            "callbacks": {key: callback.state_dict()
                          for key, callback in _keyed(self.callbacks).items()},
            "config": self.config(),
        }

    def load_state_dict(self, state: dict[str, Any], source: Path | None = None) -> None:
        """Continue from :meth:`state_dict` (inside ``fit``, once the model and optimizer exist);
        ``source``, the checkpoint's file, names it when its weights do not fit the model."""
        load_weights_checked(self.model, state["model"], source or Path("the checkpoint"))
        if self.eval_model is not self.model:
            self.eval_model.load_state_dict(inference_weights(state))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"][self.rank])
        self.epoch, self.global_step = state["epoch"], state["global_step"]
        self.step_in_epoch = state.get("step_in_epoch", 0)
        if self.step_in_epoch:
            self._resumed_meters = state["meters"][self.rank]
        self.history = History(state["history"])
        self.best, self.stop_reason = state["best"], state["stop_reason"]
        self.first_loss = state.get("first_loss")  # absent from older checkpoints
        saved = state["callbacks"]
        if isinstance(saved, list):  # checkpoints before callback state was keyed by name
            saved = dict(zip(_keyed(self.callbacks), saved, strict=False))
        for key, callback in _keyed(self.callbacks).items():
            if key in saved:
                callback.load_state_dict(saved[key])

    def _checkpoint_path(self, resume: bool | str | Path) -> Path:
        if resume is True:
            if self.out_dir is None:
                raise DivekitError("resume=True needs out_dir (the run directory to continue)")
            return self.out_dir / "checkpoints" / "last.pt"
        return Path(resume)

    def _checkpoint(self, resume: bool | str | Path) -> dict[str, Any]:
        path = self._checkpoint_path(resume)
        state = load_checkpoint(path, map_location=self.device)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise DivekitError(f"{path} is not a divekit training checkpoint")
        return state


def _keyed(callbacks: Sequence[Callback]) -> dict[str, Callback]:
    """Callbacks by a stable name (class name; ``#2``, ``#3`` for repeats) for checkpoints."""
    keyed: dict[str, Callback] = {}
    for callback in callbacks:
        key = base = getattr(callback, "state_key", type(callback).__name__)
        repeat = 1
        while key in keyed:
            repeat += 1
            key = f"{base}#{repeat}"
        keyed[key] = callback
    return keyed


def _skip(loader, count: int) -> Iterator:
    """Iterate ``loader`` from its ``count``-th batch (a run resumed inside an epoch).

    divekit's loaders start there without reading or augmenting the skipped batches (which
    would draw random numbers); other loaders are read and the batches dropped.
    """
    if count and hasattr(loader, "skip_batches"):
        loader.skip_batches(count)
        return iter(loader)
    return islice(iter(loader), count, None)


def _groups(batches: Iterator, size: int) -> Iterator[list]:
    """Consecutive lists of ``size`` batches (the last may be shorter)."""
    while group := list(islice(batches, size)):
        yield group


def _column_order(item: tuple[str, Any]) -> tuple[int, str]:
    order = ["epoch", "train_loss", "train_acc", "train_ppl", "val_loss", "val_acc", "val_ppl",
             "test_loss", "test_acc", "test_ppl", "lr", "train_time", "examples_per_s"]
    return (order.index(item[0]) if item[0] in order else len(order), item[0])


def _check_number(name: str, value: Any, positive: bool = False) -> None:
    """``value`` is a real number, > 0 when ``positive``, else >= 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (
            value > 0 if positive else value >= 0):
        raise DivekitError(f"{name} must be {'positive' if positive else 'non-negative'}: "
                           f"a number {'> 0' if positive else '>= 0'}, got {value!r}")


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DivekitError(f"{name} must be a positive integer, got {value!r}")
