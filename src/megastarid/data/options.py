"""Which data set a command reads: the ``--star-*`` and ``--wildlife-*`` options, declared once.

Mixins for the option dataclasses of every command that reads stars or WildlifeReID-10k (training,
evaluation, data check, the augmentation preview), so the same flags mean the same thing everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro

from megastarid.core.options import NamesOrNone


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
