"""``megastarid data <check|show-augmentations>``: inspect a data set before training on it."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from megastarid.core.console import run_main
from megastarid.core.errors import UserError
from megastarid.core.files import display_text
from megastarid.core.options import Seed, flag
from megastarid.core.parsing import parse_options
from megastarid.data.check import Source, export_split, find_unreadable, load_source, summarise
from megastarid.data.images import BadImageError, load_rgb
from megastarid.data.options import SplitOptions, StarDataOptions, WildlifeOptions
from megastarid.data.preview import draw_grid, pick_photos
from megastarid.data.readers import read_star_csv, read_star_tree
from megastarid.data.synth import ensure_synthetic
from megastarid.data.transforms import build_star_train_transform, denormalise

log = logging.getLogger(__name__)


@dataclass
class CheckOptions(StarDataOptions, SplitOptions, WildlifeOptions):
    """Which data set to check (one of them) and how thoroughly."""

    identity_root: Path | None = None
    """one folder per identity, ROOT/<identity>/*.jpg (SeaStarReID2023 style)"""
    export_split: Path | None = None
    """write the catalogue with its split to this CSV file"""
    open: bool = True
    """decode every photo (--no-open: faster, less thorough)"""
    workers: int = min(8, os.cpu_count() or 1)
    """threads decoding photos"""

    def __post_init__(self) -> None:
        super().__post_init__()
        names = ("star_root", "star_csv", "wildlife_root", "identity_root")
        given = [name for name in names if getattr(self, name)]
        if not given:
            raise UserError(
                "say which data set to check: --star-root DIR, --csv FILE, --wildlife-root DIR or "
                "--identity-root DIR"
            )
        if len(given) > 1 and set(given) != {"star_root", "star_csv"}:
            options = " and ".join(flag(name) for name in given)
            raise UserError(f"check one data set at a time (got {options})")
        if (self.wildlife_datasets or self.wildlife_species) and not self.wildlife_root:
            raise UserError("--wildlife-datasets and --wildlife-species need --wildlife-root")

    def source(self) -> Source:
        if self.wildlife_root:
            return Source("wildlife", self.wildlife_root)
        if self.identity_root:
            return Source("identity folders", self.identity_root)
        if self.star_csv:
            return Source("stars", self.star_root or self.star_csv.parent, self.star_csv)
        assert self.star_root is not None
        return Source("stars", self.star_root)


def check(options: CheckOptions) -> int:
    """Read the data set, open its photos, print the summary; a ``UserError`` when it is not usable."""
    source = options.source()
    datasets, species = options.wildlife_datasets or None, options.wildlife_species or None
    df = load_source(source, datasets, species, options.split_plan())
    unreadable = find_unreadable(df["path"].tolist(), options.workers) if options.open else None
    lines, reasons = summarise(df, unreadable or {}, source)
    print(display_text("\n".join(lines)))  # a file name that is not UTF-8 must not fail the print
    if options.export_split:
        export_split(df, unreadable, options.export_split)
        print(display_text(f"split written to {options.export_split}"))
    if reasons:
        raise UserError(f"{source.csv or source.root} is not usable: {reasons[0]}")
    print("usable: yes" if unreadable is not None else "usable: yes (photos not opened: --no-open)")
    return 0


def check_main(argv: Sequence[str] | None = None) -> int:
    description = "Validate a data set, print a summary and optionally export its split."
    return check(parse_options(CheckOptions, argv, "megastarid data check", description))


@dataclass(kw_only=True)
class PreviewOptions(StarDataOptions):
    """Which photos to draw and how many augmented versions of each."""

    out: Path
    """image file to write, e.g. grid.png"""
    n: int = 8
    """number of photos (rows)"""
    variants: int = 5
    """augmented versions per photo"""
    seed: Seed = 0
    """chooses the photos and the augmentations, 0 to 2**32-1"""
    image_size: int = 224
    """training image size in pixels"""

    def __post_init__(self) -> None:
        for name in ("n", "variants"):
            if getattr(self, name) < 1:
                raise UserError(f"{flag(name)} must be >= 1, got {getattr(self, name)}")
        if self.star_csv is not None and self.star_root is None:
            raise UserError("--star-csv needs --star-root (the folder its paths are relative to)")


def show_augmentations(options: PreviewOptions) -> int:
    """Draw the photos beside their augmented versions and save the grid."""
    transform = build_star_train_transform(options.image_size)
    root = options.star_root if options.star_root is not None else ensure_synthetic("stars")
    table = read_star_csv(options.star_csv, root) if options.star_csv is not None else read_star_tree(root)
    photos = pick_photos(table, options.n, options.seed)
    torch.manual_seed(options.seed)
    rows = []
    for photo in photos.itertuples():
        try:
            image = load_rgb(str(photo.path), min_side=options.image_size)
        except BadImageError as err:
            log.warning("skipped: %s", err)
            continue
        augmented = [denormalise(transform(image)) for _ in range(options.variants)]
        rows.append((f"{photo.identity}\n{photo.folder}", np.asarray(image), augmented))
    if not rows:
        raise UserError(f"none of the {len(photos)} photos picked under {root} could be read")
    draw_grid(rows, options.out)
    size = options.image_size
    print(f"wrote {options.out} ({len(rows)} photos x {options.variants} augmentations at {size} px)")
    return 0


def show_augmentations_main(argv: Sequence[str] | None = None) -> int:
    description = (
        "Draw star photos (one per row) beside augmented versions from the star training transform and "
        "save the grid as an image."
    )
    options = parse_options(PreviewOptions, argv, "megastarid data show-augmentations", description)
    return show_augmentations(options)


SUBCOMMANDS = {"check": check_main, "show-augmentations": show_augmentations_main}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in SUBCOMMANDS:
        names = "|".join(SUBCOMMANDS)
        print(f"usage: megastarid data {{{names}}} [options]", file=sys.stderr)
        return 0 if args[:1] in (["-h"], ["--help"]) else 2
    return int(SUBCOMMANDS[args[0]](args[1:]) or 0)


if __name__ == "__main__":
    sys.exit(run_main(main))
