"""Run recipes and print their test accuracy and training time next to the book's result.

    DIVEKIT_DATA=../shared/data python benchmarks/recipes.py [NAME_PATTERN]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from divekit import experiment
from divekit.recipes import get_recipe, list_recipes


def main() -> None:
    pattern = sys.argv[1] if len(sys.argv) > 1 else "*"
    for name in list_recipes(pattern):
        recipe = get_recipe(name)
        with tempfile.TemporaryDirectory() as folder:
            history, test = experiment.train(recipe.run_config(), Path(folder), progress=False)
        seconds = sum(history.column("train_time"))
        result = test.get("test_acc", test["test_loss"])
        print(f"{name:<30} {len(history):>3} epochs  test {result:.4f}  {seconds:6.1f} s of "
              f"training  book: {recipe.book or '-'}", flush=True)


if __name__ == "__main__":
    main()
