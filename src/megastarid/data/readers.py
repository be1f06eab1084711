"""Readers: each turns one on-disk layout into a catalogue table (see ``catalogue.py`` for the columns).

- ``read_star_tree``: ``ROOT/<DATASET>/<individual>/<outing>/*.jpg|jpeg|png``;
  identity ``"<DATASET>/<individual>"``.
- ``read_star_csv``: a metadata CSV with ``identity`` and ``path`` (inside ROOT); identity used verbatim.
- ``read_wildlife``: WildlifeReID-10k ``metadata.csv`` with its official split.
- ``read_identity_folders``: ``ROOT/<identity>/*`` (SeaStarReID2023 style); identity ``"<dataset>/<folder>"``.

Hidden files and folders (``.DS_Store``, macOS ``._IMG_1.jpg`` copies) are skipped everywhere.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from megastarid.core.errors import UserError, quoted
from megastarid.core.files import plain_text
from megastarid.core.runfiles import OUTPUT_MARKER
from megastarid.data.catalogue import as_catalogue, examples, normalise_split
from megastarid.data.dates import parse_folder_dates
from megastarid.data.images import is_image_file

log = logging.getLogger(__name__)

#: Depth of a photo below a star tree root: DATASET / individual / outing / file.
STAR_TREE_DEPTH = 4


@dataclass
class _Scan:
    """Image files under a root (as path parts relative to it) and what was passed over."""

    images: list[tuple[str, ...]] = field(default_factory=list)
    ignored_files: list[str] = field(default_factory=list)
    empty_folders: list[str] = field(default_factory=list)
    unreadable_folders: list[str] = field(default_factory=list)


def require_dir(root: str | Path, what: str) -> Path:
    """``root`` as an absolute Path, or a one-line error when it is missing or not a folder."""
    path = Path(root).expanduser()
    if not path.exists():
        raise UserError(f"{what} {path} does not exist")
    if not path.is_dir():
        raise UserError(f"{what} {path} is not a folder")
    return Path(os.path.abspath(path))


def walk(root: Path, unreadable: list[str] | None = None) -> Iterator[tuple[str, list[str], list[str]]]:
    """``os.walk`` over the non-hidden entries below ``root``, in sorted order, that follows symlinked
    folders (a data set is often assembled from links) but never re-enters a folder it is inside, so a
    link loop ends, and never enters an output folder of identify (it holds ``OUTPUT_MARKER``: its
    thumbnails are no photos). Folders that cannot be listed are appended to ``unreadable`` (when given)
    instead of vanishing."""
    real_paths: dict[str, str] = {}

    def on_error(err: OSError) -> None:
        if unreadable is not None:
            unreadable.append(str(err.filename))

    for folder, dirs, files in os.walk(root, followlinks=True, onerror=on_error):
        real = os.path.realpath(folder)
        inside = {real_paths.get(str(parent)) for parent in Path(folder).parents}
        if real in inside:
            dirs[:] = []
            continue
        real_paths[folder] = real
        if OUTPUT_MARKER in files:
            log.info("skipped %s: an output folder of megastarid identify", folder)
            dirs[:] = []
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        yield folder, dirs, sorted(name for name in files if not name.startswith("."))


def list_files(root: Path) -> list[Path]:
    """Every non-hidden file below ``root``, in a stable (sorted) order."""
    return [Path(folder, name) for folder, _, files in walk(root) for name in files]


def _scan(root: Path, min_depth: int, folder_depth: int) -> _Scan:
    """Images at least ``min_depth`` parts below ``root``; other files are ignored and folders up to
    ``folder_depth`` levels deep with no image below them are reported empty."""
    scan = _Scan()
    folders_with_images: set[tuple[str, ...]] = set()
    folders: list[tuple[str, ...]] = []
    for folder, _, files in walk(root, scan.unreadable_folders):
        parts = Path(folder).relative_to(root).parts
        if 0 < len(parts) <= folder_depth:
            folders.append(parts)
        for name in files:
            if is_image_file(name) and len(parts) + 1 >= min_depth:
                scan.images.append((*parts, name))
                folders_with_images.update(parts[:i] for i in range(1, len(parts) + 1))
            else:
                scan.ignored_files.append(str(Path(folder, name)))
    scan.empty_folders = [
        str(root.joinpath(*parts))
        for parts in folders
        if parts not in folders_with_images and (len(parts) == 1 or parts[:-1] in folders_with_images)
    ]
    return scan


def _report(scan: _Scan, root: Path, layout: str) -> dict[str, list[str]]:
    """Log what the scan passed over, one line per kind, and return it for the catalogue's attrs."""
    if scan.empty_folders:
        log.warning(
            "%d folder(s) under %s hold no images: %s",
            len(scan.empty_folders),
            root,
            examples(scan.empty_folders),
        )
    if scan.ignored_files:
        log.warning(
            "%d file(s) under %s are not .jpg/.jpeg/.png photos at %s and were ignored: %s",
            len(scan.ignored_files),
            root,
            layout,
            examples(scan.ignored_files),
        )
    if scan.unreadable_folders:
        log.warning(
            "%d folder(s) under %s cannot be read (permissions?) and their photos were left out: %s",
            len(scan.unreadable_folders),
            root,
            examples(scan.unreadable_folders),
        )
    return {
        "empty_folders": scan.empty_folders,
        "ignored_files": scan.ignored_files,
        "unreadable_folders": scan.unreadable_folders,
    }


