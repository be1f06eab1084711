"""Ablation of the accuracy options: each alone and the promising combination against the baseline.

The baseline is the model before this ablation chose the defaults (average pooling, no test-time
augmentation); every variant is the baseline with its own options. Every variant trains star-only from
scratch (a small backbone at a small size, no download) on the built-in synthetic stars under the
time-cut protocol, once per seed. Validation picks ``best.pth`` and fits the open-set threshold; the test
side, with its newly recruited individuals, is scored once, so no option can win by test-set selection.
Test-time augmentation changes no weights, so the TTA modes are scored on the trained checkpoints of
``--tta-variants`` by ``evaluate`` (which refits the calibration on validation under that mode).

A default changes only when the mean paired gain over the baseline (same seed) exceeds two standard
deviations of those paired differences; the table says so per variant. Results go to ``--output-dir``:
``ablation.csv`` (one row per run), ``ablation.md`` (the table) and ``ablation.png``.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from matplotlib.figure import Figure

from megastarid.core.console import run_main
from megastarid.core.errors import UserError
from megastarid.core.files import atomic_write_text
from megastarid.core.options import Ints, Names
from megastarid.core.parsing import parse_options
from megastarid.core.runfiles import BEST_CHECKPOINT, STAR_OPENSET_SUMMARY_JSON, STAR_SUMMARY_JSON
from megastarid.evaluate import EvaluateOptions
from megastarid.evaluate import run as run_evaluate
from megastarid.training.config import FinetuneConfig
from megastarid.training.strategies import run_finetune

log = logging.getLogger(__name__)

#: what every variant starts from: the model before this ablation chose the defaults (the backbone's own
#: average pooling; the training report without test-time augmentation, which is scored on its own)
BASELINE: dict[str, Any] = {"pooling": "avg", "tta": "none"}
#: training variants: name -> FinetuneConfig fields that differ from the baseline
VARIANTS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "gem": {"pooling": "gem"},
    "multiscale": {"multiscale": True},
    "arcface": {"arcface_weight": 0.5},
    "ema": {"ema": 0.98},
    "gem+arcface+ema": {"pooling": "gem", "arcface_weight": 0.5, "ema": 0.98},
}
#: the figures compared (all on the test side)
FIGURES = ("mAP", "CMC@1", "geometric_mean")


@dataclass
class AblationOptions:
    """What to compare and how big each run is."""

    output_dir: Path = Path("runs/ablation")
    """one run folder per variant and seed, plus ablation.csv / .md / .png"""
    variants: Names = tuple(VARIANTS)
    """training variants to run, comma-separated"""
    tta: Names = ("flip", "rot4", "rot4flip")
    """test-time augmentation modes scored on the checkpoints of --tta-variants"""
    tta_variants: Names = ("baseline",)
    """variants whose checkpoints are also scored with each --tta mode (e.g. baseline,gem)"""
    seeds: Ints = (0, 1, 2)
    """seeds, comma-separated"""
    backbone: str = "resnet18"
    """timm backbone"""
    image_size: int = 64
    """training and evaluation size in pixels"""
    epochs: int = 12
    """epochs per run"""
    eval_every: int = 3
    """validation every N epochs (picks best.pth)"""
    lr: float = 2e-3
    """peak learning rate"""
    workers: int = 1
    """data-loading processes per run"""
    jobs: int = 2
    """runs side by side, each with cpu_count / jobs torch threads (two single-threaded small-model runs
    use two cores better than one two-threaded run)"""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.variants) - set(VARIANTS))
        if unknown:
            raise UserError(f"--variants: unknown {', '.join(unknown)} (known: {', '.join(VARIANTS)})")


def _scores(folder: Path) -> dict[str, float]:
    """The test figures of a report folder; the geometric mean is NaN where validation could not fit a
    calibration (the summary says why)."""
    summary = json.loads((folder / STAR_SUMMARY_JSON).read_text(encoding="utf-8"))
    openset = folder / STAR_OPENSET_SUMMARY_JSON
    if openset.is_file():
        gmean = json.loads(openset.read_text(encoding="utf-8"))["geometric_mean"]
    else:
        gmean = float("nan")
        log.warning("%s: no open-set report (%s)", folder, summary.get("openset", {}).get("reason"))
    return {"mAP": summary["mAP"], "CMC@1": summary["CMC@1"], "geometric_mean": gmean}


def train_variant(options: AblationOptions, name: str, seed: int) -> dict[str, Any]:
    """Train one variant with one seed; its test figures, then an evaluation timed on its own."""
    folder = options.output_dir / name / f"seed{seed}"
    cfg = FinetuneConfig(
        output_dir=folder,
        backbone=options.backbone,
        pretrained=False,
        image_size=options.image_size,
        epochs=options.epochs,
        eval_every=options.eval_every,
        lr=options.lr,
        warmup_epochs=1,
        workers=options.workers,
        seed=seed,
        split="time-cut",
        overwrite=True,
        **(BASELINE | VARIANTS[name]),
    )
    started = time.perf_counter()
    if run_finetune(cfg):
        raise SystemExit(f"variant {name} seed {seed} failed: see {folder}")
    train_s = time.perf_counter() - started
    row = score_tta(options, folder, "none", name, seed)
    return row | {"train_s": round(train_s, 1)} | _scores(folder)


def score_tta(options: AblationOptions, run: Path, tta: str, name: str, seed: int) -> dict[str, Any]:
    """``evaluate`` the run's best.pth with one TTA mode into its own folder (calibration refitted on
    validation under that mode); the figures and the evaluation's wall time."""
    folder = run / f"evaluate_tta_{tta}"
    started = time.perf_counter()
    run_evaluate(
        EvaluateOptions(
            checkpoint=run / BEST_CHECKPOINT, output_dir=folder, split="time-cut", tta=tta, workers=0
        )
    )
    eval_s = time.perf_counter() - started
    variant = name if tta == "none" else f"{name}+tta_{tta}"
    return {"variant": variant, "seed": seed, "eval_s": round(eval_s, 1), "train_s": 0.0} | _scores(folder)


