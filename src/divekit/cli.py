"""The ``divekit`` command: list, train, eval and recipe subcommands."""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from divekit import experiment
from divekit.config import RunConfig
from divekit.data import DATASETS, load_data, show_batch
from divekit.data.augment import AUGMENT_GRAMMAR
from divekit.data.registry import check_val_size
from divekit.engine import distributed
from divekit.engine.device import AMP_SETTINGS
from divekit.engine.run_folder import read_checkpoint
from divekit.engine.signals import Interrupted, TrainingInterrupted, sigterm_as_interrupt
from divekit.errors import DivekitError
from divekit.models import MODELS, summary_for
from divekit.optim import OPTIMIZERS, SCHEDULES
from divekit.recipes import RECIPES

# Every Trainer setting has a flag of the same name (--epochs sets max_epochs; --lr-mult
# PATTERN=X pairs build lr_mult); a test keeps the two lists equal.
FLAG_FOR_SETTING = {"max_epochs": "epochs"}


class _Parser(argparse.ArgumentParser):
    """Reports a bad command line as one line (plus a pointer to --help), exit status 2."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError
    return value


_positive_int.__name__ = "positive integer"


def _switch_or_auto(text: str) -> bool | str:
    choices = {"on": True, "off": False, "auto": "auto"}
    if text not in choices:
        raise ValueError
    return choices[text]


_switch_or_auto.__name__ = "setting (on, off or auto)"


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError
    return value


_positive_float.__name__ = "positive number"


def _val_size(text: str) -> float | int:
    """A count (``500``) or a fraction (``0.1``), by the rule ``load_data`` applies."""
    try:
        value = int(text)
    except ValueError:
        value = float(text)
    try:
        check_val_size(value)
    except DivekitError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value


_val_size.__name__ = "number"


def _run_dir(text: str) -> Path:
    """A run directory: a folder, or a path where one can be made."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a run directory; give a "
                                         "folder (new, or a run to resume)")
    return path


def _option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE read as JSON where it parses (``8``, ``0.5``, ``true``,
    ``[16, 32]``) and as a string otherwise (``path=my.txt``)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.isidentifier():
        raise ValueError
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


_option.__name__ = "KEY=VALUE option"


def _lr_mult(text: str) -> tuple[str, float]:
    pattern, sep, value = text.rpartition("=")
    if not sep or not pattern:
        raise ValueError
    return pattern, _positive_float(value)


_lr_mult.__name__ = "PATTERN=MULTIPLIER"


def _shape(text: str) -> tuple[int, ...]:
    """``3x224x224`` -> ``(3, 224, 224)``."""
    return tuple(_positive_int(part) for part in text.lower().split("x"))


_shape.__name__ = "shape like 3x224x224"


def _depth(text: str) -> int | None:
    return None if text == "all" else _positive_int(text)


_depth.__name__ = "depth (a positive integer or 'all')"