def read_star_tree(root: str | Path) -> pd.DataFrame:
    """Read ``ROOT/<DATASET>/<individual>/<outing>/*`` (photos deeper inside an outing belong to it).

    Identity is ``"<DATASET>/<individual>"`` so the same individual name at two sites stays two animals;
    ``date`` comes from the outing folder name (NaT when it has none); ``species`` is "".
    """
    root = require_dir(root, "star root")
    layout = "ROOT/<DATASET>/<individual>/<outing>/"
    scan = _scan(root, STAR_TREE_DEPTH, STAR_TREE_DEPTH - 1)
    if not scan.images:
        raise UserError(f"no .jpg/.jpeg/.png photos found at {root}/<DATASET>/<individual>/<outing>/")
    issues = _report(scan, root, layout)
    df = pd.DataFrame(
        {
            "path": [str(root.joinpath(*parts)) for parts in scan.images],
            "identity": [f"{parts[0]}/{parts[1]}" for parts in scan.images],
            "folder": [parts[2] for parts in scan.images],
            "dataset": [parts[0] for parts in scan.images],
        }
    )
    df["date"] = parse_folder_dates(df["folder"])
    return as_catalogue(df, issues)


def read_identity_folders(root: str | Path, dataset: str | None = None) -> pd.DataFrame:
    """Read one folder per identity, ``ROOT/<identity>/*`` (SeaStarReID2023 style); no outings, no split.

    Identity is ``"<dataset>/<folder name>"`` with ``dataset`` defaulting to the root's name; photos in
    sub-folders of an identity keep that sub-folder as their ``folder``.
    """
    root = require_dir(root, "identity-folder root")
    dataset = dataset or root.name
    scan = _scan(root, 2, 1)
    if not scan.images:
        raise UserError(f"no .jpg/.jpeg/.png photos found at {root}/<identity>/")
    issues = _report(scan, root, "ROOT/<identity>/")
    df = pd.DataFrame(
        {
            "path": [str(root.joinpath(*parts)) for parts in scan.images],
            "identity": [f"{dataset}/{parts[0]}" for parts in scan.images],
            "folder": ["/".join(parts[1:-1]) for parts in scan.images],
            "dataset": dataset,
        }
    )
    df["date"] = parse_folder_dates(df["folder"])
    return as_catalogue(df, issues)


