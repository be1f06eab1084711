"""catalogue apply under hostile or unlucky decisions files: an older decision never overrides a newer one
(a file applied again changes nothing), and the rules hold for every row."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from conftest import write_image
from decisions_world import TIME, World, run, write_decisions
from megastarid.core.runfiles import MATCHES_JSON
from megastarid.data.readers import read_star_tree
from megastarid.identification.build import build_catalogue
from megastarid.identification.decisions_apply import apply_decisions
from megastarid.identification.decisions_log import decision_log
from megastarid.identification.lineup import lineup_data
from megastarid.identification.paths import ref_path
from megastarid.identification.store_open import open_catalogue
from megastarid.models.checkpoints import save_checkpoint
from megastarid.models.network import build_model

EARLY, LATE = "2024-06-02T09:00:00Z", "2024-06-03T09:00:00Z"


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def apply(world: World, path: Path):
    with open_catalogue(world.catalogue, write=True) as store:
        return apply_decisions(store, path, world.embedder)


def logged(world: World) -> list[dict]:
    with open_catalogue(world.catalogue) as store:
        return decision_log(store)


@pytest.mark.parametrize("times", [(TIME, TIME), (EARLY, LATE)], ids=["same-time", "later"])
def test_applying_an_older_file_again_never_undoes_a_later_decision(
    world: World, tmp_path: Path, times: tuple[str, str]
) -> None:
    q = world.photos["encA"][0]
    first = write_decisions(tmp_path / "a.csv", [(q, "encA", "confirm", "SiteA/star2", "", times[0])])
    second = write_decisions(tmp_path / "b.csv", [(q, "encA", "confirm", "SiteB/star3", "", times[1])])
    apply(world, first)
    apply(world, second)
    assert world.owner(q) == "SiteB/star3"
    before = world.state()
    report = apply(world, first)
    assert not report.changed and "nothing changed" in report.line(), report.line()
    assert world.owner(q) == "SiteB/star3" and world.state() == before
    assert logged(world)[-1]["identity"] == "SiteB/star3"


def test_a_new_file_with_an_older_decision_is_logged_and_changes_nothing(
    world: World, tmp_path: Path
) -> None:
    q = world.photos["encA"][0]
    apply(world, write_decisions(tmp_path / "b.csv", [(q, "encA", "confirm", "SiteB/star3", "", LATE)]))
    older = write_decisions(tmp_path / "old.csv", [(q, "encA", "confirm", "SiteA/star1", "", EARLY)])
    report = apply(world, older)
    assert report.effects["superseded"] == 1 and report.effects["moved"] == 0
    assert "1 superseded by a later decision" in report.line(), report.line()
    assert world.owner(q) == "SiteB/star3"
    entry = logged(world)[-1]
    assert (entry["identity"], entry["effect"]) == ("SiteA/star1", "superseded")


def test_a_file_applied_again_after_a_rebuild_brings_back_only_its_own_latest_decisions(
    world: World, tmp_path: Path
) -> None:
    inbox = world.root / ".incoming" / "2024-06-05" / "encZ"  # hidden: a tree build does not read it
    q, r = (write_image(inbox / f"IMG_{i}.jpg", (40, 32), seed=300 + i) for i in range(2))
    first = write_decisions(
        tmp_path / "a.csv",
        [(q, "encA", "confirm", "SiteA/star2", "", EARLY), (r, "encA", "confirm", "SiteA/star2", "", EARLY)],
    )
    apply(world, first)
    apply(world, write_decisions(tmp_path / "b.csv", [(q, "encA", "confirm", "SiteB/star3", "", LATE)]))
    with open_catalogue(world.catalogue, write=True) as store:  # forgets the photos that joined
        build_catalogue(store, read_star_tree(world.root), world.root, world.embedder(), rebuild=True)
    assert world.owner(q) is None and world.owner(r) is None
    report = apply(world, first)
    assert world.owner(r) == "SiteA/star2" and world.owner(q) is None  # q's latest decision is b.csv's
    assert report.effects["added"] == 1 and report.effects["superseded"] == 1


def refused(world: World, path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """The one line ``catalogue apply`` refuses ``path`` with; nothing of the file applied."""
    before = world.state()
    capsys.readouterr()
    assert run("catalogue", "apply", "--catalogue", world.catalogue, "--decisions", path) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert world.state() == before
    return err


def test_unsure_rows_keep_the_rules_of_every_decision(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, gone = world.photos["encA"], world.dive / "gone.jpg"
    good = (a[1], "encA", "confirm", "SiteA/star1", "")
    cases = [
        ([good, ("/etc/passwd", "etc", "unsure", "", "")], ":3: photo /etc/passwd is not a .jpg/.jpeg/.png"),
        ([good, (gone, "x", "unsure", "", "")], f":3: photo {gone} does not exist"),
        ([(a[0], "encA", "confirm", "SiteA/star1", ""), (a[0], "encA", "unsure", "", "")], ":3: photo"),
        ([(a[0], "encA", "unsure", "", ""), (a[0], "encA", "new", "Stella", "")], ":3: photo"),
    ]
    for rows, message in cases:
        err = refused(world, write_decisions(world.decisions, rows), capsys)
        assert f"{world.decisions}{message}" in err, err
        if message == ":3: photo":
            assert f"{a[0]} was decided otherwise on line 2" in err, err
    write_decisions(world.decisions, [(a[0], "encA", "unsure", "", ""), (a[0], "encA", "unsure", "", "")])
    report = apply(world, world.decisions)  # the same decision twice is fine
    assert report.effects["recorded"] == 1 and report.effects["already"] == 1


def test_the_same_bytes_go_to_one_individual_within_a_file_too(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = world.photos["encA"][0]
    twin = world.dive / "encE" / "twin.jpg"
    twin.parent.mkdir(parents=True)
    twin.write_bytes(p.read_bytes())
    rows = [(p, "encA", "confirm", "SiteA/star2", ""), (twin, "encE", "new", "Stella", "")]
    err = refused(world, write_decisions(world.decisions, rows), capsys)
    assert f"{world.decisions}:3: photo {twin} holds the same bytes as {p} on line 2" in err, err
    # given the same individual, the second copy adds nothing, as a copy of a catalogue photo adds nothing
    rows = [(p, "encA", "confirm", "SiteA/star2", ""), (twin, "encE", "confirm", "SiteA/star2", "")]
    report = apply(world, write_decisions(world.decisions, rows))
    assert report.effects["added"] == 1 and report.effects["already"] == 1
    assert world.owner(p) == "SiteA/star2" and world.owner(twin) is None
    # a photo that joined before and moves now: a copy of it goes where it goes, or is refused
    rows = [(p, "encA", "confirm", "SiteA/star1", ""), (twin, "encE", "new", "Stella", "")]
    err = refused(world, write_decisions(tmp_path / "later.csv", rows), capsys)
    assert ":3: photo" in err and f"holds the same bytes as {p} on line 2" in err, err


def test_names_are_compared_exactly_as_stored(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_image(world.root / "SiteA" / "star4 " / "2024-03-01" / "img0.jpg", (40, 32), seed=400)
    table = read_star_tree(world.root)
    with open_catalogue(
        world.catalogue, write=True
    ) as store:  # a folder name ending in a space: 'SiteA/star4 '
        build_catalogue(store, table[table["dataset"] != "dives"], world.root, world.embedder())
    a = world.photos["encA"]
    apply(world, write_decisions(world.decisions, [(a[0], "encA", "confirm", "SiteA/star4 ", "")]))
    assert world.owner(a[0]) == "SiteA/star4 "
    rows = [(a[1], "encA", "confirm", " SiteA/star1", "")]
    err = refused(world, write_decisions(world.decisions, rows), capsys)
    assert ":2: individual ' SiteA/star1' is not in the catalogue" in err, err
    assert "did you mean 'SiteA/star1'" in err, err


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("Stella\nSiteA/star1", "U+000A"),
        ("Ste\x00lla", "U+0000"),
        ("\u202eallets", "U+202E"),
        ("x" * 10_000, "10000 characters long"),
    ],
    ids=["newline", "nul", "rtl-override", "long"],
)
def test_names_with_control_or_bidi_characters_or_of_any_length_are_refused(
    world: World, capsys: pytest.CaptureFixture[str], name: str, why: str
) -> None:
    a = world.photos["encA"]
    for decision in ("new", "confirm", "unsure"):
        rows = [(a[0], "encA", "confirm", "SiteA/star1", ""), (a[1], "encA", decision, name, "")]
        err = refused(world, write_decisions(world.decisions, rows), capsys)
        assert f"{world.decisions}:3: individual name " in err and why in err, err
        assert len(err) < 400, err


@pytest.mark.parametrize("folder", ["star\n9", "star\u202e9", "s" * 230], ids=["newline", "rtl", "long"])
def test_a_build_refuses_such_a_name_from_a_folder_before_it_writes(
    tmp_path: Path, folder: str, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "stars"
    photo = write_image(root / "SiteA" / folder / "2024-03-01" / "img0.jpg", (40, 32))
    write_image(root / "SiteA" / "star1" / "2024-03-01" / "img0.jpg", (40, 32), seed=1)
    checkpoint = tmp_path / "best.pth"
    config = {"backbone": "test_resnet", "embedding_dim": 16, "image_size": 32}
    save_checkpoint(checkpoint, build_model("test_resnet", embedding_dim=16), config)
    catalogue = tmp_path / "archive.sqlite"
    capsys.readouterr()
    argv = ["--checkpoint", checkpoint, "--star-root", root, "--catalogue", catalogue]
    assert run("catalogue", "build", *argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "individual name " in err and repr(str(photo))[1:20] in err, err
    with open_catalogue(catalogue, create=True) as store:
        assert store.meta("model") is None  # refused before anything was written


def test_the_log_keeps_one_line_per_decision_whatever_the_file_names(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    odd = write_image(world.dive / "encF" / "two\nlines\u202e.jpg", (40, 32), seed=500)
    apply(world, write_decisions(world.decisions, [(odd, "encF", "unsure", "", "")]))
    capsys.readouterr()
    assert run("catalogue", "log", "--catalogue", world.catalogue) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and "two\\nlines\\u202e.jpg" in lines[1], lines


def test_photos_outside_the_root_are_said_up_front_and_copied_into_its_incoming_folder(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    card = tmp_path / "card" / "DCIM" / "2024-06-05" / "encZ"
    x, y = (write_image(card / f"IMG_{i}.jpg", (40, 32), seed=600 + i) for i in range(2))
    argv = ["--catalogue", world.catalogue, "--out", tmp_path / "matches", "--allow-uncalibrated"]
    with caplog.at_level(logging.WARNING):
        assert run("identify", card, *argv) == 0
    warned = [r.getMessage() for r in caplog.records if "outside the catalogue root" in r.getMessage()]
    assert len(warned) == 1 and len(warned[0].splitlines()) == 1, warned
    assert f"2 photo(s) lie outside the catalogue root {world.root} " in warned[0], warned
    assert f"{world.root / '.incoming'}" in warned[0], warned

    bad = [(x, "encZ", "confirm", "SiteA/star1", ""), (world.dive / "gone.jpg", "encZ", "unsure", "", "")]
    refused(world, write_decisions(world.decisions, bad), capsys)
    assert not (world.root / ".incoming").exists()  # nothing copied for a file refused
    rows = [(x, "encZ", "confirm", "SiteA/star1", ""), (y, "encZ", "new", "", "")]
    report = apply(world, write_decisions(world.decisions, rows))
    inbox = world.root / ".incoming" / "2024-06-05" / "encZ"
    assert report.effects["added"] == 2 and f"2 copied into {world.root / '.incoming'}" in report.line()
    assert [(inbox / p.name).read_bytes() == p.read_bytes() for p in (x, y)] == [True, True]
    assert world.owner(inbox / x.name) == "SiteA/star1" and world.owner(inbox / y.name) == "NEW-20240602-1"
    rel = (inbox / x.name).relative_to(world.root).as_posix()
    dated = world.rows(f"SELECT outing, date FROM photos WHERE path = '{rel}'")
    assert dated == [("2024-06-05", "2024-06-05")]
    assert [(e["query"], e["photo"]) for e in logged(world)][:1] == [(str(x), rel)]

    before = world.state()  # applied again: nothing changes, nothing is copied twice
    assert not apply(world, world.decisions).changed and world.state() == before
    assert sorted(p.name for p in inbox.iterdir()) == ["IMG_0.jpg", "IMG_1.jpg"]

    other = write_image(tmp_path / "card2" / "2024-06-05" / "encZ" / "IMG_0.jpg", (40, 32), seed=602)
    apply(world, write_decisions(tmp_path / "c.csv", [(other, "encZ", "confirm", "SiteA/star2", "")]))
    (copy,) = [p for p in inbox.iterdir() if p.name not in ("IMG_0.jpg", "IMG_1.jpg")]  # a name of its own
    assert copy.name.startswith("IMG_0-") and copy.read_bytes() == other.read_bytes()
    assert world.owner(copy) == "SiteA/star2" and world.owner(inbox / x.name) == "SiteA/star1"


def test_photos_whose_names_are_not_utf8_make_the_round_trip(world: World, tmp_path: Path) -> None:
    """Linux names are bytes: the page exports such a photo as its file: URI, apply reads it back and places
    the photo as a copy with a UTF-8 name (the catalogue stores text); identified again, it is known."""
    folder = world.dive / os.fsdecode(b"enc\xe9")  # Latin-1, not UTF-8
    photo = write_image(folder / os.fsdecode(b"IMG_\xff.jpg"), (40, 32), seed=700)
    out = tmp_path / "matches"
    argv = ["--catalogue", world.catalogue, "--out", out, "--allow-uncalibrated"]
    assert run("identify", folder, *argv) == 0
    data = lineup_data(json.loads((out / MATCHES_JSON).read_text()), {})
    (query,) = data["queries"]
    ref, encounter = query["photos"][0]["ref"], query["encounter_ref"]
    assert ref == photo.as_uri() and ref.isascii() and encounter == folder.as_uri()
    assert ref_path(ref) == str(photo) and ref_path(str(world.root)) == str(world.root)
    report = apply(world, write_decisions(world.decisions, [(ref, encounter, "confirm", "SiteA/star1", "")]))
    copy = world.root / ".incoming" / "2024-06-01" / "enc\ufffd" / "IMG_\ufffd.jpg"
    assert report.effects["added"] == 1 and report.copied == 1
    assert copy.read_bytes() == photo.read_bytes() and world.owner(copy) == "SiteA/star1"
    assert not apply(world, world.decisions).changed  # applied again: nothing changes
    assert run("identify", folder, *argv) == 0
    (again,) = json.loads((out / MATCHES_JSON).read_text())["queries"]
    assert again["verdict"] == "known-photo" and again["known"][0]["identity"] == "SiteA/star1"