def _add_run_flags(parser: argparse.ArgumentParser) -> None:
    """Flags shared by `train` and `recipe run`; unset ones keep the recipe's values."""
    add = parser.add_argument
    add("--data", help=f"dataset: {', '.join(DATASETS.names())}")
    add("-D", "--data-option", type=_option, action="append", metavar="KEY=VALUE",
        help="dataset option, e.g. -D normalize=true -D path=notes.txt (repeatable)")
    add("-M", "--model-option", type=_option, action="append", metavar="KEY=VALUE",
        help="model option, e.g. -M num_hiddens=256 -M 'widths=[32,64]' (repeatable)")
    add("-T", "--task-option", type=_option, action="append", metavar="KEY=VALUE",
        help="task option, e.g. -T num_beams=4 for translation (repeatable)")
    add("--data-dir", help="folder with one sub-folder per dataset (default $DIVEKIT_DATA, "
                           "then ~/.cache/divekit)")
    add("--epochs", type=_positive_int, help="passes over the training set")
    add("--max-steps", type=_positive_int, help="stop after this many optimizer steps")
    add("--lr", type=_positive_float, help="(peak) learning rate")
    add("--batch-size", type=_positive_int, help="examples per batch")
    add("--optimizer", choices=OPTIMIZERS, metavar="NAME", help=f"one of {', '.join(OPTIMIZERS)}")
    add("--momentum", type=float)
    add("--nesterov", action="store_true", default=None, help="Nesterov momentum (SGD)")
    add("--weight-decay", type=float)
    add("--schedule", choices=SCHEDULES, metavar="NAME", help=f"one of {', '.join(SCHEDULES)}")
    add("--warmup-epochs", type=float, help="linear warm-up length in epochs")
    add("--grad-clip", type=_positive_float, help="clip the global gradient norm")
    add("--stop-on-divergence", action="store_true", default=None,
        help="stop (keeping the last good checkpoint) when the training loss grows past 100x "
             "its first step's; otherwise only a warning")
    add("--accumulate", type=_positive_int, help="batches per optimizer step")
    add("--label-smoothing", type=float)
    add("--ema", type=float, metavar="DECAY", help="evaluate and keep a moving average of the "
        "weights, e.g. 0.99 (smooths the noise of a high constant learning rate); 0 = none")
    add("--limit-batches", type=_positive_int, metavar="N",
        help="train and evaluate on only the first N batches of every epoch (a smoke run)")
    add("--overfit-batches", type=_positive_int, metavar="N",
        help="train on the same N batches every epoch and evaluate on them: a model that "
             "cannot overfit them has a bug")
    add("--early-stopping", type=_positive_int, metavar="PATIENCE",
        help="stop after this many epochs without improvement")
    add("--monitor", metavar="METRIC", help="the metric that picks the best checkpoint, e.g. "
        "acc, loss or val_ppl (default: the task's)")
    add("--mode", choices=["max", "min"], help="whether a larger --monitor is better (default: "
        "the metric's own direction)")
    add("--augment", metavar="SPEC", help="augment training batches, e.g. "
        "'flip,crop=0.5,jitter=0.4,erase,mixup=0.2' (see `divekit show-batch --help`)")
    add("--weights", metavar="FILE_OR_RUN", help="start from these weights (.safetensors, a "
        "state dict, a divekit checkpoint, or a run folder: its best checkpoint, tokenizer and "
        "model size); fine-tuning")
    add("--skip-weights", action="append", metavar="PATTERN",
        help="parameter names not to load from --weights, e.g. 'fc.*' (repeatable)")
    add("--freeze", action="append", metavar="PATTERN",
        help="freeze parameters by name, e.g. 'layer[12].*' (repeatable)")
    add("--lr-mult", type=_lr_mult, action="append", metavar="PATTERN=X",
        help="learning rate x X for matching parameters, e.g. 'fc.*=10' (repeatable)")
    add("--val-size", type=_val_size, help="hold out this fraction (or count) of training data")
    add("--seed", type=int)
    add("--device", help="auto (default), cpu, cuda, cuda:N or mps")
    add("--amp", choices=AMP_SETTINGS, metavar="MODE",
        help=f"autocast: {', '.join(AMP_SETTINGS)} (auto: time each on the first batch, keep "
             "fp32 unless another is >10%% faster; also picks the memory format and whether "
             "to compile unless --channels-last or --compile is given)")
    add("--channels-last", action="store_true", default=None, help="NHWC memory format")
    add("--compile", nargs="?", const=True, type=_switch_or_auto, default=None,
        metavar="on|off|auto", help="torch.compile the model (alone: on); auto: only if its "
        "steps, timed, are faster by enough to repay compiling over the run")
    add("--out", type=_run_dir, metavar="RUN_DIR",
        help="run directory (default runs/MODEL-DATA-TIME)")
    add("--overwrite", action="store_true", default=None,
        help="replace the run already in --out (its checkpoints and metrics are deleted)")
    add("--checkpoint-every", type=_positive_int, metavar="STEPS",
        help="also checkpoint every STEPS optimizer steps inside an epoch (a kill loses at most "
             "that many)")
    add("--tensorboard", action="store_true", default=None,
        help="write TensorBoard event files to RUN_DIR/tensorboard")
    add("--quiet", action="store_true", help="print only the results: the final test line "
        "(and a recipe's report); no run directory, progress or epoch lines")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="divekit", description="Dive into Deep Learning, as tested software.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     parser_class=_Parser)

    listing = commands.add_parser("list", help="list models, datasets or recipes")
    listing.add_argument("what", choices=["models", "datasets", "recipes"])
    listing.add_argument("pattern", nargs="?", default="*", help="shell pattern, e.g. 'lenet*'")

    train = commands.add_parser(
        "train", help="train a model", description="Train a registered model on a dataset. "
        "The last line reports the final test metrics.")
    train.add_argument("model", nargs="?", help=f"model: {', '.join(MODELS.names())}")
    train.add_argument("--resume", type=Path, metavar="RUN_DIR",
                       help="continue an interrupted run from its last checkpoint")
    _add_run_flags(train)

    lr_find = commands.add_parser(
        "lr-find", help="the learning-rate range test: a plot and a suggested --lr",
        description="Train for at most --steps steps while the learning rate grows "
        "exponentially from --min-lr to --max-lr, stop when the loss diverges, plot the "
        "smoothed loss against the rate and suggest one (Smith 2017; fastai's lr_find). Takes "
        "train's flags; nothing is trained for good and no run folder is written.")
    lr_find.add_argument("model", help=f"model: {', '.join(MODELS.names())}")
    _add_run_flags(lr_find)
    lr_find.add_argument("--plot", type=Path, default=Path("lr_find.png"), metavar="PNG")
    lr_find.add_argument("--min-lr", type=_positive_float, default=1e-7)
    lr_find.add_argument("--max-lr", type=_positive_float, default=10.0)
    lr_find.add_argument("--steps", type=_positive_int, default=100, help="at most this many")
    lr_find.add_argument("--rule", choices=["valley", "steep"], default="valley",
                         help="valley: 2/3 down the longest descent; steep: the steepest point")

    interpret = commands.add_parser(
        "interpret", help="error analysis of a run: confusion matrix, per-class scores, "
        "highest-loss test examples (or tokens)")
    interpret.add_argument("run_dir", type=Path)
    interpret.add_argument("--top", type=_positive_int, default=16,
                           help="highest-loss examples (tokens) to show")
    interpret.add_argument("--out", type=Path, metavar="DIR", help="default: RUN_DIR/interpret")
    interpret.add_argument("--checkpoint", choices=["best", "last"], default="best")
    interpret.add_argument("--data-dir")
    interpret.add_argument("--device", default="auto")

    predict = commands.add_parser(
        "predict", help="the task's answer for input files, with a trained run",
        description="Predict with a run's checkpoint: for an image classifier, the most "
        "probable classes of each image with their probabilities.")
    predict.add_argument("run_dir", type=Path)
    predict.add_argument("inputs", type=Path, nargs="*", metavar="INPUT",
                         help="input files: images, or CSV tables for a tabular run")
    predict.add_argument("--top", type=_positive_int, default=3, help="classes to show")
    predict.add_argument("--data", metavar="DATASET", help="tabular runs: predict the "
                         "dataset's rows without targets (e.g. Kaggle's test file)")
    predict.add_argument("--out", type=Path, metavar="CSV", help="tabular runs: write "
                         "id,target rows here (the Kaggle submission format)")
    predict.add_argument("--checkpoint", choices=["best", "last"], default="best")
    predict.add_argument("--data-dir")
    predict.add_argument("--device", default="auto")

    evaluate = commands.add_parser("eval", help="test metrics of a run's checkpoint")
    evaluate.add_argument("run_dir", type=Path)
    evaluate.add_argument("--checkpoint", choices=["best", "last"], default="best")
    evaluate.add_argument("--data-dir")
    evaluate.add_argument("--device", default="auto")

    detect = commands.add_parser(
        "detect", help="find objects in images with a detection run and draw them",
        description="Detect objects with a detection run's checkpoint: each image is resized "
        "to the model's input as in training, and its boxes (with labels, scores and the "
        "masks of a Mask R-CNN run) are drawn on the original image.")
    detect.add_argument("run_dir", type=Path)
    detect.add_argument("inputs", type=Path, nargs="+", metavar="IMAGE")
    detect.add_argument("--out", type=Path, default=Path("detections.png"), metavar="PNG",
                        help="the picture for one image; a folder for several")
    detect.add_argument("--min-score", type=float, default=0.5,
                        help="draw detections scoring at least this (default 0.5)")
    detect.add_argument("--checkpoint", choices=["best", "last"], default="best")
    detect.add_argument("--data-dir")
    detect.add_argument("--device", default="auto")

    segment = commands.add_parser(
        "segment", help="label every pixel of images with a segmentation run and draw them",
        description="Semantic segmentation with a segmentation run's checkpoint: each image is "
        "resized to the model's input as in training, and its class map is drawn over the "
        "original image in the VOC palette (background clear), with a legend.")
    segment.add_argument("run_dir", type=Path)
    segment.add_argument("inputs", type=Path, nargs="+", metavar="IMAGE")
    segment.add_argument("--out", type=Path, default=Path("segmentation.png"), metavar="PNG",
                         help="the picture for one image; a folder for several")
    segment.add_argument("--checkpoint", choices=["best", "last"], default="best")
    segment.add_argument("--data-dir")
    segment.add_argument("--device", default="auto")

    style = commands.add_parser(
        "style-transfer", help="paint a photo in the style of another image (d2l 14.12)",
        description="Neural style transfer: the synthesised image, initialised from CONTENT, is "
        "trained so that its features keep CONTENT's and its Gram matrices take STYLE's. "
        "Features come from VGG-19 with --weights (torchvision's vgg19 state dict), else "
        "from a seeded random multi-scale network.")
    style.add_argument("content", type=Path)
    style.add_argument("style", type=Path)
    style.add_argument("--out", type=Path, default=Path("styled.png"), metavar="PNG")
    style.add_argument("--steps", type=_positive_int, default=500)
    style.add_argument("--size", type=_shape, default=(300, 450), metavar="HxW",
                       help="size of the result; both images are resized to it (default 300x450)")
    style.add_argument("--weights", type=Path, metavar="FILE",
                       help="torchvision VGG-19 state dict; default: seeded random features")
    style.add_argument("--run-dir", type=Path,
                       help="keep the image every --save-every steps, losses.csv, losses.png")
    style.add_argument("--save-every", type=_positive_int, default=50)
    style.add_argument("--lr", type=_positive_float, default=0.3)
    style.add_argument("--seed", type=int, default=0)
    style.add_argument("--device", default="auto")

    anchors = commands.add_parser(
        "anchors", help="draw anchor boxes on an image (d2l 14.4, 14.5)",
        description="Draw the anchor boxes of one pixel (sizes x the first ratio, then the "
        "first size x the other ratios) or, with --fmap, of every cell of a feature map.")
    anchors.add_argument("image", type=Path)
    anchors.add_argument("--out", type=Path, default=Path("anchors.png"), metavar="PNG")
    anchors.add_argument("--sizes", type=_positive_float, nargs="+", default=[0.75, 0.5, 0.25],
                         help="anchor sizes, fractions of the image (default 0.75 0.5 0.25)")
    anchors.add_argument("--ratios", type=_positive_float, nargs="+", default=[1.0, 2.0, 0.5],
                         help="width/height ratios (default 1 2 0.5)")
    anchors.add_argument("--at", type=int, nargs=2, metavar=("X", "Y"),
                         help="the pixel whose anchors are drawn (default: the centre)")
    anchors.add_argument("--fmap", type=_shape, metavar="HxW",
                         help="draw the anchors of every cell of an HxW feature map instead")

    generate = commands.add_parser("generate", help="continue a text with a trained language model")
    generate.add_argument("run_dir", type=Path)
    generate.add_argument("--prefix", default="time traveller")
    generate.add_argument("--tokens", type=_positive_int, default=50, help="tokens to add")
    generate.add_argument("--strategy", choices=["greedy", "sample"], default="greedy")
    generate.add_argument("--temperature", type=_positive_float, default=1.0)
    generate.add_argument("--top-k", type=_positive_int)
    generate.add_argument("--seed", type=int, default=0, help="seeds the sampling")
    generate.add_argument("--checkpoint", choices=["best", "last"], default="best")
    generate.add_argument("--data-dir")

    encode = commands.add_parser(
        "bert-encode", help="show BERT's context-dependent token vectors (d2l 15.8)",
        description="Encode texts with the BERT model of a run and compare the vectors of the "
                    "<cls> token and of every word the texts share, by cosine similarity: the "
                    "same word gets a different vector in each context. A text may be a "
                    "sentence pair written 'first ||| second'.")
    encode.add_argument("run_dir", type=Path)
    encode.add_argument("texts", nargs="+", metavar="TEXT")
    encode.add_argument("--checkpoint", choices=["best", "last"], default="best")
    encode.add_argument("--data-dir")
    encode.add_argument("--device", default="auto")
    translate = commands.add_parser(
        "translate", help="translate sentences with a trained encoder-decoder",
        description="Translate sentences with a translation run's checkpoint (greedy, or beam "
        "search with --beam).")
    translate.add_argument("run_dir", type=Path)
    translate.add_argument("sentences", nargs="+", metavar="SENTENCE")
    translate.add_argument("--beam", type=_positive_int, help="beam width (default: the run's)")
    translate.add_argument("--attention", type=Path, metavar="PNG",
                           help="draw the attention over the source (one sentence)")
    translate.add_argument("--checkpoint", choices=["best", "last"], default="best")
    translate.add_argument("--data-dir")
    translate.add_argument("--device", default="auto")

    summary = commands.add_parser(
        "summary", help="layers, output shapes, parameters and multiply-accumulates of a model")
    summary.add_argument("model", help="registered model name (see `divekit list models`)")
    summary.add_argument("--input", type=_shape, metavar="CxHxW",
                         help="one example's shape, e.g. 3x224x224 (default: the model's own)")
    summary.add_argument("--num-classes", type=_positive_int)
    summary.add_argument("--depth", type=_depth, default=3,
                         help="module nesting shown (default 3; 'all' for every leaf)")
    summary.add_argument("--batch-size", type=_positive_int, default=1)
    summary.add_argument("-M", "--model-option", type=_option, action="append",
                         metavar="KEY=VALUE", help="model option (repeatable)")
    summary.add_argument("--json", action="store_true", help="print JSON instead of a table")

    show_batch = commands.add_parser(
        "show-batch", help="write a PNG grid of (augmented) training images with their labels",
        description="Write a grid of images with their labels, as the loaders give them.",
        epilog=AUGMENT_GRAMMAR, formatter_class=argparse.RawDescriptionHelpFormatter)
    show_batch.add_argument("data", metavar="DATASET", help=f"one of {', '.join(DATASETS.names())}")
    show_batch.add_argument("--augment", metavar="SPEC", help="augmentations (see below)")
    show_batch.add_argument("--out", type=Path, default=Path("batch.png"), metavar="PNG")
    show_batch.add_argument("-n", type=_positive_int, default=32, help="images to show")
    show_batch.add_argument("--split", choices=["train", "val", "test"], default="train")
    show_batch.add_argument("--seed", type=int, default=0, help="picks the images and draws")
    show_batch.add_argument("-D", "--data-option", type=_option, action="append",
                            metavar="KEY=VALUE", help="dataset option (repeatable)")
    show_batch.add_argument("--data-dir")

    bench = commands.add_parser(
        "bench", help="the book's loops in plain PyTorch against divekit, on this machine",
        description="Print a Markdown table of training throughput: the book's loop in plain "
        "PyTorch against divekit (medians of several runs, ratios), with the CPU/GPU name.")
    bench.add_argument("cases", nargs="*", metavar="CASE",
                       help="lenet, lstm, transformer, tiny-ssd, allocator (default: all)")
    bench.add_argument("--quick", action="store_true", help="few steps: about a minute")
    bench.add_argument("--repeats", type=_positive_int, help="runs per side (default 3 "
                       "with --quick, else 5)")
    bench.add_argument("--amp", choices=["bf16"], help="add a divekit column in this autocast "
                       "precision (the book loop stays fp32)")
    bench.add_argument("--threads", type=_positive_int, help="PyTorch CPU threads")
    bench.add_argument("--steps", type=_positive_int, help=argparse.SUPPRESS)  # tests

    recipe = commands.add_parser("recipe", help="the course's experiments by name")
    recipe_commands = recipe.add_subparsers(dest="recipe_command", required=True,
                                            metavar="ACTION", parser_class=_Parser)
    run = recipe_commands.add_parser("run", help="run a recipe (flags override its settings)")
    run.add_argument("name", help="recipe name (see `divekit list recipes`)")
    _add_run_flags(run)
    show = recipe_commands.add_parser("show", help="print a recipe's settings and book result")
    show.add_argument("name")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``divekit`` command; a user's mistake or a signal ends it with one line.

    Returns:
        0 on success, 2 for a :class:`DivekitError`, 128 + the signal's number for SIGINT
        (130) and SIGTERM (143), which act alike everywhere, in ``fit`` and outside it.
    """
    try:
        with sigterm_as_interrupt():
            return _dispatch(build_parser().parse_args(argv))
    except DivekitError as e:
        print(f"divekit: error: {e}", file=sys.stderr)
        return 2
    except TrainingInterrupted as e:  # SIGINT/SIGTERM: the step was finished and checkpointed
        print(f"divekit: {e}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt as e:  # outside fit, or a second signal within it
        signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
        print(f"divekit: stopped by {signal.Signals(signum).name}; files already written are "
              "kept (a run with a checkpoint continues with `divekit train --resume RUN_DIR`)",
              file=sys.stderr)
        return 128 + signum


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "list":
        return _list(args.what, args.pattern)
    if args.command == "eval":
        metrics = experiment.evaluate_run(args.run_dir, args.checkpoint, args.data_dir, args.device)
        print(f"evaluated {read_checkpoint(args.run_dir, args.checkpoint)[1]}")
        print(_final_line(metrics))
        return 0
    if args.command == "bench":
        from divekit.bench.runner import run

        return run(args.cases, args.quick, args.repeats, args.amp, args.threads, args.steps)
    if args.command == "lr-find":
        return _lr_find(args)
    if args.command == "interpret":
        from divekit.interpret import interpret_run

        for line in interpret_run(args.run_dir, args.out, args.top, args.checkpoint,
                                  args.data_dir, args.device):
            print(line)
        return 0
    if args.command == "predict" and (args.out or args.data):
        if args.out is None:
            raise DivekitError("--data predicts into a CSV file: add --out FILE.csv")
        for line in experiment.predict_table(args.run_dir, args.out, args.inputs, args.data,
                                             args.checkpoint, args.data_dir, args.device):
            print(line)
        return 0
    if args.command == "predict":
        if not args.inputs:
            raise DivekitError("give input files to predict (e.g. images)")
        lines = experiment.predict_files(args.run_dir, args.inputs, args.checkpoint,
                                         args.data_dir, args.device, top=args.top)
        for path, line in zip(args.inputs, lines, strict=True):
            print(f"{path}: {line}")
        return 0
    if args.command in ("detect", "segment"):
        if len(args.inputs) > 1 and args.out.suffix:
            raise DivekitError(f"--out {args.out} names a file; give a folder for "
                               f"{len(args.inputs)} images")
        options = {"min_score": args.min_score} if args.command == "detect" else {}
        draw = experiment.detect_files if args.command == "detect" else experiment.segment_files
        for path, line in zip(args.inputs, draw(args.run_dir, args.inputs, args.out,
                                                args.checkpoint, args.data_dir, args.device,
                                                **options), strict=True):
            print(f"{path}: {line}")
        return 0
    if args.command == "style-transfer":
        from divekit.vision.style import run_style_transfer

        run_style_transfer(args.content, args.style, args.out, size=args.size, steps=args.steps,
                           weights_file=args.weights, save_every=args.save_every,
                           run_dir=args.run_dir, lr=args.lr, seed=args.seed, device=args.device)
        return 0
    if args.command == "anchors":
        from divekit.vision.figures import anchor_figure

        if args.fmap is not None and len(args.fmap) != 2:
            raise DivekitError(f"--fmap takes HxW, e.g. 4x4, got {'x'.join(map(str, args.fmap))}")
        for line in anchor_figure(args.image, args.out, args.sizes, args.ratios,
                                  at=tuple(args.at) if args.at else None, fmap=args.fmap):
            print(line)
        print(f"wrote {args.out}")
        return 0
    if args.command == "generate":
        print(experiment.generate_text(
            args.run_dir, args.prefix, args.tokens, args.checkpoint, args.data_dir, args.seed,
            strategy=args.strategy, temperature=args.temperature, top_k=args.top_k))
        return 0
    if args.command == "translate":
        return _translate(args)
    if args.command == "bert-encode":
        return _bert_encode(args)
    if args.command == "summary":
        options = dict(args.model_option or [])
        if args.num_classes is not None:
            options["num_classes"] = args.num_classes
        result = summary_for(args.model, args.input, batch_size=args.batch_size,
                             depth=args.depth, **options)
        print(json.dumps(result.to_dict(), indent=2) if args.json else result)
        return 0
    if args.command == "show-batch":
        data = load_data(args.data, data_dir=args.data_dir, **dict(args.data_option or []))
        print(show_batch(data, args.out, augment=args.augment, n=args.n, split=args.split,
                         seed=args.seed))
        return 0
    if args.command == "recipe":
        recipe = RECIPES[args.name]
        if args.recipe_command == "show":
            config = recipe.config
            setup = {"model": config.model, "data": config.data, "batch_size": config.batch_size,
                     **config.changes()} if config else \
                f"script {recipe.runner.__module__}.{recipe.runner.__name__}"
            print(f"{recipe.name}: {recipe.description}\n  section: {recipe.section}\n"
                  f"  config: {setup}\n  book: {recipe.book or '-'}\n"
                  f"  target: {recipe.target or '-'}")
            return 0
        if recipe.runner is not None:
            return _run_scripted(recipe, args)
        return _train(_apply_flags(recipe.run_config(), args), args, report=recipe.report)
    if args.resume is not None:
        if args.model is not None:
            raise DivekitError("give either a model or --resume RUN_DIR, not both")
        if args.overwrite or (args.out is not None and args.out.resolve() != args.resume.resolve()):
            flag = "--overwrite" if args.overwrite else "--out"
            raise DivekitError(f"--resume continues the run in {args.resume}; {flag} does not "
                               f"go with it (start a new run to write elsewhere)")
        config = RunConfig.read(args.resume)
        resumed = _apply_flags(config, args)
        _check_resume_changes(config, resumed, args.resume)
        args.out = args.resume
        return _train(resumed, args, resume=True)
    if args.model is None:
        raise DivekitError("name a model to train (see `divekit list models`) or --resume RUN_DIR")
    MODELS[args.model]  # noqa: B018  (an unknown name fails here, before any data is loaded)
    return _train(_apply_flags(RunConfig(args.model), args), args)


def _apply_flags(config: RunConfig, args: argparse.Namespace) -> RunConfig:
    """The run ``config`` with the flags the user gave (each checked by the config's types)."""
    if args.data is not None:
        DATASETS[args.data]  # noqa: B018  (validate the name)
    values = config.to_dict()
    for key, flag in (("data", "data"), ("data_dir", "data_dir"), ("batch_size", "batch_size"),
                      ("augment", "augment")):
        if getattr(args, flag) is not None:
            values[key] = getattr(args, flag)
    values["data_options"].update(args.data_option or [])
    values["model_options"].update(args.model_option or [])
    values["task_options"].update(args.task_option or [])
    if args.val_size is not None:
        values["val_size"] = int(args.val_size) if args.val_size >= 1 else args.val_size
    if args.weights is not None and not Path(args.weights).is_dir():
        values["finetune"]["weights"] = str(Path(args.weights).resolve())
    for key in ("skip_weights", "freeze"):
        if getattr(args, key) is not None:
            values["finetune"][key] = getattr(args, key)
    for setting in values["trainer"]:
        value = getattr(args, FLAG_FOR_SETTING.get(setting, setting))
        if value is not None:
            values["trainer"][setting] = dict(value) if setting == "lr_mult" else value
    if args.amp == "auto":
        for setting in ("channels_last", "compile"):
            if getattr(args, setting) is None:
                values["trainer"][setting] = "auto"
    if args.label_smoothing is not None:
        values["task_options"]["label_smoothing"] = args.label_smoothing
    config = RunConfig.from_dict(values, source="the command line")
    if args.weights is not None and Path(args.weights).is_dir():
        config = experiment.start_from_run(config, Path(args.weights))
    return config


# What a resumed run may change: where and how long it runs, not what it computes.
RESUMABLE_SETTINGS = {"max_epochs", "max_steps", "device", "checkpoint_every", "tensorboard"}
FLAG_FOR_FIELD = {"model": "the model", "data_options": "-D/--data-option",
                  "model_options": "-M/--model-option",
                  "task_options": "-T/--task-option or --label-smoothing",
                  "finetune": "--weights/--skip-weights/--freeze"}


def _check_resume_changes(config: RunConfig, resumed: RunConfig, run_dir: Path) -> None:
    """Refuse flags that would change what a resumed run computes (only where it runs, how
    long, how it checkpoints and logs may change; ``--data-dir`` too)."""
    before, after = config.to_dict(), resumed.to_dict()
    changed = [(FLAG_FOR_FIELD.get(key, f"--{key.replace('_', '-')}"), key, before[key])
               for key in before if key not in ("trainer", "data_dir")
               and before[key] != after[key]]
    changed += [(f"--{FLAG_FOR_SETTING.get(key, key).replace('_', '-')}", key, value)
                for key, value in before["trainer"].items()
                if key not in RESUMABLE_SETTINGS and value != after["trainer"][key]]
    if changed:
        flag, key, value = changed[0]
        raise DivekitError(f"--resume continues a run as it was configured; {flag} cannot "
                           f"change ({run_dir} has {key} {value!r}); start a new run with "
                           f"--weights {run_dir} to fine-tune")


def _train(config: RunConfig, args: argparse.Namespace, resume: bool = False,
           report: Callable[[Path], list[str]] | None = None) -> int:
    out = args.out or experiment.default_run_dir(config.model, config.data)
    main_process = distributed.world()[0] == 0  # under torchrun only rank 0 prints
    if main_process and not args.quiet:
        print(f"run directory: {out}", flush=True)
    _, test = experiment.train(config, Path(out), resume=resume, overwrite=bool(args.overwrite),
                               progress=not args.quiet)
    if main_process:
        print(_final_line(test), flush=True)
        for line in report(Path(out)) if report is not None else ():
            print(line, flush=True)
    return 0


def _lr_find(args: argparse.Namespace) -> int:
    if args.out is not None:
        raise DivekitError("lr-find writes no run folder; --plot PNG names its picture")
    MODELS[args.model]  # noqa: B018  (an unknown name fails here, before any data is loaded)
    config = _apply_flags(RunConfig(args.model), args)
    trainer = experiment.trainer_for(config, progress=False)
    data, model = experiment.build(config)
    data.device = trainer.device
    result = trainer.lr_find(model, data, min_lr=args.min_lr, max_lr=args.max_lr,
                             num_steps=args.steps, rule=args.rule)
    print(result.summary())
    print(f"wrote {result.plot(args.plot)}")
    return 0


def _run_scripted(recipe, args: argparse.Namespace) -> int:
    """Run a recipe that is a script, not one Trainer run; only --out and --data-dir apply."""
    given = [f"--{name.replace('_', '-')}" for name, value in vars(args).items()
             if value is not None and name not in {"command", "recipe_command", "name", "out",
                                                   "quiet", "data_dir"}]
    if given:
        raise DivekitError(f"recipe {recipe.name!r} is a scripted experiment; it takes only "
                           f"--out and --data-dir, not {', '.join(given)}")
    if args.data_dir is not None:  # the script's loaders read it as the default data folder
        os.environ["DIVEKIT_DATA"] = args.data_dir
    out = Path(args.out or experiment.default_run_dir(recipe.name, "script"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"run directory: {out}", flush=True)
    results = recipe.runner(out)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    for key, value in results.items():
        print(f"{key}: {_rounded(value)}")
    return 0


def _bert_encode(args: argparse.Namespace) -> int:
    import torch.nn.functional as F

    results = experiment.bert_encode(args.run_dir, args.texts, args.checkpoint, args.data_dir,
                                     args.device)
    for number, result in enumerate(results, start=1):
        print(f"{number}: {' '.join(result.tokens)}  ({len(result.tokens)} tokens, "
              f"{result.features.shape[1]} features each)")
    for i, j in itertools.combinations(range(len(results)), 2):
        a, b = results[i], results[j]
        shared = [token for token in dict.fromkeys(a.tokens) if token in b.tokens]
        for token in shared:  # the first occurrence in each text; <cls> first
            similarity = F.cosine_similarity(a.features[a.tokens.index(token)],
                                             b.features[b.tokens.index(token)], dim=0)
            print(f"{token!r} in {i + 1} and {j + 1}: cosine similarity {similarity:.4f}")
    return 0


def _translate(args: argparse.Namespace) -> int:
    if args.attention is not None and len(args.sentences) != 1:
        raise DivekitError("--attention draws one sentence's attention: give one sentence")
    results = experiment.translate(args.run_dir, args.sentences, args.checkpoint, args.data_dir,
                                   args.device, num_beams=args.beam)
    for result in results:
        if result.unknown:
            print(f"note: not in the vocabulary, read as <unk>: {', '.join(result.unknown)}",
                  file=sys.stderr)
        print(result.text)
    if args.attention is not None:
        from divekit.engine.plots import plot_heatmap

        result = results[0]
        if result.attention is None:
            raise DivekitError("this model has no attention over the source to draw")
        plot_heatmap(result.attention, args.attention, xlabels=[*result.source, "<eos>"],
                     ylabels=[*result.text.split(), "<eos>"], xlabel="source",
                     ylabel="translation", title="attention")
        print(f"attention: {args.attention}", file=sys.stderr)
    return 0


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.6g}")
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def _final_line(metrics: dict[str, float]) -> str:
    parts = [f"{key.removeprefix('test_')} {value:.4f}" for key, value in metrics.items()
             if key != "test_loss"]
    return "test " + " ".join(parts + [f"loss {metrics['test_loss']:.4f}"])


def _list(what: str, pattern: str) -> int:
    if what == "models":
        for name, info in MODELS.items(pattern):  # counts checked against the built models
            print(f"{name:<28} {info.family:<9} {info.params:>12,} params  {info.section}")
    elif what == "datasets":
        for name, info in DATASETS.items(pattern):
            print(f"{name:<22} {info.description}")
    else:
        for name, recipe in RECIPES.items(pattern):
            print(f"{name:<28} {recipe.description}")
    return 0