def _read_table(csv_path: Path) -> pd.DataFrame:
    """A CSV as strings ("" for blanks) with stripped, lower-case column names; a cell we wrote as text for
    spreadsheets (``core.files.csv_text``: an exported split) reads as it was."""
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False, low_memory=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UserError(f"{csv_path} is not a readable CSV file: {str(err).splitlines()[0]}") from err
    except OSError as err:
        raise UserError(f"cannot read {csv_path}: {err.strerror or err}") from err
    table.columns = [plain_text(str(c)).strip().lower() for c in table.columns]
    for position in range(table.shape[1]):
        column = table.iloc[:, position]
        if column.str.startswith("'").any():  # the few columns with quoted cells are looked at cell by cell
            table.isetitem(position, column.map(plain_text).to_numpy())
    return table


def _require_columns(table: pd.DataFrame, columns: Iterable[str], csv_path: Path) -> None:
    for column in columns:
        if column not in table.columns:
            found = ", ".join(table.columns) or "none"
            raise UserError(f"{csv_path}: required column {column!r} is missing (columns found: {found})")


def _require_values(table: pd.DataFrame, columns: Iterable[str], csv_path: Path) -> None:
    for column in columns:
        blank = table[column].str.strip() == ""
        if blank.any():
            raise UserError(f"{csv_path} line {_line(table, blank)}: empty {column!r}")


def _line(table: pd.DataFrame, mask: pd.Series) -> int:
    """File line of the first row where ``mask`` holds (line 1 is the header)."""
    return int(table.index[mask.to_numpy()][0]) + 2


def _inside_root(paths: pd.Series, root: Path, table: pd.DataFrame, csv_path: Path) -> pd.Series:
    """Absolute, normalised paths; a path outside ``root`` (``../``, absolute elsewhere, or through a
    symlink inside the root that points out of it) is an error."""
    resolved = paths.map(lambda p: os.path.normpath(os.path.join(root, p.strip())))
    prefix = os.path.realpath(root).rstrip(os.sep) + os.sep
    outside = ~resolved.map(os.path.realpath).str.startswith(prefix)
    if outside.any():
        line = _line(table, outside)
        raise UserError(f"{csv_path} line {line}: path {paths[outside].iloc[0]!r} is outside the root {root}")
    return resolved


def _unique_paths(paths: pd.Series, table: pd.DataFrame, csv_path: Path) -> pd.Series:
    """``paths`` unchanged; a photo listed twice (the same file on two rows) is an error naming the line."""
    repeated = paths.duplicated()
    if repeated.any():
        raise UserError(
            f"{csv_path} line {_line(table, repeated)}: path {paths[repeated].iloc[0]} listed twice"
        )
    return paths


def _csv_dates(values: pd.Series, table: pd.DataFrame, csv_path: Path) -> pd.Series:
    """Parse a free-form date column; blanks give NaT, anything unparseable is an error naming its line."""
    values = values.str.strip()
    dates = pd.to_datetime(values, errors="coerce", format="mixed")
    bad = dates.isna() & (values != "")
    if bad.any():
        value = quoted(values[bad].iloc[0])
        raise UserError(f"{csv_path} line {_line(table, bad)}: cannot read date {value}")
    return dates


