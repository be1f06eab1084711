"""Capture histories: occasions by outing, day, month or year in time order, 0/1 per individual, empty
periods only on request, undated photos left out with a warning; the CSV, Program MARK's .inp and
sightings beside them, through the command on a real catalogue file."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from megastarid import cli
from megastarid.core.files import plain_text
from megastarid.identification.captures import capture_histories, mark_inp
from megastarid.identification.store import PhotoRecord
from megastarid.identification.store_open import open_catalogue
from megastarid.identification.store_schema import ROOT

#: (identity, outing, date or None, dataset, number of photos)
PHOTOS = [
    ("SiteA/star1", "2024-01-05_reef", "2024-01-05", "SiteA", 2),
    ("SiteA/star1", "2024-03-02_dock", "2024-03-02", "SiteA", 1),
    ("SiteA/star2", "2024-01-05_reef", "2024-01-05", "SiteA", 1),
    ("SiteA/star2", "2024-01-20_reef", "2024-01-20", "SiteA", 3),
    ("SiteB/star9", "2023-12-30_bay", "2023-12-30", "SiteB", 1),
    ("SiteB/star9", "night_dive", None, "SiteB", 2),
    ("SiteB/ghost", "night_dive", None, "SiteB", 1),  # never dated
    ('Odd */ "name"\n', "2024-03-02_dock", "2024-03-02", "SiteA", 1),
]


def run(*argv: object) -> int:
    return cli.main([str(arg) for arg in argv])


def photo_table() -> pd.DataFrame:
    rows = [
        (identity, outing, date, dataset)
        for identity, outing, date, dataset, count in PHOTOS
        for _ in range(count)
    ]
    table = pd.DataFrame(rows, columns=["identity", "outing", "date", "dataset"])
    table["date"] = pd.to_datetime(table["date"])
    return table


@pytest.fixture
def catalogue(tmp_path: Path) -> Path:
    """A catalogue file holding PHOTOS (random embeddings; captures never look at them)."""
    path = tmp_path / "archive.sqlite"
    records, blobs = [], []
    rng = np.random.default_rng(0)
    for identity, outing, date, dataset, count in PHOTOS:
        for i in range(count):
            rel = f"{dataset}/{len(records)}/{outing}/img{i}.jpg"
            records.append(
                PhotoRecord(rel, identity, outing, date, dataset, "", f"{len(records):064x}", 1, 1, 1, 1)
            )
            blobs.append(rng.normal(size=4).astype(np.float32).tobytes())
    with open_catalogue(path, create=True) as store, store.transaction():
        store.set_meta(ROOT, str(tmp_path))
        store.add_photos(records, blobs)
        store.refresh_individuals()
    return path


def test_by_outing_in_time_order_undated_outings_last(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        histories = capture_histories(photo_table(), "outing")
    assert histories.occasions == [
        "2023-12-30_bay", "2024-01-05_reef", "2024-01-20_reef", "2024-03-02_dock", "night_dive",
    ]  # fmt: skip
    assert "night_dive" in caplog.text and histories.left_out_photos == 0
    assert histories.matrix.loc["SiteA/star1"].tolist() == [0, 1, 0, 1, 0]
    assert histories.matrix.loc["SiteB/ghost"].tolist() == [0, 0, 0, 0, 1]
    assert list(histories.matrix.index) == sorted(set(photo_table()["identity"]))


def test_by_month_keeps_empty_months_only_on_request(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        plain = capture_histories(photo_table(), "month")
    assert plain.occasions == ["2023-12", "2024-01", "2024-03"]
    assert plain.left_out_photos == 3 and plain.left_out_individuals == ["SiteB/ghost"]
    assert "3 photo(s) without a date are left out" in caplog.text and "SiteB/ghost" in caplog.text
    kept = capture_histories(photo_table(), "month", keep_empty=True)
    assert kept.occasions == ["2023-12", "2024-01", "2024-02", "2024-03"]
    assert kept.matrix["2024-02"].sum() == 0
    assert kept.matrix.loc["SiteA/star2"].tolist() == [0, 1, 0, 0]
    assert "SiteB/ghost" not in kept.matrix.index


def test_by_day_and_by_year() -> None:
    days = capture_histories(photo_table(), "day")
    assert days.occasions == ["2023-12-30", "2024-01-05", "2024-01-20", "2024-03-02"]
    assert len(capture_histories(photo_table(), "day", keep_empty=True).occasions) == 64
    years = capture_histories(photo_table(), "year", keep_empty=True)
    assert years.occasions == ["2023", "2024"]
    assert years.matrix.loc["SiteB/star9"].tolist() == [1, 0]


def test_sightings_one_row_per_individual_outing_and_date() -> None:
    sightings = capture_histories(photo_table(), "outing").sightings
    assert list(sightings.columns) == ["individual", "date", "outing", "photos"]
    star9 = sightings[sightings["individual"] == "SiteB/star9"].values.tolist()
    assert star9 == [["SiteB/star9", "2023-12-30", "2023-12-30_bay", 1], ["SiteB/star9", "", "night_dive", 2]]
    assert sightings["photos"].sum() == len(photo_table())


def test_mark_inp_lines() -> None:
    text = mark_inp(capture_histories(photo_table(), "month"), "archive.sqlite")
    lines = text.splitlines()
    assert lines[0].startswith(
        "/* MegaStarID capture histories of archive.sqlite: 4 individuals x 3 occasions"
    )
    assert lines[1] == "/* occasions: 2023-12 2024-01 2024-03 */"
    assert lines[2:] == [
        '/* Odd * / "name" */ 001 1;',
        "/* SiteA/star1 */ 011 1;",
        "/* SiteA/star2 */ 010 1;",
        "/* SiteB/star9 */ 100 1;",
    ]


def test_captures_command_writes_csv_mark_and_sightings(
    catalogue: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results" / "captures.csv"
    assert (
        run("catalogue", "captures", "--catalogue", catalogue, "--by", "month", "--out", out, "--keep-empty")
        == 0
    )
    assert "4 individuals x 4 occasions by month (1 with no photo)" in capsys.readouterr().out
    table = pd.read_csv(out)
    assert list(table.columns) == ["individual", "2023-12", "2024-01", "2024-02", "2024-03"]
    assert table.set_index("individual").loc["SiteA/star1"].tolist() == [0, 1, 0, 1]
    sightings = pd.read_csv(tmp_path / "results" / "captures.sightings.csv", keep_default_na=False)
    assert len(sightings) == 8 and set(sightings["individual"]) == {p[0] for p in PHOTOS}
    mark = tmp_path / "captures.inp"  # the format follows the suffix
    assert run("catalogue", "captures", "--catalogue", catalogue, "--out", mark, "--dataset", "SiteB") == 0
    lines = mark.read_text().splitlines()
    assert lines[1] == "/* occasions: 2023-12-30_bay night_dive */"
    assert lines[2:] == ["/* SiteB/ghost */ 01 1;", "/* SiteB/star9 */ 11 1;"]
    assert (tmp_path / "captures.sightings.csv").is_file()
    forced = tmp_path / "histories.txt"
    assert run("catalogue", "captures", "--catalogue", catalogue, "--out", forced, "--format", "mark") == 0
    assert forced.read_text().startswith("/* MegaStarID")


def test_captures_bad_input_is_one_line(
    catalogue: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = [
        (["--out", tmp_path / "a.sightings.csv"], "names ending in .sightings.csv are for the sightings"),
        (["--out", tmp_path], "is a folder"),
        (["--out", tmp_path / "c.csv", "--by", "week"], "--by"),
        (["--out", tmp_path / "c.csv", "--dataset", "Nowhere"], "holds no photos of dataset 'Nowhere'"),
        (["--out", tmp_path / "c.csv", "--format", "rmark"], "--format"),
    ]
    for extra, message in cases:
        capsys.readouterr()
        assert run("catalogue", "captures", "--catalogue", catalogue, *extra) == 2, extra
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err


def test_capture_histories_side_by_side_keep_their_own_sightings(catalogue: Path, tmp_path: Path) -> None:
    """Issue 20 #17: two histories written into one folder each have their sightings beside them."""
    for name, dataset in (("site_a.csv", "SiteA"), ("site_b.inp", "SiteB")):
        out = tmp_path / name
        assert run("catalogue", "captures", "--catalogue", catalogue, "--out", out, "--dataset", dataset) == 0
    for stem, dataset in (("site_a", "SiteA"), ("site_b", "SiteB")):
        sightings = pd.read_csv(tmp_path / f"{stem}.sightings.csv", keep_default_na=False)
        expected = {identity for identity, _, _, where, _ in PHOTOS if where == dataset}
        assert set(sightings["individual"].map(plain_text)) == expected
    assert sorted(p.name for p in tmp_path.glob("*.csv")) == [
        "site_a.csv",
        "site_a.sightings.csv",
        "site_b.sightings.csv",
    ]