def _mean_std(values: Sequence[float]) -> str:
    """mean ± std of the figures that exist (a missing open-set report is NaN), saying how many when some
    are missing."""
    known = [value for value in values if not math.isnan(value)]
    if not known:
        return "n/a"
    std = statistics.stdev(known) if len(known) > 1 else 0.0
    text = f"{statistics.fmean(known):.3f} ± {std:.3f}"
    return text if len(known) == len(values) else f"{text} ({len(known)} of {len(values)})"


def decide(runs: pd.DataFrame, baseline: str = "baseline") -> pd.DataFrame:
    """Per variant: mean ± std of each figure, and against the baseline the paired (same seed) mean gain of
    mAP and its standard deviation; ``adopt`` when that gain exceeds two standard deviations."""
    base = runs[runs["variant"] == baseline].set_index("seed")
    rows = []
    for variant, group in runs.groupby("variant", sort=False):
        group = group.set_index("seed")
        row: dict[str, Any] = {"variant": variant, "seeds": len(group)}
        for figure in FIGURES:
            row[figure] = _mean_std(group[figure].tolist())
        row["train_s"] = f"{group['train_s'].mean():.0f}"
        row["eval_s"] = f"{group['eval_s'].mean():.1f}"
        if variant != baseline:
            diff = (group["mAP"] - base["mAP"]).dropna()
            gain = float(diff.mean())
            spread = float(diff.std(ddof=1)) if len(diff) > 1 else float("nan")
            row["mAP gain"] = f"{gain:+.3f} ± {spread:.3f}"
            row["adopt"] = "yes" if len(diff) > 1 and gain > 2 * spread else "no"
        rows.append(row)
    return pd.DataFrame(rows)


