"""identify against a real catalogue: the synthetic stars' gallery side in an SQLite file, a tiny untrained
model, the test side's photos as new photos. identify must reproduce the evaluation's CMC@1 on known
queries exactly, flag new individuals exactly where the open-set rule (the same τ on the same top-1 scores)
does, and report known photos, unreadable photos and encounters as documented."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import write_image
from megastarid import cli
from megastarid.core.runfiles import MATCHES_CSV, MATCHES_JSON
from megastarid.data.sources import load_star_catalogue
from megastarid.evaluation.embed import embed_images
from megastarid.evaluation.metrics import cmc, rank_queries
from megastarid.evaluation.openset import answer_queries
from megastarid.identification.calibrate import stored_calibration
from megastarid.identification.store_index import load_index
from megastarid.identification.store_open import open_catalogue
from megastarid.models.checkpoints import save_checkpoint
from megastarid.models.network import build_model

BACKBONE = "test_resnet"
SIZE = 32
DIM = 32
#: identities left out of the catalogue: their test photos are new individuals
HELD_OUT = 2


def run(*argv: str) -> int:
    return cli.main([str(arg) for arg in argv])


@dataclass
class Built:
    root: Path
    checkpoint: Path
    catalogue: Path
    queries: pd.DataFrame  # the test side (new photos), known and new individuals
    held_out: list[str]


@pytest.fixture(scope="module")
def built(synthetic_stars: Path, tmp_path_factory: pytest.TempPathFactory) -> Built:
    """A catalogue of the gallery side (split == train) minus two identities, built through the CLI."""
    work = tmp_path_factory.mktemp("identify")
    torch.manual_seed(0)
    checkpoint = work / "run" / "best.pth"
    config = {"backbone": BACKBONE, "embedding_dim": DIM, "image_size": SIZE}
    save_checkpoint(checkpoint, build_model(BACKBONE, embedding_dim=DIM), config)
    table = load_star_catalogue(synthetic_stars)
    tested = sorted(table.loc[table["split"] == "test", "identity"].unique())
    held_out = tested[:HELD_OUT]
    gallery = table[(table["split"] == "train") & ~table["identity"].isin(held_out)]
    csv = work / "gallery.csv"
    pd.DataFrame(
        {
            "identity": gallery["identity"],
            "path": [str(Path(p).relative_to(synthetic_stars)) for p in gallery["path"]],
            "folder": gallery["folder"],
            "date": gallery["date"].dt.strftime("%Y-%m-%d"),
        }
    ).to_csv(csv, index=False)
    catalogue = work / "archive.sqlite"
    assert run(
        "catalogue", "build", "--checkpoint", checkpoint, "--star-root", synthetic_stars, "--star-csv", csv,
        "--catalogue", catalogue, "--device", "cpu",
    ) == 0  # fmt: skip
    queries = table[table["split"] == "test"].reset_index(drop=True)
    return Built(synthetic_stars, checkpoint, catalogue, queries, held_out)


def test_identify_reproduces_cmc1_and_flags_new_individuals_by_the_open_set_rule(
    built: Built, tmp_path: Path
) -> None:
    out = tmp_path / "matches"
    photos = built.queries["path"].tolist()
    assert (
        run("identify", *photos, "--catalogue", built.catalogue, "--encounter-by", "none", "--out", out) == 0
    )
    document = json.loads((out / MATCHES_JSON).read_text())
    by_photo = {q["photos"][0]["path"]: q for q in document["queries"]}
    assert list(by_photo) == sorted(photos)  # one query per photo, sorted by encounter (here: the photo)

    # the same embeddings, computed independently: the catalogue's stored ones and the queries' own
    with open_catalogue(built.catalogue) as store:
        index = load_index(store)
        calibration = stored_calibration(store)
        tta = store.meta("model")["fingerprint"]["tta"]
    assert calibration is not None and tta == "rot4"  # the build's default for star photos
    model = build_model(BACKBONE, embedding_dim=DIM)
    model.load_state_dict(torch.load(built.checkpoint, weights_only=True)["model"])
    query_emb = embed_images(model.eval(), photos, SIZE, "cpu", tta=tta)
    identities = built.queries["identity"].to_numpy(dtype=str)
    gallery_ids = index.identities.astype(str)

    known = ~np.isin(identities, built.held_out)
    results = rank_queries(query_emb, identities, index.embeddings, gallery_ids)
    assert results.scored.tolist() == known.tolist()
    top1 = np.array([by_photo[p]["candidates"][0]["identity"] for p in photos])
    identify_cmc1 = float(np.mean(top1[known] == identities[known]))
    assert identify_cmc1 == cmc(results, [1])[1]
    assert 0 < identify_cmc1 < 1  # a real mix of right and wrong answers

    answers = answer_queries(query_emb, identities, index.embeddings, gallery_ids)
    scores = np.array([by_photo[p]["candidates"][0]["score"] for p in photos])
    np.testing.assert_allclose(scores, answers.top1_score, atol=1e-5)
    predicted_new = answers.top1_score < calibration.threshold
    flagged_new = np.array([by_photo[p]["verdict"] == "new" for p in photos])
    assert flagged_new.tolist() == predicted_new.tolist()
    assert document["counts"].get("new", 0) == int(predicted_new.sum())
    assert 0 < predicted_new.sum() < len(photos)
    for p in photos:
        query = by_photo[p]
        first = query["candidates"][0]
        if query["verdict"] != "new":
            expected = "match" if first["probability"] >= calibration.accept else "uncertain"
            assert query["verdict"] == expected


def test_outputs_are_self_describing(built: Built, tmp_path: Path) -> None:
    out = tmp_path / "matches"
    folder = built.queries["path"].map(lambda p: str(Path(p).parent)).iloc[0]
    assert run("identify", folder, "--catalogue", built.catalogue, "--out", out, "--top-k", "3") == 0
    document = json.loads((out / MATCHES_JSON).read_text())
    assert document["format"] == "megastarid-matches" and document["version"] == 1
    assert document["options"]["encounter_by"] == "folder" and "ceil(n/2)" in document["options"]["pooling"]
    assert set(document["verdicts"]) >= {"match", "uncertain", "new", "known-photo"}
    assert document["catalogue"]["model"]["backbone"] == BACKBONE
    assert document["catalogue"]["calibration"]["threshold"] is not None
    (query,) = document["queries"]  # one folder: one encounter
    assert len(query["photos"]) == len(list(Path(folder).iterdir()))
    assert [c["rank"] for c in query["candidates"]] == [1, 2, 3]
    for c in query["candidates"]:
        assert len(c["photo_scores"]) == len(query["photos"])
        assert Path(c["best_photo"]["path"]).is_file()
        assert c["best_photo"]["query_photo"] in [p["path"] for p in query["photos"]]
        assert c["best_photo"]["score"] == max(c["photo_scores"])
        assert all(Path(o["path"]).is_file() for o in c["other_photos"])
        assert c["best_photo"]["path"] not in [o["path"] for o in c["other_photos"]]
        dates = [o["date"] for o in c["other_photos"]]
        assert dates == sorted(dates, reverse=True)
        assert c["last_seen"] >= c["best_photo"]["date"]
    table = pd.read_csv(out / MATCHES_CSV)
    assert list(table.columns[:8]) == [
        "encounter", "query", "num_photos", "rank", "identity", "score", "probability", "verdict",
    ]  # fmt: skip
    assert table["rank"].tolist() == [1, 2, 3]
    assert table["identity"].tolist() == [c["identity"] for c in query["candidates"]]
    assert (table["verdict"] == query["verdict"]).all()


def test_known_photos_and_unreadable_photos(built: Built, tmp_path: Path) -> None:
    with open_catalogue(built.catalogue) as store:
        index = load_index(store)
        (detail,) = store.photo_details([int(index.photo_ids[0])]).values()
    new = tmp_path / "dive"
    new.mkdir()
    shutil.copy(detail.path, new / "copy of a catalogue photo.jpg")
    shutil.copy(built.queries["path"].iloc[0], new / "new.jpg")
    (new / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    write_image(new / "empty_dir_sibling.png", seed=3)
    (new / "notes.txt").write_text("ignored")
    out = tmp_path / "out"
    assert run("identify", new, "--catalogue", built.catalogue, "--out", out) == 0
    document = json.loads((out / MATCHES_JSON).read_text())
    verdicts = {
        Path(q["photos"][0]["path"]).name: q["verdict"] for q in document["queries"] if len(q["photos"]) == 1
    }
    assert verdicts["copy of a catalogue photo.jpg"] == "known-photo"
    known = next(q for q in document["queries"] if q["verdict"] == "known-photo")
    assert known["known"][0]["identity"] == detail.identity and known["candidates"] == []
    pooled = next(q for q in document["queries"] if q["verdict"] != "known-photo")
    assert sorted(Path(p["path"]).name for p in pooled["photos"]) == ["empty_dir_sibling.png", "new.jpg"]
    assert [Path(u["path"]).name for u in document["unreadable"]] == ["broken.jpg"]
    table = pd.read_csv(out / MATCHES_CSV)
    assert table.loc[table["verdict"] == "unreadable", "query"].map(lambda p: Path(p).name).tolist() == [
        "broken.jpg"
    ]
    row = table[table["verdict"] == "known-photo"].iloc[0]
    assert row["identity"] == detail.identity and row["catalogue_photo"] == detail.path


def test_bad_inputs_are_one_line(built: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--catalogue", built.catalogue, "--out", tmp_path / "out"]
    cases = [
        ([tmp_path / "missing.jpg", *common], "does not exist"),
        ([__file__, *common], "is not a .jpg/.jpeg/.png photo"),
        (
            [tmp_path, "--catalogue", tmp_path / "none.sqlite", "--out", tmp_path / "out"],
            "none.sqlite does not exist",
        ),
        ([tmp_path, *common, "--top-k", "0"], "--top-k must be >= 1"),
        ([tmp_path, *common, "--encounter-by", "dive"], "--encounter-by"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert run("identify", *argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
