"""The metrics core against an independent Market-1501 implementation and pytorch-metric-learning."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_metric_learning.distances import CosineSimilarity
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from pytorch_metric_learning.utils.inference import CustomKNN

from megastarid.evaluation.metrics import QueryResults, cmc, mean_ap, rank_queries, rank_score_matrix


def market1501_reference(
    query: np.ndarray, query_ids: np.ndarray, gallery: np.ndarray, gallery_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Plain per-query full sort: descending score, wrong matches first among equal scores."""
    query = query / np.linalg.norm(query, axis=1, keepdims=True)
    gallery = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    scores = query.astype(np.float64) @ gallery.astype(np.float64).T
    ranks = np.zeros(len(query), dtype=np.int64)
    aps = np.full(len(query), np.nan)
    for i in range(len(query)):
        matches = gallery_ids == query_ids[i]
        if not matches.any():
            continue
        order = np.lexsort((matches, -scores[i]))  # last key is primary: score, then wrong before right
        hits = np.flatnonzero(matches[order]) + 1
        ranks[i] = hits[0]
        aps[i] = np.mean(np.arange(1, hits.size + 1) / hits)
    return ranks, aps


def reference_cmc(ranks: np.ndarray, k: int) -> float:
    scored = ranks > 0
    return float(np.mean(ranks[scored] <= k))


def tied_embeddings(rng: np.random.Generator, n: int, dim: int = 12) -> np.ndarray:
    """Unit vectors with four entries of +-0.5: every cosine is an exact multiple of 1/4, so ties abound."""
    out = np.zeros((n, dim), dtype=np.float32)
    for row in out:
        row[rng.choice(dim, 4, replace=False)] = rng.choice([-0.5, 0.5], 4)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_plain_market1501_with_ties_singletons_and_unmatched_queries(seed: int) -> None:
    rng = np.random.default_rng(seed)
    gallery_ids = np.concatenate([rng.integers(0, 30, 150), np.arange(100, 110)])  # 100..109: one image each
    query_ids = np.concatenate([rng.integers(0, 40, 90), np.arange(100, 105), np.arange(200, 205)])
    gallery = tied_embeddings(rng, gallery_ids.size)
    query = tied_embeddings(rng, query_ids.size)

    results = rank_queries(query, query_ids, gallery, gallery_ids, chunk_size=7)
    ranks, aps = market1501_reference(query, query_ids, gallery, gallery_ids)

    np.testing.assert_array_equal(results.first_rank, ranks)
    np.testing.assert_allclose(results.average_precision, aps, rtol=1e-12, equal_nan=True)
    np.testing.assert_array_equal(results.scored, ranks > 0)
    assert results.num_skipped == int((ranks == 0).sum()) >= 5
    ks = [1, 3, 10, gallery_ids.size, 10 * gallery_ids.size]
    assert cmc(results, ks) == {k: pytest.approx(reference_cmc(ranks, k)) for k in ks}
    assert cmc(results, [10 * gallery_ids.size])[10 * gallery_ids.size] == 1.0
    assert mean_ap(results) == pytest.approx(np.nanmean(aps))


def perturbed(rng: np.random.Generator, patterns: np.ndarray, ids: np.ndarray, moves: int) -> np.ndarray:
    """Each row: its identity's pattern with ``moves`` of its four +-0.5 entries moved (still unit norm)."""
    out = patterns[ids].copy()
    for row in out:
        on = np.flatnonzero(row)
        off = np.flatnonzero(row == 0)
        moved = zip(rng.choice(on, moves, replace=False), rng.choice(off, moves, replace=False), strict=True)
        for old, new in moved:
            row[new], row[old] = rng.choice([-0.5, 0.5]), 0.0
    return out


def test_matches_plain_market1501_on_clustered_ties() -> None:
    """A useful model: few negatives outscore the positives (the engine's gathered-candidates path)."""
    rng = np.random.default_rng(7)
    patterns = tied_embeddings(rng, 40, dim=48)
    gallery_ids = np.concatenate([rng.integers(0, 30, 200), np.arange(30, 40)])
    query_ids = np.concatenate([rng.integers(0, 40, 120), [99, 98]])
    gallery = perturbed(rng, patterns, gallery_ids, 1)
    query = perturbed(rng, patterns, query_ids % 40, 1)

    results = rank_queries(query, query_ids, gallery, gallery_ids, chunk_size=16)
    ranks, aps = market1501_reference(query, query_ids, gallery, gallery_ids)

    np.testing.assert_array_equal(results.first_rank, ranks)
    np.testing.assert_allclose(results.average_precision, aps, rtol=1e-12, equal_nan=True)
    assert 0.3 < mean_ap(results) < 0.95 and results.num_skipped == 2


