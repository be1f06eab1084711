"""Issue 20, the identification side's outputs under hostile input: no CSV cell runs as a formula in a
spreadsheet, and what we write we read back exactly."""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import make_star_tree, write_image
from megastarid import cli
from megastarid import identify as identify_command
from megastarid.core.errors import UserError
from megastarid.core.files import csv_text, plain_text, spreadsheet_text
from megastarid.core.runfiles import LINEUP_HTML, MATCHES_CSV, MATCHES_JSON, OUTPUT_MARKER, THUMBS_DIR
from megastarid.data.readers import read_star_csv
from megastarid.evaluation.openset import Calibration
from megastarid.identification import lineup
from megastarid.identification.build import build_running
from megastarid.identification.store import PhotoRecord
from megastarid.identification.store_open import open_catalogue
from megastarid.identification.store_schema import CALIBRATION, ROOT
from megastarid.models.checkpoints import load_checkpoint, save_checkpoint
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


# -- defects 5, 7, 8: identify's output folder -------------------------------------------------------------

SET = (MATCHES_CSV, MATCHES_JSON, LINEUP_HTML)


def snapshot(out: Path) -> dict[str, bytes]:
    """Every file below ``out`` by relative path, with its bytes."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def identify(hostile: Hostile, out: Path, *photos: Path, options: tuple[object, ...] = ()) -> int:
    return run("identify", *(photos or [hostile.dive]), "--catalogue", hostile.catalogue, "--out", out,
               "--allow-uncalibrated", *options)  # fmt: skip


def shown_thumbnails(out: Path) -> set[str]:
    """The thumbnails the lineup page in ``out`` refers to."""
    return set(
        re.findall(rf"{THUMBS_DIR}/[0-9a-f]{{32}}\.jpg", (out / LINEUP_HTML).read_text(encoding="utf-8"))
    )


@pytest.mark.parametrize("where", ["thumbnails", "page"])
def test_a_killed_identify_leaves_the_old_set_whole_and_the_next_run_no_leftovers(
    hostile: Hostile, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    out = tmp_path / "matches"
    assert identify(hostile, out, hostile.dive / "enc1") == 0
    before = snapshot(out)
    calls = []

    def killed(*args: object, **kwargs: object) -> None:
        calls.append(args)
        raise KeyboardInterrupt  # what Ctrl-C (or a kill) does mid-write

    if where == "thumbnails":  # killed while the new thumbnails are made (the first new photo's)
        real = lineup.load_rgb
        monkeypatch.setattr(
            lineup, "load_rgb", lambda path, *a, **k: killed() if "enc2" in str(path) else real(path, *a, **k)
        )
    else:  # killed while the page is rendered
        monkeypatch.setattr(lineup, "script_json", killed)
    assert identify(hostile, out) == 130  # interrupted
    assert calls
    after = snapshot(out)
    assert {name: after.get(name) for name in SET} == {name: before[name] for name in SET}  # the old set
    assert shown_thumbnails(out) <= {name for name in after if name.startswith(THUMBS_DIR)}  # still shown
    monkeypatch.undo()
    # what a killed writer leaves: temp files of the set and of a thumbnail, and a thumbnail no page shows
    (out / f".{MATCHES_JSON}.0123abcd.tmp").write_text("half")
    (out / THUMBS_DIR / f".{'a' * 32}.jpg.0123abcd.tmp").write_bytes(b"half")
    (out / THUMBS_DIR / f"{'b' * 32}.jpg").write_bytes(b"old")
    assert identify(hostile, out) == 0
    thumbs = {p.relative_to(out).as_posix() for p in (out / THUMBS_DIR).iterdir()}
    assert thumbs == shown_thumbnails(out)  # nothing else: the orphan went
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert json.loads((out / MATCHES_JSON).read_text())["counts"] == {"unverified": 2}


def test_identify_never_reads_its_own_output(hostile: Hostile, tmp_path: Path) -> None:
    dive = tmp_path / "dive"
    shutil.copytree(hostile.dive, dive)
    for _ in range(2):
        assert identify(hostile, dive / "matches", dive) == 0
        queries = json.loads((dive / "matches" / MATCHES_JSON).read_text())["queries"]
        assert sorted(Path(q["encounter"]).name for q in queries) == ["enc1", "enc2"]


def test_bad_out_folders_are_one_line_before_any_work(
    hostile: Hostile, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_work(*args: object) -> None:
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(identify_command, "catalogue_embedder", no_work)
    plain = tmp_path / "plain.txt"
    plain.write_text("a file")
    busy = tmp_path / "busy"  # another identify writes there: it holds the marker's lock
    busy.mkdir()
    held = os.open(busy / OUTPUT_MARKER, os.O_RDWR | os.O_CREAT)
    fcntl.flock(held, fcntl.LOCK_EX)
    for out, message in (
        (plain, f"--out {plain} is a file, not a folder"),
        (plain / "matches", f"--out {plain / 'matches'}: cannot write there"),
        (plain / "a" / "b", f"--out {plain / 'a' / 'b'}: cannot write there"),
        (hostile.dive, f"--out {hostile.dive} holds photos to identify"),
        (hostile.dive.parent, f"--out {hostile.dive.parent} holds photos to identify"),
        (busy, f"--out {busy}: another identify is writing there"),
    ):
        capsys.readouterr()
        assert identify(hostile, out) == 2, out
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    os.close(held)
    for captures, message in (
        (plain / "captures.csv", f"--out {plain / 'captures.csv'}: cannot write in {plain}"),
        (
            plain / "a" / "captures.csv",
            f"--out {plain / 'a' / 'captures.csv'}: cannot write in {plain / 'a'}",
        ),
        (tmp_path, f"--out {tmp_path} is a folder"),
    ):
        capsys.readouterr()
        assert run("catalogue", "captures", "--catalogue", hostile.catalogue, "--out", captures) == 2, (
            captures
        )
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err


# -- defect 16: checkpoint messages ------------------------------------------------------------------------


@pytest.mark.parametrize("text", ['{"threshold": 0.5}\n', "calibration: isotonic\n", "[1, 2]\n", "0.5\n"])
def test_a_text_file_as_checkpoint_is_said_to_be_no_checkpoint(tmp_path: Path, text: str) -> None:
    path = tmp_path / "calibration.json"
    path.write_text(text)
    with pytest.raises(UserError) as error:
        load_checkpoint(path)
    assert str(error.value) == f"checkpoint {path} is not a PyTorch checkpoint file"


def test_a_given_checkpoint_that_is_no_file_is_named_as_such(
    hostile: Hostile, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    for given, message in (
        (folder, f"checkpoint {folder} is a folder, not a checkpoint file"),
        (tmp_path / "gone.pth", f"checkpoint {tmp_path / 'gone.pth'} does not exist"),
    ):
        capsys.readouterr()
        assert identify(hostile, tmp_path / "out", options=("--checkpoint", given)) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err and "not there any more" not in err, err


# -- cosmetic: catalogue info, the calibration path, captures --format, identify during a build -----------


def test_info_names_datasets_without_a_blank_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    catalogue = tmp_path / "archive.sqlite"
    records = [
        PhotoRecord(f"{dataset or 'inbox'}/{i}.jpg", "x", "o", None, dataset, "", f"{i:064x}", 1, 1, 1, 1)
        for i, dataset in enumerate(["", "DockSurveys", "DockSurveys"])
    ]
    with open_catalogue(catalogue, create=True) as store, store.transaction():
        store.set_meta(ROOT, str(tmp_path))
        store.add_photos(records, [bytes(16)] * len(records))
        store.refresh_individuals()
    capsys.readouterr()
    assert run("catalogue", "info", "--catalogue", catalogue) == 0
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("datasets")]
    assert line == "datasets     DockSurveys"  # the photos with no dataset leave no blank entry


def test_the_calibration_path_is_stored_absolute(
    hostile: Hostile, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calibration = Calibration("logistic", 0.4, 0.8, coef=10.0, intercept=-5.0)
    (tmp_path / "calibration.json").write_text(json.dumps(calibration.to_dict()))
    monkeypatch.chdir(tmp_path)
    catalogue = tmp_path / "archive.sqlite"
    assert run(
        "catalogue", "build", "--checkpoint", hostile.work / "best.pth", "--star-root", hostile.root,
        "--star-csv", hostile.work / "gallery.csv", "--catalogue", catalogue,
        "--calibration", "calibration.json",
    ) == 0  # fmt: skip
    with open_catalogue(catalogue) as store:
        assert store.meta(CALIBRATION)["path"] == str(tmp_path / "calibration.json")


def test_captures_format_help_lists_no_none(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        run("catalogue", "captures", "--help")
    help_text = capsys.readouterr().out
    (choices,) = re.findall(r"--format \{([^}]*)\}", help_text)
    assert "None" not in choices.split(",") and {"csv", "mark"} <= set(choices.split(","))


def test_identify_while_a_build_runs_says_to_wait(
    hostile: Hostile, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The test's own process plays the build: it holds the catalogue as a running build does."""
    with open_catalogue(hostile.catalogue, write=True) as store, build_running(store):
        capsys.readouterr()
        out = tmp_path / "out"
        assert run("identify", hostile.dive, "--catalogue", hostile.catalogue, "--out", out) == 2
        err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "has not finished: wait for it" in err and "rebuild" not in err, err
    assert run("identify", hostile.dive, "--catalogue", hostile.catalogue, "--out", out) == 2
    assert "has no calibration" in capsys.readouterr().err  # the build ended: what to do without one