def read_star_csv(csv_path: str | Path, root: str | Path | None = None) -> pd.DataFrame:
    """Read a star metadata CSV: required ``identity``, ``path`` (relative to ``root`` or absolute inside it;
    ``root`` defaults to the CSV's folder); optional ``date``, ``outing`` or ``folder``, ``split``,
    ``dataset``, ``species``; other columns are kept.

    The identity is used as written (make it unique across datasets). The outing is the ``outing``/``folder``
    value, else the photo's date, else the photo's parent folder name. Dates missing from the CSV are parsed
    from the outing name. Listed files that do not exist are dropped with a warning (an error when none
    exist).
    """
    csv_path = Path(csv_path).expanduser()
    if not csv_path.is_file():
        raise UserError(f"metadata CSV {csv_path} does not exist")
    root = require_dir(root if root is not None else csv_path.parent, "star root")
    table = _read_table(csv_path)
    _require_columns(table, ("identity", "path"), csv_path)
    if table.empty:
        raise UserError(f"{csv_path} lists no photos")
    _require_values(table, ("identity", "path"), csv_path)
    paths = _unique_paths(_inside_root(table["path"], root, table, csv_path), table, csv_path)

    dates = _csv_dates(table["date"], table, csv_path) if "date" in table else pd.Series(pd.NaT, table.index)
    outing_column = next((c for c in ("outing", "folder") if c in table), None)
    folder = table[outing_column].str.strip() if outing_column else pd.Series("", table.index)
    from_date = dates.dt.strftime("%Y-%m-%d").fillna("")
    folder = folder.where(folder != "", from_date)
    folder = folder.where(folder != "", paths.map(lambda p: Path(p).parent.name))

    df = table.drop(columns=[c for c in ("outing", "folder", "date") if c in table])
    df["path"] = paths
    df["identity"] = table["identity"].str.strip()
    df["folder"] = folder
    df["date"] = dates.fillna(parse_folder_dates(folder))
    df["dataset"] = df["dataset"].str.strip().replace("", root.name) if "dataset" in df else root.name
    if "split" in df:
        df["split"] = normalise_split(df["split"], f"{csv_path} column 'split'")

    exists = df["path"].map(os.path.isfile)
    missing = df.loc[~exists, "path"].tolist()
    if len(missing) == len(df):
        raise UserError(f"{csv_path}: none of its {len(df)} photos exist under {root} (is the root right?)")
    if missing:
        log.warning(
            "%d photo(s) listed in %s do not exist and were dropped: %s",
            len(missing),
            csv_path,
            examples(missing),
        )
    return as_catalogue(df[exists], {"missing_files": missing})


def read_wildlife(
    root: str | Path,
    datasets: Sequence[str] | None = None,
    species: Sequence[str] | None = None,
    exclude_datasets: Sequence[str] = ("SeaStarReID2023",),
) -> pd.DataFrame:
    """Read WildlifeReID-10k: ``root/metadata.csv`` with paths relative to ``root`` and the official split.

    ``datasets``/``species`` keep only those values (an unknown name is an error listing the known ones);
    ``exclude_datasets`` drops source datasets not asked for by name: by default the sea star slice, so it
    never leaks into star evaluation. Files are not checked here (140k stats are slow on network disks):
    ``data check`` finds missing ones and training skips them.
    """
    root = require_dir(root, "wildlife root")
    csv_path = root / "metadata.csv"
    if not csv_path.is_file():
        raise UserError(f"{csv_path} not found (expected a WildlifeReID-10k folder with metadata.csv)")
    table = _read_table(csv_path)
    _require_columns(table, ("identity", "path", "split"), csv_path)
    _require_values(table, ("identity", "path"), csv_path)
    if "dataset" not in table:
        table["dataset"] = root.name
    table = _filter(table, "dataset", datasets, csv_path)
    table = _filter(table, "species", species, csv_path)
    excluded = set(exclude_datasets) - set(datasets or ())
    table = table[~table["dataset"].isin(excluded)]
    if table.empty:
        raise UserError(f"{csv_path}: no photos left after the dataset/species filters")
    df = table.copy()
    df["path"] = _unique_paths(_inside_root(table["path"], root, table, csv_path), table, csv_path)
    if "date" in df:
        df["date"] = pd.to_datetime(df["date"].str.strip(), errors="coerce", format="ISO8601")
    if "split" in df:
        df["split"] = normalise_split(df["split"], f"{csv_path} column 'split'")
    return as_catalogue(df)


def _filter(table: pd.DataFrame, column: str, keep: Sequence[str] | None, csv_path: Path) -> pd.DataFrame:
    if not keep:
        return table
    if column not in table:
        raise UserError(f"{csv_path}: cannot filter by {column}, the column is missing")
    known = set(table[column])
    unknown = [name for name in keep if name not in known]
    if unknown:
        listed = ", ".join(sorted(known))
        raise UserError(f"{csv_path}: unknown {column} {quoted(unknown[0])} (known: {listed})")
    return table[table[column].isin(list(keep))]
