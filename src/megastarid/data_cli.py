"""``megastarid data <check|show-augmentations>``: inspect a data set before training on it."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from megastarid.core.console import run_main
from megastarid.core.errors import UserError
from megastarid.data.check import Source, export_split, find_unreadable, load_source, summarise
from megastarid.data.images import BadImageError, load_rgb
from megastarid.data.preview import draw_grid, pick_photos
from megastarid.data.readers import read_star_tree
from megastarid.data.synth import ensure_synthetic
from megastarid.data.transforms import build_star_train_transform, denormalise

log = logging.getLogger(__name__)


def _names(text: str) -> list[str]:
    """A comma-separated option value as a list (spelled as in the training commands)."""
    return [part.strip() for part in text.split(",") if part.strip()]


def _check_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="megastarid data check",
        description="Validate a data set, print a summary and optionally export its split.",
    )
    parser.add_argument(
        "--star-root", type=Path, help="star_dataset root (ROOT/<DATASET>/<individual>/<outing>/)"
    )
    parser.add_argument(
        "--csv",
        "--star-csv",
        type=Path,
        help="star metadata CSV (paths inside --star-root, default its folder)",
    )
    parser.add_argument("--wildlife-root", type=Path, help="WildlifeReID-10k root (with metadata.csv)")
    parser.add_argument("--identity-root", type=Path, help="one folder per identity (SeaStarReID2023 style)")
    parser.add_argument("--wildlife-datasets", type=_names, help="comma-separated source datasets to keep")
    parser.add_argument("--wildlife-species", type=_names, help="comma-separated species to keep")
    parser.add_argument(
        "--gallery-fraction", type=float, default=0.8, help="stars: share of outings in gallery"
    )
    parser.add_argument(
        "--export-split", type=Path, metavar="FILE.csv", help="write the catalogue with its split"
    )
    parser.add_argument(
        "--no-open", action="store_true", help="skip decoding every photo (faster, less thorough)"
    )
    parser.add_argument(
        "--workers", type=int, default=min(8, os.cpu_count() or 1), help="threads decoding photos"
    )
    return parser


def _source(args: argparse.Namespace) -> Source:
    given = [name for name in ("star_root", "csv", "wildlife_root", "identity_root") if getattr(args, name)]
    if not given:
        raise UserError(
            "say which data set to check: --star-root DIR, --csv FILE, --wildlife-root DIR or "
            "--identity-root DIR"
        )
    if len(given) > 1 and set(given) != {"star_root", "csv"}:
        options = " and ".join("--" + name.replace("_", "-") for name in given)
        raise UserError(f"check one data set at a time (got {options})")
    if (args.wildlife_datasets or args.wildlife_species) and not args.wildlife_root:
        raise UserError("--wildlife-datasets and --wildlife-species need --wildlife-root")
    if args.wildlife_root:
        return Source("wildlife", args.wildlife_root)
    if args.identity_root:
        return Source("identity folders", args.identity_root)
    if args.csv:
        return Source("stars", args.star_root or args.csv.parent, args.csv)
    return Source("stars", args.star_root)


def check_main(argv: Sequence[str] | None = None) -> int:
    args = _check_parser().parse_args(argv)
    source = _source(args)
    df = load_source(source, args.wildlife_datasets, args.wildlife_species, args.gallery_fraction)
    unreadable = None if args.no_open else find_unreadable(df["path"].tolist(), args.workers)
    lines, reasons = summarise(df, unreadable or {}, source)
    print("\n".join(lines))
    if args.export_split:
        export_split(df, unreadable, args.export_split)
        print(f"split written to {args.export_split}")
    if reasons:
        raise UserError(f"{source.csv or source.root} is not usable: {reasons[0]}")
    print("usable: yes" if unreadable is not None else "usable: yes (photos not opened: --no-open)")
    return 0


def _preview_parser() -> argparse.ArgumentParser:
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


def show_augmentations_main(argv: Sequence[str] | None = None) -> int:
    args = _preview_parser().parse_args(argv)
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
