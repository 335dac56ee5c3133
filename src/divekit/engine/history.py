"""Per-epoch metrics: the list ``fit`` returns, written as CSV and JSON after every epoch."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

from divekit.errors import DivekitError


class History(list):
    """A list of per-epoch metric dicts, e.g. ``{"epoch": 1, "train_loss": 0.61, ...}``."""

    def column(self, key: str) -> list[float]:
        """One metric across epochs, e.g. ``history.column("test_acc")``.

        Args:
            key: a metric name; epochs that lack it are left out.

        Returns:
            Its values in epoch order (empty for an empty history).
        """
        values = [row[key] for row in self if key in row]
        if self and not values:  # a misspelt name would otherwise pass silently as []
            raise DivekitError(f"the history has no column {key!r}; choose from: "
                               f"{', '.join(self.columns())}")
        return values

    def columns(self) -> list[str]:
        """Every metric name of the history, in first-seen order."""
        return list(dict.fromkeys(key for row in self for key in row))

    @property
    def last(self) -> dict:
        return self[-1] if self else {}

    def write(self, folder: Path) -> None:
        """Write ``metrics.csv`` and ``metrics.json`` into ``folder`` (each replaced atomically)."""
        keys = self.columns()
        csv_tmp, json_tmp = folder / ".metrics.csv.tmp", folder / ".metrics.json.tmp"
        with open(csv_tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self)
        with open(json_tmp, "w") as f:
            json.dump([{k: _json_safe(v) for k, v in row.items()} for row in self], f, indent=1)
        os.replace(csv_tmp, folder / "metrics.csv")
        os.replace(json_tmp, folder / "metrics.json")


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
