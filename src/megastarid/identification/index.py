"""A catalogue in memory for search: every embedding in one float32 matrix, and the ranking of individuals.

Ranking is ``evaluation.individuals.rank_individuals`` (an individual's score is its best photo's cosine),
the rule the open-set evaluation and the calibration use, so identify can never disagree with them.

One photo against a large catalogue is memory-bound: the float32 matrix (205 MB for 100,000 x 512) must be
read once per query. For a few queries against a large catalogue, ``rank`` first reads a float16 copy
(half the bytes) to find the individuals that can possibly be in the top k, then calls
``rank_individuals`` on their float32 photos only. The result is the same as ranking the whole
catalogue: a float16 score is within ``HALF_ERROR`` of the float32 one (inputs rounded to 11 significant
bits, products summed in float32, the result rounded to float16: at most 2^-11 + 2^-11 + 2^-11 for unit
vectors, about 1.5e-3, by Cauchy-Schwarz), so an individual whose float16 score is more than twice that
below the k-th best float16 score cannot reach the true top k. A self-check at first use compares float16
and float32 scores and keeps to float32 if this machine's kernels are less exact than that.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from megastarid.evaluation.individuals import IdentityCodes, IndividualRanking, rank_individuals

log = logging.getLogger(__name__)

#: bound on |float16 score - float32 score| for unit vectors (see the module docstring), with margin
HALF_ERROR = 2e-3
#: the float16 pre-selection is used for at most this many queries at once ...
HALF_MAX_QUERIES = 8
#: ... against catalogues of at least this many photos (smaller ones are fast enough as they are)
HALF_MIN_GALLERY = 20_000


@dataclass(frozen=True)
class IndividualInfo:
    """An individual of the catalogue: its sightings and photo count."""

    name: str
    first_seen: str | None
    last_seen: str | None
    num_photos: int


@dataclass
class CatalogueIndex:
    """Every catalogue photo (row ``i``, database id ``photo_ids[i]``) with its embedding and individual.

    Paths, outings and dates stay in the catalogue file; reports look up the few photos they show.
    """

    catalogue: Path
    root: Path
    embeddings: np.ndarray  # (photos, dim) float32, L2-normalised rows
    photo_ids: np.ndarray  # (photos,) int64
    codes: IdentityCodes  # row -> individual
    individuals: dict[str, IndividualInfo]
    model: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._half: torch.Tensor | None = None
        self._half_checked: bool | None = None
        self._order: np.ndarray | None = None
        self._starts: np.ndarray | None = None

    # -- facts -----------------------------------------------------------------------------------------------

    @property
    def num_photos(self) -> int:
        return len(self.photo_ids)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def names(self) -> list[str]:
        return self.codes.names

    @property
    def identities(self) -> np.ndarray:
        """The individual of every row, as names."""
        return np.asarray(self.names, dtype=object)[self.codes.codes]

    def rows_of(self, code: int) -> np.ndarray:
        """The rows of individual ``code`` (ascending)."""
        if self._order is None:
            self._order = np.argsort(self.codes.codes, kind="stable")
            self._starts = np.searchsorted(self.codes.codes[self._order], np.arange(len(self.names) + 1))
        assert self._starts is not None
        return self._order[self._starts[code] : self._starts[code + 1]]

    # -- ranking ---------------------------------------------------------------------------------------------

    def rank(self, query: np.ndarray, k: int) -> IndividualRanking:
        """Top-``k`` individuals for each query row (L2-normalised float32) by their best photo's cosine."""
        query = np.ascontiguousarray(query, dtype=np.float32)
        if 0 < len(query) <= HALF_MAX_QUERIES and self.num_photos >= HALF_MIN_GALLERY and self._half_ok():
            return self._rank_preselected(query, k)
        return rank_individuals(query, self.embeddings, self.codes, k=k)

    def rank_among(self, query: np.ndarray, codes: np.ndarray, k: int | None = None) -> IndividualRanking:
        """The individuals ``codes`` ranked for each query row (same rule, on their photos only; the top
        ``k``, default all); the result's identity codes and best-photo rows refer to the whole catalogue."""
        codes = np.unique(np.asarray(codes, dtype=np.int64))
        rows = np.concatenate([self.rows_of(int(code)) for code in codes])
        rows.sort()
        sub = IdentityCodes(
            [self.names[code] for code in codes], np.searchsorted(codes, self.codes.codes[rows])
        )
        ranking = rank_individuals(query, self.embeddings[rows], sub, k=len(codes) if k is None else k)
        found = ranking.identity >= 0
        identity = np.where(found, codes[np.maximum(ranking.identity, 0)], -1)
        best = np.where(found, rows[np.maximum(ranking.best_photo, 0)], -1)
        return IndividualRanking(self.names, identity, ranking.score, best)

    def _half_ok(self) -> bool:
        """Make the float16 copy once, and check on part of it that float16 scores are as exact as assumed."""
        if self._half_checked is None:
            half = torch.from_numpy(self.embeddings).half()
            part = torch.from_numpy(self.embeddings[:HALF_MIN_GALLERY])
            sample = part[:: max(1, len(part) // 8)][:8]  # catalogue photos: scores up to 1 are checked too
            exact = sample @ part.T
            approx = torch.stack([(half[: len(part)] @ row.half()).float() for row in sample])
            error = float((approx - exact).abs().max())
            norms = part.norm(dim=1)
            unit = bool(((norms - 1).abs() < 1e-3).all())
            self._half_checked = unit and error <= HALF_ERROR / 2
            self._half = half if self._half_checked else None
            state = "on" if self._half_checked else "off"
            log.debug("float16 pre-selection %s (max error %.2e)", state, error)
        return self._half_checked

    def _rank_preselected(self, query: np.ndarray, k: int) -> IndividualRanking:
        """``rank`` for a few queries: float16 scores pick the individuals that can be in the top k, then
        the exact ranking runs on their photos alone (see the module docstring)."""
        assert self._half is not None
        codes_t = torch.from_numpy(self.codes.codes)
        n_ids = len(self.names)
        k_eff = min(k, n_ids)
        picked: list[torch.Tensor] = []
        for row in torch.from_numpy(query):
            approx = self._half @ row.half()  # float16 scores: maxima taken before widening (cheaper)
            best = torch.full((n_ids,), -torch.inf, dtype=torch.float16)
            best = best.scatter_reduce(0, codes_t, approx, reduce="amax").float()
            kth = best.topk(k_eff).values[-1]
            margin = 2 * HALF_ERROR * float(row.norm())
            picked.append(torch.nonzero(best >= kth - margin).squeeze(1))
        candidates = torch.unique(torch.cat(picked)).numpy()
        if len(candidates) > n_ids // 4:  # scores too close together to narrow the search down
            return rank_individuals(query, self.embeddings, self.codes, k=k)
        ranking = self.rank_among(query, candidates, k)
        width = min(k, ranking.identity.shape[1])
        identity = np.full((len(query), k), -1, dtype=np.int64)
        score = np.full((len(query), k), -np.inf, dtype=np.float32)
        best_photo = np.full((len(query), k), -1, dtype=np.int64)
        identity[:, :width] = ranking.identity[:, :width]
        score[:, :width] = ranking.score[:, :width]
        best_photo[:, :width] = ranking.best_photo[:, :width]
        return IndividualRanking(self.names, identity, score, best_photo)
