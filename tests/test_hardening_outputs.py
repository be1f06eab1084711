"""Issue 20, the identification side's outputs under hostile input: no CSV cell runs as a formula in a
spreadsheet, and what we write we read back exactly."""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import make_star_tree, write_image
from megastarid import cli
from megastarid.core.files import csv_text, plain_text, spreadsheet_text
from megastarid.core.runfiles import MATCHES_CSV
from megastarid.data.readers import read_star_csv
from megastarid.identification.store import open_catalogue
from megastarid.models.checkpoints import save_checkpoint
from megastarid.models.network import build_model

#: an individual's name that a spreadsheet would run as a command
HOSTILE = "=cmd|' /C calc'!A0"
#: outing names that a spreadsheet would take for formulas: "@<date> dive"
OUTING = "@{} dive"
SRC = Path(__file__).parents[1] / "src" / "megastarid"


def run(*argv: object) -> int:
    return cli.main([str(arg) for arg in argv])


def formula_cells(text: str) -> list[str]:
    """The cells of a CSV that a spreadsheet would evaluate: starting with = + - @ tab or CR, unless a
    plain number."""
    cells = [cell for row in csv.reader(io.StringIO(text)) for cell in row]
    number = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
    return [
        cell for cell in cells if cell[:1] in ("=", "+", "-", "@", "\t", "\r") and not number.fullmatch(cell)
    ]


# -- defect 2: formula injection ---------------------------------------------------------------------------

TRICKY = [
    HOSTILE,
    "+SUM(1)",
    "-2+3",
    "@A1",
    "\t=1",
    "\r=1",
    "'=already quoted",
    "''+twice",
    "'plain quote",
    "plain",
    "",
    "-0.5",
    "a=b",
]


def test_text_cells_that_start_like_a_formula_are_text_and_read_back_exactly() -> None:
    table = pd.DataFrame({HOSTILE: TRICKY, "score": [-0.5] * len(TRICKY), "rank": range(len(TRICKY))})
    text = csv_text(table)
    assert formula_cells(text) == []
    back = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    assert list(back.columns) == [spreadsheet_text(HOSTILE), "score", "rank"]
    assert back["score"].tolist() == ["-0.5"] * len(TRICKY)  # numbers stay numbers
    assert [plain_text(cell) for cell in back.iloc[:, 0]] == TRICKY
    assert [plain_text(spreadsheet_text(cell)) for cell in TRICKY] == TRICKY
    assert spreadsheet_text(HOSTILE) == "'" + HOSTILE and spreadsheet_text("-0.5") == "-0.5"
    assert plain_text("'plain quote") == "'plain quote"  # a quote a person typed stays


def test_every_csv_we_write_goes_through_the_one_helper() -> None:
    writers = [
        f"{path.relative_to(SRC)}:{number}"
        for path in SRC.rglob("*.py")
        if path.name != "files.py"
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if ".to_csv(" in line or "csv.writer(" in line or "DictWriter(" in line
    ]
    assert writers == []


@dataclass
class Hostile:
    root: Path
    catalogue: Path
    dive: Path
    work: Path


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Hostile:
    """A catalogue whose individuals and outings have names a spreadsheet would run."""
    work = tmp_path_factory.mktemp("hostile")
    layout = {"SiteA": {"a": {"2024-03-01": 2, "2024-04-01": 2}, "b": {"2024-03-01": 2, "2024-04-02": 2}}}
    root = make_star_tree(work / "stars", layout, size=(40, 32))
    names = {"SiteA/a": HOSTILE, "SiteA/b": "-b"}
    rows = [
        {
            "identity": names[f"SiteA/{p.parts[-3]}"],
            "path": p.relative_to(root).as_posix(),
            "folder": OUTING.format(p.parts[-2]),
            "date": p.parts[-2],
        }
        for p in sorted(root.rglob("*.jpg"))
    ]
    gallery = work / "gallery.csv"
    pd.DataFrame(rows).to_csv(gallery, index=False)
    torch.manual_seed(0)
    checkpoint = work / "best.pth"
    config = {"backbone": "test_resnet", "embedding_dim": 16, "image_size": 32}
    save_checkpoint(checkpoint, build_model("test_resnet", embedding_dim=16), config)
    catalogue = work / "archive.sqlite"
    assert run(
        "catalogue", "build", "--checkpoint", checkpoint, "--star-root", root, "--star-csv", gallery,
        "--catalogue", catalogue,
    ) == 0  # fmt: skip
    dive = work / "dive"
    write_image(dive / "enc1" / "IMG_0.jpg", (40, 32), seed=50)
    write_image(dive / "enc2" / "IMG_1.jpg", (40, 32), seed=51)
    return Hostile(root, catalogue, dive, work)


def test_identify_and_captures_write_hostile_names_as_text(hostile: Hostile, tmp_path: Path) -> None:
    out = tmp_path / "matches"
    assert (
        run("identify", hostile.dive, "--catalogue", hostile.catalogue, "--out", out, "--allow-uncalibrated")
        == 0
    )
    text = (out / MATCHES_CSV).read_text(encoding="utf-8")
    assert formula_cells(text) == []
    matches = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    assert spreadsheet_text(HOSTILE) in set(matches["identity"])
    captures = tmp_path / "captures.csv"
    assert run("catalogue", "captures", "--catalogue", hostile.catalogue, "--out", captures) == 0
    written = sorted(tmp_path.glob("*.csv"))
    assert len(written) == 2  # the histories and the sightings
    for path in written:
        assert formula_cells(path.read_text(encoding="utf-8")) == [], path
    table = pd.read_csv(captures, dtype=str)
    outings = [OUTING.format(date) for date in ("2024-03-01", "2024-04-01", "2024-04-02")]
    assert list(table.columns) == ["individual", *map(spreadsheet_text, outings)]
    assert set(table["individual"]) == {spreadsheet_text(HOSTILE), "'-b"}


def test_an_exported_split_reads_back_as_it_was(hostile: Hostile, tmp_path: Path) -> None:
    gallery = hostile.work / "gallery.csv"
    exported = tmp_path / "split.csv"
    assert run(
        "data", "check", "--star-root", hostile.root, "--star-csv", gallery, "--export-split", exported,
        "--no-open",
    ) == 0  # fmt: skip
    assert formula_cells(exported.read_text(encoding="utf-8")) == []
    back = read_star_csv(exported, hostile.root)
    assert set(back["identity"]) == {HOSTILE, "-b"} and set(back["folder"]) == {
        OUTING.format(date) for date in ("2024-03-01", "2024-04-01", "2024-04-02")
    }


def test_a_decisions_file_with_text_cells_reads_back_as_it_was(hostile: Hostile, tmp_path: Path) -> None:
    """decisions.csv as the lineup page writes it (cells that start like a formula quoted) is applied with
    the names as they were typed."""
    photo = write_image(hostile.root / "2024-06-01" / "-enc9" / "IMG_9.jpg", (40, 32), seed=59)
    rel = photo.relative_to(hostile.root).as_posix()
    name = "=Stella+1"
    header = "query,encounter,decision,identity,note,time\n"
    row = [rel, str(photo.parent), "new", name, "@check", "2024-06-02T10:00:00Z"]
    decisions = tmp_path / "decisions.csv"
    decisions.write_text(header + ",".join(spreadsheet_text(cell) for cell in row) + "\n", encoding="utf-8")
    assert run("catalogue", "apply", "--catalogue", hostile.catalogue, "--decisions", decisions) == 0
    with open_catalogue(hostile.catalogue) as store:
        names = {row[0] for row in store.con.execute("SELECT name FROM individuals")}
    assert name in names
