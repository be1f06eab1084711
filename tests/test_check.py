"""``megastarid data check``: the summary, the verdict and ``--export-split``."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from conftest import make_star_tree, write_image
from megastarid.cli import main as cli_main
from megastarid.data.check import find_unreadable
from megastarid.data.readers import read_star_csv
from megastarid.data.splits import temporal_split


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli_main(["data", "check", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_summary_of_a_star_tree(star_tree: Path, capsys) -> None:
    (star_tree / "SiteA" / "star3" / "2024-03-23" / "broken.jpg").write_bytes(b"\xff\xd8\xff")
    code, out, err = _run(capsys, "--star-root", str(star_tree), "--workers", "2")
    assert code == 0, err
    assert "images       22 (1 unreadable)" in out
    assert "identities   4 (0 with one readable photo)" in out
    assert "outings      10 (0 without a date)" in out
    assert "datasets     2: SiteA (18), SiteB (4)" in out
    assert "gallery/train 14 photos of 4 identities; query/test 7 photos of 3 identities" in out
    assert "broken.jpg: " in out
    assert out.rstrip().endswith("usable: yes")


def test_export_split_keeps_the_protocol_and_round_trips(star_tree: Path, tmp_path: Path, capsys) -> None:
    export = tmp_path / "out" / "split.csv"
    code, out, _ = _run(capsys, "--star-root", str(star_tree), "--export-split", str(export))
    assert code == 0 and f"split written to {export}" in out
    table = pd.read_csv(export, keep_default_na=False)
    assert {"path", "identity", "folder", "date", "split", "readable"} <= set(table.columns)
    assert len(table) == 21 and table["readable"].all()
    assert (table.groupby(["identity", "folder"])["split"].nunique() == 1).all()
    for _, rows in table.groupby("identity"):
        gallery, query = rows[rows["split"] == "train"], rows[rows["split"] == "test"]
        if len(query):
            assert query["date"].min() > gallery["date"].max()  # ISO strings order like dates
    again = temporal_split(read_star_csv(export, star_tree))
    assert again["split"].tolist() == table["split"].tolist()
    assert again["identity"].tolist() == table["identity"].tolist()


def test_csv_source(star_tree: Path, capsys) -> None:
    (star_tree / "m.csv").write_text(
        "identity,path,date\n"
        "a,SiteA/star1/3_23_2024_dock/img0.jpg,2024-03-23\n"
        "a,SiteA/star1/3_23_2024_dock/img1.jpg,2024-03-23\n"
        "a,SiteA/star1/7_15_2024/img0.jpg,2024-07-15\n"
        "b,SiteA/star2/2024-03-23/img0.jpg,2024-03-23\n"
        "b,SiteA/star2/2024-05-01/img0.jpg,2024-05-01\n"
    )
    code, out, _ = _run(capsys, "--csv", str(star_tree / "m.csv"))
    assert code == 0
    assert "gallery/train 3 photos of 2 identities; query/test 2 photos of 2 identities" in out


def test_wildlife_source(tmp_path: Path, capsys) -> None:
    rows = ["identity,path,split,dataset,species"]
    for i in range(3):
        for j, split in enumerate(["train", "train", "test"]):
            write_image(tmp_path / f"images/{i}_{j}.jpg", (16, 16), seed=i * 3 + j)
            rows.append(f"Z_{i},images/{i}_{j}.jpg,{split},Zebras,zebra")
    (tmp_path / "metadata.csv").write_text("\n".join(rows) + "\n")
    code, out, _ = _run(capsys, "--wildlife-root", str(tmp_path), "--wildlife-datasets", "Zebras,")
    assert code == 0
    assert "train 6 photos of 3 identities; test 3 photos of 3 identities" in out
    assert "species      1: zebra (9)" in out


@pytest.mark.parametrize(
    ("layout", "reason"),
    [
        (
            {"S": {"a": {"2024-01-01": 1}, "b": {"2024-01-02": 1}}},
            "no identity has two or more readable photos",
        ),
        ({"S": {"a": {"2024-01-01": 3}, "b": {"2024-01-02": 2}}}, "the split has no readable query photos"),
    ],
)
def test_unusable_sets_exit_non_zero_with_one_line(tmp_path: Path, capsys, layout, reason: str) -> None:
    make_star_tree(tmp_path, layout, size=(8, 8))
    code, out, err = _run(capsys, "--star-root", str(tmp_path), "--no-open")
    assert code == 2
    assert "images" in out  # the summary still comes first
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"megastarid: error: {tmp_path} is not usable: {reason}")


def test_all_photos_unreadable(tmp_path: Path, capsys) -> None:
    for name in ("a", "b"):
        path = tmp_path / "S" / "x" / f"2024-01-0{1 if name == 'a' else 2}" / f"{name}.jpg"
        path.parent.mkdir(parents=True)
        path.write_bytes(b"not a photo")
    code, out, err = _run(capsys, "--star-root", str(tmp_path))
    assert code == 2 and "none of the photos can be read" in err
    assert "not an image file" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "say which data set to check"),
        (["--star-root", "A", "--wildlife-root", "B"], "one data set at a time"),
        (["--star-root", "A", "--wildlife-species", "x"], "--wildlife-datasets and --wildlife-species need"),
        (["--star-root", "/no/such/root"], "star root /no/such/root does not exist"),
    ],
)
def test_bad_options_are_one_line(capsys, argv: list[str], message: str) -> None:
    code, _, err = _run(capsys, *argv)
    assert code == 2
    assert err.strip().splitlines() == [
        f"megastarid: error: {err.strip().removeprefix('megastarid: error: ')}"
    ]
    assert message in err


def test_find_unreadable(tmp_path: Path) -> None:
    good = write_image(tmp_path / "ok.png")
    (tmp_path / "zero.jpg").write_bytes(b"")
    found = find_unreadable([str(good), str(tmp_path / "zero.jpg"), str(tmp_path / "gone.jpg")], workers=2)
    assert found == {
        str(tmp_path / "zero.jpg"): "empty file (0 bytes)",
        str(tmp_path / "gone.jpg"): "file not found",
    }
