"""k-reciprocal re-ranking against a plain per-image loop written from the paper, and its size limit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from megastarid.core.errors import UserError
from megastarid.evaluation.metrics import mean_ap, rank_queries, rank_score_matrix
from megastarid.evaluation.rerank import MAX_RERANK_ITEMS, k_reciprocal_scores


def rerank_reference(query: np.ndarray, gallery: np.ndarray, k1: int, k2: int, lam: float) -> np.ndarray:
    """Zhong et al. 2017, one image at a time with Python sets; returns the final (Q, G) distance."""
    feats = np.concatenate([query, gallery]).astype(np.float64)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    dist = np.clip(2 - 2 * feats @ feats.T, 0, None)
    dist /= dist.max(axis=1, keepdims=True)
    order = np.argsort(dist, axis=1, kind="stable")
    total = len(feats)

    def reciprocal(i: int, k: int) -> set[int]:
        return {int(j) for j in order[i, : k + 1] if i in order[j, : k + 1]}

    weights = np.zeros((total, total))
    for i in range(total):
        base = reciprocal(i, k1)
        expanded = set(base)
        for c in base:
            half = reciprocal(c, round(k1 / 2))
            if len(half & base) > 2 / 3 * len(half):
                expanded |= half
        idx = sorted(expanded)
        w = np.exp(-dist[i, idx])
        weights[i, idx] = w / w.sum()
    weights = np.stack([weights[order[i, :k2]].mean(axis=0) for i in range(total)])
    num_query = len(query)
    jaccard = np.zeros((num_query, total - num_query))
    for i in range(num_query):
        for j in range(num_query, total):
            shared = np.minimum(weights[i], weights[j]).sum() / np.maximum(weights[i], weights[j]).sum()
            jaccard[i, j - num_query] = 1 - shared
    return (1 - lam) * jaccard + lam * dist[:num_query, num_query:]


@pytest.mark.parametrize(("k1", "k2", "lam"), [(8, 3, 0.3), (20, 6, 0.3), (4, 1, 0.5)])
def test_matches_plain_loop_implementation(k1: int, k2: int, lam: float) -> None:
    rng = np.random.default_rng(k1)
    centres = rng.normal(size=(12, 8))
    labels = rng.integers(0, 12, 70)
    feats = (centres[labels] + 0.6 * rng.normal(size=(70, 8))).astype(np.float32)
    query, gallery = feats[:18], feats[18:]
    scores = k_reciprocal_scores(torch.from_numpy(query), torch.from_numpy(gallery), k1, k2, lam)
    expected = rerank_reference(query, gallery, k1, k2, lam)
    np.testing.assert_allclose(-scores.numpy(), expected, atol=2e-5)


def test_rerank_helps_on_clustered_data_and_ranks_by_score() -> None:
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(15, 16))
    gallery_ids = np.repeat(np.arange(15), 8)
    query_ids = np.repeat(np.arange(15), 2)
    gallery = centres[gallery_ids] + 0.9 * rng.normal(size=(120, 16))
    query = centres[query_ids] + 0.9 * rng.normal(size=(30, 16))
    plain = rank_queries(query, query_ids, gallery, gallery_ids)
    scores = k_reciprocal_scores(torch.from_numpy(query).float(), torch.from_numpy(gallery).float())
    reranked = rank_score_matrix(scores, query_ids, gallery_ids)
    assert mean_ap(reranked) > mean_ap(plain)


def test_refuses_more_images_than_the_limit_in_one_line() -> None:
    query, gallery = torch.ones(1, 4), torch.ones(MAX_RERANK_ITEMS, 4)
    with pytest.raises(UserError, match=r"--rerank: 1 queries \+ 12000 gallery images exceed") as err:
        k_reciprocal_scores(query, gallery)
    assert "\n" not in str(err.value)
