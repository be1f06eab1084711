"""``megastarid data show-augmentations``: a grid of star photos beside what training makes of them.

Each row is one photo (different identities first): the photo as decoded, then several draws of the star
training transform, so a user can judge whether the underwater augmentation is too weak or too wild.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from megastarid.console import run_main
from megastarid.data.images import BadImageError, load_rgb
from megastarid.data.readers import read_star_tree
from megastarid.data.transforms import build_star_train_transform, denormalise
from megastarid.errors import UserError
from megastarid.synth import ensure_synthetic

log = logging.getLogger(__name__)

CELL_INCHES = 1.8


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="megastarid data show-augmentations",
        description="Draw star photos (one per row) beside augmented versions from the star training "
        "transform and save the grid as an image.",
    )
    parser.add_argument(
        "--star-root", type=Path, help="star_dataset root (default: the built-in synthetic stars)"
    )
    parser.add_argument("--out", type=Path, required=True, help="image file to write, e.g. grid.png")
    parser.add_argument("--n", type=int, default=8, help="number of photos (rows; default 8)")
    parser.add_argument("--variants", type=int, default=5, help="augmented versions per photo (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="chooses the photos and the augmentations")
    parser.add_argument("--image-size", type=int, default=224, help="training image size in px (default 224)")
    return parser


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


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    for option, value in (("--n", args.n), ("--variants", args.variants)):
        if value < 1:
            raise UserError(f"{option} must be >= 1, got {value}")
    transform = build_star_train_transform(args.image_size)
    root = args.star_root if args.star_root is not None else ensure_synthetic("stars")
    photos = pick_photos(read_star_tree(root), args.n, args.seed)
    torch.manual_seed(args.seed)
    rows = []
    for photo in photos.itertuples():
        try:
            image = load_rgb(photo.path, min_side=args.image_size)
        except BadImageError as err:
            log.warning("skipped: %s", err)
            continue
        augmented = [denormalise(transform(image)) for _ in range(args.variants)]
        rows.append((f"{photo.identity}\n{photo.folder}", np.asarray(image), augmented))
    if not rows:
        raise UserError(f"none of the {len(photos)} photos picked under {root} could be read")
    draw_grid(rows, args.out)
    print(f"wrote {args.out} ({len(rows)} photos x {args.variants} augmentations at {args.image_size} px)")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
