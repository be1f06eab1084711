"""Issue 2's bad-input list, end to end through ``megastarid data check``: each case is either handled and
reported in the summary, or stops with one line naming the file or column (never a traceback)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import make_star_tree, write_image
from megastarid.cli import main as cli_main
from megastarid.data.datasets import ImageDataset, collate_skip_bad
from megastarid.data.sources import load_star_catalogue

GOOD = {"S": {"a": {"2024-01-01": 2, "2024-02-01": 2}, "b": {"2024-01-01": 2, "2024-03-01": 1}}}


def _check(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli_main(["data", "check", *argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def _one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("megastarid: error: ")]
    assert len(lines) == 1, err
    return lines[0]


def _to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image.resize((16, 16)))).permute(2, 0, 1)


def test_broken_files_are_counted_skipped_and_listed(tmp_path: Path, capsys) -> None:
    root = make_star_tree(tmp_path / "stars", GOOD, size=(32, 32))
    outing = root / "S" / "a" / "2024-02-01"
    (outing / "zero.jpg").write_bytes(b"")
    (outing / "notes.jpg").write_text("dive log: calm, 12 m")
    full = write_image(outing / "full.jpg", (256, 256)).read_bytes()
    (outing / "full.jpg").write_bytes(full[: len(full) // 3])
    code, out, _ = _check(capsys, "--star-root", str(root))
    assert code == 0
    assert "(3 unreadable)" in out
    for name, reason in [
        ("zero.jpg", "empty file"),
        ("notes.jpg", "not an image"),
        ("full.jpg", "truncated"),
    ]:
        assert any(name in line and reason in line for line in out.splitlines()), name
    catalogue = load_star_catalogue(root)
    dataset = ImageDataset(
        catalogue["path"].tolist(), list(range(len(catalogue))), _to_tensor, decode_size=16
    )
    images, _, _, bad = collate_skip_bad([dataset[i] for i in range(len(dataset))])
    assert len(bad) == 3 and images.shape == (len(dataset) - 3, 3, 16, 16)
    assert {Path(dataset.path(i)).name for i in bad} == {"zero.jpg", "notes.jpg", "full.jpg"}


def test_unusual_image_modes_all_load(tmp_path: Path, capsys) -> None:
    root = make_star_tree(tmp_path / "stars", GOOD, size=(32, 32))
    outing = root / "S" / "b" / "2024-03-01"
    write_image(outing / "cmyk.jpg", mode="CMYK")
    write_image(outing / "grey.jpg", mode="L")
    write_image(outing / "palette.png", mode="P")
    write_image(outing / "alpha.png", mode="RGBA")
    Image.fromarray(np.full((20, 30), 40000, dtype=np.uint16)).save(outing / "deep16.png")
    exif = Image.Exif()
    exif[0x0112] = 8
    Image.new("RGB", (30, 20), (10, 200, 10)).save(outing / "rotated.jpg", exif=exif)
    code, out, _ = _check(capsys, "--star-root", str(root))
    assert code == 0 and "(0 unreadable)" in out
    paths = sorted(str(p) for p in outing.iterdir())
    dataset = ImageDataset(paths, [0] * len(paths), _to_tensor)
    assert all(dataset[i][0] is not None and dataset[i][0].shape == (3, 16, 16) for i in range(len(paths)))


def test_unicode_spaces_empty_folders_and_single_photo_identities(tmp_path: Path, capsys) -> None:
    layout = {
        "Baie des Étoiles": {
            "étoile n°1": {"3_1_2024 plongée": 2, "4_1_2024 plongée": 1},
            "ヒトデ": {"2024-05-05": 1},  # a single photo: kept, gallery only
        }
    }
    root = make_star_tree(tmp_path / "my stars", layout, size=(16, 16))
    (root / "Baie des Étoiles" / "vide").mkdir()  # empty identity folder
    (root / "Baie des Étoiles" / "étoile n°1" / "5_1_2024 rien").mkdir()  # empty outing folder
    export = tmp_path / "split é.csv"
    code, out, _ = _check(capsys, "--star-root", str(root), "--export-split", str(export))
    assert code == 0
    assert "identities   2 (1 with one readable photo)" in out
    assert "empty folders 2" in out and "vide" in out and "5_1_2024 rien" in out
    table = pd.read_csv(export)
    assert table.loc[table["identity"] == "Baie des Étoiles/ヒトデ", "split"].tolist() == ["train"]
    assert set(table["split"]) == {"train", "test"}


@pytest.mark.parametrize("missing", ["identity", "path"])
def test_csv_missing_a_required_column(tmp_path: Path, capsys, missing: str) -> None:
    root = make_star_tree(tmp_path / "stars", GOOD, size=(8, 8))
    header = "identity,path,date".replace(f"{missing},", "")
    (root / "meta.csv").write_text(f"{header}\nx,y\n")
    code, _, err = _check(capsys, "--csv", str(root / "meta.csv"))
    assert code == 2
    line = _one_line_error(err)
    assert f"'{missing}'" in line and str(root / "meta.csv") in line


def test_csv_path_escaping_root(tmp_path: Path, capsys) -> None:
    root = make_star_tree(tmp_path / "stars", GOOD, size=(8, 8))
    write_image(tmp_path / "secret.jpg")
    (root / "meta.csv").write_text("identity,path\na,S/a/2024-01-01/img0.jpg\na,../secret.jpg\n")
    code, _, err = _check(capsys, "--csv", str(root / "meta.csv"), "--star-root", str(root))
    assert code == 2
    line = _one_line_error(err)
    assert str(root / "meta.csv") in line and "line 3" in line and "'../secret.jpg'" in line


@pytest.mark.parametrize("option", ["--star-root", "--wildlife-root", "--identity-root", "--csv"])
def test_missing_root(tmp_path: Path, capsys, option: str) -> None:
    code, _, err = _check(capsys, option, str(tmp_path / "nowhere"))
    assert code == 2
    assert str(tmp_path / "nowhere") in _one_line_error(err)


def test_root_without_photos(tmp_path: Path, capsys) -> None:
    (tmp_path / "S" / "a" / "2024-01-01").mkdir(parents=True)
    (tmp_path / "S" / "a" / "2024-01-01" / "IMG_1.HEIC").write_bytes(b"heic")
    code, _, err = _check(capsys, "--star-root", str(tmp_path))
    assert code == 2
    assert "no .jpg/.jpeg/.png photos found" in _one_line_error(err)
