"""catalogue apply / log: lineup decisions into a real catalogue (a tiny star tree, a tiny untrained model).
Confirmed photos join with the catalogue's own embeddings, new individuals get their name or a generated
one, unsure ones are only logged; the same file twice changes nothing; a bad row is one line naming the file
and line, and nothing of the file is applied; later builds keep the photos that joined; a schema-1 catalogue
is migrated when opened."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from decisions_world import TIME, World, confirm_rows, run, write_decisions
from megastarid.identification.decisions_apply import apply_decisions, outing_of
from megastarid.identification.decisions_file import read_decisions
from megastarid.identification.store_index import load_index
from megastarid.identification.store_open import open_catalogue
from megastarid.identification.store_schema import SCHEMA_VERSION


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def test_apply_adds_confirmed_and_new_individuals_with_the_catalogues_embeddings(world: World) -> None:
    write_decisions(world.decisions, confirm_rows(world))
    with open_catalogue(world.catalogue, write=True) as store:
        report = apply_decisions(store, world.decisions, world.embedder)
    assert report.effects == {"added": 6, "moved": 0, "already": 0, "recorded": 1, "superseded": 0}
    assert report.created == ["NEW-20240602-1", "Stella"] and report.audited == 7
    a, b, c, d = (world.photos[n] for n in ("encA", "encB", "encC", "encD"))
    assert [world.owner(p) for p in a + b + c] == ["SiteA/star1"] * 2 + ["Stella"] * 2 + [
        "NEW-20240602-1"
    ] * 2
    assert world.owner(d[0]) is None  # unsure: recorded only
    # where they joined: the dive's outing and date, the individual's dataset; origin 'decision'
    rows = world.rows(
        "SELECT path, outing, date, dataset, origin FROM photos WHERE origin = 'decision' ORDER BY path"
    )
    assert {(r[1], r[2], r[4]) for r in rows} == {("2024-06-01", "2024-06-01", "decision")}
    datasets = {r[0].split("/")[2]: r[3] for r in rows}
    assert datasets == {"encA": "SiteA", "encB": "dives", "encC": "dives"}
    assert world.rows("SELECT last_seen, num_photos FROM individuals WHERE name = 'SiteA/star1'") == [
        ("2024-06-01", 6)
    ]
    # embedded exactly as the catalogue's own photos are
    expected = world.embedder().embed([str(p) for p in a + b + c])
    with open_catalogue(world.catalogue) as store:
        index = load_index(store)
        details = store.photo_details(index.photo_ids)
    by_path = {details[int(i)].path: index.embeddings[row] for row, i in enumerate(index.photo_ids)}
    np.testing.assert_allclose(np.stack([by_path[str(p)] for p in a + b + c]), expected, atol=1e-6)
    # the audit
    log = world.rows(
        "SELECT line, decision, identity, note, effect, decided, photo FROM decisions ORDER BY id"
    )
    assert [r[:5] for r in log] == [
        (2, "confirm", "SiteA/star1", "", "added"),
        (3, "confirm", "SiteA/star1", "left arm regrowing", "added"),
        (4, "new", "Stella", "", "added"),
        (5, "new", "Stella", "", "added"),
        (6, "new", "NEW-20240602-1", "", "added"),
        (7, "new", "NEW-20240602-1", "", "added"),
        (8, "unsure", "", "too blurry", "recorded"),
    ]
    assert {r[5] for r in log} == {TIME} and log[-1][6] == "dives/2024-06-01/encD/IMG_0.jpg"


def test_the_same_file_twice_changes_nothing_and_does_not_load_the_model(world: World) -> None:
    write_decisions(world.decisions, confirm_rows(world))
    with open_catalogue(world.catalogue, write=True) as store:
        apply_decisions(store, world.decisions, world.embedder)
    before = world.state()

    def no_model():
        raise AssertionError("nothing to embed: the model must not be loaded")

    with open_catalogue(world.catalogue, write=True) as store:
        report = apply_decisions(store, world.decisions, no_model)
    assert not report.changed and "nothing changed" in report.line()
    assert world.state() == before


def test_a_later_export_restates_earlier_decisions_changes_its_mind_and_adds_more(world: World) -> None:
    """The page exports everything decided so far: a second export repeats the first one's decisions (the
    unnamed new individual keeps its generated name), may change one, and adds others."""
    a, c, d = world.photos["encA"], world.photos["encC"], world.photos["encD"]
    first = write_decisions(
        world.decisions,
        [
            (a[0], "encA", "confirm", "SiteA/star1", ""),
            (c[0], "encC", "new", "", ""),
            (c[1], "encC", "new", "", ""),
        ],
    )
    assert run("catalogue", "apply", "--catalogue", world.catalogue, "--decisions", first) == 0
    second = write_decisions(
        world.decisions.with_name("decisions (1).csv"),
        [
            (a[0], "encA", "confirm", "SiteA/star2", "no: star2"),
            (c[0], "encC", "new", "", ""),
            (c[1], "encC", "new", "", ""),
            (d[0], "encD", "new", "", ""),
        ],
    )
    with open_catalogue(world.catalogue, write=True) as store:
        report = apply_decisions(store, second, world.embedder)
    assert report.effects == {"added": 1, "moved": 1, "already": 2, "recorded": 0, "superseded": 0}
    assert world.owner(a[0]) == "SiteA/star2"
    assert [world.owner(p) for p in c] == ["NEW-20240602-1"] * 2 and world.owner(d[0]) == "NEW-20240602-2"
    assert world.rows("SELECT num_photos FROM individuals WHERE name = 'SiteA/star1'") == [(4,)]


def test_builds_keep_the_photos_that_joined_while_their_files_exist(world: World) -> None:
    write_decisions(world.decisions, confirm_rows(world))
    assert run("catalogue", "apply", "--catalogue", world.catalogue, "--decisions", world.decisions) == 0
    world.build()
    a = world.photos["encA"]
    assert [world.owner(p) for p in a] == ["SiteA/star1"] * 2
    a[1].unlink()
    world.build()
    assert world.owner(a[0]) == "SiteA/star1" and world.owner(a[1]) is None


def test_photos_given_relative_to_the_root_and_copies_of_catalogue_photos(world: World) -> None:
    catalogued = world.root / "SiteA" / "star2" / "2024-03-01" / "img0.jpg"
    copy = world.dive / "encE" / "copy.jpg"
    copy.parent.mkdir(parents=True)
    copy.write_bytes(catalogued.read_bytes())
    rel = world.photos["encA"][0].relative_to(world.root).as_posix()
    write_decisions(
        world.decisions,
        [(rel, "encA", "confirm", "SiteA/star1", ""), (copy, "encE", "confirm", "SiteA/star2", "")],
    )
    with open_catalogue(world.catalogue, write=True) as store:
        report = apply_decisions(store, world.decisions, world.embedder)
    assert report.effects["added"] == 1 and report.effects["already"] == 1  # a copy is not a new sighting
    assert world.owner(world.photos["encA"][0]) == "SiteA/star1" and world.owner(copy) is None


def bad_cases(world: World) -> list[tuple[list[tuple], str]]:
    a, b = world.photos["encA"], world.photos["encB"]
    notes = world.dive / "notes.txt"
    notes.write_text("not a photo")
    gone = world.dive / "gone.jpg"
    good = (a[0], "encA", "confirm", "SiteA/star1", "")
    return [
        ([good, (a[1], "encA", "confirm", "SiteA/nobody", "")], ":3: individual 'SiteA/nobody' is not in"),
        ([good, (gone, "encX", "confirm", "SiteA/star1", "")], f":3: photo {gone} does not exist"),
        ([good, (notes, "encX", "new", "", "")], f":3: photo {notes} is not a .jpg/.jpeg/.png photo"),
        ([good, (a[1], "encA", "maybe", "", "")], ":3: decision 'maybe' is not one of confirm, new, unsure"),
        ([good, (a[1], "encA", "confirm", "", "")], ":3: confirm needs the individual"),
        ([good, (b[0], "encB", "new", "SiteA/star2", "")], ":3: new individual 'SiteA/star2' is already"),
        ([good, (a[0], "encA", "new", "", "")], f":3: photo {a[0]} was decided otherwise on line 2"),
        (
            [good, (world.root / "SiteA/star2/2024-03-01/img0.jpg", "x", "confirm", "SiteA/star1", "")],
            ":3: photo SiteA/star2/2024-03-01/img0.jpg is a catalogue photo of 'SiteA/star2' from the star",
        ),
    ]


def test_a_bad_row_is_one_line_naming_file_and_line_and_nothing_is_applied(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    before = world.state()
    for rows, message in bad_cases(world):
        write_decisions(world.decisions, rows)
        capsys.readouterr()
        assert run("catalogue", "apply", "--catalogue", world.catalogue, "--decisions", world.decisions) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert f"{world.decisions}{message}" in err, err
        assert world.state() == before  # the good first row is not applied either


def test_apply_embeds_with_the_catalogues_own_tta_and_refuses_another(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    with open_catalogue(world.catalogue) as store:
        mode = store.meta("model")["fingerprint"]["tta"]
    other = "flip" if mode != "flip" else "rot4"
    write_decisions(world.decisions, confirm_rows(world))
    before = world.state()
    argv = ["catalogue", "apply", "--catalogue", world.catalogue, "--decisions", world.decisions]
    assert run(*argv, "--tta", other) == 2  # confirmed photos must be embedded as the catalogue's were
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--tta {other}: catalogue {world.catalogue} was embedded" in err
    assert world.state() == before
    assert run(*argv, "--tta", mode, "--batch-size", "2", "--workers", "0") == 0  # its own mode, named
    assert world.owner(world.photos["encA"][0]) == "SiteA/star1"


def test_malformed_files_are_one_line(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    path = world.decisions
    photo = world.photos["encA"][0]
    cases = [
        ("", "is empty"),
        ("query,encounter,decision\n", "holds no decisions"),
        ("query,identity\nx,y\n", ":1: missing column(s) decision"),
        (f"query,decision,identity\n{photo},confirm\n", ":2: 2 fields, the header has 3"),
        (f"query,decision,identity,time\n{photo},confirm,SiteA/star1,yesterday\n", ":2: time 'yesterday'"),
        ('query,decision\n"unclosed,confirm\n', "not valid CSV"),
        (b"query,decision\n\xff\xfe,new\n", "is not UTF-8 text"),
    ]
    for content, message in cases:
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        capsys.readouterr()
        assert run("catalogue", "apply", "--catalogue", world.catalogue, "--decisions", path) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err and str(path) in err, (message, err)
    capsys.readouterr()
    assert (
        run("catalogue", "apply", "--catalogue", world.catalogue, "--decisions", path.with_name("no.csv"))
        == 2
    )
    assert "does not exist" in capsys.readouterr().err


def test_extra_columns_a_bom_and_crlf_are_fine(world: World) -> None:
    photo = world.photos["encA"][0]
    world.decisions.write_bytes(
        f"\ufeffQuery,Decision,Identity,extra\r\n{photo},Confirm,SiteA/star1,whatever\r\n".encode()
    )
    (row,) = read_decisions(world.decisions)
    assert (row.line, row.query, row.decision, row.identity, row.time) == (
        2,
        str(photo),
        "confirm",
        "SiteA/star1",
        None,
    )


def test_log_lists_the_history(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("catalogue", "log", "--catalogue", world.catalogue) == 0
    assert "no decisions applied" in capsys.readouterr().out
    write_decisions(world.decisions, confirm_rows(world))
    assert run("catalogue", "apply", "--catalogue", world.catalogue, "--decisions", world.decisions) == 0
    capsys.readouterr()
    assert run("catalogue", "log", "--catalogue", world.catalogue) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["time", "source", "decision", "query", "identity", "effect"]
    assert len(lines) == 8
    assert "decisions.csv:2" in lines[1] and "dives/2024-06-01/encA/IMG_0.jpg" in lines[1]
    assert lines[-1].split()[2] == "unsure" and lines[-1].split()[-1] == "recorded"
    assert run("catalogue", "log", "--catalogue", world.catalogue, "--json") == 0
    entries = json.loads(capsys.readouterr().out)
    assert [e["identity"] for e in entries][:3] == ["SiteA/star1", "SiteA/star1", "Stella"]
    assert entries[0]["source"] == str(world.decisions) and len(entries[0]["source_sha256"]) == 64


def test_outing_of_a_photo_that_joins() -> None:
    assert outing_of("dives/2024-06-01/enc3/a.jpg") == ("2024-06-01", "2024-06-01")
    assert outing_of("SiteA/star1/3_23_2024_dock/a.jpg") == ("3_23_2024_dock", "2024-03-23")
    assert outing_of("new/batch/a.jpg") == ("batch", None)
    assert outing_of("a.jpg") == ("", None)


def test_a_schema_1_catalogue_is_migrated_when_opened(world: World) -> None:
    with sqlite3.connect(world.catalogue) as con:  # back to schema 1, as earlier versions wrote it
        con.execute("DROP TABLE decisions")
        con.execute("ALTER TABLE photos DROP COLUMN origin")
        con.execute("PRAGMA user_version = 1")
    before = world.rows("SELECT path, sha256 FROM photos ORDER BY path")
    with open_catalogue(world.catalogue) as store:
        assert store.summary()["schema_version"] == SCHEMA_VERSION == 3
    assert world.rows("PRAGMA user_version") == [(3,)]
    assert world.rows("SELECT path, sha256 FROM photos ORDER BY path") == before
    assert {row[0] for row in world.rows("SELECT origin FROM photos")} == {"build"}
    write_decisions(world.decisions, confirm_rows(world))
    assert run("catalogue", "apply", "--catalogue", world.catalogue, "--decisions", world.decisions) == 0
    assert len(world.rows("SELECT * FROM decisions")) == 7
