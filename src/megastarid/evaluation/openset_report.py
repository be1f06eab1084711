"""The open-set report files of a run folder: the summary, one row per test query, the τ sweep and two
plots (BAKS/BAUS/geometric mean against τ; the reliability diagram of P(top-1 right)).

The calibration and τ come from validation; the test side's own sweep is written beside them only to
show how far the validation τ is from the best τ in hindsight (it chooses nothing).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from megastarid.core.files import atomic_write, write_csv, write_json
from megastarid.core.runfiles import (
    OPENSET_CURVE_PNG,
    OPENSET_THRESHOLDS_CSV,
    RELIABILITY_PNG,
    STAR_OPENSET_QUERIES_CSV,
    STAR_OPENSET_SUMMARY_JSON,
)
from megastarid.evaluation.openset import (
    Calibration,
    OpenSetAnswers,
    answers_table,
    openset_summary,
    threshold_sweep,
)

RELIABILITY_BINS = 10


def _plain(value: Any) -> Any:
    """JSON-safe: NaN (a side without queries) becomes null."""
    return None if isinstance(value, float) and math.isnan(value) else value


def plot_openset_curve(sweep: pd.DataFrame, calibration: Calibration, hindsight: float, path: Path) -> Path:
    """BAKS, BAUS and their geometric mean on the test side against τ; validation's τ and the best in
    hindsight marked."""
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    for column in ("BAKS", "BAUS", "geometric_mean"):
        ax.plot(sweep["threshold"], sweep[column], label=column.replace("_", " "))
    ax.axvline(
        calibration.threshold,
        color="black",
        linestyle="--",
        label=f"τ from validation {calibration.threshold:.3f}",
    )
    if not math.isnan(hindsight):
        ax.axvline(hindsight, color="grey", linestyle=":", label=f"best τ in hindsight {hindsight:.3f}")
    ax.set(xlabel="threshold τ on the top-1 score (below = new individual)", ylabel="score", ylim=(0, 1.02))
    ax.set_title("open set on the test side")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))


def plot_reliability(probability: np.ndarray, right: np.ndarray, path: Path) -> Path:
    """Mean P(top-1 right) against the observed accuracy per bin of P, with the diagonal of perfect
    calibration; the bar under each point counts its queries."""
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    which = np.minimum((probability * RELIABILITY_BINS).astype(int), RELIABILITY_BINS - 1)
    used = [b for b in range(RELIABILITY_BINS) if (which == b).any()]
    confidence = [probability[which == b].mean() for b in used]
    accuracy = [right[which == b].mean() for b in used]
    share = [(which == b).mean() for b in used]
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfectly calibrated")
    ax.bar(
        [(b + 0.5) / RELIABILITY_BINS for b in used],
        share,
        width=0.9 / RELIABILITY_BINS,
        alpha=0.25,
        label="share of queries",
    )
    ax.plot(confidence, accuracy, marker="o", label="test queries")
    ax.set(
        xlabel="P(top-1 right), calibrated on validation",
        ylabel="observed accuracy",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    ax.set_title("reliability")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))


def write_openset_reports(
    answers: OpenSetAnswers,
    paths: np.ndarray | Sequence[str],
    calibration: Calibration,
    out_dir: Path,
    facts: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Score the test answers at the validation τ and write every open-set file; returns the summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    sweep = threshold_sweep(answers)
    summary = {
        **openset_summary(answers, calibration, sweep),
        **(facts or {}),
        "calibration": calibration.to_dict(),
    }
    summary = {key: _plain(value) for key, value in summary.items()}
    table = answers_table(answers, paths, calibration)
    write_csv(out_dir / STAR_OPENSET_QUERIES_CSV, table)
    write_csv(out_dir / OPENSET_THRESHOLDS_CSV, sweep)
    hindsight = summary["hindsight_threshold"]
    plot_openset_curve(
        sweep, calibration, math.nan if hindsight is None else hindsight, out_dir / OPENSET_CURVE_PNG
    )
    plot_reliability(table["probability"].to_numpy(), answers.top1_right, out_dir / RELIABILITY_PNG)
    write_json(out_dir / STAR_OPENSET_SUMMARY_JSON, summary)
    return summary
