"""The two catalogues the trainers and the evaluator read: star_dataset split by a ``SplitPlan`` (train,
validation, test), and WildlifeReID-10k with its official split and filters."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from megastarid.data.readers import read_star_csv, read_star_tree, read_wildlife
from megastarid.data.splits import SplitPlan, split_catalogue

#: the plain temporal split with no validation side, for callers that only read a set
PLAIN_TEMPORAL = SplitPlan(val_fraction=0.0)


def load_star_catalogue(
    root: Path, csv: Path | None = None, plan: SplitPlan = PLAIN_TEMPORAL
) -> pd.DataFrame:
    """Read star_dataset (the tree under ``root``, or the metadata ``csv`` with paths inside ``root``) and
    split it by ``plan``: the one call trainers, the evaluator and ``data check`` use."""
    df = read_star_csv(csv, root) if csv is not None else read_star_tree(root)
    return split_catalogue(df, plan)


def load_wildlife_catalogue(
    root: Path,
    datasets: Sequence[str] | None = None,
    species: Sequence[str] | None = None,
    exclude_datasets: Sequence[str] = ("SeaStarReID2023",),
) -> pd.DataFrame:
    """Read WildlifeReID-10k (``root/metadata.csv``) with its official split and the given filters."""
    return read_wildlife(root, datasets=datasets, species=species, exclude_datasets=exclude_datasets)
