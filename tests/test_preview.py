"""``megastarid data show-augmentations`` writes a readable, reproducible grid image."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from megastarid import cli, data_cli
from megastarid.data import preview
from megastarid.data.readers import read_star_tree


def run(*args: str) -> int:
    return cli.main(["data", "show-augmentations", *args])


def test_writes_png_grid_of_originals_and_augmentations(star_tree: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "plots" / "grid.png"
    assert run("--star-root", str(star_tree), "--out", str(out), "--n", "3", "--variants", "2") == 0
    with Image.open(out) as grid:
        assert grid.format == "PNG"
        assert grid.width == 3 * 180 and grid.height == 3 * 180  # 3 columns x 3 rows of 1.8 in at 100 dpi
    assert "3 photos x 2 augmentations" in capsys.readouterr().out


def test_same_seed_same_grid_other_seed_differs(star_tree: Path, tmp_path: Path) -> None:
    paths = {name: tmp_path / f"{name}.png" for name in ("a", "b", "c")}
    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        args = ("--star-root", str(star_tree), "--out", str(paths[name]), "--n", "2", "--variants", "2")
        assert run(*args, "--seed", seed, "--image-size", "32") == 0
    assert paths["a"].read_bytes() == paths["b"].read_bytes()
    assert paths["a"].read_bytes() != paths["c"].read_bytes()


def test_rows_cover_distinct_identities_first(star_tree: Path) -> None:
    picked = preview.pick_photos(read_star_tree(star_tree), 4, seed=0)
    assert picked["identity"].nunique() == 4


def test_unreadable_photo_is_skipped_with_warning(star_tree: Path, tmp_path: Path, caplog) -> None:
    for path in star_tree.rglob("*.jpg"):
        if "star3" not in str(path):
            path.write_bytes(b"")  # only star3's 3 photos stay readable
    out = tmp_path / "grid.png"
    assert run("--star-root", str(star_tree), "--out", str(out), "--n", "30", "--variants", "1") == 0
    with Image.open(out) as grid:
        assert grid.height == 3 * 180
    assert "skipped" in caplog.text


def test_defaults_to_the_synthetic_stars(star_tree: Path, tmp_path: Path, monkeypatch) -> None:
    asked = []
    monkeypatch.setattr(data_cli, "ensure_synthetic", lambda kind: asked.append(kind) or star_tree)
    assert run("--out", str(tmp_path / "grid.png"), "--n", "1", "--variants", "1") == 0
    assert asked == ["stars"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--n", "0"], "--n must be >= 1"),
        (["--variants", "0"], "--variants must be >= 1"),
        (["--image-size", "4"], "--image-size"),
        (["--star-root", "/nonexistent/stars"], "/nonexistent/stars"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path: Path, capsys, args: list[str], message: str) -> None:
    assert run("--out", str(tmp_path / "grid.png"), *args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("megastarid: error:") and message in err and "\n" not in err
