"""The training engine: ``Trainer(...).fit(model, data)`` with exact resume.

One loop serves every model of the course. Classifiers return logits (cross-entropy, accuracy);
regression models return predictions (squared loss); models with ``returns_loss = True``
(language models, the from-scratch models) return ``(logits, loss)`` when given targets.
Metrics are sums over examples divided by the example count, never a mean of per-batch means,
and stay on the device until the end of the epoch.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from divekit.engine import distributed
from divekit.engine.callbacks import Callback, EarlyStopping
from divekit.engine.checkpoint import (
    inference_weights,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from divekit.engine.device import autocast, select_device
from divekit.engine.finetune import param_groups
from divekit.engine.history import History
from divekit.engine.plots import plot_history
from divekit.engine.progress import ProgressReporter
from divekit.errors import DivekitError
from divekit.optim import build_optimizer, build_scheduler

CHECKPOINT_FORMAT = 1


class TrainingDiverged(DivekitError):
    """The loss became NaN or infinite."""


class Trainer:
    """Fit, evaluate and predict with one set of engine settings.

    Args:
        max_epochs: passes over the training set.
        lr: peak learning rate.
        lr_mult: ``{pattern: multiplier}`` over parameter names: matched parameters train at
            ``lr * multiplier`` under every schedule, e.g. ``{"fc.*": 10}`` for a new head
            when fine-tuning (see :func:`divekit.engine.finetune.param_groups`). Frozen
            parameters (``requires_grad=False``) are left out of the optimizer.
        optimizer: ``sgd``, ``adam``, ``adamw``, ``rmsprop``, ``adagrad``, or a callable
            ``params -> torch.optim.Optimizer``.
        momentum, weight_decay, nesterov: optimizer hyperparameters.
        schedule: ``constant``, ``cosine``, ``onecycle`` or ``step``, stepped per optimizer step.
        warmup_epochs: linear warm-up length (may be fractional).
        grad_clip: clip the global gradient norm to this value.
        accumulate: optimizer step every ``accumulate`` batches; the gradient equals that of
            one batch ``accumulate`` times as large.
        label_smoothing: for the classification loss.
        loss_fn: ``(outputs, targets) -> mean loss``; default from the data's task.
        ema: keep an exponential moving average of the weights with this decay (e.g. 0.99,
            0.999): after each optimizer step ``avg = d * avg + (1 - d) * weights`` with
            ``d = min(ema, (1 + step) / (10 + step))``, so the first steps do not drag the
            average back to the initial weights. Evaluation, the best checkpoint and the
            weights ``fit`` leaves in the model are the average's; checkpoints keep the raw
            weights too, for exact resume. ``0`` or ``None``: no average. Averaging removes
            the epoch-to-epoch noise of SGD at a high constant learning rate (Polyak &
            Juditsky 1992).
        early_stopping: stop after this many epochs without improvement of ``monitor``.
        monitor: metric that picks the best checkpoint (default: evaluation accuracy, or
            evaluation loss for regression).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        amp: ``off``, ``bf16`` or ``fp16`` autocast.
        channels_last: store conv weights and image batches NHWC (faster conv kernels).
        compile: wrap the model in ``torch.compile``.
        seed: seeds every generator at the start of ``fit``.
        out_dir: run directory for config, metrics, plots and checkpoints; ``None`` writes nothing.
        progress: show progress (a bar on a terminal, one line per epoch otherwise).
        callbacks: extra :class:`Callback` objects.
        config: extra entries recorded in ``config.json`` (the CLI stores model and data here).
        nan_check_every: check the running loss for NaN/inf every this many steps.
    """

    def __init__(
        self,
        max_epochs: int = 10,
        lr: float = 0.1,
        optimizer: str | Callable[[Iterable], torch.optim.Optimizer] = "sgd",
        *,
        lr_mult: dict[str, float] | None = None,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        schedule: str = "constant",
        warmup_epochs: float = 0.0,
        grad_clip: float | None = None,
        accumulate: int = 1,
        label_smoothing: float = 0.0,
        loss_fn: Callable[[Any, torch.Tensor], torch.Tensor] | None = None,
        ema: float | None = None,
        early_stopping: int | None = None,
        monitor: str | None = None,
        device: str = "auto",
        amp: str = "off",
        channels_last: bool = False,
        compile: bool = False,
        seed: int = 0,
        out_dir: str | Path | None = None,
        progress: bool = True,
        callbacks: Sequence[Callback] = (),
        config: dict[str, Any] | None = None,
        nan_check_every: int = 50,
    ) -> None:
        _check_positive_int("max_epochs", max_epochs)
        _check_positive_int("accumulate", accumulate)
        if grad_clip is not None and not grad_clip > 0:
            raise DivekitError(f"grad_clip must be positive, got {grad_clip}")
        if ema is not None and not 0 <= ema < 1:
            raise DivekitError(f"ema is the decay of the weight average and must be in [0, 1), "
                               f"e.g. 0.99 or 0.999 (0 = no average); got {ema}")
        self.max_epochs, self.lr, self.optimizer_spec = max_epochs, lr, optimizer
        self.ema = ema or None  # a decay of 0 averages nothing: the weights themselves
        if lr_mult and callable(optimizer):
            raise DivekitError("lr_mult needs a named optimizer; build a callable's parameter "
                               "groups with divekit.engine.finetune.param_groups instead")
        self.lr_mult = dict(lr_mult) if lr_mult else None
        self.momentum, self.weight_decay, self.nesterov = momentum, weight_decay, nesterov
        self.schedule, self.warmup_epochs = schedule, warmup_epochs
        self.grad_clip, self.accumulate = grad_clip, accumulate
        self.label_smoothing = label_smoothing
        self.loss_fn, self.monitor = loss_fn, monitor
        self.device = distributed.join(select_device(device))
        self.rank, self.world_size = distributed.world()
        autocast(self.device, amp)  # validates amp for this device now, not mid-run
        self.amp, self.channels_last, self.compile = amp, channels_last, compile
        self.seed = seed
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.callbacks: list[Callback] = list(callbacks)
        if early_stopping:
            self.callbacks.append(EarlyStopping(patience=early_stopping))
        if progress and self.rank == 0:
            self.callbacks.append(ProgressReporter())
        self.extra_config = dict(config or {})
        self.nan_check_every = nan_check_every
        self.history = History()
        self.task = "classification"
        self.epoch = 0
        self.global_step = 0
        self.stop_reason: str | None = None

    # ----------------------------------------------------------------- public API
    def fit(self, model: nn.Module, data, resume: bool | str | Path = False) -> History:
        """Train ``model`` on ``data`` (a ``DataModule``); returns the per-epoch history.

        Args:
            resume: ``True`` continues from ``out_dir/checkpoints/last.pt``; a path continues
                from that checkpoint. The result equals an uninterrupted run's.
        """
        self.task = getattr(data, "task", "classification")
        self.model = self._prepare(model)
        self.forward = self.model
        self.ema_model = None
        if self.ema is not None:
            self.ema_model = copy.deepcopy(self.model).requires_grad_(False).eval()
            # Each shared (tied) tensor once: parameters() and buffers() skip repeats.
            self._ema_pairs = [
                (average.data, current.data) for average, current in zip(
                    [*self.ema_model.parameters(), *self.ema_model.buffers()],
                    [*self.model.parameters(), *self.model.buffers()], strict=True)]
        if self.world_size > 1:
            self.forward = nn.parallel.DistributedDataParallel(self.model)
        if self.compile:
            self.forward = torch.compile(self.forward)
        self.train_loader = self._shard(data.train_dataloader())
        eval_loader = data.val_dataloader()
        self.eval_split = "val" if eval_loader is not None else "test"
        if eval_loader is None:
            eval_loader = data.test_dataloader()
        self.monitor = self.monitor or (
            f"{self.eval_split}_acc" if self.task == "classification" else f"{self.eval_split}_loss"
        )
        self.steps_per_epoch = math.ceil(len(self.train_loader) / self.accumulate)
        self.optimizer = self._build_optimizer()
        warmup_steps = round(self.warmup_epochs * self.steps_per_epoch)
        self.scheduler = build_scheduler(self.schedule, self.optimizer,
                                         self.max_epochs * self.steps_per_epoch,
                                         warmup_steps=warmup_steps)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == "fp16")
        self.history, self.epoch, self.global_step, self.stop_reason = History(), 0, 0, None
        self.best = {"value": None, "epoch": None}
        if resume:
            self._restore(resume)
        else:
            seed_everything(self.seed + self.rank)  # other dropout masks on every replica
            self._write_config(data)
        for callback in self.callbacks:
            callback.on_fit_start(self)
        try:
            while self.epoch < self.max_epochs and self.stop_reason is None:
                metrics = self._train_epoch()
                evaluated = self.model if self.ema_model is None else self.ema_model
                metrics.update(self.evaluate(evaluated, eval_loader, prefix=self.eval_split))
                self.epoch += 1
                metrics["epoch"] = self.epoch
                self.history.append(dict(sorted(metrics.items(), key=_column_order)))
                for callback in self.callbacks:
                    callback.on_epoch_end(self, metrics)
                self._save(metrics)
        finally:
            # Drawn once, also when the run stops early or fails: a plot costs ~0.5 s.
            if self.out_dir is not None and self.history and self.rank == 0:
                plot_history(self.history, self.out_dir / "curves.png")
        if self.ema_model is not None:
            self.model.load_state_dict(self.ema_model.state_dict())
        for callback in self.callbacks:
            callback.on_fit_end(self)
        if self.stop_reason:
            print(self.stop_reason, flush=True)
        return self.history

    def stop(self, reason: str) -> None:
        """Ask ``fit`` to stop after the current epoch (used by callbacks)."""
        self.stop_reason = reason

    @torch.no_grad()
    def evaluate(
        self, model: nn.Module, loader: Iterable, prefix: str = "test", task: str | None = None
    ) -> dict[str, float]:
        """Loss (and accuracy for classifiers) over every example of ``loader``.

        Args:
            task: ``classification``, ``regression`` or ``language-model``; default: the task
                of the data last passed to ``fit``, else classification.
        """
        self.task = task or self.task
        model = self._prepare(model)
        was_training = model.training
        model.eval()
        sums = _Sums(self.device)
        for batch in self._shard(loader):
            with autocast(self.device, self.amp):
                loss, outputs, targets = self._loss(model, batch)
            sums.add(loss, outputs, targets, self.task)
        model.train(was_training)
        return sums.metrics(prefix, self.task)

    @torch.no_grad()
    def predict(self, model: nn.Module, inputs: torch.Tensor | Iterable) -> torch.Tensor:
        """Model outputs for a tensor of inputs or a loader of ``(inputs, ...)`` batches."""
        model = self._prepare(model)
        was_training = model.training
        model.eval()
        batches = inputs.split(1024) if isinstance(inputs, torch.Tensor) else (b[0] for b in inputs)
        outputs = []
        for x in batches:
            with autocast(self.device, self.amp):
                out = model(self._to_device(x))
            outputs.append((out[0] if isinstance(out, tuple) else out).float().cpu())
        model.train(was_training)
        return torch.cat(outputs)

    def running_loss(self) -> float:
        """This process's mean training loss of the epoch so far (synchronises the device)."""
        return self._sums.loss.item() / max(self._sums.count, 1)

    # ----------------------------------------------------------------- the loop
    def _train_epoch(self) -> dict[str, float]:
        self.model.train()
        self.train_loader.set_epoch(self.epoch)
        for callback in self.callbacks:
            callback.on_epoch_start(self)
        self._sums = _Sums(self.device)
        start = time.perf_counter()
        for step, group in enumerate(_groups(iter(self.train_loader), self.accumulate), 1):
            total = sum(batch[-1].numel() for batch in group)
            for batch in group:
                with autocast(self.device, self.amp):
                    loss, outputs, targets = self._loss(self.forward, batch)
                self._sums.add(loss.detach(), outputs, targets, self.task)
                self.scaler.scale(loss * (targets.numel() / total)).backward()
            if self.grad_clip is not None:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            self.global_step += 1
            if self.ema_model is not None:
                self._update_ema()
            if step % self.nan_check_every == 0:
                self._check_finite()
            for callback in self.callbacks:
                callback.on_step_end(self)
        self._check_finite()
        seconds = time.perf_counter() - start
        metrics = self._sums.metrics("train", self.task)
        metrics["lr"] = self.optimizer.param_groups[0]["lr"]
        metrics["train_time"] = seconds
        metrics["examples_per_s"] = self._sums.count * self.world_size / max(seconds, 1e-9)
        return metrics

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = min(self.ema, self.global_step / (self.global_step + 9))
        for average, current in self._ema_pairs:
            if average.is_floating_point():
                average.lerp_(current, 1 - decay)
            else:  # counters such as BatchNorm's num_batches_tracked
                average.copy_(current)

    def _loss(self, model, batch) -> tuple[torch.Tensor, Any, torch.Tensor]:
        inputs, targets = self._to_device(batch[0]), batch[-1].to(self.device, non_blocking=True)
        if self.loss_fn is None and _returns_loss(model):
            outputs, loss = model(inputs, targets)
            return loss, outputs, targets
        outputs = model(inputs)
        loss_fn = self.loss_fn or self._default_loss
        return loss_fn(outputs, targets), outputs, targets

    def _default_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.task == "regression":
            return F.mse_loss(outputs.float(), targets.reshape(outputs.shape).float())
        return F.cross_entropy(outputs.float(), targets, label_smoothing=self.label_smoothing)

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _shard(self, loader):
        """This process's share of ``loader`` under ``torchrun``; the loader itself otherwise."""
        if self.world_size > 1:
            if not hasattr(loader, "shard"):
                raise DivekitError("distributed training needs loaders with a shard(rank, "
                                   "world_size) method, such as divekit's TensorLoader")
            loader = loader.shard(self.rank, self.world_size)
        return loader

    def _check_finite(self) -> None:
        if not self._sums.finite():
            where = self.out_dir / "checkpoints" / "last.pt" if self.out_dir else None
            kept = f" The last good checkpoint is {where}." if where and where.exists() else ""
            raise TrainingDiverged(
                f"training loss became {self.running_loss()} in epoch {self.epoch + 1} "
                f"(step {self.global_step}); lower the learning rate (now "
                f"{self.optimizer.param_groups[0]['lr']:.3g}), set a gradient clip, or check "
                f"the data for NaN/inf.{kept}"
            )

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
        """The resolved settings, as written to ``config.json``."""
        settings = {
            key: getattr(self, key) for key in (
                "max_epochs", "lr", "lr_mult", "momentum", "weight_decay", "nesterov", "schedule",
                "warmup_epochs", "grad_clip", "accumulate", "label_smoothing", "ema", "monitor",
                "amp", "channels_last", "compile", "seed",
            )
        }
        settings["optimizer"] = self.optimizer_spec if isinstance(self.optimizer_spec, str) \
            else repr(self.optimizer_spec)
        settings["device"] = str(self.device)
        return {**self.extra_config, "trainer": settings}

    def _write_config(self, data) -> None:
        if self.out_dir is None or self.rank != 0:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        config = self.config()
        config["data_summary"] = repr(data)
        (self.out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    def _save(self, metrics: dict[str, float]) -> None:
        if self.monitor not in metrics:
            raise DivekitError(f"monitor {self.monitor!r} is not a metric of this run; "
                               f"choose from: {', '.join(sorted(metrics))}")
        value, best = metrics[self.monitor], self.best["value"]
        better = best is None or (value > best if self.monitor.endswith("acc") else value < best)
        if better:
            self.best = {"value": value, "epoch": self.epoch}
        if self.out_dir is None:
            return
        rng = distributed.gather(rng_state())  # every replica's generators, for exact resume
        if self.rank != 0:
            distributed.barrier()
            return
        state = {
            "format": CHECKPOINT_FORMAT,
            "model": self.model.state_dict(),
            **({"ema": self.ema_model.state_dict()} if self.ema_model is not None else {}),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng,
            "epoch": self.epoch,
            "global_step": self.global_step,
            "history": list(self.history),
            "best": self.best,
            "stop_reason": self.stop_reason,
            "callbacks": [callback.state_dict() for callback in self.callbacks],
            "config": self.config(),
        }
        folder = self.out_dir / "checkpoints"
        save_checkpoint(state, folder / "last.pt")
        if better:
            save_checkpoint(state, folder / "best.pt")
        self.history.write(self.out_dir)
        distributed.barrier()

    def _restore(self, resume: bool | str | Path) -> None:
        if resume is True:
            if self.out_dir is None:
                raise DivekitError("resume=True needs out_dir (the run directory to continue)")
            path = self.out_dir / "checkpoints" / "last.pt"
        else:
            path = Path(resume)
        state = load_checkpoint(path, map_location=self.device)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise DivekitError(f"{path} is not a divekit training checkpoint")
        self.model.load_state_dict(state["model"])
        if self.ema_model is not None:
            self.ema_model.load_state_dict(inference_weights(state))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"][self.rank])
        self.epoch, self.global_step = state["epoch"], state["global_step"]
        self.history = History(state["history"])
        self.best, self.stop_reason = state["best"], state["stop_reason"]
        for callback, callback_state in zip(self.callbacks, state["callbacks"], strict=False):
            callback.load_state_dict(callback_state)


class _Sums:
    """Loss and correct-prediction sums kept on the device; the example count in Python."""

    def __init__(self, device: torch.device) -> None:
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.count = 0

    def add(self, loss: torch.Tensor, outputs, targets: torch.Tensor, task: str) -> None:
        if task == "classification" and targets.is_floating_point():  # soft labels (mixup)
            targets = targets.argmax(-1)
        count = targets.numel()
        self.loss += loss.detach().double() * count
        if task != "regression":
            self.correct += (outputs.argmax(-1) == targets).sum()
        self.count += count

    def totals(self) -> tuple[float, float, float]:
        """Loss sum, correct count and example count over all processes."""
        values = torch.stack([self.loss, self.correct.double(),
                              torch.tensor(float(self.count), device=self.loss.device,
                                           dtype=torch.float64)])
        loss, correct, count = distributed.all_reduce_sum(values).tolist()
        return loss, correct, max(count, 1)

    def finite(self) -> bool:
        return math.isfinite(self.totals()[0])

    def metrics(self, prefix: str, task: str) -> dict[str, float]:
        loss_sum, correct, count = self.totals()
        loss = loss_sum / count
        metrics = {f"{prefix}_loss": loss}
        if task == "classification":
            metrics[f"{prefix}_acc"] = correct / count
        elif task == "language-model":
            metrics[f"{prefix}_ppl"] = math.exp(min(loss, 50.0))
        return metrics


def _returns_loss(model: nn.Module) -> bool:
    """Whether ``model(x, targets)`` returns ``(outputs, loss)``; looks through a DDP wrapper."""
    return getattr(getattr(model, "module", model), "returns_loss", False)


def _groups(batches: Iterator, size: int) -> Iterator[list]:
    """Consecutive lists of ``size`` batches (the last may be shorter)."""
    while group := list(islice(batches, size)):
        yield group


def _column_order(item: tuple[str, Any]) -> tuple[int, str]:
    order = ["epoch", "train_loss", "train_acc", "train_ppl", "val_loss", "val_acc", "val_ppl",
             "test_loss", "test_acc", "test_ppl", "lr", "train_time", "examples_per_s"]
    return (order.index(item[0]) if item[0] in order else len(order), item[0])


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DivekitError(f"{name} must be a positive integer, got {value!r}")
