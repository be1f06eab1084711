"""Per-query ranks and average precision (Market-1501 definition), chunked over queries on any device.

Each query is ranked against the whole gallery by a score (cosine similarity of L2-normalised
embeddings, or any precomputed score matrix such as re-ranked distances negated). Ties are broken
pessimistically: a wrong gallery item with the same score as a right one ranks before it. That
makes every number deterministic and never flattering, and it lets us avoid sorting the gallery:

- a query's positives sorted by descending score ``p_1 >= p_2 >= ...``; the k-th of them sits at
  position ``k + #{negatives with score >= p_k}``;
- its AP is the mean over k of ``k / position_k``; its first rank is ``position_1``.

The negative counts come from a ``searchsorted`` of the gallery scores into the query's few
sorted positive scores plus a histogram (only the negatives at or above the lowest positive need
searching; with a useful model they are few). A chunk thus costs a matrix product and a linear
pass, and memory stays at about ``12 x chunk_size x gallery_size`` bytes (``CHUNK_BYTES`` in all):
the full query x gallery matrix is never built.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

#: Default memory budget of one query chunk's working tensors (scores, buckets, histogram input).
CHUNK_BYTES = 256 * 2**20
#: Bytes per (query, gallery) pair one chunk holds at its peak: float32 scores, bool mask, int32 buckets.
_BYTES_PER_PAIR = 12

#: Returns the (len(rows), gallery_size) float32 scores of the query rows given as an index tensor.
ScoreFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class QueryResults:
    """Per-query outcome of ranking every query against the gallery.

    ``first_rank`` is 1-based (0 for skipped queries), ``average_precision`` is NaN for skipped
    queries, ``scored`` marks queries whose identity has at least one gallery image, and
    ``num_positives`` counts those gallery images.
    """

    first_rank: np.ndarray
    average_precision: np.ndarray
    scored: np.ndarray
    num_positives: np.ndarray

    @property
    def num_queries(self) -> int:
        return int(self.scored.size)

    @property
    def num_scored(self) -> int:
        return int(self.scored.sum())

    @property
    def num_skipped(self) -> int:
        return self.num_queries - self.num_scored


def encode_identities(
    query_ids: np.ndarray | Sequence, gallery_ids: np.ndarray | Sequence
) -> tuple[np.ndarray, np.ndarray]:
    """Map query and gallery identities to shared integer codes (any hashable labels)."""
    query_arr, gallery_arr = np.asarray(query_ids), np.asarray(gallery_ids)
    if query_arr.dtype.kind != gallery_arr.dtype.kind:
        query_arr, gallery_arr = query_arr.astype(str), gallery_arr.astype(str)
    _, codes = np.unique(np.concatenate([query_arr, gallery_arr]), return_inverse=True)
    codes = codes.reshape(-1).astype(np.int64)
    return codes[: len(query_arr)], codes[len(query_arr) :]


def auto_chunk_size(gallery_size: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Queries per chunk so that one chunk's working tensors stay within ``chunk_bytes``."""
    return max(1, chunk_bytes // (_BYTES_PER_PAIR * max(1, gallery_size)))


def rank_queries(
    query_emb: np.ndarray | torch.Tensor,
    query_ids: np.ndarray | Sequence,
    gallery_emb: np.ndarray | torch.Tensor,
    gallery_ids: np.ndarray | Sequence,
    device: torch.device | str | None = None,
    chunk_size: int | None = None,
) -> QueryResults:
    """Rank every query against the gallery by cosine similarity; see the module docstring.

    Embeddings are L2-normalised here (a no-op for model outputs) and scored in float32 on
    ``device`` (default: the query tensor's device, CPU for numpy input).
    """
    if device is None:
        device = query_emb.device if isinstance(query_emb, torch.Tensor) else "cpu"
    device = torch.device(device)
    query = torch.as_tensor(query_emb).to(device=device, dtype=torch.float32)
    gallery = torch.as_tensor(gallery_emb).to(device=device, dtype=torch.float32)
    if query.ndim != 2 or gallery.ndim != 2 or query.shape[1] != gallery.shape[1]:
        shapes = f"{tuple(query.shape)} and {tuple(gallery.shape)}"
        raise ValueError(f"embeddings must be (N, D) with the same D, got {shapes}")
    query, gallery = F.normalize(query, dim=1), F.normalize(gallery, dim=1)

    def scores(rows: torch.Tensor) -> torch.Tensor:
        return query[rows] @ gallery.T

    return rank_from_scores(scores, query_ids, gallery_ids, gallery.shape[0], device, chunk_size)


def rank_score_matrix(
    score_matrix: torch.Tensor,
    query_ids: np.ndarray | Sequence,
    gallery_ids: np.ndarray | Sequence,
    chunk_size: int | None = None,
) -> QueryResults:
    """Rank queries by a precomputed (num_queries, num_gallery) score matrix (higher = more similar)."""
    if score_matrix.shape != (len(query_ids), len(gallery_ids)):
        raise ValueError(f"score matrix {tuple(score_matrix.shape)} does not match the identity lists")
    return rank_from_scores(
        lambda rows: score_matrix[rows].float(),
        query_ids,
        gallery_ids,
        score_matrix.shape[1],
        score_matrix.device,
        chunk_size,
    )


def rank_from_scores(
    scores: ScoreFn,
    query_ids: np.ndarray | Sequence,
    gallery_ids: np.ndarray | Sequence,
    gallery_size: int,
    device: torch.device,
    chunk_size: int | None = None,
) -> QueryResults:
    """Shared core of both entry points: only scored queries are scored, ``chunk_size`` at a time."""
    if len(gallery_ids) != gallery_size:
        raise ValueError(f"{len(gallery_ids)} gallery identities for a gallery of {gallery_size}")
    query_codes, gallery_codes = encode_identities(query_ids, gallery_ids)
    num_codes = int(max(query_codes.max(initial=-1), gallery_codes.max(initial=-1))) + 1
    per_code = np.bincount(gallery_codes, minlength=num_codes)
    num_positives = per_code[query_codes] if len(query_codes) else np.zeros(0, np.int64)
    scored = num_positives > 0

    first_rank = np.zeros(len(query_codes), dtype=np.int64)
    average_precision = np.full(len(query_codes), np.nan)
    order = torch.as_tensor(np.argsort(gallery_codes, kind="stable"), device=device)
    offsets = torch.as_tensor(np.cumsum(per_code) - per_code, device=device)
    codes_t = torch.as_tensor(query_codes, device=device)
    counts_t = torch.as_tensor(per_code, device=device)
    step = chunk_size or auto_chunk_size(gallery_size)
    scored_rows = np.flatnonzero(scored)
    for start in range(0, scored_rows.size, step):
        rows = scored_rows[start : start + step]
        rows_t = torch.as_tensor(rows, device=device)
        rank, ap = _rank_chunk(scores(rows_t), codes_t[rows_t], order, offsets, counts_t)
        first_rank[rows] = rank.cpu().numpy()
        average_precision[rows] = ap.cpu().numpy()
    return QueryResults(first_rank, average_precision, scored, num_positives.astype(np.int64))


def _rank_chunk(
    scores: torch.Tensor,
    codes: torch.Tensor,
    order: torch.Tensor,
    offsets: torch.Tensor,
    counts: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """First rank and AP of a chunk of scored queries (every row has at least one positive)."""
    num_pos = counts[codes]
    width = int(num_pos.max())
    slot = torch.arange(width, device=scores.device)
    valid = slot[None, :] < num_pos[:, None]
    first = offsets[codes][:, None]
    positives = order[torch.where(valid, first + slot[None, :], first)]
    pos_scores = scores.gather(1, positives).masked_fill(~valid, float("inf"))
    pos_sorted = pos_scores.sort(dim=1).values
    # Positives must not count as negatives: move them below every bucket before the search.
    scores.scatter_(1, positives, float("-inf"))
    hist = _negative_histogram(scores, pos_sorted)
    # neg_ge[:, i] = negatives scoring >= the (i+1)-th smallest positive score.
    neg_ge = hist.flip(1).cumsum(1).flip(1)[:, 1:]
    k = (num_pos[:, None] - slot[None, :]).clamp(min=1)
    precision = (k.double() / (k + neg_ge).double()).masked_fill(~valid, 0.0)
    ap = precision.sum(1) / num_pos.double()
    first_rank = 1 + neg_ge.gather(1, (num_pos - 1)[:, None]).squeeze(1)
    return first_rank, ap


def _negative_histogram(scores: torch.Tensor, pos_sorted: torch.Tensor) -> torch.Tensor:
    """``hist[r, b]`` = negatives of row r with exactly b positive scores <= their score (b >= 1 only).

    Only negatives scoring at least a row's lowest positive matter. With a useful model they are a
    small fraction of the gallery: those are gathered and located among all rows' positives with a
    single 1-D search on (row, score) keys. Otherwise every score is searched in place.
    """
    rows, width = pos_sorted.shape
    stride = width + 1
    candidates = scores >= pos_sorted[:, :1]
    row_ids = torch.arange(rows, device=scores.device)
    # Each gathered candidate holds ~40 bytes of indices and keys: at most 1/8 of the pairs keeps a
    # chunk within _BYTES_PER_PAIR.
    if 8 * int(torch.count_nonzero(candidates)) <= scores.numel():
        owner, column = candidates.nonzero(as_tuple=True)
        del candidates
        keys = _row_score_keys(scores[owner, column], owner)
        bounds = _row_score_keys(pos_sorted, row_ids[:, None].expand(rows, width)).view(-1)
        bucket = torch.searchsorted(bounds, keys, right=True) - owner * width
        flat = owner * stride + bucket
    else:
        del candidates
        flat = torch.searchsorted(pos_sorted, scores, right=True, out_int32=True)
        flat += (row_ids.to(torch.int32) * stride)[:, None]
        flat = flat.view(-1)
    return torch.bincount(flat, minlength=rows * stride).view(rows, stride)


def _row_score_keys(scores: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """int64 keys ordered by (row, score), exactly: row in the high 32 bits, the float32 bits mapped
    to an order-preserving integer in the low 32 (``+ 0.0`` first makes -0.0 equal to +0.0)."""
    bits = (scores.float() + 0.0).contiguous().view(torch.int32).to(torch.int64)
    ordered = torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF) + 2**31
    return rows * 2**32 + ordered


def cmc(results: QueryResults, ks: Iterable[int]) -> dict[int, float]:
    """CMC@K for each K: fraction of scored queries whose first correct match is at rank <= K."""
    ranks = results.first_rank[results.scored]
    if ranks.size == 0:
        return {int(k): float("nan") for k in ks}
    return {int(k): float(np.mean(ranks <= k)) for k in ks}


def mean_ap(results: QueryResults) -> float:
    """Mean of the scored queries' average precisions (NaN when no query is scored)."""
    aps = results.average_precision[results.scored]
    return float(aps.mean()) if aps.size else float("nan")
