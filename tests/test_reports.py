"""Report tables, summary and files agree with the per-query results they aggregate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from megastarid.core.runfiles import CMC_PNG, FOLDER_PNG
from megastarid.core.runfiles import STAR_FOLDER_CSV as FOLDER_CSV
from megastarid.core.runfiles import STAR_IDENTITY_CSV as IDENTITY_CSV
from megastarid.core.runfiles import STAR_QUERY_CSV as QUERY_CSV
from megastarid.core.runfiles import STAR_SUMMARY_JSON as SUMMARY_JSON
from megastarid.evaluation.embeddings import EmbeddingSet
from megastarid.evaluation.metrics import QueryResults, rank_queries
from megastarid.evaluation.reports import (
    folder_table,
    identity_table,
    query_table,
    summary,
    write_reports,
)

KS = (1, 5, 10, 20)
IDENTITY_COLUMNS = ["identity", "folder", "mean_rank", "best_rank", "worst_rank", "num_queries", "mAP"]
FOLDER_COLUMNS = ["folder", "num_identities", "mean_rank", "std_rank", "num_queries", "mAP"]
CMC_COLUMNS = ["CMC@1", "CMC@5", "CMC@10", "CMC@20"]


def random_set(seed: int = 0) -> EmbeddingSet:
    """Queries over shared outing folders, one single-query folder, identities absent from the gallery."""
    rng = np.random.default_rng(seed)
    gallery_ids = [f"S/star{i}" for i in rng.integers(0, 12, 80)]
    query_ids = [f"S/star{i}" for i in rng.integers(0, 15, 40)]
    folders = [f"2024-0{rng.integers(1, 5)}-01" for _ in query_ids]
    folders[0] = "lonely_outing"
    return EmbeddingSet.from_arrays(
        query_embeddings=rng.normal(size=(40, 8)),
        gallery_embeddings=rng.normal(size=(80, 8)),
        query_identities=query_ids,
        gallery_identities=gallery_ids,
        query_paths=[f"/data/q{i}.jpg" for i in range(40)],
        gallery_paths=[f"/data/g{i}.jpg" for i in range(80)],
        query_folders=folders,
        gallery_folders=["2023-01-01"] * 80,
    )


def ranked(seed: int = 0) -> tuple[EmbeddingSet, QueryResults, pd.DataFrame]:
    emb = random_set(seed)
    results = rank_queries(
        emb.query_embeddings, emb.query_identities, emb.gallery_embeddings, emb.gallery_identities
    )
    return emb, results, query_table(emb, results)


def test_identity_table_aggregates_the_scored_queries() -> None:
    emb, results, queries = ranked()
    table = identity_table(queries, KS)
    assert list(table.columns) == IDENTITY_COLUMNS + CMC_COLUMNS
    scored_ids = sorted(set(emb.query_identities[results.scored]))
    assert table["identity"].tolist() == scored_ids
    assert results.num_skipped > 0  # identities star12..14 have no gallery image
    for _, row in table.iterrows():
        mine = results.scored & (emb.query_identities == row["identity"])
        ranks = results.first_rank[mine]
        assert row["folder"] == ";".join(sorted(set(emb.query_folders[mine])))
        assert row["mean_rank"] == pytest.approx(ranks.mean())
        assert (row["best_rank"], row["worst_rank"]) == (ranks.min(), ranks.max())
        assert row["num_queries"] == ranks.size
        assert row["mAP"] == pytest.approx(results.average_precision[mine].mean())
        for k in KS:
            assert row[f"CMC@{k}"] == pytest.approx(np.mean(ranks <= k))


def test_folder_table_aggregates_the_scored_queries() -> None:
    emb, results, queries = ranked(1)
    table = folder_table(queries, KS)
    assert list(table.columns) == FOLDER_COLUMNS + CMC_COLUMNS
    for _, row in table.iterrows():
        mine = results.scored & (emb.query_folders == row["folder"])
        ranks = results.first_rank[mine]
        assert row["num_identities"] == len(set(emb.query_identities[mine]))
        assert row["num_queries"] == ranks.size
        assert row["mean_rank"] == pytest.approx(ranks.mean())
        assert row["std_rank"] == pytest.approx(ranks.std())  # population std: 0.0 for one query
        assert row["mAP"] == pytest.approx(results.average_precision[mine].mean())
        for k in KS:
            assert row[f"CMC@{k}"] == pytest.approx(np.mean(ranks <= k))
    assert table["num_queries"].sum() == results.num_scored


def test_single_query_folder_has_zero_std_rank() -> None:
    _, results, queries = ranked()
    assert results.scored[0], "the fixture's lonely query must be scored for this test"
    row = folder_table(queries, KS).set_index("folder").loc["lonely_outing"]
    assert (row["num_queries"], row["std_rank"]) == (1, 0.0)


def test_summary_counts_and_json_nulls_when_nothing_is_scored() -> None:
    emb, results, _ = ranked()
    out = summary(results, emb.query_identities, emb.gallery_identities, KS, "run/best.pth", {"lr": 1e-4})
    for key in ("mAP", *CMC_COLUMNS, "num_queries", "num_skipped_queries", "gallery_size", "num_identities"):
        assert key in out
    assert out["num_queries"] == 40 and out["gallery_size"] == 80
    assert out["num_scored_queries"] + out["num_skipped_queries"] == 40
    assert out["num_identities"] == len(set(emb.query_identities) | set(emb.gallery_identities))
    assert (out["checkpoint"], out["options"]) == ("run/best.pth", {"lr": 1e-4})

    nothing = rank_queries(np.eye(2), ["a", "b"], np.eye(2), ["c", "d"])
    empty = summary(nothing, ["a", "b"], ["c", "d"], KS)
    assert empty["mAP"] is None and empty["CMC@1"] is None and empty["num_skipped_queries"] == 2
    json.loads(json.dumps(empty, allow_nan=False))


def test_write_reports_writes_every_file(tmp_path: Path) -> None:
    emb, results, queries = ranked()
    out = summary(results, emb.query_identities, emb.gallery_identities, KS)
    written = write_reports(tmp_path / "run", queries, results, out, KS)
    names = {path.name for path in written}
    assert names == {QUERY_CSV, IDENTITY_CSV, FOLDER_CSV, SUMMARY_JSON, CMC_PNG, FOLDER_PNG}
    assert json.loads((tmp_path / "run" / SUMMARY_JSON).read_text())["mAP"] == pytest.approx(out["mAP"])
    identity_csv = pd.read_csv(tmp_path / "run" / IDENTITY_CSV)
    pd.testing.assert_frame_equal(identity_csv, identity_table(queries, KS), check_dtype=False)
    per_query = pd.read_csv(tmp_path / "run" / QUERY_CSV)
    assert per_query["rank"].isna().sum() == results.num_skipped
    for png in (CMC_PNG, FOLDER_PNG):
        with Image.open(tmp_path / "run" / png) as image:
            assert image.format == "PNG" and image.width > 100
    assert not list((tmp_path / "run").glob(".*.tmp"))
