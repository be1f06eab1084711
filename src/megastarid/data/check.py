"""``megastarid data check``: read a data set the way training will, open every photo, and say whether it is
usable, so problems surface in seconds rather than hours into a run.

Prints a short summary (images, identities, outings, datasets, split sizes, single-photo identities,
unreadable files); ``--export-split FILE.csv`` writes the catalogue with its split for inspection (and it can
be fed back with ``--csv``). Exits 0 when usable, else prints ``megastarid: error: <reason>`` and exits 2.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from megastarid.core.errors import UserError
from megastarid.core.files import write_csv
from megastarid.data.catalogue import (
    CATALOGUE_COLUMNS,
    examples,
    read_issues,
)
from megastarid.data.images import BadImageError, load_rgb
from megastarid.data.readers import read_identity_folders
from megastarid.data.sources import load_star_catalogue, load_wildlife_catalogue
from megastarid.data.splits import SplitPlan, audit_split, carve_wildlife_validation

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
    source: Source, datasets: Sequence[str] | None, species: Sequence[str] | None, plan: SplitPlan
) -> pd.DataFrame:
    """The catalogue exactly as training reads it (with its validation side)."""
    if source.kind == "stars":
        return load_star_catalogue(source.root, source.csv, plan)
    if source.kind == "wildlife":
        wildlife = load_wildlife_catalogue(source.root, datasets=datasets, species=species)
        return carve_wildlife_validation(wildlife, plan.val_fraction)
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
    elif source.kind != "identity folders" and _training_identities(readable) < 2:
        reasons.append("fewer than 2 identities have training photos; training needs at least 2 per batch")
    if source.kind != "identity folders":
        lines.extend(_split_lines(df, readable, source))
        reasons.extend(_split_reasons(readable, source))
    for kind, label in (
        ("empty_folders", "empty folders"),
        ("ignored_files", "ignored files"),
        ("missing_files", "listed but missing"),
        ("unreadable_folders", "unreadable folders"),
    ):
        if issues.get(kind):
            lines.append(f"  {label:<12} {len(issues[kind])}: {examples(issues[kind], 3)}")
    if unreadable:
        lines.append("unreadable files:")
        lines.extend(f"  {path}: {reason}" for path, reason in list(unreadable.items())[:20])
        if len(unreadable) > 20:
            lines.append(f"  … and {len(unreadable) - 20} more (see --export-split, column 'readable')")
    return lines, reasons


def _training_identities(readable: pd.DataFrame) -> int:
    """Identities with photos training can use (the train side, validation excluded)."""
    return int(readable.loc[readable["split"] == "train", "identity"].nunique())


def _split_lines(df: pd.DataFrame, readable: pd.DataFrame, source: Source) -> list[str]:
    gallery = readable[readable["split"].isin(["train", "val"])]
    query, val = readable[readable["split"] == "test"], readable[readable["split"] == "val"]
    names = ("gallery/train", "query/test") if source.kind == "stars" else ("train", "test")
    lines = [
        f"  split        {names[0]} {len(gallery)} photos of {gallery['identity'].nunique()} identities; "
        f"{names[1]} {len(query)} photos of {query['identity'].nunique()} identities"
    ]
    if df.attrs.get("protocol"):
        cut = f", cut {df.attrs['cut_date']}" if df.attrs.get("cut_date") else ""
        lines.append(f"  protocol     {df.attrs['protocol']}{cut}")
    if not val.empty:
        pseudo_new = set(val["identity"]) - set(readable.loc[readable["split"] == "train", "identity"])
        lines.append(
            f"  validation   {len(val)} photos of {val['identity'].nunique()} identities, carved from the "
            f"{names[0]} side ({len(pseudo_new)} held out whole as pseudo-new); never trained on"
        )
    unseen = set(query["identity"]) - set(gallery["identity"])
    if unseen:
        lines.append(
            f"  {len(unseen)} query identities have no gallery photo (new individuals: scored by the "
            "open-set report, not by CMC/mAP)"
        )
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
        write_csv(out, table)  # a failure never leaves half a file
    except OSError as err:
        raise UserError(f"cannot write --export-split {out}: {err.strerror}") from err
