"""Run recipes and print their result and training time next to the book's; check CPU targets.

    DIVEKIT_DATA=../shared/data python benchmarks/recipes.py [NAME_PATTERN]

The recipes below carry a target that is about time as well as accuracy ("within N minutes of
training on a 2-core CPU"), which a test cannot hold without a timed assertion, or one whose
whole run is too long for the test suite (its learning test runs a smaller budget); this
script checks them and exits with status 1 when one is missed. Run it on an otherwise idle
machine.
"""

from __future__ import annotations

import operator
import sys
import tempfile
from pathlib import Path

from divekit import experiment
from divekit.recipes import get_recipe, list_recipes

# recipe: (final metric, comparison, bound, most seconds of training or None)
TARGETS = {
    "lenet-bn-fashion-mnist": ("test_acc", operator.ge, 0.80, None),
    "lenet-bn-scratch-fashion-mnist": ("test_acc", operator.ge, 0.85, None),
    "bilstm-ewt-pos": ("test_acc", operator.ge, 0.91, None),
    "fashion-mnist-fast": ("test_acc", operator.ge, 0.91, 30),
    "fashion-mnist-2min": ("test_acc", operator.ge, 0.93, 120),
    "resnet-cpu-fashion-mnist": ("test_acc", operator.ge, 0.92, 600),
    "densenet-cpu-fashion-mnist": ("test_acc", operator.ge, 0.91, 600),
    "timemachine-char-fast": ("test_ppl", operator.le, 3.8, 300),
    "tiny-ssd-bananas": ("test_map_50", operator.ge, 0.95, 600),
    "ssd-scenes": ("test_map_50", operator.ge, 0.8, 900),
    "yolox-scenes": ("test_map_50", operator.ge, 0.8, 900),
    "faster-rcnn-scenes": ("test_map_50", operator.ge, 0.8, 900),
    "mask-rcnn-scenes": ("test_mask_map_50", operator.ge, 0.7, 900),
    "fcn-scenes": ("test_miou", operator.ge, 0.8, 600),
}


def main() -> int:
    pattern = sys.argv[1] if len(sys.argv) > 1 else "*"
    missed = []
    for name in list_recipes(pattern):
        recipe = get_recipe(name)
        if recipe.config is None:
            continue  # scripted experiments: run them with `divekit recipe run`
        with tempfile.TemporaryDirectory() as folder:
            history, test = experiment.train(recipe.run_config(), Path(folder), progress=False)
        seconds = sum(history.column("train_time"))
        metric = next(key for key in ("test_acc", "test_ppl", "test_mask_map_50", "test_map_50",
                                      "test_miou", "test_loss") if key in test)
        verdict = ""
        if name in TARGETS:
            key, compare, bound, budget = TARGETS[name]
            met = compare(test[key], bound) and (budget is None or seconds <= budget)
            verdict = f"  target {key} {compare.__name__} {bound}" + \
                (f" in {budget} s: " if budget else ": ") + ("met" if met else "MISSED")
            if not met:
                missed.append(name)
        print(f"{name:<30} {len(history):>3} epochs  {metric} {test[metric]:.4f}  "
              f"{seconds:6.1f} s of training  book: {recipe.book or '-'}{verdict}", flush=True)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
