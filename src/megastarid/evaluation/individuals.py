"""Rank *individuals* (not photos) for each query: an individual's score is the highest cosine between
the query and any of that individual's gallery photos (DESIGN §3, open-set decisions).

This is the rule both the open-set report and ``identify`` use, so the two can never disagree. Work is
chunked over queries (a chunk holds ``chunk x gallery`` scores), and the per-individual maximum is a
``scatter_reduce`` over the gallery's identity codes, so no query x gallery matrix is ever built whole.
A gallery searched again and again (the catalogue of known individuals) encodes its identities once
(``IdentityCodes``) instead of sorting its labels on every call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from megastarid.evaluation.metrics import auto_chunk_size


@dataclass(frozen=True)
class IndividualRanking:
    """Per query, the ``k`` best individuals (codes into ``names``) with their scores and best photos.

    ``best_photo[q, j]`` is the gallery row whose cosine gave individual ``identity[q, j]`` its score.
    Where fewer than ``k`` individuals exist, the missing columns hold identity -1 and score -inf.
    """

    names: list[str]
    identity: np.ndarray  # (queries, k) int64 codes into names
    score: np.ndarray  # (queries, k) float32, descending along each row
    best_photo: np.ndarray  # (queries, k) int64 gallery rows

    def top_names(self, column: int = 0) -> list[str]:
        return [self.names[code] if code >= 0 else "" for code in self.identity[:, column]]


@dataclass(frozen=True)
class IdentityCodes:
    """A gallery's identities encoded once: row ``i`` is individual ``names[codes[i]]``."""

    names: list[str]  # sorted, unique
    codes: np.ndarray  # (gallery,) int64

    @classmethod
    def of(cls, identities: np.ndarray | Sequence[str]) -> IdentityCodes:
        names, codes = np.unique(np.asarray(identities, dtype=str), return_inverse=True)
        return cls([str(name) for name in names], codes.reshape(-1).astype(np.int64))


def rank_individuals(
    query: np.ndarray | torch.Tensor,
    gallery: np.ndarray | torch.Tensor,
    gallery_identities: np.ndarray | Sequence[str] | IdentityCodes,
    k: int = 5,
    exclude: np.ndarray | Sequence[str] | None = None,
    chunk_size: int | None = None,
) -> IndividualRanking:
    """Top-``k`` individuals per query by highest cosine to any of their photos.

    Embeddings must be L2-normalised (rows). ``gallery_identities`` are the rows' labels, or the same
    already encoded (``IdentityCodes.of(labels)``). ``exclude[q]``, when given, is an individual left out of
    query ``q``'s ranking: the pseudo-new answers of validation under the temporal protocol score a query
    against the gallery without its own identity.
    """
    if not isinstance(gallery_identities, IdentityCodes):
        gallery_identities = IdentityCodes.of(gallery_identities)
    names, codes = gallery_identities.names, gallery_identities.codes
    q = torch.as_tensor(np.asarray(query, dtype=np.float32))
    g = torch.as_tensor(np.asarray(gallery, dtype=np.float32))
    code_t = torch.as_tensor(codes.reshape(-1), dtype=torch.int64)
    n_ids, k_eff = len(names), min(k, len(names))
    excluded = None
    if exclude is not None:
        lookup = {name: i for i, name in enumerate(names)}
        excluded = torch.tensor([lookup.get(str(name), -1) for name in exclude], dtype=torch.int64)
    identity = np.full((len(q), k), -1, dtype=np.int64)
    score = np.full((len(q), k), -np.inf, dtype=np.float32)
    best_photo = np.full((len(q), k), -1, dtype=np.int64)
    step = chunk_size or auto_chunk_size(len(g) * (k_eff + 2))  # scores plus the k best-photo masks
    for start in range(0, len(q), step):
        sims = q[start : start + step] @ g.T  # (chunk, gallery)
        per_id = torch.full((len(sims), n_ids), -torch.inf).scatter_reduce(
            1, code_t.expand(len(sims), -1), sims, reduce="amax"
        )
        if excluded is not None:
            rows = excluded[start : start + step]
            hit = rows >= 0
            per_id[torch.nonzero(hit).squeeze(1), rows[hit]] = -torch.inf
        top_score, top_id = per_id.topk(k_eff, dim=1)
        # the photo that gave each chosen individual its score: the best gallery row of that identity
        same = code_t.view(1, 1, -1) == top_id.unsqueeze(2)
        masked = torch.where(same, sims.unsqueeze(1), -torch.inf)
        photo = masked.argmax(dim=2)
        valid = torch.isfinite(top_score)
        end = start + len(sims)
        identity[start:end, :k_eff] = torch.where(valid, top_id, -1).numpy()
        score[start:end, :k_eff] = top_score.numpy()
        best_photo[start:end, :k_eff] = torch.where(valid, photo, -1).numpy()
    return IndividualRanking(list(names), identity, score, best_photo)
