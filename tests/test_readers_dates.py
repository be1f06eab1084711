"""Outing dates from folder names: the three spellings field teams use, and everything that is not a date."""

from __future__ import annotations

import pandas as pd
import pytest

from megastarid.data.dates import parse_folder_date, parse_folder_dates


@pytest.mark.parametrize(
    ("name", "date"),
    [
        ("3_23_2024_dock_sighting", "2024-03-23"),
        ("3_23_2024", "2024-03-23"),
        ("12_1_2023 reef", "2023-12-01"),
        ("04_02_2024_dock", "2024-04-02"),
        ("2024-03-23", "2024-03-23"),
        ("2024-3-5_north", "2024-03-05"),
        ("20240101_survey", "2024-01-01"),
        ("20240101", "2024-01-01"),
        (" 2024-03-23 ", "2024-03-23"),
    ],
)
def test_dated_folder_names(name: str, date: str) -> None:
    assert parse_folder_date(name) == pd.Timestamp(date)


@pytest.mark.parametrize(
    "name",
    [
        "dock_visit",
        "dive_12",
        "visit 2024-03-23",
        "13_40_2024",
        "2024-02-30",
        "202401011",
        "3_23_24",
        "",
        "2024_03_23",
    ],
)
def test_names_without_a_date(name: str) -> None:
    assert parse_folder_date(name) is None


def test_column_version() -> None:
    dates = parse_folder_dates(pd.Series(["2024-01-02", "x", "2024-01-02", "5_6_2020"]))
    assert pd.api.types.is_datetime64_any_dtype(dates)
    assert dates.tolist()[0] == pd.Timestamp("2024-01-02") and pd.isna(dates[1])
    assert dates[3] == pd.Timestamp("2020-05-06")
    assert parse_folder_dates(pd.Series(["a", "b"])).isna().all()
