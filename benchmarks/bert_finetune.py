"""The course's claim about BERT (d2l 16.6): starting fine-tuning from pretrained weights beats
the same architecture trained from random weights on the same labelled data.

For each fine-tuning recipe and seed, one run starts from a pretraining run's best weights
(``--weights RUN``: its encoder, its WordPiece tokenizer and its size) and one from random
weights with the same tokenizer; the table gives the median test metric of each over the seeds,
the gain, and the median CPU time (process time, all threads) of a run.

    python benchmarks/bert_finetune.py --pretrained runs/bert-pretrain-wikitext \\
        [--recipes bert-sst2 bert-wnut17] [--seeds 0 1 2] [--out runs/bert-finetune]

Without ``--pretrained`` it first runs the ``bert-pretrain-wikitext`` recipe into
``OUT/pretrain``. Each run's folder is kept under ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch

from divekit import experiment
from divekit.recipes import get_recipe
from machine import cpu_name


def finetune(recipe: str, seed: int, pretrained: Path, start: str,
             out: Path) -> tuple[float, float]:
    """One fine-tuning run; returns its test metric (F1 where the task has one: entities,
    SQuAD; else accuracy) and CPU seconds."""
    config = get_recipe(recipe).run_config()
    config.trainer = dataclasses.replace(config.trainer, seed=seed)
    if start == "pretrained":
        config = experiment.start_from_run(config, pretrained)
    else:  # the same tokenizer and size, random weights
        config.data_options.setdefault("tokenizer", str((pretrained / "tokenizer.json").resolve()))
        size = json.loads((pretrained / "config.json").read_text())["model"].split("-", 1)[1]
        config.model_options.setdefault("size", size)
    folder = out / f"{recipe}-{start}-seed{seed}"
    cpu = time.process_time()
    _, test = experiment.train(config, folder, progress=False)
    return test.get("test_f1", test.get("test_acc")), time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pretrained", type=Path, help="a pretraining run folder")
    parser.add_argument("--recipes", nargs="+", default=["bert-sst2", "bert-wnut17"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("runs/bert-finetune"))
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pretrained = args.pretrained
    if pretrained is None:
        pretrained = args.out / "pretrain"
        experiment.train(get_recipe("bert-pretrain-wikitext").run_config(), pretrained)
    print(f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"pretrained: {pretrained}")
    print(f"{'recipe':14} {'metric':9} {'random':>8} {'pretrained':>10} {'gain':>7} "
          f"{'CPU s random / pretrained':>27}   per seed (random, pretrained)")
    for recipe in args.recipes:
        results = {start: [finetune(recipe, seed, pretrained, start, args.out)
                           for seed in args.seeds] for start in ("random", "pretrained")}
        medians = {start: statistics.median(value for value, _ in runs)
                   for start, runs in results.items()}
        cpu = {start: statistics.median(seconds for _, seconds in runs)
               for start, runs in results.items()}
        seeds = ", ".join(f"({r[0]:.4f}, {p[0]:.4f})" for r, p in
                          zip(results["random"], results["pretrained"], strict=True))
        metric = "f1" if recipe in ("bert-wnut17", "bert-squad") else "acc"
        print(f"{recipe:14} {metric:9} {medians['random']:8.4f} {medians['pretrained']:10.4f} "
              f"{medians['pretrained'] - medians['random']:+7.4f} "
              f"{cpu['random']:12.0f} / {cpu['pretrained']:<12.0f}   {seeds}", flush=True)


if __name__ == "__main__":
    main()
