"""PNG plots of training curves (matplotlib's file backend: works without a screen)."""

from __future__ import annotations

import os
from pathlib import Path


def plot_history(history: list[dict], path: Path, max_panels: int = 4) -> Path:
    """Draw the loss and the task's metrics (accuracy, perplexity, F1, ...), one panel each
    with every split's curve, against epoch into ``path``."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    kinds = ["loss"] + sorted({
        key.split("_", 1)[1] for key in history[0]
        if key.startswith(("train_", "val_", "test_", "overfit_")) and key != "train_time"
        and not key.split("_", 1)[1].startswith("loss")})[: max_panels - 1]
    fig, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds), 3.6), squeeze=False)
    for axis, kind in zip(axes[0], kinds, strict=True):
        for key in [k for k in history[0] if k.endswith(f"_{kind}")]:
            axis.plot(epochs, [row.get(key) for row in history], marker="o", label=key)
        axis.set_xlabel("epoch")
        axis.set_ylabel(kind)
        axis.grid(alpha=0.3)
        axis.legend()
    fig.tight_layout()
    return save_png(fig, path)


def plot_steps(rows: list[dict], path: Path) -> Path:
    """Draw the training loss and each named part of it against the optimizer step, one panel
    each (e.g. BERT's total, masked-LM and next-sentence losses), into ``path``."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    names = [key for key in dict.fromkeys(key for row in rows for key in row)
             if key not in ("step", "epoch")]
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.4), squeeze=False)
    for axis, name in zip(axes[0], names, strict=True):
        logged = [row for row in rows if name in row]  # a part may be absent from some steps
        axis.plot([row["step"] for row in logged], [row[name] for row in logged])
        axis.set_xlabel("step")
        axis.set_ylabel(f"train {name}")
        axis.grid(alpha=0.3)
    fig.tight_layout()
    return save_png(fig, path)


def plot_heatmap(matrix, path: Path, *, xlabels: list[str] | None = None,
                 ylabels: list[str] | None = None, xlabel: str = "", ylabel: str = "",
                 title: str = "") -> Path:
    """Draw a 2-D matrix (attention weights: queries as rows, keys as columns) into ``path``.

    Args:
        matrix: a 2-D tensor, array or nested list of numbers, shape (rows, columns).
        path: the PNG to write (replaced atomically).
        xlabels, ylabels: one tick label per column / row (tokens); x labels are rotated so
            words do not overlap.
        xlabel, ylabel, title: axis names and title.

    Returns:
        ``path``.
    """
    import matplotlib
    import numpy as np

    from divekit.errors import DivekitError

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    if hasattr(matrix, "detach"):  # a tensor, possibly on a GPU or requiring grad
        matrix = matrix.detach().float().cpu().numpy()
    values = np.asarray(matrix, dtype=float)
    if values.ndim != 2 or values.size == 0:
        raise DivekitError(f"plot_heatmap draws a non-empty 2-D matrix, got shape "
                           f"{values.shape}; select one example and one head first")
    path = Path(path)
    rows, columns = values.shape
    for name, labels, count in (("xlabels", xlabels, columns), ("ylabels", ylabels, rows)):
        if labels is not None and len(labels) != count:
            raise DivekitError(f"{name} has {len(labels)} labels for {count} "
                               f"{'columns' if name == 'xlabels' else 'rows'}; give one each")
    # About a third of an inch per cell, within a readable range.
    width = min(max(0.35 * columns + 2.5, 4.0), 10.0)
    height = min(max(0.35 * rows + 1.5, 3.0), 10.0)
    fig, axis = plt.subplots(figsize=(width, height))
    image = axis.imshow(values, cmap="Reds", aspect="auto", interpolation="nearest")
    fig.colorbar(image, ax=axis)
    if xlabels is not None:
        axis.set_xticks(range(columns), [str(label) for label in xlabels], rotation=90)
    if ylabels is not None:
        axis.set_yticks(range(rows), [str(label) for label in ylabels])
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    fig.tight_layout()
    return save_png(fig, path)


def save_png(fig, path: Path, dpi: int = 100) -> Path:
    """Write a matplotlib figure to ``path`` atomically (a temporary file beside it, then a
    rename) and close it; the folder is created if needed."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=dpi)
        tmp.replace(path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path
