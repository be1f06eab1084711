"""The catalogue file: real SQLite files, a tiny real model, real images. Incremental builds by sha256,
the model fingerprint, zero-shot backbones with local weights, the calibration choices, WAL readers during
a build, and one line for every file that is not a usable catalogue."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch

from conftest import make_star_tree, write_image
from megastarid import cli
from megastarid.core.errors import UserError
from megastarid.core.runfiles import CALIBRATION_JSON
from megastarid.data.readers import read_star_csv, read_star_tree
from megastarid.evaluation.openset import Calibration
from megastarid.identification.build import build_catalogue
from megastarid.identification.calibrate import stored_calibration
from megastarid.identification.paths import relative_photo_path
from megastarid.identification.store import PhotoRecord
from megastarid.identification.store_index import load_index
from megastarid.identification.store_open import open_catalogue
from megastarid.identification.store_schema import SCHEMA_VERSION
from megastarid.models.checkpoints import save_checkpoint
from megastarid.models.embedder import checkpoint_embedder
from megastarid.models.network import build_model

BACKBONE = "test_resnet"
SIZE = 32
LAYOUT = {
    "SiteA": {
        "star1": {"2024-03-01": 2, "2024-04-01": 2, "2024-05-01": 2},
        "star2": {"2024-03-01": 2, "2024-04-02": 2},
        "star3": {"2024-03-05": 3},
    },
    "SiteB": {"star1": {"2024-01-01": 2, "2024-02-01": 1}},
}


def run(*argv: object) -> int:
    return cli.main([str(arg) for arg in argv])


def make_checkpoint(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    config = {"backbone": BACKBONE, "embedding_dim": 16, "image_size": SIZE}
    save_checkpoint(path, build_model(BACKBONE, embedding_dim=16), config)
    return path


@pytest.fixture
def stars(tmp_path: Path) -> Path:
    return make_star_tree(tmp_path / "stars", LAYOUT, size=(40, 32))


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    return make_checkpoint(tmp_path / "run" / "best.pth")


def build(stars: Path, checkpoint: Path, catalogue: Path, **kwargs):
    embedder = checkpoint_embedder(checkpoint, torch.device("cpu"), tta=kwargs.pop("tta", "none"))
    with open_catalogue(catalogue, create=True) as store:
        return build_catalogue(store, read_star_tree(stars), stars, embedder, progress=False, **kwargs)


def rows(catalogue: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(catalogue) as con:
        return con.execute(sql).fetchall()


def test_build_stores_photos_individuals_embeddings_and_settings(
    stars: Path, checkpoint: Path, tmp_path: Path
) -> None:
    catalogue = tmp_path / "archive.sqlite"
    report = build(stars, checkpoint, catalogue)
    assert (report.photos, report.individuals, report.embedded) == (16, 4, 16)
    assert rows(catalogue, "PRAGMA journal_mode") == [("wal",)]
    assert rows(catalogue, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert rows(catalogue, "PRAGMA integrity_check") == [("ok",)]
    assert rows(catalogue, "PRAGMA foreign_key_check") == []
    people = rows(catalogue, "SELECT name, first_seen, last_seen, num_photos FROM individuals ORDER BY name")
    assert people[0] == ("SiteA/star1", "2024-03-01", "2024-05-01", 6)
    assert people[-1] == ("SiteB/star1", "2024-01-01", "2024-02-01", 3)
    photo = rows(
        catalogue, "SELECT path, outing, date, width, height, length(sha256) FROM photos ORDER BY path"
    )[0]
    assert photo == ("SiteA/star1/2024-03-01/img0.jpg", "2024-03-01", "2024-03-01", 40, 32, 64)
    assert rows(catalogue, "SELECT DISTINCT length(vector) FROM embeddings") == [(16 * 4,)]
    with open_catalogue(catalogue) as store:
        index = load_index(store)
        model = store.meta("model")
    assert index.embeddings.shape == (16, 16) and index.embeddings.flags.writeable
    np.testing.assert_allclose(np.linalg.norm(index.embeddings, axis=1), 1, atol=1e-5)
    assert model["fingerprint"]["image_size"] == SIZE and model["source"]["checkpoint"] == str(checkpoint)


def test_rerun_embeds_only_new_or_changed_photos_and_drops_vanished_ones(
    stars: Path, checkpoint: Path, tmp_path: Path
) -> None:
    catalogue = tmp_path / "archive.sqlite"
    build(stars, checkpoint, catalogue)
    again = build(stars, checkpoint, catalogue)
    assert (again.embedded, again.unchanged, again.changed) == (0, 16, False)

    outing = stars / "SiteA" / "star2" / "2024-04-02"
    write_image(outing / "img0.jpg", (40, 32), seed=999)  # changed content
    write_image(outing / "img9.jpg", (40, 32), seed=1000)  # new photo
    (stars / "SiteA" / "star3" / "2024-03-05" / "img2.jpg").unlink()  # vanished
    moved = stars / "SiteB" / "star1" / "2024-02-01"
    os.rename(moved / "img0.jpg", moved / "renamed.jpg")  # same bytes, new path
    os.utime(stars / "SiteA" / "star1" / "2024-03-01" / "img0.jpg", ns=(1, 1))  # touched only
    report = build(stars, checkpoint, catalogue)
    assert (report.embedded, report.reused, report.relabelled, report.removed) == (2, 1, 1, 2)
    assert report.photos == 16 and report.unchanged == 12
    assert rows(catalogue, "SELECT count(*), count(DISTINCT path) FROM photos") == [(16, 16)]
    assert rows(catalogue, "SELECT num_photos FROM individuals WHERE name = 'SiteA/star3'") == [(2,)]


def test_relabelled_photos_keep_their_embeddings(stars: Path, checkpoint: Path, tmp_path: Path) -> None:
    catalogue = tmp_path / "archive.sqlite"
    table = read_star_tree(stars)
    csv = tmp_path / "meta.csv"
    relative = table["path"].map(lambda p: str(Path(p).relative_to(stars)))
    pd.DataFrame({"identity": table["identity"], "path": relative}).to_csv(csv, index=False)
    embedder = checkpoint_embedder(checkpoint, torch.device("cpu"))
    with open_catalogue(catalogue, create=True) as store:
        build_catalogue(store, read_star_csv(csv, stars), stars, embedder, progress=False)
        before = load_index(store).embeddings.copy()
        renamed = table["identity"].replace("SiteA/star3", "SiteA/star3-renamed")
        pd.DataFrame({"identity": renamed, "path": relative}).to_csv(csv, index=False)
        report = build_catalogue(store, read_star_csv(csv, stars), stars, embedder, progress=False)
        index = load_index(store)
    assert (report.embedded, report.relabelled) == (0, 3)
    assert "SiteA/star3" not in index.names and "SiteA/star3-renamed" in index.names
    np.testing.assert_array_equal(index.embeddings, before)


def test_another_model_is_refused_unless_rebuild(
    stars: Path, checkpoint: Path, tmp_path: Path, capsys
) -> None:
    catalogue = tmp_path / "archive.sqlite"
    build(stars, checkpoint, catalogue)
    other = make_checkpoint(tmp_path / "other" / "best.pth", seed=1)
    with pytest.raises(UserError, match=r"built with another model \(sha256 .*--rebuild"):
        build(stars, other, catalogue)
    with pytest.raises(UserError, match="tta 'none' vs 'flip'"):
        build(stars, checkpoint, catalogue, tta="flip")
    report = build(stars, other, catalogue, rebuild=True)
    assert report.embedded == 16 and report.photos == 16
    capsys.readouterr()
    argv = ["catalogue", "build", "--checkpoint", checkpoint, "--star-root", stars, "--catalogue", catalogue]
    assert run(*argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "another model" in err


def test_zero_shot_backbone_with_local_weights(stars: Path, tmp_path: Path, capsys) -> None:
    torch.manual_seed(0)
    weights = tmp_path / "backbone.pth"
    torch.save(timm.create_model(BACKBONE, num_classes=0).state_dict(), weights)
    catalogue = tmp_path / "zero.sqlite"
    argv = ["--star-root", stars, "--catalogue", catalogue, "--image-size", SIZE, "--device", "cpu"]
    assert run("catalogue", "build", "--backbone", BACKBONE, "--backbone-weights", weights, *argv) == 0
    with open_catalogue(catalogue) as store:
        model = store.meta("model")
        index = load_index(store)
    assert model["fingerprint"]["kind"] == "backbone" and model["source"]["weights"] == str(weights)
    net = timm.create_model(BACKBONE, num_classes=0)
    net.load_state_dict(torch.load(weights, weights_only=True))
    assert index.dim == net.num_features  # the pooled features, not an embedding head
    out = tmp_path / "matches"
    photo = stars / "SiteA" / "star1" / "2024-05-01" / "img0.jpg"
    new = write_image(tmp_path / "new" / "a.jpg", (40, 32), seed=12345)
    assert run("identify", new, photo, "--catalogue", catalogue, "--out", out, "--allow-uncalibrated") == 0
    document = json.loads((out / "matches.json").read_text())
    assert [q["verdict"] for q in document["queries"]] in (
        ["unverified", "known-photo"],
        ["known-photo", "unverified"],
    )
    # other weights for the same backbone are refused, in one line
    torch.save(timm.create_model(BACKBONE, num_classes=0).state_dict(), tmp_path / "other.pth")
    capsys.readouterr()
    argv = [
        new,
        "--catalogue",
        catalogue,
        "--out",
        out,
        "--allow-uncalibrated",
        "--backbone-weights",
        tmp_path / "other.pth",
    ]
    assert run("identify", *argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not the model catalogue" in err


def test_calibration_from_the_checkpoint_run_or_fitted_on_the_catalogue(
    synthetic_stars: Path, tmp_path: Path, capsys, caplog
) -> None:
    checkpoint = make_checkpoint(tmp_path / "run" / "best.pth")
    catalogue = tmp_path / "archive.sqlite"
    argv = [
        "catalogue",
        "build",
        "--checkpoint",
        checkpoint,
        "--star-root",
        synthetic_stars,
        "--catalogue",
        catalogue,
    ]
    assert run(*argv, "--image-size", SIZE) == 0
    with open_catalogue(catalogue) as store:
        entry = store.meta("calibration")
        fitted = stored_calibration(store)
    assert entry["source"] == "catalogue" and fitted is not None
    assert fitted.fitted_on["num_individuals"] >= 6 and fitted.fitted_on["num_known"] >= 10
    capsys.readouterr()
    assert run("catalogue", "info", "--catalogue", catalogue) == 0
    text = capsys.readouterr().out
    assert "fitted on the catalogue itself" in text and "optimistic" in text and "individuals  8" in text

    given = Calibration("logistic", 0.42, 0.8, coef=10.0, intercept=-5.0, fitted_on={"protocol": "temporal"})
    (checkpoint.parent / CALIBRATION_JSON).write_text(json.dumps(given.to_dict()))
    assert run(*argv, "--image-size", SIZE, "--accept", "0.9") == 0
    assert "does not record the --tta and --image-size it was fitted under" in caplog.text  # an older one
    with open_catalogue(catalogue) as store:
        entry = store.meta("calibration")
        stored = stored_calibration(store)
    assert entry["source"] == "checkpoint" and entry["path"] == str(checkpoint.parent / CALIBRATION_JSON)
    assert stored is not None and (stored.threshold, stored.accept, stored.coef) == (0.42, 0.9, 10.0)


def test_too_few_photos_for_a_calibration_identify_refuses_in_one_line(
    stars: Path, checkpoint: Path, tmp_path: Path, capsys, caplog
) -> None:
    catalogue = tmp_path / "archive.sqlite"
    assert (
        run("catalogue", "build", "--checkpoint", checkpoint, "--star-root", stars, "--catalogue", catalogue)
        == 0
    )
    assert "no calibration: too few photos to fit a calibration on the catalogue" in caplog.text
    capsys.readouterr()
    assert run("catalogue", "info", "--catalogue", catalogue) == 0
    assert "calibration  none (too few photos" in capsys.readouterr().out
    new = write_image(tmp_path / "new" / "a.jpg", (40, 32), seed=12345)
    out = tmp_path / "matches"
    assert run("identify", new, "--catalogue", catalogue, "--out", out) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "has no calibration" in err and "--calibration FILE" in err
    assert not out.exists()
    assert run("identify", new, "--catalogue", catalogue, "--out", out, "--allow-uncalibrated") == 0
    document = json.loads((out / "matches.json").read_text())
    (query,) = document["queries"]
    assert query["verdict"] == "unverified" and query["candidates"][0]["probability"] is None
    assert document["catalogue"]["calibration"] is None


def test_files_that_are_not_usable_catalogues_are_one_line(
    stars: Path, checkpoint: Path, tmp_path: Path, capsys
) -> None:
    catalogue = tmp_path / "archive.sqlite"
    build(stars, checkpoint, catalogue)
    newer = tmp_path / "newer.sqlite"
    newer.write_bytes(catalogue.read_bytes())
    with sqlite3.connect(newer) as con:
        con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    text = tmp_path / "notes.sqlite"
    text.write_text("not a database at all, just some text that is long enough to be a header" * 20)
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as con:
        con.execute("CREATE TABLE birds(name TEXT)")
    empty = tmp_path / "empty.sqlite"
    empty.write_bytes(b"")
    cases = {
        tmp_path / "missing.sqlite": "does not exist",
        newer: "written by a newer MegaStarID",
        text: "is not a MegaStarID catalogue (not an SQLite database",
        other: "is not a MegaStarID catalogue (an SQLite database of something else)",
        empty: "is not a MegaStarID catalogue (an empty file)",
        tmp_path: "is a folder",
    }
    for path, message in cases.items():
        capsys.readouterr()
        assert run("catalogue", "info", "--catalogue", path) == 2, path
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err and str(path) in err, err
    with pytest.raises(UserError, match="newer MegaStarID"):
        build(stars, checkpoint, newer)  # a build never writes into a newer schema either


def test_photo_paths_never_escape_the_root(stars: Path, checkpoint: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(UserError, match="outside the catalogue root"):
        relative_photo_path(tmp_path / "elsewhere.jpg", stars)
    catalogue = tmp_path / "archive.sqlite"
    build(stars, checkpoint, catalogue)
    with sqlite3.connect(catalogue) as con:  # a damaged or edited catalogue
        con.execute("UPDATE photos SET path = '../../etc/passwd' WHERE id = 1")
    new = write_image(tmp_path / "new" / "a.jpg", (40, 32), seed=12345)
    capsys.readouterr()
    argv = [new, "--catalogue", catalogue, "--out", tmp_path / "m", "--allow-uncalibrated"]
    assert run("identify", *argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "escapes its root" in err


def test_readers_see_the_last_commit_while_a_build_writes(
    stars: Path, checkpoint: Path, tmp_path: Path
) -> None:
    catalogue = tmp_path / "archive.sqlite"
    build(stars, checkpoint, catalogue)
    writer = open_catalogue(catalogue, create=True)
    extra = PhotoRecord(
        "SiteC/x/2024-01-01/a.jpg", "SiteC/x", "2024-01-01", "2024-01-01", "SiteC", "", "0" * 64, 1, 1, 1, 1
    )
    try:
        with writer.transaction():
            writer.add_photos([extra], [np.ones(16, np.float32).tobytes()])
            with open_catalogue(catalogue) as reader:  # a second connection, mid-transaction
                index = load_index(reader)
                summary = reader.summary()
            assert index.num_photos == 16 and summary["photos"] == 16
        with open_catalogue(catalogue) as reader:
            assert load_index(reader).num_photos == 17
    finally:
        writer.close()


def test_unreadable_photos_are_listed_and_left_out(
    stars: Path, checkpoint: Path, tmp_path: Path, caplog
) -> None:
    broken = stars / "SiteA" / "star1" / "2024-05-01" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff truncated")
    catalogue = tmp_path / "archive.sqlite"
    report = build(stars, checkpoint, catalogue)
    assert report.unreadable == [str(broken)] and report.photos == 16
    assert "could not be read" in caplog.text and "broken.jpg" in caplog.text


def test_a_build_waits_for_another_programs_write_then_says_the_catalogue_is_busy(
    stars: Path, checkpoint: Path, tmp_path: Path, monkeypatch
) -> None:
    catalogue = tmp_path / "archive.sqlite"
    build(stars, checkpoint, catalogue)
    monkeypatch.setattr("megastarid.identification.store_open.BUSY_TIMEOUT", 0.2)
    busy = pytest.raises(UserError, match="is busy: another program is writing to it")
    other = sqlite3.connect(catalogue, isolation_level=None)  # e.g. the sqlite3 shell, mid-transaction
    try:
        other.execute("BEGIN IMMEDIATE")
        with busy:
            build(stars, checkpoint, catalogue)
    finally:
        other.close()


def test_info_as_json_and_a_damaged_catalogue(stars: Path, checkpoint: Path, tmp_path: Path, capsys) -> None:
    catalogue = tmp_path / "archive.sqlite"
    build(stars, checkpoint, catalogue)
    capsys.readouterr()
    assert run("catalogue", "info", "--catalogue", catalogue, "--json") == 0
    facts = json.loads(capsys.readouterr().out)
    assert (facts["individuals"], facts["photos"], facts["outings"]) == (4, 16, 8)
    assert (facts["first_date"], facts["last_date"]) == ("2024-01-01", "2024-05-01")
    assert facts["model"]["fingerprint"]["backbone"] == BACKBONE
    with sqlite3.connect(catalogue) as con:
        con.execute("PRAGMA foreign_keys = OFF")
        con.execute("DELETE FROM embeddings WHERE photo_id = 3")
    with open_catalogue(catalogue) as store, pytest.raises(UserError, match="damaged: photos and embeddings"):
        load_index(store)
