"""Issue 9, the data layer: photos are never lost silently and a CSV can never reach outside its root."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from conftest import make_star_tree, write_image
from megastarid import cli
from megastarid.core.errors import UserError
from megastarid.data.catalogue import read_issues
from megastarid.data.readers import list_files, read_star_csv, read_star_tree, read_wildlife
from test_readers import _wildlife


def test_symlinked_identity_and_outing_folders_are_read(tmp_path: Path) -> None:
    store = make_star_tree(tmp_path / "store", {"Site": {"a": {"2024-01-01": 3}, "b": {"2024-02-01": 2}}})
    root = tmp_path / "stars"
    (root / "Site" / "c").mkdir(parents=True)
    (root / "Site" / "a").symlink_to(store / "Site" / "a", target_is_directory=True)  # identity link
    (root / "Site" / "c" / "2024-03-01").symlink_to(store / "Site" / "b" / "2024-02-01")  # outing link
    (root / "Site" / "c" / "2024-03-01" / "loop").symlink_to(root, target_is_directory=True)
    df = read_star_tree(root)
    assert len(df) == 5
    assert df["identity"].value_counts().to_dict() == {"Site/a": 3, "Site/c": 2}
    assert len(list_files(root)) == 5  # prepare's listing follows the links too, and the loop ends


def test_unreadable_folders_are_reported_not_dropped_silently(
    star_tree: Path, monkeypatch, caplog, capsys
) -> None:
    locked = star_tree / "SiteA" / "star2" / "2024-05-01"
    real_scandir = os.scandir

    def scandir(path=None):
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(locked))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with caplog.at_level(logging.WARNING):
        df = read_star_tree(star_tree)
    assert read_issues(df)["unreadable_folders"] == [str(locked)]
    assert "cannot be read" in caplog.text and str(locked) in caplog.text  # what training logs
    assert cli.main(["data", "check", "--star-root", str(star_tree), "--no-open"]) == 0
    assert f"unreadable folders 1: {locked}" in capsys.readouterr().out


def test_csv_path_through_a_symlink_out_of_the_root_is_refused(tmp_path: Path) -> None:
    secret = write_image(tmp_path / "elsewhere" / "secret.jpg")
    root = tmp_path / "root"
    write_image(root / "a" / "1.jpg")
    (root / "door").symlink_to(secret.parent, target_is_directory=True)
    csv = tmp_path / "meta.csv"
    csv.write_text("identity,path\nA,a/1.jpg\nB,door/secret.jpg\n")
    with pytest.raises(UserError, match=r"line 3: path 'door/secret\.jpg' is outside the root"):
        read_star_csv(csv, root)


def test_wildlife_metadata_needs_split_and_refuses_duplicate_rows(tmp_path: Path) -> None:
    root = _wildlife(tmp_path / "wr10k")
    metadata = root / "metadata.csv"
    lines = metadata.read_text().splitlines()
    metadata.write_text("\n".join([*lines, lines[1]]) + "\n")
    with pytest.raises(UserError, match=r"line 23: path .*0\.jpg listed twice"):
        read_wildlife(root)
    header = lines[0].split(",")
    keep = [i for i, column in enumerate(header) if column != "split"]
    metadata.write_text("\n".join(",".join(line.split(",")[i] for i in keep) for line in lines) + "\n")
    with pytest.raises(UserError, match=r"metadata\.csv: required column 'split' is missing"):
        read_wildlife(root)


def test_data_check_refuses_a_set_training_cannot_use(tmp_path: Path, capsys) -> None:
    root = make_star_tree(tmp_path / "one", {"Site": {"only": {"2024-01-01": 3, "2024-02-01": 2}}})
    assert cli.main(["data", "check", "--star-root", str(root), "--no-open"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("fewer than 2 identities have training photos; training needs at least 2 per batch")
    assert "usable: yes" not in capsys.readouterr().out
