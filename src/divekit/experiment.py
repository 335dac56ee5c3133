"""A training run described by a plain dict: what ``train``, ``recipe run`` and ``--resume`` share.

The dict is exactly what a run directory's ``config.json`` holds, so any run can be rebuilt
from its folder: the model and data by registry name and options, the Trainer's settings.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from divekit.data import DataModule, load_data, parse_augment
from divekit.engine import History, Task, Trainer, create_task, load_checkpoint, seed_everything
from divekit.engine.checkpoint import inference_weights
from divekit.engine.finetune import apply_finetune
from divekit.errors import DivekitError
from divekit.models import create_model, model_info

RUN_KEYS = ("model", "model_options", "data", "data_options", "data_dir", "batch_size",
            "val_size", "augment", "finetune", "task_options", "trainer")


def default_run_dir(model: str, data: str) -> Path:
    return Path("runs") / f"{model}-{data}-{time.strftime('%Y%m%d-%H%M%S')}"


def build(config: dict[str, Any], data_dir: str | None = None, *,
          pretrained: bool = True) -> tuple[DataModule, nn.Module]:
    """Load the data and create the (seeded) model of a run config.

    A ``finetune`` entry (``weights``, ``skip_weights``, ``freeze``) loads the weights file
    into the fresh model, unless ``pretrained`` is false (a checkpoint is about to replace
    them), and freezes the named parameters, which a checkpoint does not record.
    """
    seed = config["trainer"].get("seed", 0)
    data = load_data(
        config["data"], config["batch_size"], data_dir=data_dir or config.get("data_dir"),
        val_size=config.get("val_size", 0), seed=seed, **config.get("data_options", {}),
    )
    task = model_info(config["model"]).task
    if task != data.task:
        raise DivekitError(f"model {config['model']!r} is a {task} model but dataset "
                           f"{config['data']!r} is {data.task} data; pick a {data.task} model "
                           f"(see `divekit list models`)")
    if config.get("augment"):
        # Unseeded: the augmentations draw from the global generator, which the Trainer seeds
        # and checkpoints, so a resumed run sees the same ones.
        data.transform = parse_augment(config["augment"], num_classes=data.num_classes)
    seed_everything(seed)
    model = create_model(config["model"], data, **config.get("model_options", {}))
    finetune = config.get("finetune") or {}
    if finetune:
        apply_finetune(model, weights=finetune.get("weights") if pretrained else None,
                       skip_weights=finetune.get("skip_weights", ()),
                       freeze_patterns=finetune.get("freeze", ()))
    return data, model


def train(config: dict[str, Any], out_dir: Path, *, resume: bool = False,
          data_dir: str | None = None, progress: bool = True) -> tuple[History, dict[str, float]]:
    """Train the run ``config`` into ``out_dir``; returns the history and final test metrics."""
    config = copy.deepcopy(config)
    # The Trainer checks its settings (device, amp, ...) before any data is read.
    trainer = Trainer(**config["trainer"], task=_task(config), out_dir=out_dir,
                      progress=progress,
                      config={key: config.get(key) for key in RUN_KEYS if key != "trainer"})
    data, model = build(config, data_dir, pretrained=not resume)
    data.device = trainer.device
    history = trainer.fit(model, data, resume=resume)
    test = trainer.evaluate(model, data.test_dataloader(), prefix="test")
    if trainer.rank == 0:
        (out_dir / "test_metrics.json").write_text(json.dumps(test, indent=2) + "\n")
    return history, test


def _task(config: dict[str, Any]) -> Task:
    """The run's task: the model's kind, with the run's task options (label smoothing, ...)."""
    return create_task(model_info(config["model"]).task, **config.get("task_options") or {})


def read_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "config.json"
    if not path.is_file():
        raise DivekitError(f"{run_dir} is not a run directory: it has no config.json")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DivekitError(f"{path} is not valid JSON ({e})") from e
    missing = [key for key in ("model", "data", "batch_size", "trainer") if key not in config]
    if missing:
        raise DivekitError(f"{path} lacks {', '.join(missing)}; it was not written by divekit")
    if "label_smoothing" in config["trainer"]:  # runs written before tasks owned their loss
        smoothing = config["trainer"].pop("label_smoothing")
        config.setdefault("task_options", {}).setdefault("label_smoothing", smoothing)
    return config


def evaluate_run(run_dir: Path, checkpoint: str = "best", data_dir: str | None = None,
                 device: str = "auto") -> dict[str, float]:
    """Test metrics of a finished or interrupted run's ``best`` or ``last`` checkpoint."""
    config = read_config(run_dir)
    config["trainer"]["device"] = device
    trainer = Trainer(**config["trainer"], task=_task(config), progress=False)
    state = load_checkpoint(run_dir / "checkpoints" / f"{checkpoint}.pt")
    data, model = build(config, data_dir, pretrained=False)
    model.load_state_dict(inference_weights(state))
    data.device = trainer.device
    trainer.task.setup(data)
    return trainer.evaluate(model, data.test_dataloader(), prefix="test")


def generate_text(run_dir: Path, prefix: str, num_tokens: int, checkpoint: str = "best",
                  data_dir: str | None = None, seed: int = 0, **sampling) -> str:
    """Continue ``prefix`` with the language model of a run directory.

    Args:
        sampling: ``strategy`` (greedy or sample), ``temperature``, ``top_k``.
    """
    from divekit.text.generate import generate

    config = read_config(run_dir)
    if model_info(config["model"]).task != "language-model":
        raise DivekitError(f"{run_dir} trained {config['model']!r}, which is not a language model")
    state = load_checkpoint(run_dir / "checkpoints" / f"{checkpoint}.pt")
    data, model = build(config, data_dir, pretrained=False)
    model.load_state_dict(inference_weights(state))
    level = config.get("data_options", {}).get("level", "word" if config["data"] == "wikitext-2"
                                               else "char")
    return generate(model, data.vocab, prefix, num_tokens, level=level,
                    generator=torch.Generator().manual_seed(seed), **sampling)
