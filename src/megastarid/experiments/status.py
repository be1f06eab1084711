"""``grid-search --status``: where each experiment of a grid folder stands, read from its run folders and
the scheduler; it starts, stops and writes nothing, so it is safe to run while the grid runs."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from megastarid.core.errors import UserError
from megastarid.core.runfiles import CONFIG_YAML, GRID_STATUS_JSON, HISTORY_CSV, RUN_SUMMARY_JSON
from megastarid.core.yaml_config import load_yaml
from megastarid.experiments.plan import Experiment, GridConfig, PhaseState, read_json, with_existing
from megastarid.experiments.results import format_metrics, read_job, requeues, star_metrics
from megastarid.experiments.slurm import queued
from megastarid.training.runfolder import run_folder_holder

COLUMNS = ("experiment", "state", "where", "progress", "result")


def epoch_reached(run_dir: Path) -> int | None:
    """The last epoch ``history.csv`` records (0 = only the evaluation before training), or None."""
    try:
        with (run_dir / HISTORY_CSV).open(encoding="utf-8", newline="") as file:
            rows = list(csv.DictReader(file))
        return int(float(rows[-1]["epoch"])) if rows else None
    except (OSError, KeyError, ValueError, csv.Error):
        return None


def _progress(experiment: Experiment) -> str:
    phase = next((p for p in experiment.phases if p.state() is not PhaseState.FINISHED), None)
    if phase is None:
        phase = experiment.final_phase
    epoch = epoch_reached(phase.run_dir)
    try:  # the epochs the run was started with (this plan is rebuilt from the folder names alone)
        saved = load_yaml(phase.run_dir / CONFIG_YAML, "run config")
    except UserError:
        saved = None
    total = saved.get("epochs", "?") if isinstance(saved, dict) else "?"
    return f"{phase.name} epoch {'-' if epoch is None else epoch}/{total}"


def _last_error(experiment: Experiment) -> str | None:
    failure = read_json(experiment.out_dir / GRID_STATUS_JSON)
    if not failure or failure.get("status") != "failed":
        return None
    lines = [line for line in str(failure.get("error", "")).splitlines() if line.strip()]
    return lines[-1].strip() if lines else "failed without output"


def experiment_status(
    experiment: Experiment, in_queue: Mapping[str, tuple[str, str]] | None
) -> dict[str, str]:
    """One row: state (finished, running, pending, failed, interrupted, not run), where it runs (node and
    job id, or the local pid holding the run folder), the epoch reached and the result or last error."""
    row = {"experiment": experiment.name, "where": "-", "progress": _progress(experiment), "result": ""}
    job_id = str(read_job(experiment).get("job_id", ""))
    requeued = requeues(experiment)
    if requeued:
        row["result"] = f"requeued {requeued}x"
    holders = [run_folder_holder(phase.run_dir) for phase in experiment.phases]
    if experiment.is_finished():
        metrics = star_metrics(experiment.final_phase.run_dir)
        summary = read_json(experiment.final_phase.run_dir / RUN_SUMMARY_JSON) or {}
        val = summary.get("best_metric")
        shown = [f"val mAP {val:.3f}"] if isinstance(val, float) and not math.isnan(val) else []
        row |= {"state": "finished", "result": ", ".join([*shown, format_metrics(metrics), row["result"]])}
    elif in_queue and job_id in in_queue:
        state, place = in_queue[job_id]
        running = state in ("RUNNING", "COMPLETING")
        row |= {
            "state": state.lower(),
            "where": f"{place} (job {job_id})" if running else f"job {job_id} ({place})",
        }
    elif any(holders):
        row |= {"state": "running", "where": f"pid {next(h for h in holders if h)}"}
    elif (error := _last_error(experiment)) is not None:
        row |= {"state": "failed", "result": error}
    elif any(phase.state() in (PhaseState.FINISHED, PhaseState.RESUME) for phase in experiment.phases):
        row["state"] = "interrupted"
    else:
        row["state"] = "not run"
    row["result"] = row["result"].strip(", ") or "-"
    return row


def grid_status(output_dir: Path) -> list[dict[str, str]]:
    """A row per experiment folder in ``output_dir``, asking SLURM about the jobs that ran them."""
    experiments = with_existing(GridConfig(strategies=(), losses=(), seeds=(), output_dir=output_dir), [])
    job_ids = [str(read_job(e).get("job_id")) for e in experiments if read_job(e).get("launcher") == "slurm"]
    in_queue = queued(job_ids) if job_ids else {}
    return [experiment_status(e, in_queue) for e in experiments]


def format_status(rows: Sequence[dict[str, str]], output_dir: Path) -> str:
    """The rows as an aligned table, with a count per state."""
    if not rows:
        return f"{output_dir}: no grid experiment folders yet"
    widths = {column: max(len(column), *(len(row[column]) for row in rows)) for column in COLUMNS}
    lines = ["  ".join(column.ljust(widths[column]) for column in COLUMNS).rstrip()]
    lines += ["  ".join(row[column].ljust(widths[column]) for column in COLUMNS).rstrip() for row in rows]
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    lines += ["", f"{output_dir}: " + ", ".join(f"{n} {state}" for state, n in counts.items())]
    return "\n".join(lines)
