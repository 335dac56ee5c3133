"""PNG plots of training curves (matplotlib's file backend: works without a screen)."""

from __future__ import annotations

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
        if key.startswith(("train_", "val_", "test_")) and key != "train_time"
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
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path
