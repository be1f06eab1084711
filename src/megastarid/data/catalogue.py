"""The catalogue: one pandas table describing every image of a data set, whatever it was read from.

Columns (``CATALOGUE_COLUMNS``): ``path`` absolute file path; ``identity`` unique across data sets
(star tree: ``"<DATASET>/<individual>"``); ``folder`` the outing folder ("" when none); ``date``
datetime64 (NaT when unknown); ``dataset``; ``species``; ``split`` in {"train", "val", "test", ""} where,
for stars, train is the gallery side, val is validation carved from it (it chooses, never trains) and test
the query side ("" = not used). Readers may keep extra columns after these.

Problems met while reading that did not stop it (empty folders, ignored files, …) travel with the
table in ``df.attrs[READ_ISSUES]`` (kind -> list of paths) so ``data check`` can report them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from megastarid.core.errors import UserError, quoted

CATALOGUE_COLUMNS = ("path", "identity", "folder", "date", "dataset", "species", "split")
READ_ISSUES = "read_issues"

#: Split names users write -> the catalogue's two values.
SPLIT_NAMES = {
    "train": "train",
    "gallery": "train",
    "val": "val",
    "validation": "val",
    "test": "test",
    "query": "test",
    "": "",
}


def as_catalogue(df: pd.DataFrame, issues: dict[str, list[str]] | None = None) -> pd.DataFrame:
    """Give a reader's table the catalogue's columns, dtypes and order (extras kept at the end)."""
    out = df.copy()
    for column in CATALOGUE_COLUMNS:
        if column not in out:
            out[column] = pd.NaT if column == "date" else ""
    for column in CATALOGUE_COLUMNS:
        if column != "date":
            out[column] = out[column].fillna("").astype(str)
    out["date"] = pd.to_datetime(out["date"])
    extras = [c for c in out.columns if c not in CATALOGUE_COLUMNS]
    out = out[[*CATALOGUE_COLUMNS, *extras]].reset_index(drop=True)
    out.attrs[READ_ISSUES] = {kind: list(items) for kind, items in (issues or {}).items() if items}
    return out


def normalise_split(values: pd.Series, where: str) -> pd.Series:
    """Map train/gallery -> "train", val/validation -> "val", test/query -> "test" (any case); anything else
    is a user error."""
    lowered = values.fillna("").astype(str).str.strip().str.lower()
    bad = ~lowered.isin(list(SPLIT_NAMES))
    if bad.any():
        first = values[bad].iloc[0]
        raise UserError(
            f"{where}: split value {quoted(first)} in {int(bad.sum())} row(s); "
            "use train/gallery, val or test/query"
        )
    return lowered.map(SPLIT_NAMES)


def identity_codes(identities: Iterable[str]) -> tuple[np.ndarray, list[str]]:
    """Integer labels for identities (sorted names -> 0..N-1, so the same set always gets the same codes)."""
    codes, names = pd.factorize(pd.Series(list(identities), dtype=str), sort=True)
    return codes.astype(np.int64), [str(name) for name in names]


def examples(items: Sequence[str], limit: int = 10) -> str:
    """A comma-separated preview of ``items`` for one-line messages: the first ``limit`` and how many more."""
    shown = ", ".join(items[:limit])
    return shown + (f" (and {len(items) - limit} more)" if len(items) > limit else "")


def read_issues(df: pd.DataFrame) -> dict[str, Any]:
    """The problems a reader met but worked around (kind -> list of paths); empty when none."""
    return dict(df.attrs.get(READ_ISSUES, {}))
