"""Training runs from a :class:`~divekit.config.RunConfig`: ``train``, ``eval``, ``predict``,
``detect``, ``generate`` and ``--resume`` all rebuild a run from its folder's ``config.json``."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from divekit.config import RunConfig
from divekit.data import DATASETS, DataModule, load_data, parse_augment
from divekit.engine import History, Trainer, create_task, seed_everything
from divekit.engine.checkpoint import inference_weights, load_weights_checked
from divekit.engine.finetune import apply_finetune
from divekit.engine.run_folder import claim, read_checkpoint, reconcile
from divekit.engine.run_lock import RunLock
from divekit.errors import DivekitError
from divekit.models import create_model, model_info


def default_run_dir(model: str, data: str) -> Path:
    return Path("runs") / f"{model}-{data}-{time.strftime('%Y%m%d-%H%M%S')}"


def build(config: RunConfig, data_dir: str | None = None, *,
          pretrained: bool = True) -> tuple[DataModule, nn.Module]:
    """Load the data and create the (seeded) model of a run config.

    The ``finetune`` settings load a weights file into the fresh model, unless ``pretrained``
    is false (a checkpoint is about to replace them), and freeze the named parameters, which a
    checkpoint does not record.
    """
    seed = config.trainer.seed
    data = load_data(config.data, config.batch_size, data_dir=data_dir or config.data_dir,
                     val_size=config.val_size, seed=seed, **config.data_options)
    task = model_info(config.model).task
    if task != data.task:
        raise DivekitError(f"model {config.model!r} is a {task} model but dataset "
                           f"{config.data!r} is {data.task} data; pick a {data.task} model "
                           f"(see `divekit list models`)")
    if config.augment:
        # Unseeded: the augmentations draw from the global generator, which the Trainer seeds
        # and checkpoints, so a resumed run sees the same ones.
        data.transform = parse_augment(config.augment, num_classes=data.num_classes)
    seed_everything(seed)
    model = create_model(config.model, data, **config.model_options)
    finetune = config.finetune
    apply_finetune(model, weights=finetune.weights if pretrained else None,
                   skip_weights=finetune.skip_weights, freeze_patterns=finetune.freeze)
    return data, model


def trainer_for(config: RunConfig, **engine: Any) -> Trainer:
    """The Trainer of a run config, with its task (the model's kind and the task options)."""
    task = create_task(model_info(config.model).task, **config.task_options)
    settings = dataclasses.asdict(config.trainer)
    extra = {key: value for key, value in config.to_dict().items() if key != "trainer"}
    return Trainer(**settings, task=task, config=extra, **engine)


def train(config: RunConfig, out_dir: Path, *, resume: bool = False, overwrite: bool = False,
          data_dir: str | None = None, progress: bool = True) -> tuple[History, dict[str, float]]:
    """Train the run ``config`` into ``out_dir``; returns the history and final test metrics.

    The folder is locked for this process throughout; one holding another run is refused
    unless ``resume`` (continue it) or ``overwrite`` (replace it) is given.
    """
    out_dir = Path(out_dir)
    # The Trainer checks its settings (device, amp, ...) before any data is read.
    trainer = trainer_for(config, out_dir=out_dir, progress=progress)
    made = not out_dir.exists()
    try:
        with RunLock(out_dir) if trainer.rank == 0 else contextlib.nullcontext():
            if trainer.rank == 0:
                claim(out_dir, resume, overwrite)  # before the data is read: a refusal is quick
            data, model = build(config, data_dir, pretrained=not resume)
            data.device = trainer.device
            if trainer.rank == 0:
                data.save_artifacts(out_dir)
            history = trainer.fit(model, data, resume=resume, overwrite=overwrite)
    except BaseException:
        if made:  # a run that failed before writing anything leaves no empty folder behind
            with contextlib.suppress(OSError):
                out_dir.rmdir()  # only ever removes an empty folder
        raise
    return history, trainer.test_metrics


def start_from_run(config: RunConfig, run_dir: Path) -> RunConfig:
    """``config`` set to start from the best weights of the run in ``run_dir`` (fine-tuning a
    pretrained model): its ``checkpoints/best.pt``, its tokenizer (``tokenizer.json``) for data
    that takes one, and, for a model of the same family, its architecture options (for BERT,
    the size of a ``bert-small``/``bert-base``/``bert-large`` run). Options ``config`` already
    sets are kept."""
    run_dir = Path(run_dir)
    weights = run_dir / "checkpoints" / "best.pt"
    if not weights.is_file():
        raise DivekitError(f"{run_dir} is a folder but not a run with a best checkpoint "
                           f"({weights} is missing): give a run folder or a weights file")
    source = RunConfig.read(run_dir)
    config = dataclasses.replace(config, finetune=dataclasses.replace(
        config.finetune, weights=str(weights.resolve())))
    tokenizer = run_dir / "tokenizer.json"
    build_options = inspect.signature(DATASETS[config.data].build).parameters if config.data \
        else {}
    if tokenizer.is_file() and "tokenizer" in build_options:
        config.data_options.setdefault("tokenizer", str(tokenizer.resolve()))
    target, origin = model_info(config.model), model_info(source.model)
    if target.family == origin.family:
        accepted = target.options()
        for key, value in source.model_options.items():
            if key in accepted and key != "vocab_size":
                config.model_options.setdefault(key, value)
        size = source.model.removeprefix(f"{origin.family}-")
        if "size" in accepted and size != source.model:
            config.model_options.setdefault("size", size)
    return config


def load_run(run_dir: Path, checkpoint: str = "best", data_dir: str | None = None,
             device: str = "auto") -> tuple[Trainer, DataModule, nn.Module]:
    """A run's Trainer (settings and task), data and model with the checkpoint's weights
    (the weight average when the run kept one; a ``best.pt`` a kill left stale is read from
    ``last.pt``, see :func:`~divekit.engine.run_folder.read_checkpoint`)."""
    config = RunConfig.read(run_dir)
    # Only evaluating: on this device, every batch, and nothing is written into the run folder.
    config.trainer = dataclasses.replace(config.trainer, device=device, tensorboard=False,
                                         checkpoint_every=None, limit_batches=None,
                                         overfit_batches=None)
    trainer = trainer_for(config, progress=False)
    state, _ = read_checkpoint(Path(run_dir), checkpoint)
    trainer.use_recorded_choice(state)  # evaluate as an ``auto`` run trained
    data, model = build(config, data_dir, pretrained=False)
    load_weights_checked(model, inference_weights(state),
                         Path(run_dir) / "checkpoints" / f"{checkpoint}.pt")
    data.device = trainer.device
    trainer.task.setup(data)
    return trainer, data, model


def evaluate_run(run_dir: Path, checkpoint: str = "best", data_dir: str | None = None,
                 device: str = "auto") -> dict[str, float]:
    """Test metrics of a finished or interrupted run's ``best`` or ``last`` checkpoint (with
    per-class figures where the task has them, e.g. detection's AP per class).

    First the folder is made to agree with its ``last.pt`` (after a kill), unless another
    process is writing it or it cannot be written (a read-only copy): see
    :func:`~divekit.engine.run_folder.reconcile`.
    """
    if (Path(run_dir) / "checkpoints" / "last.pt").is_file():
        try:
            with RunLock(run_dir):
                reconcile(Path(run_dir))
        except (DivekitError, OSError):
            pass  # busy or read-only: the right weights are read all the same (load_run)
    trainer, data, model = load_run(run_dir, checkpoint, data_dir, device)
    if hasattr(trainer.task, "class_metrics"):
        trainer.task.class_metrics = True
    return trainer.evaluate(model, data.test_dataloader(), prefix="test")


def predict_files(run_dir: Path, paths: list[Path], checkpoint: str = "best",
                  data_dir: str | None = None, device: str = "auto",
                  top: int = 3) -> list[str]:
    """The task's answer for each input file: for an image classifier, its most probable
    classes with their probabilities."""
    trainer, data, model = load_run(run_dir, checkpoint, data_dir, device)
    inputs = torch.stack([data.read_input(Path(path)) for path in paths])
    outputs = trainer.predict(model, inputs)
    return trainer.task.describe(outputs, data, top=top)


def predict_table(run_dir: Path, out: Path, paths: list[Path], dataset: str | None = None,
                  checkpoint: str = "best", data_dir: str | None = None,
                  device: str = "auto") -> list[str]:
    """Predictions of a tabular run for the rows of CSV files, or (``dataset``) for the rows
    its data holds without targets (Kaggle's test file), written to ``out`` as ``id,target``
    in the target's own units (the competition's submission format). Returns what to print."""
    from divekit.data.tabular import TabularData, read_table

    trainer, data, model = load_run(run_dir, checkpoint, data_dir, device)
    if not isinstance(data, TabularData):
        raise DivekitError(f"{run_dir} is a {data.task} run on {data.name!r}; predictions to a "
                           f"CSV file are for tabular runs (kaggle-house, csv)")
    tables = [(str(path), read_table(Path(path), "input file")) for path in paths]
    if dataset is not None:
        if dataset != data.name:
            raise DivekitError(f"{run_dir} was trained on {data.name!r}, not {dataset!r}; give "
                               f"--data {data.name} or CSV files of its columns")
        if data.unlabelled is None:
            raise DivekitError(f"dataset {data.name!r} has no rows without targets to predict; "
                               f"give CSV files instead")
        tables.insert(0, (f"{data.name}'s test rows", data.unlabelled))
    if not tables:
        raise DivekitError("give CSV files of rows to predict, or --data DATASET for the "
                           "dataset's own rows without targets")
    import pandas as pd

    frame = pd.concat([table for _, table in tables], ignore_index=True)
    inputs = torch.cat([data.inputs_of(table, source) for source, table in tables])
    path = data.write_predictions(frame, trainer.predict(model, inputs), Path(out))
    return [f"wrote {len(frame)} predictions of {data.target} ({data.id_column or 'row'},"
            f"{data.target}) from {', '.join(source for source, _ in tables)} to {path}"]


def generate_text(run_dir: Path, prefix: str, num_tokens: int, checkpoint: str = "best",
                  data_dir: str | None = None, seed: int = 0, **sampling) -> str:
    """Continue ``prefix`` with the language model of a run directory.

    Args:
        sampling: ``strategy`` (greedy or sample), ``temperature``, ``top_k``.
    """
    from divekit.text.generate import generate

    config = RunConfig.read(run_dir)
    if model_info(config.model).task != "language-model":
        raise DivekitError(f"{run_dir} trained {config.model!r}, which is not a language model")
    _, data, model = load_run(run_dir, checkpoint, data_dir)
    level = config.data_options.get("level", "word" if config.data == "wikitext-2" else "char")
    return generate(model, data.vocab, prefix, num_tokens, level=level,
                    generator=torch.Generator().manual_seed(seed), **sampling)


@dataclass
class Encoding:
    """One text as a BERT model reads it: its tokens (with ``<cls>``/``<sep>``) and the
    encoder's feature vector of each, ``(tokens, hidden)``."""

    tokens: list[str]
    features: torch.Tensor


def bert_encode(run_dir: Path, texts: list[str], checkpoint: str = "best",
                data_dir: str | None = None, device: str = "auto") -> list[Encoding]:
    """The per-token features of each text (a sentence, or a pair written ``first ||| second``)
    from the BERT encoder of a run directory (d2l 15.8: the same word gets a different vector
    in each context)."""
    config = RunConfig.read(run_dir)
    if model_info(config.model).family != "bert":
        raise DivekitError(f"{run_dir} trained {config.model!r}, which is not a BERT model")
    trainer, data, model = load_run(run_dir, checkpoint, data_dir, device)
    model = trainer._prepare(model).eval()
    results = []
    for text in texts:
        first, _, second = (part.strip() for part in text.partition("|||"))
        if not first:
            raise DivekitError(f"nothing to encode in {text!r}")
        encoded = data.tokenizer.encode(first, second or None, max_len=data.max_len)
        inputs = (torch.tensor([encoded.ids], device=trainer.device),
                  torch.tensor([encoded.segments], device=trainer.device),
                  torch.tensor([len(encoded.ids)], device=trainer.device))
        with torch.no_grad():
            features = model.encode(*inputs)[0].float().cpu()
        results.append(Encoding(data.tokenizer.to_tokens(encoded.ids), features))
    return results


@dataclass
class Translation:
    """One translated sentence: the words the model read (unknown ones as ``<unk>``), its
    translation, the source words it did not know, and the attention of each output token over
    the source tokens (``(output tokens + <eos>, source tokens + <eos>)``) when the model has
    cross-attention."""

    source: list[str]
    text: str
    unknown: list[str]
    attention: torch.Tensor | None = None


def translate(run_dir: Path, sentences: list[str], checkpoint: str = "best",
              data_dir: str | None = None, device: str = "auto",
              num_beams: int | None = None) -> list[Translation]:
    """Translate sentences with the encoder-decoder of a run directory.

    Args:
        sentences: raw text; the course's preprocessing is applied (lower case, spaced
            punctuation).
        num_beams: beam width (default: the run's task setting; 1 = greedy).
    """
    from divekit.text.tokenize import preprocess_nmt

    config = RunConfig.read(run_dir)
    if model_info(config.model).task != "translation":
        raise DivekitError(f"{run_dir} trained {config.model!r}, which is not a translation "
                           "model (see `divekit list models`)")
    trainer, data, model = load_run(run_dir, checkpoint, data_dir, device)
    task = trainer.task
    if num_beams is not None:
        task.num_beams = num_beams
    vocab, longest = data.src_vocab, data.input_shape[0]
    results = []
    model = trainer._prepare(model).eval()
    for sentence in sentences:
        words = preprocess_nmt(sentence).split()
        if not words:
            raise DivekitError("the sentence to translate is empty")
        if len(words) + 1 > longest:
            raise DivekitError(f"the sentence has {len(words)} words; this model was trained "
                               f"on sentences of at most {longest - 1}: split it")
        ids = vocab[words] + [vocab["<eos>"]]
        src = torch.tensor([ids], device=trainer.device)
        src_len = torch.tensor([len(ids)], device=trainer.device)
        with torch.no_grad():
            tokens = task.decode(model, src, src_len)[0]
            attention = _attention(model, src, src_len, task.specials, tokens)
        results.append(Translation(vocab.to_tokens(ids[:-1]), task.detokenize(tokens),
                                   [w for w in words if w not in vocab], attention))
    return results


def _attention(model: nn.Module, src: torch.Tensor, src_len: torch.Tensor,
               specials: dict[str, int], tokens: list[int]) -> torch.Tensor | None:
    """The cross-attention of each step while the model reads back its own translation."""
    state = model.encode(src, src_len)
    inputs = [specials["bos"], *tokens]
    rows = []
    for token in inputs:
        _, state = model.step(torch.tensor([token], device=src.device), state)
        if "attention" not in state:
            return None
        rows.append(state["attention"][0].float().cpu())
    return torch.stack(rows)


def detect_files(run_dir: Path, paths: list[Path], out: Path, checkpoint: str = "best",
                 data_dir: str | None = None, device: str = "auto",
                 min_score: float = 0.5) -> list[str]:
    """Detect objects in image files with a detection run and draw them (14.7).

    Each image is resized to the model's square input as in training; the boxes are scaled
    back to the original image and drawn on it with labels and scores (and the masks of a
    Mask R-CNN run), detections scoring at least ``min_score``.

    Args:
        out: the PNG to write for one input; for several, a folder that receives
            ``<name>.png`` for each.

    Returns:
        One line per image: its detections, best first.
    """
    from PIL import Image

    from divekit.vision.draw import draw_detections, save_image

    trainer, data, model = load_run(run_dir, checkpoint, data_dir, device)
    if data.task != "detection":
        raise DivekitError(f"{run_dir} is a {data.task} run; `divekit detect` needs a detection "
                           f"run (use `divekit predict` for it)")
    outputs = trainer.predict(model, torch.stack([data.read_input(Path(p)) for p in paths]))
    size = data.input_shape[-1]
    lines = []
    for path, detection in zip(paths, outputs, strict=True):
        keep = detection["scores"] >= min_score
        found = {key: value[keep] for key, value in detection.items()}
        with Image.open(path) as image:
            original = torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)
        height, width = original.shape[1:]
        boxes = found["boxes"] * torch.tensor([width / size, height / size] * 2)
        masks = found.get("masks")
        if masks is not None:  # pasted at the model's size, stretched back like the image
            masks = F.interpolate(masks[:, None].float(), size=(height, width), mode="bilinear",
                                  align_corners=False)[:, 0]
        picture = draw_detections(original, boxes, found["labels"], found["scores"], masks,
                                  class_names=data.class_names)
        target = out / f"{Path(path).stem}.png" if len(paths) > 1 else out
        save_image(picture, target)
        lines.append(trainer.task.describe([dict(found, boxes=boxes)], data, top=len(boxes))[0]
                     + f" -> {target}")
    return lines


