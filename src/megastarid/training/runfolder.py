"""The run folder: one run at a time holds it, a run is never clobbered silently, ``--overwrite`` clears
exactly the files a run writes; its history table.

A run holds its folder with an OS lock (``core.locks`` on ``.run.lock``, the holder's pid inside) from
before it writes anything until it ends; a stale lock never blocks a retry.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from megastarid.core.errors import UserError
from megastarid.core.files import remove_stale_temps, write_csv
from megastarid.core.locks import LockBusy, lock_holder, take_lock
from megastarid.core.runfiles import (
    BEST_CHECKPOINT,
    CONFIG_YAML,
    HISTORY_CSV,
    LAST_CHECKPOINT,
    LOSS_KEYS,
    RUN_LOCK,
    RUN_OUTPUT_DIRS,
    RUN_OUTPUT_FILES,
)

log = logging.getLogger(__name__)

#: files whose presence means the folder already holds a run
RUN_MARKERS = (CONFIG_YAML, LAST_CHECKPOINT, BEST_CHECKPOINT, HISTORY_CSV)
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
    """Read-only check, done before any work: a run is only replaced or continued when the user says so,
    and never while another run holds the folder."""
    holder = run_folder_holder(path)
    if holder is not None:
        raise _in_use(path, holder)
    _check_contents(path, resume, overwrite)


def _check_contents(path: Path, resume: bool, overwrite: bool) -> None:
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


def _in_use(path: Path, holder: str) -> UserError:
    return UserError(
        f"--output-dir {path} is in use by another run (pid {holder}): wait for it to end, or stop it "
        "and --resume"
    )


def run_folder_holder(path: Path) -> str | None:
    """The pid (as written in the lock file, or "unknown") of the live process holding the folder's lock;
    None when no one holds it. Creates nothing."""
    return lock_holder(path / RUN_LOCK)


def lock_run_folder(path: Path) -> int:
    """Take the folder's lock without waiting; returns the open lock file (close it to release the lock).

    Another live run holding it is a one-line error naming its pid; a folder where no file can be
    created is one naming the folder.
    """
    try:
        return take_lock(path / RUN_LOCK)
    except LockBusy as busy:
        raise _in_use(path, busy.holder) from None
    except OSError as err:
        raise UserError(f"--output-dir {path}: cannot write there ({err.strerror or err})") from None


@contextlib.contextmanager
def hold_run_folder(path: Path, resume: bool, overwrite: bool) -> Iterator[Path]:
    """Create and lock the run folder for the ``with`` block, then make it ready for the run.

    Under the lock: the folder is checked again (a run that finished meanwhile is not replaced), the
    temp files of killed writes of the run's own files are removed, and ``--overwrite`` removes exactly
    the files a run writes (``RUN_OUTPUT_FILES``, ``RUN_OUTPUT_DIRS``), never anything else.
    """
    check_run_folder(path, resume, overwrite)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"--output-dir {path}: cannot create it ({err.strerror or err})") from None
    fd = lock_run_folder(path)
    try:
        _check_contents(path, resume, overwrite)  # again, now that no other run can change the folder
        stale = remove_stale_temps(path, RUN_OUTPUT_FILES)
        if stale:
            log.info("removed %d temporary file(s) of interrupted writes in %s", len(stale), path)
        if overwrite and not resume:
            clear_run_files(path)
        yield path
    finally:
        os.close(fd)


def clear_run_files(path: Path) -> None:
    """Remove the files and folders a run writes, by name; user files in the folder stay."""
    for name in RUN_OUTPUT_FILES:
        target = path / name
        if target.is_symlink() or target.is_file():
            target.unlink()
    for name in RUN_OUTPUT_DIRS:
        target = path / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)


def write_history(path: Path, rows: list[dict[str, Any]]) -> None:
    """``history.csv``: one row per epoch (epoch 0 = before training); empty cells where not measured."""
    table = pd.DataFrame(rows)
    first = [c for c in HISTORY_COLUMNS if c in table]
    table = table[first + [c for c in table.columns if c not in first]]
    write_csv(path, table)
