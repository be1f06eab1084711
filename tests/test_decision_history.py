"""The model against the lab's own decisions: a scripted history whose truth is known (identify's proposals
written by hand into matches.json, the lab's decisions into decisions.csv), so ``catalogue evaluate`` must
give exactly the CMC, false-match rate and new precision counted here, and ``catalogue calibrate`` must
change the τ identify then uses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import write_image
from decisions_world import World, run, write_decisions
from megastarid.evaluation.openset import Calibration
from megastarid.identification.calibrate import SOURCES, update_calibration
from megastarid.identification.store_open import open_catalogue
from megastarid.identification.store_schema import MODEL

S1, S2, S3 = "SiteA/star1", "SiteA/star2", "SiteB/star3"
#: per query: verdict, candidates (best first), their score and P, and the lab's decision and individual
SCRIPT = (
    [("match", (S1, S2, S3), 0.9, 0.9, "confirm", S1)] * 6
    + [("match", (S1, S2, S3), 0.9, 0.9, "confirm", S2), ("match", (S1, S2, S3), 0.9, 0.9, "new", "Nova8")]
    + [("uncertain", (S2, S1, S3), 0.7, 0.5, "confirm", S2)] * 2
    + [("uncertain", (S2, S1, S3), 0.7, 0.5, "confirm", S3)] * 2
    + [("uncertain", (S2, S1, S3), 0.7, 0.5, "new", "Nova13")]
    + [("uncertain", (S2, S1, S3), 0.7, 0.5, "unsure", "")]
    + [("new", (S3, S1, S2), 0.4, 0.1, "new", f"Nova{i}") for i in range(15, 22)]
    + [("new", (S3, S1, S2), 0.4, 0.1, "confirm", s) for s in (S3, S1, S2)]
)
FIRST_TAU = 0.123


def _apply(world: World, decisions: Path, *more: object) -> int:
    return run("catalogue", "apply", "--catalogue", world.catalogue, "--decisions", decisions, *more)


def _matches(world: World, photos: list[Path], out: Path) -> Path:
    with open_catalogue(world.catalogue) as store:
        fingerprint = store.meta(MODEL)["fingerprint"]
    queries = []
    for number, (photo, (verdict, candidates, score, p, _, _)) in enumerate(
        zip(photos, SCRIPT, strict=True), start=1
    ):
        queries.append(
            {
                "id": number,
                "encounter": str(photo.parent),
                "verdict": verdict,
                "photos": [{"path": str(photo), "sha256": ""}],
                "candidates": [
                    {"rank": rank, "identity": name, "score": score - 0.1 * (rank - 1), "probability": p}
                    for rank, name in enumerate(candidates, start=1)
                ],
            }
        )
    document = {
        "format": "megastarid-matches",
        "version": 1,
        "catalogue": {"model": fingerprint, "calibration": {"threshold": FIRST_TAU, "accept": 0.8}},
        "queries": queries,
    }
    out.write_text(json.dumps(document), encoding="utf-8")
    return out


@pytest.fixture
def history(tmp_path: Path) -> tuple[World, Path, list[Path]]:
    """The world's catalogue with a first calibration (τ = FIRST_TAU), the scripted matches.json and
    decisions.csv (with query ids) applied."""
    world = World(tmp_path)
    with open_catalogue(world.catalogue, write=True) as store:
        update_calibration(store, Calibration("logistic", FIRST_TAU, 0.8, coef=5.0), "file", None, False)
    photos = [
        write_image(world.root / "dives" / "2024-07-01" / f"q{n}" / "IMG.jpg", (40, 32), seed=500 + n)
        for n in range(1, len(SCRIPT) + 1)
    ]
    matches = _matches(world, photos, tmp_path / "matches.json")
    rows = [
        (photo, str(photo.parent), decision, name, "", "2024-07-02T10:00:00Z", number)
        for number, (photo, (*_, decision, name)) in enumerate(zip(photos, SCRIPT, strict=True), start=1)
    ]
    write_decisions(world.decisions, rows)
    assert _apply(world, world.decisions, "--matches", matches) == 0
    again = write_decisions(tmp_path / "again.csv", [(*row[:4], "again", *row[5:]) for row in rows])
    assert _apply(world, again, "--matches", matches) == 0  # a later export repeating them counts once
    return world, matches, photos


def test_evaluate_gives_the_figures_counted_by_hand(history, tmp_path: Path, capsys) -> None:
    world, _, _ = history
    out = tmp_path / "report"
    assert run("catalogue", "evaluate", "--catalogue", world.catalogue, "--out", out) == 0
    document = json.loads((out / "decisions_evaluation.json").read_text())
    figures = document["all"]
    # 24 queries, one unsure: 23 answers; 14 confirmed, 9 made new
    assert (document["queries"], document["confirmed"], document["new"]) == (23, 14, 9)
    # confirmed as the top proposal: queries 1-6, 9, 10, 22 (9 of 14); all 14 within the top 3
    assert figures["cmc@1"]["value"] == pytest.approx(9 / 14) and figures["cmc@1"]["n"] == 14
    assert figures["cmc@5"]["value"] == 1.0
    # called match: queries 1-8, of which 7 (another individual) and 8 (new) were not its top individual
    false_match = figures["false_match_rate"]
    assert false_match["value"] == pytest.approx(2 / 8) and false_match["n"] == 8
    # called new: 15-24, made new 15-21; made new: 8, 13, 15-21, called new 15-21
    assert figures["new_precision"]["value"] == pytest.approx(7 / 10)
    assert figures["new_recall"]["value"] == pytest.approx(7 / 9)
    # P 0.9 on 8 (6 right), 0.5 on 5 (2 right), 0.1 on 10 (1 right)
    assert figures["ece"]["value"] == pytest.approx((8 * 0.15 + 5 * 0.1 + 10 * 0.0) / 23)
    for entry in figures.values():
        assert entry["low"] <= entry["value"] <= entry["high"]
    assert len(document["models"]) == 1 and next(iter(document["models"].values())) == figures
    table = (out / "decisions_evaluation.csv").read_text().splitlines()
    assert table[0] == "model,figure,value,low,high,n" and len(table) == 1 + 2 * 6
    assert (out / "decisions_reliability.png").stat().st_size > 0
    assert "cmc@1" in capsys.readouterr().out
    late = ("--since", "2030-01-01")
    assert run("catalogue", "evaluate", "--catalogue", world.catalogue, "--out", out, *late) == 2


def test_calibrate_changes_identifys_tau(history, tmp_path: Path, capsys) -> None:
    world, _, photos = history
    assert run("catalogue", "calibrate", "--catalogue", world.catalogue) == 0
    assert run("catalogue", "info", "--catalogue", world.catalogue) == 0
    assert "fitted on the lab's own decisions" in capsys.readouterr().out
    with open_catalogue(world.catalogue) as store:
        entry = store.meta("calibration")
    assert entry["source"] == "decisions" and entry["calibration"]["fitted_on"]["num_decisions"] == 23
    tau = entry["calibration"]["threshold"]
    assert tau != FIRST_TAU and entry["calibration"]["accept"] == 0.8
    out = tmp_path / "again"
    assert run("identify", photos[0], "--catalogue", world.catalogue, "--out", out) == 0
    calibration = json.loads((out / "matches.json").read_text())["catalogue"]["calibration"]
    assert calibration["threshold"] == tau and calibration["source"] == SOURCES["decisions"]
    argv = ["--checkpoint", world.checkpoint, "--star-root", world.root, "--catalogue", world.catalogue]
    assert run("catalogue", "build", *argv) == 0  # a rebuild with the same model keeps it
    with open_catalogue(world.catalogue) as store:
        assert store.meta("calibration") == entry


def test_too_few_decisions_say_how_many_are_needed(tmp_path: Path, capsys) -> None:
    world = World(tmp_path)
    assert run("catalogue", "calibrate", "--catalogue", world.catalogue) == 2
    assert "need 20 or more" in capsys.readouterr().err


def test_old_decisions_files_without_a_query_id_still_apply(history, tmp_path: Path) -> None:
    world, matches, photos = history
    old = tmp_path / "old.csv"
    old.write_text(f"query,encounter,decision,identity,note,time\n{photos[0]},,unsure,,,2024-08-01\n")
    assert _apply(world, old) == 0
    logged = "SELECT query_id, proposal IS NOT NULL FROM decisions WHERE source LIKE ?"
    assert world.rows(logged.replace("?", "'%old.csv'")) == [(None, 0)]
    again = tmp_path / "old2.csv"
    again.write_text(f"query,decision,time\n{photos[1]},unsure,2024-08-01\n")
    assert _apply(world, again, "--matches", matches) == 0
    assert world.rows(logged.replace("?", "'%old2.csv'")) == [(2, 1)]  # matched by its photo


def test_a_query_id_of_another_photo_is_refused(history, tmp_path: Path, capsys) -> None:
    world, matches, photos = history
    wrong = tmp_path / "wrong.csv"
    wrong.write_text(f"query,decision,query_id\n{photos[0]},unsure,3\n")
    assert _apply(world, wrong, "--matches", matches) == 2
    assert "query_id 3" in capsys.readouterr().err
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"format": "megastarid-matches", "queries": [{"id": 1}]}))
    assert _apply(world, wrong, "--matches", broken) == 2
    assert "not identify's matches.json" in capsys.readouterr().err
