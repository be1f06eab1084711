"""Readers: the star tree, star metadata CSVs, WildlifeReID-10k and folder-per-identity sets."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest

from conftest import make_star_tree, write_image
from megastarid.core.errors import UserError
from megastarid.data.catalogue import CATALOGUE_COLUMNS, identity_codes, read_issues
from megastarid.data.readers import read_identity_folders, read_star_csv, read_star_tree, read_wildlife
from megastarid.data.sources import load_star_catalogue


def _check_schema(df: pd.DataFrame) -> None:
    assert tuple(df.columns[: len(CATALOGUE_COLUMNS)]) == CATALOGUE_COLUMNS
    assert pd.api.types.is_datetime64_any_dtype(df["date"])
    assert all(Path(p).is_absolute() for p in df["path"])
    assert set(df["split"]) <= {"train", "test", ""}


def test_star_tree(star_tree: Path) -> None:
    df = read_star_tree(star_tree)
    _check_schema(df)
    assert len(df) == 21
    assert sorted(df["identity"].unique()) == ["SiteA/star1", "SiteA/star2", "SiteA/star3", "SiteB/star1"]
    assert set(df["dataset"]) == {"SiteA", "SiteB"}
    row = df[df["folder"] == "3_23_2024_dock"].iloc[0]
    assert row["identity"] == "SiteA/star1" and row["date"] == pd.Timestamp("2024-03-23")
    assert Path(row["path"]).parent.name == "3_23_2024_dock"
    assert df.loc[df["folder"] == "20240301_survey", "date"].iloc[0] == pd.Timestamp("2024-03-01")
    assert (df["split"] == "").all()
    assert read_issues(df) == {}


def test_star_tree_suffixes_unicode_hidden_and_misplaced_files(tmp_path: Path, caplog) -> None:
    root = tmp_path / "my stars"
    outing = root / "Île Nord" / "étoile 7" / "2024-05-06 plongée"
    write_image(outing / "A.JPG")
    write_image(outing / "b.Jpeg")
    write_image(outing / "c.PNG")
    write_image(outing / "burst" / "d.jpg")  # deeper photos belong to the outing
    write_image(outing / "._A.JPG")  # macOS resource fork copy: hidden, skipped silently
    (outing / "notes.txt").write_text("calm")
    write_image(root / "Île Nord" / "étoile 7" / "loose.jpg")  # no outing folder
    (root / "Île Nord" / "ghost" / "2024-01-01").mkdir(parents=True)  # empty identity
    with caplog.at_level(logging.WARNING):
        df = read_star_tree(root)
    assert len(df) == 4
    assert set(df["identity"]) == {"Île Nord/étoile 7"}
    assert set(df["folder"]) == {"2024-05-06 plongée"}
    assert (df["date"] == pd.Timestamp("2024-05-06")).all()
    issues = read_issues(df)
    assert issues["empty_folders"] == [str(root / "Île Nord" / "ghost")]
    assert sorted(Path(p).name for p in issues["ignored_files"]) == ["loose.jpg", "notes.txt"]
    assert "hold no images" in caplog.text and "ignored" in caplog.text


def test_star_tree_missing_or_empty_root(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        read_star_tree(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        read_star_tree(tmp_path / "file")
    (tmp_path / "empty" / "SiteA" / "star1" / "2024-01-01").mkdir(parents=True)
    with pytest.raises(UserError, match=r"no \.jpg/\.jpeg/\.png photos"):
        read_star_tree(tmp_path / "empty")


def _write_csv(path: Path, text: str) -> Path:
    path.write_text(text.strip() + "\n", encoding="utf-8")
    return path


def test_star_csv_relative_and_absolute_paths(star_tree: Path) -> None:
    tree = read_star_tree(star_tree)
    first, second = tree["path"].iloc[0], tree["path"].iloc[3]
    relative = Path(first).relative_to(star_tree).as_posix()
    csv = _write_csv(
        star_tree / "meta.csv",
        f"identity,path,date,Split\nA,{relative},2024-03-23,gallery\nB,{second},3/24/2024,QUERY",
    )
    df = read_star_csv(csv, star_tree)
    _check_schema(df)
    assert df["path"].tolist() == [first, second]
    assert df["identity"].tolist() == ["A", "B"]  # verbatim
    assert df["split"].tolist() == ["train", "test"]
    assert df["date"].tolist() == [pd.Timestamp("2024-03-23"), pd.Timestamp("2024-03-24")]
    assert df["folder"].tolist() == ["2024-03-23", "2024-03-24"]  # outing = the date when no outing column
    assert set(df["dataset"]) == {"stars"}  # the root's name
    assert read_star_csv(csv)["path"].tolist() == [first, second]  # root defaults to the CSV's folder


def test_star_csv_outing_column_extra_columns_and_folder_fallback(star_tree: Path) -> None:
    csv = _write_csv(
        star_tree / "meta.csv",
        "identity,path,outing,dataset,species,camera\n"
        "s1,SiteA/star1/3_23_2024_dock/img0.jpg,visit one,Bay,Pycnopodia helianthoides,tg6\n"
        "s1,SiteA/star1/4_02_2024_dock/img0.jpg,,,,tg6",
    )
    df = read_star_csv(csv, star_tree)
    assert df["folder"].tolist() == ["visit one", "4_02_2024_dock"]  # parent folder when blank
    assert df["date"].isna().tolist() == [True, False]  # the second date comes from its folder name
    assert df["dataset"].tolist() == ["Bay", "stars"]
    assert df["species"].tolist() == ["Pycnopodia helianthoides", ""]
    assert df["camera"].tolist() == ["tg6", "tg6"]


@pytest.mark.parametrize("missing", ["identity", "path"])
def test_star_csv_missing_required_column(star_tree: Path, missing: str) -> None:
    columns = [c for c in ("identity", "path", "date") if c != missing]
    csv = _write_csv(star_tree / "meta.csv", ",".join(columns) + "\n" + ",".join(["x"] * len(columns)))
    with pytest.raises(UserError) as info:
        read_star_csv(csv, star_tree)
    message = str(info.value)
    assert f"'{missing}'" in message and str(csv) in message and "\n" not in message


@pytest.mark.parametrize(
    "bad_path", ["../outside.jpg", "SiteA/../../outside.jpg", "/etc/passwd", "SiteA/star1/../../../x.jpg"]
)
def test_star_csv_path_escaping_root(star_tree: Path, bad_path: str) -> None:
    csv = _write_csv(
        star_tree / "meta.csv", f"identity,path\nok,SiteA/star1/3_23_2024_dock/img0.jpg\nevil,{bad_path}"
    )
    with pytest.raises(UserError, match=r"line 3: path .* is outside the root") as info:
        read_star_csv(csv, star_tree)
    assert str(csv) in str(info.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("identity,path\n,SiteA/star1/3_23_2024_dock/img0.jpg", "line 2: empty 'identity'"),
        (
            "identity,path,date\na,SiteA/star1/3_23_2024_dock/img0.jpg,someday",
            "line 2: cannot read date 'someday'",
        ),
        ("identity,path,split\na,SiteA/star1/3_23_2024_dock/img0.jpg,holdout", "split value 'holdout'"),
        (
            "identity,path\na,SiteA/star1/3_23_2024_dock/img0.jpg\nb,SiteA/star1/3_23_2024_dock/img0.jpg",
            "twice",
        ),
        ("identity,path\na,nothing/here.jpg", "none of its 1 photos exist"),
        ("identity,path", "lists no photos"),
    ],
)
def test_star_csv_bad_rows(star_tree: Path, text: str, message: str) -> None:
    csv = _write_csv(star_tree / "meta.csv", text)
    with pytest.raises(UserError, match=message) as info:
        read_star_csv(csv, star_tree)
    assert str(csv) in str(info.value)


def test_star_csv_missing_files_are_dropped_and_reported(star_tree: Path, caplog) -> None:
    csv = _write_csv(
        star_tree / "meta.csv", "identity,path\na,SiteA/star1/3_23_2024_dock/img0.jpg\na,SiteA/star1/gone.jpg"
    )
    with caplog.at_level(logging.WARNING):
        df = read_star_csv(csv, star_tree)
    assert len(df) == 1
    assert read_issues(df)["missing_files"] == [str(star_tree / "SiteA/star1/gone.jpg")]
    assert "do not exist" in caplog.text


def test_star_csv_not_found_or_not_csv(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        read_star_csv(tmp_path / "nope.csv", tmp_path)
    (tmp_path / "binary.csv").write_bytes(b"\xff\xfe\x00\x81" * 50)
    with pytest.raises(UserError, match=r"binary\.csv"):
        read_star_csv(tmp_path / "binary.csv", tmp_path)


def _wildlife(root: Path) -> Path:
    rows = ["identity,path,date,orientation,species,split,dataset,cluster_id"]
    specs = [("ZebraSet", "zebra", 3), ("LynxSet", "lynx", 2), ("SeaStarReID2023", "sea star", 2)]
    for dataset, species, identities in specs:
        for i in range(identities):
            for j, split in enumerate(["train", "train", "test"]):
                rel = f"images/{dataset}/{i}/{j}.jpg"
                write_image(root / rel, (16, 16), seed=i * 10 + j)
                date = f"2019-06-0{j + 1}" if j else ""
                rows.append(f"{dataset}_{i},{rel},{date},left,{species},{split},{dataset},")
    (root / "metadata.csv").write_text("\n".join(rows) + "\n")
    return root


def test_wildlife_official_split_and_default_exclusion(tmp_path: Path) -> None:
    df = read_wildlife(_wildlife(tmp_path / "wr10k"))
    _check_schema(df)
    assert set(df["dataset"]) == {"ZebraSet", "LynxSet"}  # SeaStarReID2023 left out by default
    assert len(df) == 15
    assert df["split"].value_counts().to_dict() == {"train": 10, "test": 5}
    assert df["identity"].iloc[0] == "ZebraSet_0"
    assert df["date"].isna().sum() == 5 and df["date"].max() == pd.Timestamp("2019-06-03")
    assert (df["folder"] == "").all()
    assert "orientation" in df and "cluster_id" in df
    assert all(Path(p).is_file() for p in df["path"])


def test_wildlife_filters(tmp_path: Path) -> None:
    root = _wildlife(tmp_path / "wr10k")
    assert set(read_wildlife(root, datasets=["LynxSet"])["dataset"]) == {"LynxSet"}
    assert set(read_wildlife(root, species=["zebra", "sea star"])["dataset"]) == {"ZebraSet"}
    asked = read_wildlife(root, datasets=["SeaStarReID2023"])  # asked by name: not excluded
    assert set(asked["dataset"]) == {"SeaStarReID2023"}
    assert len(read_wildlife(root, exclude_datasets=())) == 21
    with pytest.raises(UserError, match=r"unknown dataset 'Nope'.*LynxSet"):
        read_wildlife(root, datasets=["Nope"])
    with pytest.raises(UserError, match="no photos left"):
        read_wildlife(root, species=["sea star"])


def test_wildlife_bad_roots(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"wildlife root .* does not exist"):
        read_wildlife(tmp_path / "none")
    with pytest.raises(UserError, match=r"metadata\.csv not found"):
        read_wildlife(tmp_path)
    (tmp_path / "metadata.csv").write_text("identity,image\nA,x.jpg\n")
    with pytest.raises(UserError, match="required column 'path' is missing"):
        read_wildlife(tmp_path)
    (tmp_path / "metadata.csv").write_text("identity,path,split\nA,../../etc/passwd,train\n")
    with pytest.raises(UserError, match=r"line 2: path '\.\./\.\./etc/passwd' is outside the root"):
        read_wildlife(tmp_path)


def test_identity_folders(tmp_path: Path) -> None:
    root = tmp_path / "SeaStarReID2023"
    write_image(root / "star_01" / "a.jpg")
    write_image(root / "star_01" / "2020-01-02" / "b.png")
    write_image(root / "star 02" / "c.jpeg")
    write_image(root / "stray.jpg")
    (root / "star_03").mkdir()
    df = read_identity_folders(root)
    _check_schema(df)
    assert df["identity"].tolist() == [
        "SeaStarReID2023/star 02",
        "SeaStarReID2023/star_01",
        "SeaStarReID2023/star_01",
    ]
    assert df["folder"].tolist() == ["", "", "2020-01-02"]
    assert set(read_identity_folders(root, dataset="Other")["dataset"]) == {"Other"}
    issues = read_issues(df)
    assert [Path(p).name for p in issues["ignored_files"]] == ["stray.jpg"]
    assert [Path(p).name for p in issues["empty_folders"]] == ["star_03"]


def test_load_star_catalogue_reads_and_splits(star_tree: Path) -> None:
    df = load_star_catalogue(star_tree)
    assert set(df["split"]) == {"train", "test"}
    csv = _write_csv(star_tree / "m.csv", "identity,path,split\nx,SiteA/star1/6_01_2024/img0.jpg,query")
    assert load_star_catalogue(star_tree, csv)["split"].tolist() == ["test"]


def test_identity_codes_are_stable() -> None:
    codes, names = identity_codes(["b", "a", "b", "c"])
    assert codes.tolist() == [1, 0, 1, 2] and names == ["a", "b", "c"]


def test_same_individual_name_at_two_sites_stays_two_identities(tmp_path: Path) -> None:
    make_star_tree(tmp_path, {"A": {"star1": {"2024-01-01": 1}}, "B": {"star1": {"2024-01-01": 1}}})
    assert read_star_tree(tmp_path)["identity"].nunique() == 2
