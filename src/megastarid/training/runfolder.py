"""The run folder: never clobber a run silently, clear it on ``--overwrite``, write small files atomically."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from megastarid.core.errors import UserError

#: files whose presence means the folder already holds a run
RUN_MARKERS = ("config.yaml", "last.pth", "best.pth", "history.csv")
#: everything a run writes (star_* reports are matched by prefix)
RUN_FILES = (*RUN_MARKERS, "run_summary.json", "bad_images.txt", "training_curves.png")
RUN_DIRS = ("tensorboard",)
#: the leading history.csv columns (the metrics follow)
HISTORY_COLUMNS = (
    "epoch",
    "loss",
    "circle_loss",
    "triplet_loss",
    "lr",
    "backbone_lr",
    "images_per_s",
    "bad_images",
    "skipped_steps",
)


def check_run_folder(path: Path, resume: bool, overwrite: bool) -> None:
    """Read-only check, done before any work: a run is only replaced or continued when the user says so."""
    if resume:
        if not (path / "last.pth").is_file():
            raise UserError(
                f"--resume: {path / 'last.pth'} does not exist (nothing to resume in --output-dir)"
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
        if child.is_file() and (child.name in RUN_FILES or child.name.startswith("star_")):
            child.unlink()
        elif child.is_dir() and child.name in RUN_DIRS:
            shutil.rmtree(child)


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file in the same folder + rename, so readers never see half a file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_history(path: Path, rows: list[dict[str, Any]]) -> None:
    """``history.csv``: one row per epoch (epoch 0 = before training); empty cells where not measured."""
    table = pd.DataFrame(rows)
    first = [c for c in HISTORY_COLUMNS if c in table]
    table = table[first + [c for c in table.columns if c not in first]]
    atomic_write_text(path, table.to_csv(index=False))


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
