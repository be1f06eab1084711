"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with k-reciprocal
Encoding", CVPR 2017), written for dense tensors that fit in memory.

Each image gets a sparse vector ``V`` over all (query + gallery) images: Gaussian-kernel weights
on its expanded k-reciprocal neighbour set, averaged over its ``k2`` nearest neighbours (local
query expansion). The final distance mixes the Jaccard distance of those vectors with the
original distance: ``(1 - lambda) * d_J + lambda * d``. Dense (N, N) matrices cost about
``12 * N**2`` bytes at the peak, hence ``MAX_RERANK_ITEMS``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from megastarid.core.errors import UserError

#: Query + gallery images above which re-ranking is refused (about 1.7 GB of dense matrices at 12,000).
MAX_RERANK_ITEMS = 12_000


def k_reciprocal_scores(
    query: torch.Tensor,
    gallery: torch.Tensor,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    max_items: int = MAX_RERANK_ITEMS,
) -> torch.Tensor:
    """Re-ranked (num_queries, num_gallery) scores, higher = more similar (the negated final distance)."""
    total = query.shape[0] + gallery.shape[0]
    if total > max_items:
        raise UserError(
            f"--rerank: {query.shape[0]} queries + {gallery.shape[0]} gallery images exceed the "
            f"{max_items:,}-image limit of dense k-reciprocal re-ranking; evaluate without --rerank"
        )
    num_query = query.shape[0]
    feats = F.normalize(torch.cat([query, gallery]).float(), dim=1)
    dist = (2 - 2 * feats @ feats.T).clamp_(min=0)  # squared Euclidean distance of unit vectors
    dist /= dist.max(dim=1, keepdim=True).values.clamp_(min=1e-12)
    neighbours = dist.topk(min(k1 + 1, total), dim=1, largest=False).indices
    members = _expanded_reciprocal_sets(neighbours, half=min(round(k1 / 2) + 1, total))
    weights = torch.exp(-dist).mul_(members)
    del members
    weights /= weights.sum(dim=1, keepdim=True)
    original = dist[:num_query, num_query:].clone()
    del dist
    if k2 > 1:
        weights = _query_expansion(weights, neighbours[:, : min(k2, total)])
    jaccard = _jaccard_distance(weights[:num_query], weights[num_query:])
    return -((1 - lambda_value) * jaccard + lambda_value * original)


def _reciprocal(neighbours: torch.Tensor) -> torch.Tensor:
    """``mask[i, j]``: image i is among the neighbours of its j-th neighbour (the pair is mutual)."""
    own = torch.arange(neighbours.shape[0], device=neighbours.device)[:, None, None]
    return (neighbours[neighbours] == own).any(dim=-1)


def _expanded_reciprocal_sets(neighbours: torch.Tensor, half: int) -> torch.Tensor:
    """Dense boolean (N, N) membership of each image's expanded k-reciprocal set R*(i, k1).

    R(i, k1) = mutual k1-neighbours; each member c adds its own R(c, k1/2) when at least two thirds
    of that set already lies in R(i, k1).
    """
    total = neighbours.shape[0]
    in_r = _reciprocal(neighbours)
    small = neighbours[:, :half]
    small_r = _reciprocal(small)
    cand_sets = small[neighbours]  # (N, k1+1, half): R(c, k1/2) candidates of every neighbour c
    cand_mask = small_r[neighbours]
    inside = (cand_sets[..., None] == neighbours[:, None, None, :]) & in_r[:, None, None, :]
    overlap = (inside.any(dim=-1) & cand_mask).sum(dim=-1)
    accept = in_r & (overlap * 3 > 2 * cand_mask.sum(dim=-1))
    members = torch.zeros(total, total, dtype=torch.bool, device=neighbours.device)
    rows = torch.arange(total, device=neighbours.device)
    members[rows[:, None].expand_as(neighbours)[in_r], neighbours[in_r]] = True
    extra = cand_mask & accept[..., None]
    members[rows[:, None, None].expand_as(cand_sets)[extra], cand_sets[extra]] = True
    return members


def _query_expansion(weights: torch.Tensor, nearest: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Replace each row by the mean of its ``k2`` nearest neighbours' rows (itself included)."""
    expanded = torch.empty_like(weights)
    for start in range(0, weights.shape[0], chunk):
        expanded[start : start + chunk] = weights[nearest[start : start + chunk]].mean(dim=1)
    return expanded


def _jaccard_distance(query_w: torch.Tensor, gallery_w: torch.Tensor, chunk: int = 16) -> torch.Tensor:
    """``1 - sum(min) / sum(max)`` between weight rows, using each query row's few non-zeros.

    Rows sum to one, so ``sum(max) = 2 - sum(min)``.
    """
    out = torch.empty(query_w.shape[0], gallery_w.shape[0], device=query_w.device)
    for start in range(0, query_w.shape[0], chunk):
        rows = query_w[start : start + chunk]
        width = int((rows > 0).sum(dim=1).max())
        values, columns = rows.topk(width, dim=1)  # the non-zeros (and zeros as padding, harmless)
        shared = torch.minimum(values[None], gallery_w[:, columns]).sum(dim=-1).T
        out[start : start + chunk] = 1 - shared / (2 - shared)
    return out
