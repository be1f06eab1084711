"""Survey dates from outing folder names, so outings can be ordered in time for the temporal split."""

from __future__ import annotations

import datetime as dt
import re

import pandas as pd

#: Folder-name prefixes we understand, tried in order: ``3_23_2024_dock``, ``2024-03-23_reef``, ``20240323``.
_PATTERNS: tuple[tuple[re.Pattern[str], tuple[int, int, int]], ...] = (
    (re.compile(r"^(\d{1,2})_(\d{1,2})_(\d{4})(?!\d)"), (3, 1, 2)),
    (re.compile(r"^(\d{4})-(\d{1,2})-(\d{1,2})(?!\d)"), (1, 2, 3)),
    (re.compile(r"^(\d{4})(\d{2})(\d{2})(?!\d)"), (1, 2, 3)),
)


def parse_folder_date(name: str) -> pd.Timestamp | None:
    """The date a folder name starts with (``M_D_YYYY…``, ``YYYY-MM-DD…`` or ``YYYYMMDD…``), else None.

    Only the start of the name counts, so ``3_23_2024_dock_sighting`` is 23 March 2024 while a name
    that merely contains digits (``dive_12``) is not a date. Impossible dates (month 13) give None.
    """
    for pattern, (year, month, day) in _PATTERNS:
        match = pattern.match(name.strip())
        if match is None:
            continue
        try:
            return pd.Timestamp(dt.date(int(match[year]), int(match[month]), int(match[day])))
        except ValueError:
            return None
    return None


def parse_folder_dates(names: pd.Series) -> pd.Series:
    """``parse_folder_date`` over a column, parsing each distinct name once; NaT where there is no date."""
    unique = {name: parse_folder_date(name) for name in names.unique()}
    return pd.to_datetime(names.map(unique))
