"""Ablation of the accuracy options: each alone and the promising combination against today's default.

Every variant trains star-only from scratch (a small backbone at a small size, no download) on the
built-in synthetic stars under the time-cut protocol, once per seed. Validation picks ``best.pth`` and
fits the open-set threshold; the test side, with its newly recruited individuals, is scored once, so no
option can win by test-set selection. Test-time augmentation changes no weights, so the TTA modes are
scored on the default variant's own checkpoints by ``evaluate`` (which refits the calibration on
validation under that mode); ``--tta-variants`` names the variants so scored.

A default changes only when the mean paired gain over the default (same seed) exceeds two standard
deviations of those paired differences; the table says so per variant. Results go to ``--output-dir``:
``ablation.csv`` (one row per run), ``ablation.md`` (the table) and ``ablation.png``.
"""

from __future__ import annotations

import json
import logging
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
from megastarid.core.options import Ints, Names, parse_options
from megastarid.core.runfiles import BEST_CHECKPOINT, STAR_OPENSET_SUMMARY_JSON, STAR_SUMMARY_JSON
from megastarid.evaluate import EvaluateOptions
from megastarid.evaluate import run as run_evaluate
from megastarid.training.config import FinetuneConfig
from megastarid.training.strategies import run_finetune

log = logging.getLogger(__name__)

#: training variants: name -> TrainConfig fields that differ from today's default
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
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
    tta_variants: Names = ("default",)
    """variants whose checkpoints are also scored with each --tta mode (e.g. default,gem)"""
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
    summary = json.loads((folder / STAR_SUMMARY_JSON).read_text(encoding="utf-8"))
    openset = json.loads((folder / STAR_OPENSET_SUMMARY_JSON).read_text(encoding="utf-8"))
    return {"mAP": summary["mAP"], "CMC@1": summary["CMC@1"], "geometric_mean": openset["geometric_mean"]}


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
        **VARIANTS[name],
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
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {std:.3f}"


def decide(runs: pd.DataFrame, baseline: str = "default") -> pd.DataFrame:
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


def run_one(options: AblationOptions, name: str, seed: int, threads: int) -> list[dict[str, Any]]:
    """One variant and seed, then (for the default) its TTA modes: the rows they add to the table."""
    torch.set_num_threads(threads)
    rows = [train_variant(options, name, seed)]
    if name in options.tta_variants:
        run = options.output_dir / name / f"seed{seed}"
        rows.extend(score_tta(options, run, tta, name, seed) for tta in options.tta)
    return rows


def ablation(options: AblationOptions) -> int:
    """Run what ``ablation.csv`` does not hold yet (a later call adds variants), ``--jobs`` at a time,
    then write the table and the plot over every row."""
    options.output_dir.mkdir(parents=True, exist_ok=True)
    table_file = options.output_dir / "ablation.csv"
    rows = pd.read_csv(table_file).to_dict("records") if table_file.is_file() else []
    done = {(row["variant"], row["seed"]) for row in rows}
    todo = [(name, seed) for name in options.variants for seed in options.seeds if (name, seed) not in done]
    threads = max(1, (os.cpu_count() or 1) // options.jobs)
    with ProcessPoolExecutor(options.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(run_one, options, name, seed, threads) for name, seed in todo]
        for finished, future in enumerate(as_completed(futures), 1):
            added = future.result()
            rows.extend(added)
            pd.DataFrame(rows).to_csv(table_file, index=False)
            trained = added[0]
            print(
                f"[{finished}/{len(todo)}] {trained['variant']} seed {trained['seed']}: test mAP "
                f"{trained['mAP']:.3f}, geometric mean {trained['geometric_mean']:.3f}, "
                f"{trained['train_s']:.0f} s training",
                flush=True,
            )
    scored = {(row["variant"], row["seed"]) for row in rows}
    for name in options.tta_variants:  # variants trained before they were named here
        for seed in options.seeds:
            run = options.output_dir / name / f"seed{seed}"
            for tta in options.tta:
                if (name, seed) in scored and (f"{name}+tta_{tta}", seed) not in scored:
                    rows.append(score_tta(options, run, tta, name, seed))
                    pd.DataFrame(rows).to_csv(table_file, index=False)
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
