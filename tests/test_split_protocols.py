"""Open-set protocols and the validation side: every outing on one side, the test side later, choices
deterministic, validation never trained on."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from conftest import make_star_tree
from megastarid.core.errors import UserError
from megastarid.data.readers import read_star_tree
from megastarid.data.splits import (
    SplitPlan,
    audit_split,
    carve_wildlife_validation,
    default_cut_date,
    split_catalogue,
)

DAYS = ["2023-04-01", "2023-06-01", "2023-08-01", "2024-04-01", "2024-06-01"]


@pytest.fixture(scope="module")
def survey(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """8 residents seen on every survey day, 2 recruits first seen in 2024, 1 animal seen once."""
    layout = {f"star{i}": {day: 3 for day in DAYS} for i in range(8)}
    layout |= {"recruit1": {DAYS[3]: 3, DAYS[4]: 3}, "recruit2": {DAYS[4]: 4}, "once": {DAYS[1]: 2}}
    root = make_star_tree(tmp_path_factory.mktemp("survey") / "stars", {"Bay": layout}, size=(16, 16))
    return read_star_tree(root)


def _one_side_per_outing(df: pd.DataFrame) -> None:
    assert audit_split(df).shared_outings == []


def test_time_cut_marks_recruits_new_and_keeps_time(survey: pd.DataFrame) -> None:
    cut = default_cut_date(survey)
    after = (survey["date"] >= cut).mean()
    assert cut == pd.Timestamp("2024-06-01") and after == pytest.approx(31 / 132)  # about 20 % after
    df = split_catalogue(survey, SplitPlan("time-cut", cut_date=pd.Timestamp("2024-01-01"), val_fraction=0))
    assert df.attrs["protocol"] == "time-cut" and df.attrs["cut_date"] == "2024-01-01"
    assert (df.loc[df["split"] == "train", "date"] < "2024-01-01").all()
    assert (df.loc[df["split"] == "test", "date"] >= "2024-01-01").all()
    gallery = set(df.loc[df["split"] == "train", "identity"])
    new = set(df.loc[df["split"] == "test", "identity"]) - gallery
    assert new == {"Bay/recruit1", "Bay/recruit2"}
    _one_side_per_outing(df)
    with pytest.raises(UserError, match="--cut-date 2020-01-01: one side of the cut holds no photos"):
        split_catalogue(survey, SplitPlan("time-cut", cut_date=pd.Timestamp("2020-01-01")))


def test_undated_outings_are_left_out_of_a_time_cut(tmp_path: Path, caplog) -> None:
    layout = {"a": {DAYS[0]: 2, DAYS[4]: 2, "dive_x": 2}, "b": {DAYS[0]: 2, DAYS[3]: 2}}
    df = read_star_tree(make_star_tree(tmp_path / "s", {"Bay": layout}, size=(16, 16)))
    out = split_catalogue(df, SplitPlan("time-cut", val_fraction=0))
    assert (out.loc[out["folder"] == "dive_x", "split"] == "").all()
    assert "without a date are left out" in caplog.text


def test_identity_holdout_moves_whole_identities_deterministically(survey: pd.DataFrame) -> None:
    plan = SplitPlan("identity-holdout", new_fraction=0.2, val_fraction=0)
    df = split_catalogue(survey, plan)
    sides = df.groupby("identity")["split"].agg(set)
    held = sorted(sides[sides == {"test"}].index)
    assert len(held) == 2  # 20 % of 11 identities, the single-outing one never split otherwise
    assert held == sorted(sides[sides == {"test"}].index)
    again = split_catalogue(survey.sample(frac=1, random_state=5), plan)
    assert again.set_index("path")["split"].sort_index().equals(df.set_index("path")["split"].sort_index())
    assert split_catalogue(survey, SplitPlan("identity-holdout", seed=1, val_fraction=0)).pipe(
        lambda other: set(other.groupby("identity")["split"].agg(set).pipe(lambda s: s[s == {"test"}]).index)
    ) != set(held)
    _one_side_per_outing(df)


@pytest.mark.parametrize("protocol", ["temporal", "time-cut", "identity-holdout"])
def test_validation_is_carved_from_the_train_side(survey: pd.DataFrame, protocol: str) -> None:
    plain = split_catalogue(survey, SplitPlan(protocol, val_fraction=0))
    df = split_catalogue(survey, SplitPlan(protocol, val_fraction=0.3))
    assert set(df["split"]) <= {"train", "val", "test", ""}
    moved = plain["split"] != df["split"]
    assert (plain.loc[moved, "split"] == "train").all() and (df.loc[moved, "split"] == "val").all()
    assert (df["split"] == "val").sum() <= 0.3 * (plain["split"] == "train").sum()
    assert (df["split"] == "val").any()
    _one_side_per_outing(df)
    val, train = df[df["split"] == "val"], df[df["split"] == "train"]
    pseudo_new = set(val["identity"]) - set(train["identity"])
    if protocol == "temporal":
        assert pseudo_new == set()
    else:
        assert pseudo_new  # whole identities held out of training, to fit the threshold on
        assert set(val["identity"]) - pseudo_new  # and known ones, so both kinds of answer are there
    for identity, rows in val[~val["identity"].isin(pseudo_new)].groupby("identity"):
        assert rows["folder"].nunique() == 1  # its latest train-side outing, later than every training one
        assert rows["date"].min() > train.loc[train["identity"] == identity, "date"].max()
        test = df[(df["split"] == "test") & (df["identity"] == identity)]
        assert test.empty or test["date"].min() > rows["date"].max()
    assert split_catalogue(survey, SplitPlan(protocol, val_fraction=0.3))["split"].equals(df["split"])


def test_bad_plans_are_one_line(survey: pd.DataFrame) -> None:
    with pytest.raises(UserError, match="--split must be one of temporal, time-cut, identity-holdout"):
        SplitPlan("random")
    with pytest.raises(UserError, match="--new-fraction"):
        SplitPlan("identity-holdout", new_fraction=1.5)
    with pytest.raises(UserError, match="--val-fraction"):
        SplitPlan(val_fraction=-0.1)


def test_wildlife_validation_comes_from_the_official_train_split() -> None:
    rows = [
        {
            "path": f"/w/{dataset}/{i}/{j}.jpg",
            "identity": f"{dataset}_{i}",
            "dataset": dataset,
            "date": pd.Timestamp("2020-01-01") + pd.Timedelta(days=j),
            "split": "test" if j == 4 else "train",
        }
        for dataset, identities in (("Zebra", 10), ("Lynx", 6))
        for i in range(identities)
        for j in range(5 if i % 3 else 2)  # every third identity has too few photos to spare one
    ]
    df = pd.DataFrame(rows)
    out = carve_wildlife_validation(df, val_fraction=0.1, seed=0)
    val = out[out["split"] == "val"]
    assert len(val) == 3 + 2  # 10 % of each dataset's train photos (32 and 20), one photo per identity
    assert (df.loc[val.index, "split"] == "train").all()  # never from the official test split
    assert (out["split"] == "test").sum() == (df["split"] == "test").sum()
    assert val["identity"].is_unique and val["path"].str.endswith("/3.jpg").all()  # the latest train photo
    assert carve_wildlife_validation(df, val_fraction=0.1, seed=0)["split"].equals(out["split"])


def test_data_check_shows_the_protocol_and_the_validation_side(tmp_path: Path, capsys) -> None:
    from megastarid import cli

    layout = {f"star{i}": {day: 2 for day in DAYS} for i in range(6)}
    layout |= {"recruit": {DAYS[3]: 2, DAYS[4]: 2}}
    root = make_star_tree(tmp_path / "stars", {"Bay": layout}, size=(16, 16))
    argv = ["data", "check", "--star-root", str(root), "--no-open", "--split", "time-cut"]
    assert cli.main([*argv, "--cut-date", "2024-01-01", "--val-fraction", "0.3"]) == 0
    out = capsys.readouterr().out
    assert "protocol     time-cut, cut 2024-01-01" in out
    assert "validation   " in out and "held out whole as pseudo-new" in out
    assert "1 query identities have no gallery photo (new individuals" in out
    assert cli.main([*argv, "--cut-date", "someday"]) == 2
    assert capsys.readouterr().err.strip() == (
        "megastarid: error: --cut-date must be a date such as 2024-03-23, got 'someday'"
    )
