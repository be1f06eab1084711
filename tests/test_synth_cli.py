"""``python -m megastarid.synth`` / ``megastarid synth``: exit codes and one-line refusals."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from megastarid import cli
from megastarid.core.console import run_main
from megastarid.synth import main


def test_module_entry_point_writes_a_star_tree(tmp_path: Path) -> None:
    out = tmp_path / "stars"
    args = ["--out", str(out), "--identities", "2", "--image-size", "40"]
    done = subprocess.run(
        [sys.executable, "-m", "megastarid.synth", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert any(out.glob("*/star_001/*/*.jpg"))
    assert "wrote" in done.stderr and str(out) in done.stderr


def test_wildlife_kind_through_the_console_script(tmp_path: Path) -> None:
    out = tmp_path / "wildlife"
    args = ["synth", "--kind", "wildlife", "--out", str(out), "--identities", "6", "--image-size", "40"]
    assert cli.main(args) == 0
    table = pd.read_csv(out / "metadata.csv")
    assert table["identity"].nunique() == 6
    assert all((out / p).is_file() for p in table["path"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "is not empty; pass --overwrite"),
        (["--identities", "0", "--overwrite"], "--identities must be at least 1"),
        (["--image-size", "8", "--overwrite"], "--image-size must be at least"),
    ],
)
def test_bad_options_exit_2_with_one_line(tmp_path: Path, capsys, extra: list[str], message: str) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.jpg").write_bytes(b"not mine to delete")
    assert run_main(main, ["--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("megastarid: error: ") and message in err and "\n" not in err
    assert (out / "keep.jpg").read_bytes() == b"not mine to delete"


def test_out_that_is_a_file_is_refused(tmp_path: Path, capsys) -> None:
    target = tmp_path / "file.txt"
    target.write_text("x")
    assert run_main(main, ["--out", str(target)]) == 2
    assert "is a file" in capsys.readouterr().err


def test_overwrite_replaces_the_folder(tmp_path: Path) -> None:
    out = tmp_path / "stars"
    assert main(["--out", str(out), "--identities", "1", "--image-size", "40"]) == 0
    (out / "stale.txt").write_text("old")
    assert main(["--out", str(out), "--identities", "1", "--image-size", "40", "--overwrite"]) == 0
    assert not (out / "stale.txt").exists() and any(out.rglob("*.jpg"))
