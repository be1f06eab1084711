"""The run folder: never clobber a run silently, clear it on ``--overwrite``; its history table."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from megastarid.core.errors import UserError
from megastarid.core.files import atomic_write_text
from megastarid.core.runfiles import (
    BAD_IMAGES_TXT,
    BEST_CHECKPOINT,
    CONFIG_YAML,
    HISTORY_CSV,
    LAST_CHECKPOINT,
    LOSS_KEYS,
    RUN_SUMMARY_JSON,
    STAR_PREFIX,
    TENSORBOARD_DIR,
    TRAINING_CURVES_PNG,
)

#: files whose presence means the folder already holds a run
RUN_MARKERS = (CONFIG_YAML, LAST_CHECKPOINT, BEST_CHECKPOINT, HISTORY_CSV)
#: everything a run writes (star_* reports are matched by prefix)
RUN_FILES = (*RUN_MARKERS, RUN_SUMMARY_JSON, BAD_IMAGES_TXT, TRAINING_CURVES_PNG)
RUN_DIRS = (TENSORBOARD_DIR,)
#: the leading history.csv columns (the metrics follow)
HISTORY_COLUMNS = (
    "epoch",
    *LOSS_KEYS,
    "lr",
    "backbone_lr",
    "images_per_s",
    "bad_images",
    "skipped_steps",
)


def check_run_folder(path: Path, resume: bool, overwrite: bool) -> None:
    """Read-only check, done before any work: a run is only replaced or continued when the user says so."""
    if resume:
        if not (path / LAST_CHECKPOINT).is_file():
            raise UserError(
                f"--resume: {path / LAST_CHECKPOINT} does not exist (nothing to resume in --output-dir)"
            )
        return
    if path.exists() and not path.is_dir():
        raise UserError(f"--output-dir {path} is a file, not a folder")
    if not overwrite and any((path / name).exists() for name in RUN_MARKERS):
        raise UserError(
            f"--output-dir {path} already holds a run: pass --resume to continue it "
            "or --overwrite to replace it"
        )


def prepare_run_folder(path: Path, overwrite: bool) -> None:
    """Create the folder; with ``--overwrite`` remove only the files a run writes (never anything else)."""
    path.mkdir(parents=True, exist_ok=True)
    if not overwrite:
        return
    for child in path.iterdir():
        if child.is_file() and (child.name in RUN_FILES or child.name.startswith(STAR_PREFIX)):
            child.unlink()
        elif child.is_dir() and child.name in RUN_DIRS:
            shutil.rmtree(child)


def write_history(path: Path, rows: list[dict[str, Any]]) -> None:
    """``history.csv``: one row per epoch (epoch 0 = before training); empty cells where not measured."""
    table = pd.DataFrame(rows)
    first = [c for c in HISTORY_COLUMNS if c in table]
    table = table[first + [c for c in table.columns if c not in first]]
    atomic_write_text(path, table.to_csv(index=False))
