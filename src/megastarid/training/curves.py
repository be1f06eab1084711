"""``training_curves.png``: the losses and the retrieval metrics of a run, by epoch, from its history rows."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import pandas as pd

from megastarid.core.files import atomic_write
from megastarid.core.runfiles import LOSS_KEYS

#: history columns plotted on the right: validation (chooses) and test (``--monitor-test``, chooses nothing)
METRIC_COLUMN = re.compile(r"^(val|test)_\w+_(mAP|CMC@1)$")


def plot_training_curves(rows: list[dict[str, Any]], path: Path) -> Path:
    """Left: loss terms per epoch. Right: validation mAP and CMC@1 per evaluated epoch (solid), and the
    test side's when monitored (dashed, labelled as not used for any choice)."""
    matplotlib.use("Agg")  # files only, never a window
    history = pd.DataFrame(rows)
    fig, (loss_ax, metric_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for column in LOSS_KEYS:
        if column in history and history[column].notna().any():
            part = history.dropna(subset=[column])
            loss_ax.plot(part["epoch"], part[column], marker=".", label=column)
    loss_ax.set(xlabel="epoch", ylabel="loss", title="training loss")
    for column in (c for c in history.columns if METRIC_COLUMN.match(str(c))):
        if history[column].notna().any():
            part = history.dropna(subset=[column])
            test = column.startswith("test_")
            label = f"{column} (monitor only, chooses nothing)" if test else column
            metric_ax.plot(
                part["epoch"], part[column], marker="o", linestyle="--" if test else "-", label=label
            )
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
