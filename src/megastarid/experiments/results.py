"""Grid results rebuilt from the run folders alone: ``grid_results.csv``, ``grid_summary.md``,
``grid_results.png``.

Reading the folders (not this invocation's memory) means a rerun that skips finished experiments
still reports all of them, and a results table can always be regenerated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.transforms import blended_transform_factory

from megastarid.core.files import atomic_write, atomic_write_text, write_csv
from megastarid.core.runfiles import GRID_JOB_JSON, GRID_STATUS_JSON, RUN_SUMMARY_JSON, STAR_SUMMARY_JSON
from megastarid.experiments.plan import Experiment, PhaseState, plural, read_json

METRICS = ("mAP", "CMC@1", "CMC@5", "CMC@10", "CMC@20")
RESULT_COLUMNS = (
    "strategy",
    "loss",
    "seed",
    "status",
    "val_mAP",
    *METRICS,
    "best_epoch",
    "wall_time_s",
    "requeues",
    "run_folder",
    "error",
)
#: the summary's tables: the validation mAP that ranks the experiments, then the test figures beside it
SUMMARY_METRICS = ("val_mAP", "mAP", "CMC@1")
#: what chooses the best experiment: validation, never the test side (DESIGN §3)
RANK_BY = "val_mAP"
RESULTS_CSV = "grid_results.csv"
SUMMARY_MD = "grid_summary.md"
RESULTS_PNG = "grid_results.png"


def star_metrics(run_dir: Path) -> dict[str, float]:
    """The star evaluation numbers of a run folder (NaN for any the evaluation did not report)."""
    summary = read_json(run_dir / STAR_SUMMARY_JSON) or {}
    return {name: _as_float(summary.get(name)) for name in METRICS}


def format_metrics(metrics: Mapping[str, float]) -> str:
    shown = [name for name in ("mAP", "CMC@1") if not math.isnan(metrics[name])]
    return ", ".join(f"star {name} {metrics[name]:.3f}" for name in shown) or "no star metrics"


def _as_float(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def read_job(experiment: Experiment) -> dict[str, Any]:
    """The experiment's ``grid_job.json``: the scheduler job that runs it (empty when none ever did)."""
    return read_json(experiment.out_dir / GRID_JOB_JSON) or {}


def requeues(experiment: Experiment) -> int:
    """How often the scheduler requeued the experiment's jobs (pre-emption, time limit), over every run."""
    counts = read_job(experiment).get("requeues")
    return sum(int(n) for n in counts.values()) if isinstance(counts, dict) else 0


def _status(experiment: Experiment) -> tuple[str, str]:
    """(status, error) of an experiment as its folders show it now."""
    states = [phase.state() for phase in experiment.phases]
    if all(state is PhaseState.FINISHED for state in states):
        return "finished", ""
    failure = read_json(experiment.out_dir / GRID_STATUS_JSON)
    if failure and failure.get("status") == "failed":
        lines = [line for line in str(failure.get("error", "")).splitlines() if line.strip()]
        phase = failure.get("phase") or "grid"
        return "failed", f"{phase}: " + " | ".join(lines) if lines else f"{phase}: failed without output"
    if any(state in (PhaseState.FINISHED, PhaseState.RESUME) for state in states):
        return "interrupted", ""
    return "not run", ""


def experiment_row(experiment: Experiment) -> dict[str, object]:
    """One row of ``grid_results.csv``; metrics come from the final phase (finetune or cotrain)."""
    status, error = _status(experiment)
    final = experiment.final_phase.run_dir
    row: dict[str, object] = {"strategy": experiment.strategy, "loss": experiment.loss}
    row |= {"seed": experiment.seed, "status": status}
    finished = status == "finished"
    row.update(star_metrics(final) if finished else dict.fromkeys(METRICS, math.nan))
    summaries = [read_json(phase.run_dir / RUN_SUMMARY_JSON) or {} for phase in experiment.phases]
    best_epoch = summaries[-1].get("best_epoch") if finished else None
    row["val_mAP"] = _as_float(summaries[-1].get("best_metric")) if finished else math.nan
    row["best_epoch"] = int(best_epoch) if isinstance(best_epoch, int | float) else pd.NA
    row["wall_time_s"] = (
        round(sum(_as_float(s.get("wall_time_s")) for s in summaries), 1) if finished else math.nan
    )
    row["requeues"] = requeues(experiment)
    row["run_folder"] = str(final)
    row["error"] = error
    return row


def collect_results(experiments: Sequence[Experiment]) -> pd.DataFrame:
    frame = pd.DataFrame([experiment_row(e) for e in experiments], columns=list(RESULT_COLUMNS))
    return frame.astype({"best_epoch": "Int64"})


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """Mean, std (over seeds) and count of finished runs per strategy × loss, in first-seen order."""
    finished = results[results["status"] == "finished"]
    rows = []
    for (strategy, loss), group in results.groupby(["strategy", "loss"], sort=False):
        done = finished[(finished["strategy"] == strategy) & (finished["loss"] == loss)]
        row = {"strategy": strategy, "loss": loss, "n": len(done), "runs": len(group)}
        for name in SUMMARY_METRICS:
            row[f"{name}_mean"] = done[name].mean()
            row[f"{name}_std"] = done[name].std()
        rows.append(row)
    return pd.DataFrame(rows)


def _cell(row: pd.Series, metric: str, best: bool) -> str:
    if row["n"] == 0:
        return f"— (0/{row['runs']} finished)"
    text = f"{row[f'{metric}_mean']:.3f}"
    if row["n"] > 1:
        text += f" ± {row[f'{metric}_std']:.3f}"
    text = f"**{text}**" if best else text
    return f"{text} (n={row['n']})"