def segment_files(run_dir: Path, paths: list[Path], out: Path, checkpoint: str = "best",
                  data_dir: str | None = None, device: str = "auto") -> list[str]:
    """Label every pixel of image files with a segmentation run and draw the classes (14.9).

    Each image is resized to the model's input size as in training; the class map is scaled
    back (nearest pixel) and drawn over the original image in the VOC palette, background
    left clear, with a legend of the classes found.

    Args:
        out: the PNG to write for one input; for several, a folder that receives
            ``<name>.png`` for each.

    Returns:
        One line per image: the classes covering most of it.
    """
    from PIL import Image

    from divekit.data.folder import to_tensor
    from divekit.data.segmentation import VOC_COLORMAP, read_image
    from divekit.vision.draw import draw_segmentation, save_image

    trainer, data, model = load_run(run_dir, checkpoint, data_dir, device)
    if data.task != "segmentation":
        raise DivekitError(f"{run_dir} is a {data.task} run; `divekit segment` needs a "
                           f"segmentation run (train one with --data scenes-segmentation)")
    height, width = data.input_shape[-2:]
    originals = [read_image(Path(p)) for p in paths]
    inputs = torch.stack([to_tensor(np.asarray(Image.fromarray(pixels).resize(
        (width, height), Image.Resampling.BILINEAR))) for pixels in originals])
    maps = trainer.predict(model, inputs)
    colors = [tuple(c) for c in getattr(data, "colormap", VOC_COLORMAP).tolist()]
    lines = []
    for path, pixels, labels in zip(paths, originals, maps, strict=True):
        labels = F.interpolate(labels[None, None].float(), size=pixels.shape[:2],
                               mode="nearest")[0, 0].long()
        picture = draw_segmentation(pixels, labels, colors, data.class_names)
        target = out / f"{Path(path).stem}.png" if len(paths) > 1 else out
        save_image(picture, target)
        lines.append(f"{trainer.task.describe(labels[None], data)[0]} -> {target}")
    return lines
