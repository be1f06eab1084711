"""``training_curves.png``: the losses and the retrieval metrics of a run, by epoch, from its history rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import pandas as pd

from megastarid.core.files import atomic_write
from megastarid.core.runfiles import LOSS_KEYS


def plot_training_curves(rows: list[dict[str, Any]], path: Path, metric_prefix: str) -> Path:
    """Left: loss terms per epoch. Right: ``<prefix>mAP`` and ``<prefix>CMC@1`` per evaluated epoch."""
    matplotlib.use("Agg")  # files only, never a window
    history = pd.DataFrame(rows)
    fig, (loss_ax, metric_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for column in LOSS_KEYS:
        if column in history and history[column].notna().any():
            part = history.dropna(subset=[column])
            loss_ax.plot(part["epoch"], part[column], marker=".", label=column)
    loss_ax.set(xlabel="epoch", ylabel="loss", title="training loss")
    for name in ("mAP", "CMC@1"):
        column = metric_prefix + name
        if column in history and history[column].notna().any():
            part = history.dropna(subset=[column])
            metric_ax.plot(part["epoch"], part[column], marker="o", label=column)
    metric_ax.set(
        xlabel="epoch", ylabel="score", title="retrieval (epoch 0 = before training)", ylim=(0, 1.02)
    )
    for ax in (loss_ax, metric_ax):
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    return path