def test_chunk_size_and_string_identities_do_not_change_results() -> None:
    rng = np.random.default_rng(5)
    gallery_ids = np.array([f"SiteA/star{i}" for i in rng.integers(0, 20, 120)])
    query_ids = np.array([f"SiteA/star{i}" for i in rng.integers(0, 25, 60)])
    gallery, query = tied_embeddings(rng, 120), tied_embeddings(rng, 60)
    whole = rank_queries(query, query_ids, gallery, gallery_ids)
    for chunk in (1, 4, 59):
        part = rank_queries(torch.from_numpy(query), list(query_ids), gallery, gallery_ids, chunk_size=chunk)
        np.testing.assert_array_equal(part.first_rank, whole.first_rank)
        np.testing.assert_allclose(part.average_precision, whole.average_precision, rtol=1e-12)


def test_pessimistic_ties_by_hand() -> None:
    # Query identity "a"; gallery scores: b=1.0, a=1.0 (tie with b), c=0.0, a=-1.0.
    gallery = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=np.float32)
    results = rank_queries(np.array([[1.0, 0.0]]), ["a"], gallery, ["b", "a", "c", "a"])
    assert results.first_rank.tolist() == [2]  # the equal-score wrong match goes first
    assert results.average_precision[0] == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert results.num_positives.tolist() == [2]


def test_every_query_unmatched_or_empty_gallery() -> None:
    rng = np.random.default_rng(0)
    results = rank_queries(rng.normal(size=(3, 4)), [1, 2, 3], rng.normal(size=(2, 4)), [7, 8])
    assert results.num_scored == 0 and results.num_skipped == 3
    assert np.isnan(mean_ap(results)) and np.isnan(cmc(results, [1])[1])
    empty = rank_queries(rng.normal(size=(2, 4)), [1, 2], np.zeros((0, 4)), [])
    assert empty.num_skipped == 2


def test_score_matrix_entry_point_uses_higher_is_better() -> None:
    scores = torch.tensor([[0.1, 0.9, 0.5], [0.3, 0.3, 0.2]])
    results = rank_score_matrix(scores, ["x", "y"], ["x", "z", "y"])
    assert results.first_rank.tolist() == [3, 3]


def test_signed_zero_scores_tie() -> None:
    # -0.0 == +0.0: the wrong match at +0.0 ties with the right one at -0.0 and goes first.
    scores = torch.tensor([[-1.0, 0.0, -1.0, -1.0, -0.0, -1.0, -1.0, -1.0, -1.0, -1.0]])
    results = rank_score_matrix(scores, ["a"], ["b", "b", "b", "b", "a", "b", "b", "b", "b", "b"])
    assert results.first_rank.tolist() == [2]


def test_agrees_with_pytorch_metric_learning_on_tie_free_data() -> None:
    rng = np.random.default_rng(11)
    gallery_ids = rng.integers(0, 25, 200)
    query_ids = np.concatenate([rng.integers(0, 25, 80), [900, 901]])  # two lone queries
    gallery = rng.normal(size=(200, 32)).astype(np.float32)
    query = rng.normal(size=(82, 32)).astype(np.float32)

    results: QueryResults = rank_queries(query, query_ids, gallery, gallery_ids, chunk_size=16)
    calculator = AccuracyCalculator(
        include=("mean_average_precision", "precision_at_1"),
        k=None,
        device=torch.device("cpu"),
        knn_func=CustomKNN(CosineSimilarity()),
    )
    expected = calculator.get_accuracy(query, query_ids, gallery, gallery_ids, ref_includes_query=False)
    assert mean_ap(results) == pytest.approx(expected["mean_average_precision"], abs=1e-6)
    assert cmc(results, [1])[1] == pytest.approx(expected["precision_at_1"], abs=1e-6)
    assert results.num_skipped == 2
