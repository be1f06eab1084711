"""Search and pooling against plain reimplementations: the float16 pre-selection gives exactly what
``rank_individuals`` gives, and an encounter's top k is exactly the top k of the documented pooling rule
over every individual."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from megastarid.evaluation.individuals import IdentityCodes, rank_individuals
from megastarid.identification import index as index_module
from megastarid.identification.identify import pool, pool_count, rank_encounter
from megastarid.identification.index import HALF_MIN_GALLERY, CatalogueIndex
from megastarid.identification.paths import escapes_root
from megastarid.identification.store_index import ESCAPING_PATH


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def make_index(embeddings: np.ndarray, identities: list[str]) -> CatalogueIndex:
    return CatalogueIndex(
        catalogue=Path("test.sqlite"),
        root=Path("/"),
        embeddings=np.ascontiguousarray(embeddings, dtype=np.float32),
        photo_ids=np.arange(1, len(embeddings) + 1),
        codes=IdentityCodes.of(identities),
        individuals={},
    )


def clustered(
    photos: int, individuals: int, dim: int, spread: float, seed: int
) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((individuals, dim)))
    owner = rng.integers(0, individuals, photos)
    owner[:individuals] = np.arange(individuals)
    emb = unit(centres[owner] + spread * rng.standard_normal((photos, dim)))
    return emb, [f"id{i:04d}" for i in owner]


@pytest.mark.parametrize("spread", [0.05, 0.5, 3.0])  # tight clusters ... almost random vectors
def test_float16_preselection_gives_exactly_the_full_ranking(spread: float) -> None:
    emb, ids = clustered(HALF_MIN_GALLERY + 500, 800, 64, spread, seed=1)
    index = make_index(emb, ids)
    rng = np.random.default_rng(2)
    queries = np.concatenate([emb[:3], unit(emb[3:6] + 0.1 * rng.standard_normal((3, 64)))])
    narrowed: list[int] = []
    rank_among = index.rank_among
    index.rank_among = lambda q, codes, k=None: (narrowed.append(len(codes)), rank_among(q, codes, k))[1]  # type: ignore[method-assign]
    fast = index.rank(queries, 5)
    assert narrowed and narrowed[0] < 800 // 4  # the pre-selection was used, on a few individuals
    full = rank_individuals(queries, emb, ids, k=5)
    assert fast.top_names(0) == full.top_names(0)
    for column in range(5):
        assert fast.top_names(column) == full.top_names(column)
    np.testing.assert_array_equal(fast.score, full.score)
    np.testing.assert_array_equal(fast.best_photo, full.best_photo)


def test_preselection_is_skipped_for_small_catalogues_and_many_queries(monkeypatch) -> None:
    emb, ids = clustered(500, 40, 16, 0.3, seed=3)
    index = make_index(emb, ids)
    index.rank(emb[:2], 3)
    assert index._half_checked is None  # small catalogue: never needed
    monkeypatch.setattr(index_module, "HALF_MIN_GALLERY", 100)
    monkeypatch.setattr(index_module, "HALF_MAX_QUERIES", 2)
    many = index.rank(emb[:10], 3)
    assert index._half_checked is None
    assert many.top_names() == rank_individuals(emb[:10], emb, ids, k=3).top_names()


def test_pool_is_the_mean_of_the_best_half() -> None:
    assert [pool_count(n) for n in range(1, 7)] == [1, 1, 2, 2, 3, 3]
    scores = np.array([[0.6, 0.7], [0.6, 0.2], [0.6, 0.2]])  # columns: individual X, individual Y
    np.testing.assert_allclose(pool(scores), [0.6, 0.45])  # three mediocre photos beat one lucky one
    assert scores.max(axis=0).argmax() == 1  # ... where the best photo alone would pick Y
    np.testing.assert_allclose(pool(np.array([[0.3, 0.9]])), [0.3, 0.9])  # one photo: its own scores


def brute_force_encounter(
    query: np.ndarray, emb: np.ndarray, ids: list[str], k: int
) -> list[tuple[str, float]]:
    names = sorted(set(ids))
    owner = np.array([names.index(i) for i in ids])
    sims = query @ emb.T
    per_photo = np.stack([sims[:, owner == j].max(axis=1) for j in range(len(names))], axis=1)
    pooled = pool(per_photo)
    order = np.lexsort((np.arange(len(names)), -pooled))[:k]
    return [(names[j], float(pooled[j])) for j in order]


@pytest.mark.parametrize("photos", [1, 2, 3, 5])
def test_encounter_top_k_is_exact_even_when_the_first_gathering_is_too_shallow(photos: int) -> None:
    emb, ids = clustered(3000, 300, 32, 1.5, seed=4)
    index = make_index(emb, ids)
    rng = np.random.default_rng(photos)
    query = unit(emb[7] + 0.8 * rng.standard_normal((photos, 32)))
    for depth in (1, 2, 20):  # depth 1 forces the widening loop
        ranking = index.rank(query, max(depth, 1)) if photos > 1 else None
        candidates = rank_encounter(index, query, 4, ranking)
        expected = brute_force_encounter(query, emb, ids, 4)
        assert [c.identity for c in candidates] == [name for name, _ in expected]
        np.testing.assert_allclose([c.score for c in candidates], [s for _, s in expected], atol=1e-6)
        for c in candidates:
            assert len(c.photo_scores) == photos
            assert ids[c.best_row] == c.identity
            assert float(emb[c.best_row] @ query[c.best_query]) == pytest.approx(
                max(c.photo_scores), abs=1e-6
            )


@pytest.mark.parametrize(
    ("path", "escapes"),
    [
        ("a/b/c.jpg", False),
        ("a..b/c.jpg", False),
        ("..a/b.jpg", False),
        ("a/b../c.jpg", False),
        ("../a.jpg", True),
        ("a/../../b.jpg", True),
        ("/etc/passwd", True),
        ("a/..", True),
        ("..", True),
        ("", True),
    ],
)
def test_escaping_paths_python_and_sql_agree(path: str, escapes: bool) -> None:
    assert escapes_root(path) is escapes
    con = sqlite3.connect(":memory:")
    con.execute("CREATE TABLE photos(path TEXT)")
    con.execute("INSERT INTO photos VALUES(?)", (path,))
    assert (con.execute(ESCAPING_PATH).fetchone() is not None) is escapes
