"""Capture histories from the catalogue (``megastarid catalogue captures``): who was seen when.

- **Occasions** (``by``): ``outing`` (each survey visit, the photos' outing folder, ordered by its earliest
  photo date, undated outings after the dated ones by name), or the calendar ``day``, ``month`` or ``year``
  of the photos' dates (undated photos cannot be placed and are left out, with a warning).
- **The matrix**: one row per individual (sorted by name), one 0/1 column per occasion in time order, 1 when
  at least one photo of the individual falls on that occasion; individuals with no placed photo are left out
  (a history of zeros says nothing). Calendar periods with no photo at all between the first and last
  occasion are zero columns only with ``keep_empty``.
- **Formats**: ``csv`` (``individual`` then one column per occasion) or Program MARK's ``.inp`` (``mark``):
  one line per individual, ``/* individual */ 0101 1;`` (history, a count of 1, ``;``), after comments that
  name the occasions in order.
- **Sightings** (beside it, named after it: ``captures.csv`` -> ``captures.sightings.csv``, so histories
  written side by side keep their own): individual, date, outing, photos: one row per individual, outing
  and date.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd

from megastarid.core.errors import UserError
from megastarid.core.files import atomic_write_all, check_writable_folder, csv_text, text_writer
from megastarid.core.runfiles import SIGHTINGS_SUFFIX
from megastarid.identification.store import CatalogueStore

log = logging.getLogger(__name__)

By = Literal["outing", "day", "month", "year"]
BY: tuple[By, ...] = ("outing", "day", "month", "year")
FORMATS = ("csv", "mark")
_PERIOD = {"day": ("D", "%Y-%m-%d"), "month": ("M", "%Y-%m"), "year": ("Y", "%Y")}
SIGHTING_COLUMNS = ("individual", "date", "outing", "photos")


@dataclass
class CaptureHistories:
    """The individual x occasion matrix and what it was made from."""

    by: str
    matrix: pd.DataFrame  # index: individual; columns: occasions in time order; values 0/1
    sightings: pd.DataFrame  # SIGHTING_COLUMNS
    left_out_photos: int  # photos that could not be placed on an occasion (undated, or without outing)
    left_out_individuals: list[str]  # individuals none of whose photos could be placed

    @property
    def occasions(self) -> list[str]:
        return [str(c) for c in self.matrix.columns]

    def line(self) -> str:
        empty = int((self.matrix.sum(axis=0) == 0).sum())
        return (
            f"{len(self.matrix)} individuals x {len(self.occasions)} occasions by {self.by}"
            + (f" ({empty} with no photo)" if empty else "")
            + f", {len(self.sightings)} sightings"
        )


def catalogue_photos(store: CatalogueStore, dataset: str | None = None) -> pd.DataFrame:
    """One row per photo: identity, outing, date (datetime, NaT when unknown), dataset."""
    sql = (
        "SELECT i.name, p.outing, p.date, p.dataset FROM photos p "
        "JOIN individuals i ON i.id = p.individual_id"
    )
    args: tuple[str, ...] = ()
    if dataset is not None:
        sql, args = sql + " WHERE p.dataset = ?", (dataset,)
    rows = store.con.execute(sql, args).fetchall()
    table = pd.DataFrame(rows, columns=["identity", "outing", "date", "dataset"])
    table["date"] = pd.to_datetime(table["date"], errors="coerce", format="ISO8601")
    return table


def capture_histories(photos: pd.DataFrame, by: str, keep_empty: bool = False) -> CaptureHistories:
    """The capture histories of ``photos`` (``catalogue_photos``) by ``by`` (module docstring)."""
    if by not in BY:
        raise UserError(f"--by must be one of {', '.join(BY)}, got {by!r}")
    photos = photos.reset_index(drop=True)
    if by == "outing":
        placed = photos[photos["outing"] != ""].copy()
        placed["occasion"] = placed["outing"]
        starts = placed.groupby("occasion")["date"].min()
        undated = sorted(starts.index[starts.isna()])
        if undated:
            log.warning(
                "%d outing(s) without a date are ordered by name after the dated ones: %s",
                len(undated),
                ", ".join(undated[:5]) + (" ..." if len(undated) > 5 else ""),
            )

        def when(name: str) -> tuple[bool, pd.Timestamp, str]:
            start = starts[name]
            return (pd.isna(start), pd.Timestamp.min if pd.isna(start) else start, name)

        occasions: list[str] = sorted(starts.index, key=when)
    else:
        freq, fmt = _PERIOD[by]
        placed = photos[photos["date"].notna()].copy()
        periods = placed["date"].dt.to_period(freq)
        placed["occasion"] = periods.dt.strftime(fmt)
        if keep_empty and len(placed):
            span = pd.period_range(periods.min(), periods.max(), freq=freq)
            occasions = [period.strftime(fmt) for period in span]
        else:
            occasions = sorted(placed["occasion"].unique())
    left_out = len(photos) - len(placed)
    if not len(placed):
        what = "an outing" if by == "outing" else "a date"
        raise UserError(f"no photo has {what}: there is nothing to place on occasions by {by}")
    seen = pd.crosstab(placed["identity"], placed["occasion"])
    matrix = (seen.reindex(columns=occasions, fill_value=0) > 0).astype(int).sort_index()
    matrix.columns.name = None
    matrix.index.name = "individual"
    missing = sorted(set(photos["identity"]) - set(matrix.index))
    if left_out:
        why = "without an outing" if by == "outing" else "without a date"
        log.warning(
            "%d photo(s) %s are left out%s",
            left_out,
            why,
            f", and with them {len(missing)} individual(s) never placed: {', '.join(missing[:5])}"
            + (" ..." if len(missing) > 5 else "")
            if missing
            else "",
        )
    return CaptureHistories(by, matrix, sightings_table(photos), left_out, missing)


def sightings_table(photos: pd.DataFrame) -> pd.DataFrame:
    """individual, date, outing, photos: one row per individual, outing and date (undated last)."""
    keyed = photos.assign(day=photos["date"].dt.strftime("%Y-%m-%d").fillna(""))
    counts = keyed.groupby(["identity", "day", "outing"], sort=False).size().reset_index(name="photos")
    counts["undated"] = counts["day"] == ""
    counts = counts.sort_values(["identity", "undated", "day", "outing"]).reset_index(drop=True)
    return pd.DataFrame(
        {
            "individual": counts["identity"],
            "date": counts["day"],
            "outing": counts["outing"],
            "photos": counts["photos"].astype(int),
        },
        columns=list(SIGHTING_COLUMNS),
    )


def _comment(text: str) -> str:
    """``text`` safe inside a MARK ``/* ... */`` comment (no comment delimiters, one line)."""
    return " ".join(text.replace("*/", "* /").replace("/*", "/ *").split())


def mark_inp(histories: CaptureHistories, source: str = "") -> str:
    """Program MARK's input file: ``/* individual */ 0101 1;`` per individual, after comments naming the
    occasions in order."""
    occasions = histories.occasions
    lines = [
        f"/* MegaStarID capture histories{' of ' + _comment(source) if source else ''}: "
        f"{len(histories.matrix)} individuals x {len(occasions)} occasions by {histories.by} */",
        f"/* occasions: {_comment(' '.join(occasions))} */",
    ]
    for individual, row in histories.matrix.iterrows():
        history = "".join(str(int(v)) for v in row.to_numpy())
        lines.append(f"/* {_comment(str(individual))} */ {history} 1;")
    return "\n".join(lines) + "\n"


def sightings_path(out: Path) -> Path:
    """Where the sightings of the histories written to ``out`` go: ``<stem>.sightings.csv`` beside it."""
    return out.with_name(out.stem + SIGHTINGS_SUFFIX)


def check_captures_out(out: Path) -> None:
    """Before any work: ``--out`` names a file (not a folder) in a folder that can be written (created when
    missing); else one line naming it."""
    if out.name.endswith(SIGHTINGS_SUFFIX):
        raise UserError(
            f"--out {out}: names ending in {SIGHTINGS_SUFFIX} are for the sightings written beside capture "
            "histories; choose another"
        )
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give a file name such as captures.csv")
    check_writable_folder(out.parent, "--out", out)


def write_captures(histories: CaptureHistories, out: Path, fmt: str, source: str = "") -> tuple[Path, Path]:
    """Write the histories to ``out`` (``csv`` or ``mark``; checked by ``check_captures_out``) and their
    sightings beside it (``sightings_path``), together."""
    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    sightings = sightings_path(out)
    text = mark_inp(histories, source) if fmt == "mark" else csv_text(histories.matrix.reset_index())
    atomic_write_all({out: text_writer(text), sightings: text_writer(csv_text(histories.sightings))})
    return out, sightings
