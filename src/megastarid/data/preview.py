"""``megastarid data show-augmentations``: a grid of star photos beside what training makes of them.

Each row is one photo (different identities first): the photo as decoded, then several draws of the star
training transform, so a user can judge whether the underwater augmentation is too weak or too wild.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from megastarid.core.errors import UserError

log = logging.getLogger(__name__)

CELL_INCHES = 1.8


def pick_photos(catalogue: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """``n`` random photos, covering as many identities as possible before taking a second from any."""
    shuffled = catalogue.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    turn = shuffled.groupby("identity", sort=False).cumcount()
    return shuffled.assign(turn=turn).sort_values("turn", kind="stable").head(n)


def draw_grid(rows: list[tuple[str, np.ndarray, list[np.ndarray]]], out: Path) -> None:
    """Save a grid: per row a label, the original and its augmented versions."""
    columns = 1 + len(rows[0][2])
    figure = Figure(figsize=(CELL_INCHES * columns, CELL_INCHES * len(rows)), layout="constrained")
    axes = figure.subplots(len(rows), columns, squeeze=False)
    for r, (label, original, augmented) in enumerate(rows):
        for c, pixels in enumerate([original, *augmented]):
            axis = axes[r][c]
            axis.imshow(pixels)
            axis.set_xticks([])
            axis.set_yticks([])
            if r == 0:
                axis.set_title("original" if c == 0 else f"augmented {c}", fontsize=9)
        axes[r][0].set_ylabel(label, fontsize=7)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        figure.savefig(out, dpi=100)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot write --out {out}: {err}") from err
