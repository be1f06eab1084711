"""The temporal split (DESIGN.md §3): no outing on both sides, queries strictly later, deterministic."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest

from conftest import make_star_tree
from megastarid.core.errors import UserError
from megastarid.data.catalogue import as_catalogue
from megastarid.data.readers import read_star_tree
from megastarid.data.splits import audit_split, gallery_visits, temporal_split
from megastarid.data_cli import check_main


def _catalogue(rows: list[tuple[str, str, str | None]], split: str = "") -> pd.DataFrame:
    """One photo per (identity, folder, date) row."""
    return as_catalogue(
        pd.DataFrame(
            {
                "path": [f"/x/{i}.jpg" for i in range(len(rows))],
                "identity": [r[0] for r in rows],
                "folder": [r[1] for r in rows],
                "date": pd.to_datetime([r[2] for r in rows]),
                "split": split,
            }
        )
    )


def _sides(df: pd.DataFrame) -> dict[str, str]:
    return dict(zip(df["folder"], df["split"], strict=True))


@pytest.mark.parametrize(
    ("visits", "gallery"),
    [(1, 1), (2, 1), (3, 2), (4, 3), (5, 4), (6, 5), (7, 6), (8, 6), (9, 7), (10, 8), (20, 16)],
)
def test_gallery_share_of_visits(visits: int, gallery: int) -> None:
    assert gallery_visits(visits) == gallery


def test_gallery_share_other_fractions() -> None:
    assert gallery_visits(10, 0.5) == 5
    assert gallery_visits(2, 0.99) == 1  # at least one query visit
    assert gallery_visits(5, 0.01) == 1  # at least one gallery visit


def test_latest_outings_become_queries_whatever_the_name_order() -> None:
    df = _catalogue([("a", f"visit{i}", f"2024-0{10 - i}-01") for i in range(1, 6)])  # names reverse time
    assert _sides(temporal_split(df)) == {
        "visit1": "test",  # September: the latest
        "visit2": "train",
        "visit3": "train",
        "visit4": "train",
        "visit5": "train",
    }


def test_same_day_outings_stay_together() -> None:
    df = _catalogue(
        [
            ("a", "3_1_2024_dock", "2024-03-01"),
            ("a", "3_1_2024_reef", "2024-03-01"),
            ("a", "4_1_2024", "2024-04-01"),
        ]
    )
    assert _sides(temporal_split(df)) == {
        "3_1_2024_dock": "train",
        "3_1_2024_reef": "train",
        "4_1_2024": "test",
    }
    df = _catalogue([("a", "x", "2024-03-01"), ("a", "y", "2024-04-01"), ("a", "z", "2024-04-01")])
    assert _sides(temporal_split(df)) == {"x": "train", "y": "test", "z": "test"}


def test_single_visit_identity_is_gallery_only() -> None:
    df = _catalogue([("a", "o1", "2024-01-01"), ("a", "o1", "2024-01-01"), ("b", "o2", None)])
    assert (temporal_split(df)["split"] == "train").all()


def test_undated_outings_follow_dated_ones_in_name_order_with_one_warning(caplog) -> None:
    df = _catalogue(
        [
            ("a", "zz_visit", None),
            ("a", "2024-05-01", "2024-05-01"),
            ("a", "aa_visit", None),
            ("a", "2024-01-01", "2024-01-01"),
            ("a", "2024-03-01", "2024-03-01"),
            ("b", "solo", None),  # single outing: needs no order, not listed
        ]
    )
    with caplog.at_level(logging.WARNING):
        out = temporal_split(df)
    assert _sides(out) == {
        "2024-01-01": "train",
        "2024-03-01": "train",
        "2024-05-01": "train",
        "aa_visit": "train",
        "zz_visit": "test",
        "solo": "train",
    }
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "aa_visit, zz_visit" in warnings[0].getMessage() and "solo" not in warnings[0].getMessage()


def test_given_split_overrides_per_identity() -> None:
    df = _catalogue([("a", "o1", "2024-01-01"), ("a", "o2", "2024-02-01"), ("b", "o3", "2024-01-01")])
    df.loc[df["identity"] == "a", "split"] = ["test", "train"]
    out = temporal_split(df)
    assert out["split"].tolist() == ["test", "train", "train"]


def test_half_given_split_is_an_error() -> None:
    df = _catalogue([("a", "o1", "2024-01-01"), ("a", "o2", "2024-02-01")])
    df.loc[0, "split"] = "train"
    with pytest.raises(UserError, match="identity 'a' has a split for some photos"):
        temporal_split(df)


def test_given_split_that_leaks_an_outing_is_warned(caplog) -> None:
    df = _catalogue([("a", "o1", "2024-01-01"), ("a", "o1", "2024-01-01")])
    df["split"] = ["train", "test"]
    with caplog.at_level(logging.WARNING):
        temporal_split(df)
    assert "both gallery and query" in caplog.text


def test_bad_fraction() -> None:
    with pytest.raises(UserError, match="between 0 and 1"):
        temporal_split(_catalogue([("a", "o", None)]), 1.0)


def _check_protocol(df: pd.DataFrame) -> None:
    """The two promises of the split, checked the way a reviewer of --export-split would."""
    sides = df.groupby(["identity", "folder"])["split"].nunique()
    assert (sides == 1).all(), "an (identity, outing) on both sides"
    for _, photos in df.groupby("identity"):
        gallery, query = photos[photos["split"] == "train"], photos[photos["split"] == "test"]
        assert len(gallery) > 0
        if len(query):
            assert query["date"].min() > gallery["date"].max()


def test_protocol_and_determinism_on_a_tree(tmp_path: Path) -> None:
    outings = {f"{m}_{d}_2023_site": 2 for m, d in [(1, 5), (2, 9), (3, 3), (3, 17), (5, 1), (7, 7), (9, 30)]}
    layout = {
        "SiteA": {
            "s1": outings,
            "s2": {"2023-01-05": 1, "2023-01-05_pm": 1, "2023-02-01": 2},
            "s3": {"20230101": 1, "20230102": 1},
            "one": {"2023-06-06": 1},
        }
    }
    df = read_star_tree(make_star_tree(tmp_path, layout, size=(8, 8)))
    split = temporal_split(df)
    _check_protocol(split)
    counts = split.groupby("identity")["split"].value_counts().unstack(fill_value=0)
    assert counts.loc["SiteA/s1"].to_dict() == {"test": 2, "train": 12}  # 7 visits: 6 gallery, 1 query
    assert counts.loc["SiteA/s2"].to_dict() == {"test": 2, "train": 2}  # the two 5 January folders: 1 visit
    assert counts.loc["SiteA/s3"].to_dict() == {"test": 1, "train": 1}
    assert counts.loc["SiteA/one"].to_dict() == {"test": 0, "train": 1}
    shuffled = temporal_split(df.sample(frac=1, random_state=3)).sort_index()
    pd.testing.assert_series_equal(shuffled["split"], split["split"])


def test_audit_finds_shared_outings_and_early_queries() -> None:
    df = _catalogue(
        [
            ("a", "o1", "2024-01-01"),
            ("a", "o1", "2024-01-01"),
            ("a", "o2", "2024-03-01"),
            ("b", "p1", "2024-05-01"),
            ("b", "p2", "2024-04-01"),
            ("c", "q1", None),
            ("c", "q2", None),
        ]
    )
    df["split"] = ["train", "test", "train", "train", "test", "train", "test"]
    audit = audit_split(df)
    assert audit.shared_outings == [("a", "o1")]
    assert audit.early_queries == ["/x/1.jpg", "/x/4.jpg"]  # undated queries cannot be judged early
    clean = audit_split(temporal_split(df.assign(split="")))
    assert clean.shared_outings == [] and clean.early_queries == []


def test_check_reports_a_leaky_given_split(tmp_path: Path, capsys) -> None:
    layout = {"a": {"2024-01-01": 2, "2024-02-01": 1}, "b": {"2024-01-01": 1, "2024-02-01": 1}}
    root = make_star_tree(tmp_path, {"S": layout}, size=(8, 8))
    (root / "m.csv").write_text(
        "identity,path,split\n"
        "a,S/a/2024-01-01/img0.jpg,gallery\n"
        "a,S/a/2024-01-01/img1.jpg,query\n"
        "a,S/a/2024-02-01/img0.jpg,gallery\n"
        "b,S/b/2024-01-01/img0.jpg,gallery\n"
        "b,S/b/2024-02-01/img0.jpg,query\n"
    )
    assert check_main(["--csv", str(root / "m.csv"), "--no-open"]) == 0
    out = capsys.readouterr().out
    assert "warning: 1 outing(s) on both sides" in out
    assert "warning: 1 query photo(s) not later than their gallery photos" in out
