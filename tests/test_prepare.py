"""``megastarid prepare``: a pre-resized, upright copy of a tree under the same relative paths."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import write_image
from megastarid.cli import main as cli_main
from megastarid.data.readers import read_star_tree
from megastarid.data.resize import prepare_tree


def _tree(src: Path) -> Path:
    outing = src / "Site A" / "étoile" / "3_23_2024"
    write_image(outing / "big.jpg", (400, 300), seed=1)
    write_image(outing / "tall.JPEG", (200, 500), seed=2)
    write_image(outing / "small.jpg", (60, 40), seed=3)
    write_image(outing / "wide.png", (300, 120), seed=4, mode="RGBA")
    (outing / "empty.jpg").write_bytes(b"")
    (src / "metadata.csv").write_text("identity,path\n")
    return src


def test_prepare_resizes_shorter_side_and_keeps_layout(tmp_path: Path, capsys) -> None:
    src, dst = _tree(tmp_path / "src"), tmp_path / "dst"
    code = cli_main(["prepare", "--src", str(src), "--dst", str(dst), "--size", "100", "--workers", "2"])
    out = capsys.readouterr().out
    assert code == 0
    assert (
        "3 photos resized, 1 already small (copied), 1 other files copied, 0 already done, 1 unreadable"
        in out
    )
    assert "empty.jpg: empty file (0 bytes)" in out
    outing = dst / "Site A" / "étoile" / "3_23_2024"
    sizes = {p.name: Image.open(p).size for p in outing.iterdir()}
    assert sizes == {
        "big.jpg": (133, 100),
        "tall.JPEG": (100, 250),
        "small.jpg": (60, 40),
        "wide.png": (250, 100),
    }
    assert Image.open(outing / "big.jpg").format == "JPEG" and Image.open(outing / "wide.png").format == "PNG"
    assert (outing / "small.jpg").read_bytes() == (src / "Site A/étoile/3_23_2024/small.jpg").read_bytes()
    assert (dst / "metadata.csv").is_file()
    assert not list(dst.rglob("*.part"))
    assert not list(dst.rglob(".*.tmp"))  # no temp file of the atomic writer left behind
    assert sorted(read_star_tree(dst)["identity"].unique()) == ["Site A/étoile"]


def test_prepare_skips_done_files_and_redoes_changed_ones(tmp_path: Path) -> None:
    src, dst = _tree(tmp_path / "src"), tmp_path / "dst"
    first = prepare_tree(src, dst, size=100, workers=1)
    assert first.counts["resized"] == 3
    again = prepare_tree(src, dst, size=100, workers=1)
    assert again.counts["skipped"] == 5 and again.counts["resized"] == 0
    changed = src / "Site A" / "étoile" / "3_23_2024" / "big.jpg"
    future = changed.stat().st_mtime + 100
    os.utime(changed, (future, future))
    assert prepare_tree(src, dst, size=100, workers=1).counts["resized"] == 1


def test_prepare_applies_exif_orientation(tmp_path: Path) -> None:
    pixels = np.zeros((300, 600, 3), dtype=np.uint8)
    pixels[:, :300] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    (tmp_path / "src").mkdir()
    Image.fromarray(pixels).save(tmp_path / "src" / "r.jpg", exif=exif, quality=95)
    prepare_tree(tmp_path / "src", tmp_path / "dst", size=100, workers=1)
    out = Image.open(tmp_path / "dst" / "r.jpg")
    assert out.size == (100, 200)
    assert np.asarray(out)[:10].mean() > 200  # the white half is on top: stored upright
    assert out.getexif().get(0x0112) in (None, 1)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--src", "{tmp}/none", "--dst", "{tmp}/d"], "--src {tmp}/none does not exist"),
        (["--src", "{tmp}/src", "--dst", "{tmp}/src/inner"], "must not be --src or inside it"),
        (["--src", "{tmp}/src", "--dst", "{tmp}/d", "--size", "4"], "--size must be at least 16"),
        (["--src", "{tmp}/src", "--dst", "{tmp}/d", "--quality", "0"], "--quality must be between 1 and 100"),
    ],
)
def test_prepare_bad_options(tmp_path: Path, capsys, argv: list[str], message: str) -> None:
    (tmp_path / "src").mkdir()
    code = cli_main(["prepare", *(a.format(tmp=tmp_path) for a in argv)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("megastarid: error: ") and err.count("\n") == 1
    assert message.format(tmp=tmp_path) in err


def test_prepare_refuses_mixing_sizes(tmp_path: Path, capsys) -> None:
    src = _tree(tmp_path / "src")
    prepare_tree(src, tmp_path / "dst", size=100, workers=1)
    code = cli_main(["prepare", "--src", str(src), "--dst", str(tmp_path / "dst"), "--size", "200"])
    assert code == 2
    assert "prepared with --size 100" in capsys.readouterr().err
