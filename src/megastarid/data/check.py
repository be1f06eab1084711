"""``megastarid data check``: read a data set the way training will, open every photo, and say whether it is
usable, so problems surface in seconds rather than hours into a run.

Prints a short summary (images, identities, outings, datasets, split sizes, single-photo identities,
unreadable files); ``--export-split FILE.csv`` writes the catalogue with its split for inspection (and it can
be fed back with ``--csv``). Exits 0 when usable, else prints ``megastarid: error: <reason>`` and exits 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from megastarid.console import run_main
from megastarid.data.catalogue import (
    CATALOGUE_COLUMNS,
    examples,
    load_star_catalogue,
    load_wildlife_catalogue,
    read_issues,
)
from megastarid.data.images import BadImageError, load_rgb
from megastarid.data.readers import read_identity_folders
from megastarid.data.splits import audit_split
from megastarid.errors import UserError

#: Decode size used to test a photo: small enough that JPEGs decode at 1/8 scale, yet the whole file is read.
PROBE_SIDE = 64


@dataclass(frozen=True)
class Source:
    """Which data set to check and how it is laid out."""

    kind: str  # "stars", "wildlife" or "identity folders"
    root: Path
    csv: Path | None = None


def find_unreadable(paths: Sequence[str], workers: int = 4) -> dict[str, str]:
    """Decode every file (in threads: Pillow releases the GIL while decoding); path -> reason for failures."""

    def probe(path: str) -> str | None:
        try:
            load_rgb(path, PROBE_SIDE)
        except BadImageError as err:
            return str(err).removeprefix(f"cannot read image {path}: ")
        return None

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = tqdm(
            pool.map(probe, paths), total=len(paths), desc="opening photos", unit="img", disable=None
        )
        return {path: reason for path, reason in zip(paths, results, strict=True) if reason is not None}


def load_source(
    source: Source, datasets: Sequence[str] | None, species: Sequence[str] | None, gallery_fraction: float
) -> pd.DataFrame:
    """The catalogue exactly as training reads it."""
    if source.kind == "stars":
        return load_star_catalogue(source.root, source.csv, gallery_fraction)
    if source.kind == "wildlife":
        return load_wildlife_catalogue(source.root, datasets=datasets, species=species)
    return read_identity_folders(source.root)


def summarise(df: pd.DataFrame, unreadable: dict[str, str], source: Source) -> tuple[list[str], list[str]]:
    """The summary lines and the reasons (possibly none) why the set cannot be trained and evaluated on."""
    readable = df[~df["path"].isin(unreadable)]
    photos = readable["identity"].value_counts()
    outings = df[["identity", "folder"]].drop_duplicates()
    datasets = df["dataset"].value_counts()
    issues = read_issues(df)
    where = f"{source.csv} (root {source.root})" if source.csv else str(source.root)
    lines = [
        f"{source.kind} data set at {where}",
        f"  images       {len(df)} ({len(unreadable)} unreadable)",
        f"  identities   {df['identity'].nunique()} ({int((photos == 1).sum())} with one readable photo)",
    ]
    if source.kind != "wildlife":
        undated = outings.merge(df[df["date"].isna()][["identity", "folder"]].drop_duplicates())
        lines.append(f"  outings      {len(outings)} ({len(undated)} without a date)")
    lines.append(f"  datasets     {len(datasets)}: {examples([f'{n} ({c})' for n, c in datasets.items()])}")
    species = df.loc[df["species"] != "", "species"].value_counts()
    if len(species):
        lines.append(f"  species      {len(species)}: {examples([f'{n} ({c})' for n, c in species.items()])}")
    reasons = []
    if readable.empty:
        reasons.append("none of the photos can be read")
    elif (photos >= 2).sum() == 0:
        reasons.append("no identity has two or more readable photos, so there is nothing to learn from")
    if source.kind != "identity folders":
        lines.extend(_split_lines(df, readable, source))
        reasons.extend(_split_reasons(readable, source))
    for kind, label in (
        ("empty_folders", "empty folders"),
        ("ignored_files", "ignored files"),
        ("missing_files", "listed but missing"),
    ):
        if issues.get(kind):
            lines.append(f"  {label:<12} {len(issues[kind])}: {examples(issues[kind], 3)}")
    if unreadable:
        lines.append("unreadable files:")
        lines.extend(f"  {path}: {reason}" for path, reason in list(unreadable.items())[:20])
        if len(unreadable) > 20:
            lines.append(f"  … and {len(unreadable) - 20} more (see --export-split, column 'readable')")
    return lines, reasons


def _split_lines(df: pd.DataFrame, readable: pd.DataFrame, source: Source) -> list[str]:
    gallery, query = readable[readable["split"] == "train"], readable[readable["split"] == "test"]
    names = ("gallery/train", "query/test") if source.kind == "stars" else ("train", "test")
    lines = [
        f"  split        {names[0]} {len(gallery)} photos of {gallery['identity'].nunique()} identities; "
        f"{names[1]} {len(query)} photos of {query['identity'].nunique()} identities"
    ]
    unseen = set(query["identity"]) - set(gallery["identity"])
    if unseen:
        lines.append(f"  {len(unseen)} query identities have no gallery photo (their queries are not scored)")
    if source.kind != "stars":
        return lines  # official splits carry no outings to audit
    audit = audit_split(df)
    if audit.shared_outings:
        lines.append(
            f"  warning: {len(audit.shared_outings)} outing(s) on both sides, e.g. {audit.shared_outings[0]}"
        )
    if audit.early_queries:
        lines.append(
            f"  warning: {len(audit.early_queries)} query photo(s) not later than their gallery photos"
        )
    return lines


def _split_reasons(readable: pd.DataFrame, source: Source) -> list[str]:
    if not (readable["split"] == "train").any():
        return ["the split has no readable gallery/train photos"]
    if source.kind == "stars" and not (readable["split"] == "test").any():
        return ["the split has no readable query photos (no identity was photographed on two different days)"]
    return []


def export_split(df: pd.DataFrame, unreadable: dict[str, str] | None, out: Path) -> None:
    """Write the catalogue (its columns first) with a ``readable`` column when the photos were opened."""
    table = df[list(CATALOGUE_COLUMNS)].copy()
    if unreadable is not None:
        table["readable"] = ~table["path"].isin(unreadable)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(out, index=False)
    except OSError as err:
        raise UserError(f"cannot write --export-split {out}: {err.strerror}") from err


def _names(text: str) -> list[str]:
    """A comma-separated option value as a list (spelled as in the training commands)."""
    return [part.strip() for part in text.split(",") if part.strip()]


def _parser() -> argparse.ArgumentParser:
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


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(run_main(main))
