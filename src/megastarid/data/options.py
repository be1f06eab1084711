"""Which data set a command reads and how it is split: the ``--star-*``, ``--wildlife-*`` and split
options, declared once.

Mixins for the option dataclasses of every command that reads stars or WildlifeReID-10k (training,
evaluation, data check, the augmentation preview), so the same flags mean the same thing everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import pandas as pd
import tyro

from megastarid.core.errors import UserError
from megastarid.core.options import NamesOrNone, Options
from megastarid.data.splits import SplitPlan


@dataclass
class StarDataOptions:
    """star_dataset: a photo tree, or a metadata CSV with paths inside the tree."""

    star_root: Path | None = None
    """star_dataset root, ROOT/<DATASET>/<individual>/<outing>/*.jpg (None: the built-in synthetic stars)"""
    star_csv: Annotated[Path | None, tyro.conf.arg(aliases=("--csv",))] = None
    """star metadata CSV (identity, path; optional date, outing, split ...), paths inside --star-root"""


@dataclass
class WildlifeOptions:
    """WildlifeReID-10k and which part of it to use."""

    wildlife_root: Path | None = None
    """WildlifeReID-10k root, with metadata.csv and images/ (training without it: the synthetic set)"""
    wildlife_datasets: NamesOrNone = None
    """source datasets to keep, comma-separated (None: all)"""
    wildlife_species: NamesOrNone = None
    """species to keep, comma-separated (None: all)"""


@dataclass
class ValidationOptions(Options):
    """How much of the train side becomes validation: it chooses, it never trains (DESIGN §3)."""

    val_fraction: float = 0.1
    """validation photos carved from the train side, as a share of the train photos (stars: each identity's
    latest train outing, and under the open protocols a few whole identities; WildlifeReID-10k: one photo
    of identities that can spare one, per source dataset); validation chooses best.pth, early stopping and
    the calibration (0: no validation, best.pth is the last epoch)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.val_fraction < 1:
            raise UserError(f"--val-fraction must be at least 0 and below 1, got {self.val_fraction}")


@dataclass
class SplitOptions(ValidationOptions):
    """How star_dataset is split into train (the gallery), validation and test (DESIGN §3)."""

    split: Literal["temporal", "time-cut", "identity-holdout"] = "temporal"
    """temporal: each identity's later outings are the test side (closed set); time-cut: everything on or
    after --cut-date is the test side, individuals first seen then are new; identity-holdout: the temporal
    split plus --new-fraction of the identities held out whole as new"""
    cut_date: str | None = None
    """time-cut: the first day of the test side, YYYY-MM-DD (None: the day that puts ~20 % of photos after)"""
    new_fraction: float = 0.2
    """identity-holdout: share of the identities moved whole to the test side"""
    gallery_fraction: float = 0.8
    """share of each identity's outings (oldest first) on the train/gallery side of the temporal split"""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.split_plan()

    def split_plan(self) -> SplitPlan:
        """The plan these options describe (a bad value is a one-line error naming its option). Its seed is
        fixed: a split belongs to the data and the protocol, not to one training run, so every run and
        every evaluation of a set under the same options sees the same sides."""
        cut = None
        if self.cut_date is not None:
            if self.split != "time-cut":
                raise UserError("--cut-date needs --split time-cut")
            try:
                cut = pd.Timestamp(str(self.cut_date))
            except ValueError:
                raise UserError(
                    f"--cut-date must be a date such as 2024-03-23, got {self.cut_date!r}"
                ) from None
        if not 0 < self.gallery_fraction < 1:
            raise UserError(f"--gallery-fraction must be between 0 and 1, got {self.gallery_fraction}")
        return SplitPlan(self.split, self.gallery_fraction, cut, self.new_fraction, self.val_fraction)