def markdown(table: pd.DataFrame) -> str:
    """A GitHub table of the frame's text (pandas' own needs the optional tabulate package)."""
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(str(value) for value in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def plot(runs: pd.DataFrame, path: Path) -> None:
    """mAP and the open-set geometric mean per variant: each seed a dot, the mean a bar."""
    figure = Figure(figsize=(9, 4.5), layout="constrained")
    variants = list(dict.fromkeys(runs["variant"]))
    for axes, metric in zip(figure.subplots(1, 2), ("mAP", "geometric_mean"), strict=True):
        means = [runs.loc[runs["variant"] == v, metric].mean() for v in variants]
        axes.barh(variants, means, color="#9ecae1")
        for i, variant in enumerate(variants):
            values = runs.loc[runs["variant"] == variant, metric]
            axes.plot(values, [i] * len(values), "o", color="#08519c", markersize=4)
        axes.set_xlabel(f"test {metric}")
        axes.invert_yaxis()
    figure.suptitle("Ablation on the synthetic stars (time-cut, test side scored once)")
    figure.savefig(path, dpi=120)


def _table_order(row: dict[str, Any]) -> tuple[int, str, int]:
    """Variants in VARIANTS order, each followed by its TTA rows; seeds ascending."""
    base = row["variant"].split("+tta_")[0]
    return list(VARIANTS).index(base), row["variant"], row["seed"]


def train_one(options: AblationOptions, name: str, seed: int, threads: int) -> dict[str, Any]:
    """A pool job: one variant trained with one seed; its row."""
    torch.set_num_threads(threads)
    return train_variant(options, name, seed)


def score_one(options: AblationOptions, name: str, seed: int, tta: str, threads: int) -> dict[str, Any]:
    """A pool job: one trained variant's checkpoint scored with one TTA mode; its row."""
    torch.set_num_threads(threads)
    return score_tta(options, options.output_dir / name / f"seed{seed}", tta, name, seed)


def ablation(options: AblationOptions) -> int:
    """Run what ``ablation.csv`` does not hold yet (a later call adds variants or TTA modes), ``--jobs`` at
    a time: first the training runs, then the TTA scores of every trained --tta-variants checkpoint. Then
    write the table and the plot over every row."""
    options.output_dir.mkdir(parents=True, exist_ok=True)
    table_file = options.output_dir / "ablation.csv"
    rows = pd.read_csv(table_file).to_dict("records") if table_file.is_file() else []
    threads = max(1, (os.cpu_count() or 1) // options.jobs)

    def missing() -> tuple[list[tuple[str, int]], list[tuple[str, int, str]]]:
        done = {(row["variant"], row["seed"]) for row in rows}
        train = [(name, seed) for name in options.variants for seed in options.seeds]
        train = [job for job in train if job not in done]
        score = [
            (name, seed, tta)
            for name in options.tta_variants
            for seed in options.seeds
            for tta in options.tta
            if (name, seed) in done and (f"{name}+tta_{tta}", seed) not in done
        ]
        return train, score

    with ProcessPoolExecutor(options.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        for phase in (0, 1):  # the training runs, then the TTA scores of what they trained
            jobs = missing()[phase]
            job = train_one if phase == 0 else score_one
            futures = [pool.submit(job, options, *args, threads) for args in jobs]
            for finished, future in enumerate(as_completed(futures), 1):
                row = future.result()
                rows.append(row)
                pd.DataFrame(rows).to_csv(table_file, index=False)
                seconds = row["train_s"] + row["eval_s"]
                print(
                    f"[{finished}/{len(jobs)}] {row['variant']} seed {row['seed']}: test mAP "
                    f"{row['mAP']:.3f}, geometric mean {row['geometric_mean']:.3f}, {seconds:.0f} s",
                    flush=True,
                )
    runs = pd.DataFrame(sorted(rows, key=_table_order))
    table = decide(runs).fillna("")
    atomic_write_text(options.output_dir / "ablation.md", markdown(table))
    plot(runs, options.output_dir / "ablation.png")
    print(markdown(table), end="")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return ablation(parse_options(AblationOptions, argv, "bench/ablation.py", __doc__.splitlines()[0]))


if __name__ == "__main__":
    sys.exit(run_main(main))