def best_rows(summary: pd.DataFrame) -> pd.DataFrame:
    """The strategy × loss cells tied for the best mean validation mAP."""
    means = summary[f"{RANK_BY}_mean"]
    return summary[means == means.max()]


def _table(summary: pd.DataFrame, metric: str) -> list[str]:
    losses = list(dict.fromkeys(summary["loss"]))
    best = set(best_rows(summary).index)  # every cell tied for the best validation mAP
    lines = ["| strategy | " + " | ".join(losses) + " |", "|---|" + "---|" * len(losses)]
    for strategy in dict.fromkeys(summary["strategy"]):
        cells = []
        for loss in losses:
            match = summary[(summary["strategy"] == strategy) & (summary["loss"] == loss)]
            cells.append(_cell(match.iloc[0], metric, match.index[0] in best) if len(match) else "")
        lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
    return lines


def summary_markdown(results: pd.DataFrame, output_dir: Path) -> str:
    """Strategy × loss tables of star mAP and CMC@1 (mean ± std over seeds, best in bold)."""
    counts = results["status"].value_counts()
    status_text = ", ".join(f"{count} {status}" for status, count in counts.items())
    lines = [
        "# Grid search summary",
        "",
        f"Output folder `{output_dir}`: {plural(len(results), 'experiment')} ({status_text}).",
        "The final phase's chosen checkpoint, mean ± std over seeds (n = finished seeds): its validation "
        "mAP, which ranks the experiments (**bold** = best), and its test-side (query) numbers, scored once "
        "and never used to choose.",
    ]
    if counts.get("finished", 0):
        summary = summarize(results)
        titles = {"val_mAP": "Validation mAP (ranks)", "mAP": "Test mAP", "CMC@1": "Test CMC@1"}
        for metric in SUMMARY_METRICS:
            lines += ["", f"## Star {titles[metric]}", "", *_table(summary, metric)]
        top = best_rows(summary)
        names = ", ".join(f"{row.strategy} × {row.loss}" for row in top.itertuples())
        best_val = top[f"{RANK_BY}_mean"].max()
        figures = ", ".join(f"{value:.3f}" for value in top["mAP_mean"])
        lines += ["", f"Best by validation mAP: {names} (validation mAP {best_val:.3f}; test mAP {figures})."]
    else:
        lines += ["", "No experiment has finished yet."]
    unfinished = results[results["status"] != "finished"]
    if len(unfinished):
        lines += ["", "## Not finished", ""]
        for _, row in unfinished.iterrows():
            note = f": {row['error']}" if row["error"] else ""
            lines.append(f"- `{row['strategy']}-{row['loss']}-seed{row['seed']}` {row['status']}{note}")
    return "\n".join(lines) + "\n"


def plot_results(results: pd.DataFrame, path: Path) -> None:
    """Bars of star mAP and CMC@1 per experiment, grouped by strategy, coloured by loss."""
    colours = {loss: f"C{i}" for i, loss in enumerate(dict.fromkeys(results["loss"]))}
    groups = [group for _, group in results.groupby("strategy", sort=False)]
    ordered = pd.concat(groups) if groups else results
    positions: list[float] = []
    centres: list[tuple[str, float]] = []
    x = 0.0
    for group in groups:
        positions += [x + i for i in range(len(group))]
        centres.append((group["strategy"].iloc[0], x + (len(group) - 1) / 2))
        x += len(group) + 0.8
    labels = [f"{loss}\nseed {seed}" for loss, seed in zip(ordered["loss"], ordered["seed"], strict=True)]
    figure = Figure(figsize=(max(6.0, 0.6 * len(results) + 2), 7), layout="constrained")
    axes = figure.subplots(len(SUMMARY_METRICS), 1, sharex=True, squeeze=False)[:, 0]
    for ax, metric in zip(axes, SUMMARY_METRICS, strict=True):
        values = ordered[metric].to_numpy(dtype=float)
        ax.bar(
            positions,
            [0 if math.isnan(v) else v for v in values],
            width=0.8,
            color=[colours[loss] for loss in ordered["loss"]],
        )
        for pos, value, status in zip(positions, values, ordered["status"], strict=True):
            text = status if math.isnan(value) else f"{value:.2f}"
            ax.text(pos, 0.02 if math.isnan(value) else value, text, ha="center", va="bottom", fontsize=8)
        ax.set_ylabel(f"star {metric}")
        ax.set_ylim(0, 1.1)
        ax.grid(axis="y", alpha=0.3)
        transform = blended_transform_factory(ax.transData, ax.transAxes)
        for strategy, centre in centres:
            ax.text(centre, 1.0, strategy, transform=transform, ha="center", va="bottom", fontweight="bold")
    axes[-1].set_xticks(positions, labels, fontsize=8)
    handles = [Patch(color=colour, label=loss) for loss, colour in colours.items()]
    figure.legend(handles=handles, loc="outside right upper", title="loss")
    figure.suptitle("Grid search: star query metrics per experiment")
    atomic_write(path, lambda tmp: figure.savefig(tmp, dpi=100, format="png"))


def write_results(experiments: Sequence[Experiment], output_dir: Path) -> pd.DataFrame:
    """Write the three result files into ``output_dir`` and return the results table."""
    output_dir.mkdir(parents=True, exist_ok=True)
    results = collect_results(experiments)
    write_csv(output_dir / RESULTS_CSV, results)
    atomic_write_text(output_dir / SUMMARY_MD, summary_markdown(results, output_dir))
    plot_results(results, output_dir / RESULTS_PNG)
    return results
