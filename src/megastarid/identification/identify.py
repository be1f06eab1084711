"""Naming the animals in new photos: rank the catalogue's individuals, pool encounters, give verdicts.

- **Embedding**: new photos go through the catalogue's own model, image size and TTA (the ``Embedder`` a
  command re-creates from the catalogue's record, refusing any other weights).
- **Ranking**: ``CatalogueIndex.rank``, i.e. ``rank_individuals``: an individual's score is the highest
  cosine between the photo and any of its catalogue photos, as in the open-set evaluation and calibration.
- **Encounters**: by default the photos of one folder are one encounter (one animal on one dive);
  ``encounter_by="none"`` takes every photo alone. An encounter of *n* photos scores each individual by
  the **mean of its best ⌈n/2⌉ photo scores** (``pool``). One photo scores exactly as evaluation scores it;
  two photos take the better one; from three on, several photos that agree outweigh one lucky high score of
  another individual (scores 0.6, 0.6, 0.6 beat 0.7, 0.2, 0.2), and up to half the photos may be poor (an
  arm only, blur) without dragging the right individual down. The pooled score stays on the one-photo
  scale, so τ and the calibration apply to it unchanged; since it never exceeds the best photo's score,
  the verdicts are, if anything, conservative. The top k are exact: each photo's top individuals are
  gathered (``POOL_DEPTH`` at first, more when needed) until no individual outside them can pool higher
  than the k-th (its every photo score is at most that photo's lowest gathered score).
- **Verdicts** on the top individual: ``new`` when its score is below τ; otherwise ``match`` when its
  calibrated probability reaches the calibration's accept level, else ``uncertain``. Every candidate gets
  the probability the calibration gives its score (the calibration is fitted on top-1 answers, so for
  lower ranks read it as an upper bound). A photo whose bytes (sha256) are already in the catalogue is
  ``known-photo``, naming its individual, and is never matched against itself; within an encounter it is
  reported alone and the other photos are pooled without it. Unreadable photos are listed and skipped.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from megastarid.core.errors import UserError
from megastarid.core.runfiles import OUTPUT_MARKER
from megastarid.data.catalogue import examples
from megastarid.data.images import is_image_file
from megastarid.data.readers import list_files
from megastarid.evaluation.individuals import IndividualRanking
from megastarid.evaluation.openset import Calibration
from megastarid.identification.index import CatalogueIndex
from megastarid.identification.paths import INCOMING, relative_photo_path
from megastarid.identification.store import CatalogueStore
from megastarid.models.embedder import Embedder, file_sha256

log = logging.getLogger(__name__)

ENCOUNTER_BY = ("folder", "none")
#: individuals gathered per photo of a multi-photo encounter before the exactness check
POOL_DEPTH = 20
POOLING = "per individual, the mean of its best ceil(n/2) photo scores among the encounter's n photos"
VERDICTS = {
    "match": "the top individual's calibrated probability reaches the accept level",
    "uncertain": "the top score reaches tau but its probability is below the accept level: check the lineup",
    "new": "the top score is below tau: probably an individual the catalogue does not hold",
    "known-photo": "this very file (same sha256) is already in the catalogue",
    "unverified": "ranked without a calibration (--uncalibrated): no verdict, no probability",
}


@dataclass(frozen=True)
class Candidate:
    """One individual proposed for an encounter."""

    rank: int
    code: int  # individual code in the catalogue index
    identity: str
    score: float  # pooled over the encounter's photos
    photo_scores: list[float]  # per photo of the encounter
    best_row: int  # catalogue row of the photo that gave the best photo score
    best_query: int  # which photo of the encounter that was
    probability: float | None


@dataclass
class Encounter:
    """What identify says about one encounter (or one known photo of it)."""

    name: str
    photos: list[str]  # absolute paths
    hashes: list[str]
    verdict: str
    candidates: list[Candidate] = field(default_factory=list)
    known: list[int] = field(default_factory=list)  # known-photo: ids of the catalogue photos with its bytes


@dataclass
class IdentifyResult:
    encounters: list[Encounter]
    unreadable: list[tuple[str, str]]  # (photo, encounter)
    top_k: int
    encounter_by: str
    calibration: Calibration | None

    def counts(self) -> dict[str, int]:
        counts = {verdict: 0 for verdict in VERDICTS}
        for encounter in self.encounters:
            counts[encounter.verdict] += 1
        counts["unreadable"] = len(self.unreadable)
        return {name: count for name, count in counts.items() if count}


# -- inputs ------------------------------------------------------------------------------------------------


def collect_photos(inputs: Sequence[Path]) -> list[str]:
    """Every photo named or found (recursively, hidden files and identify's output folders skipped) in the
    inputs, absolute, in order, each once; a missing input, a named file that is not a photo, an output
    folder, or no photo at all is one line."""
    photos: dict[str, None] = {}
    for item in inputs:
        path = Path(item).expanduser()
        if (path / OUTPUT_MARKER).is_file():
            raise UserError(f"{path} is an output folder of megastarid identify, not photos to identify")
        if path.is_dir():
            found = [str(file) for file in list_files(path) if is_image_file(file)]
            if not found:
                raise UserError(f"no .jpg/.jpeg/.png photos in {path}")
            photos.update(dict.fromkeys(os.path.abspath(file) for file in found))
        elif path.is_file():
            if not is_image_file(path):
                raise UserError(f"{path} is not a .jpg/.jpeg/.png photo")
            photos[os.path.abspath(path)] = None
        else:
            raise UserError(f"photo or folder {path} does not exist")
    if not photos:
        raise UserError("no photos given")
    return list(photos)


def warn_outside_root(photos: Sequence[str], root: Path | None) -> None:
    """Say up front, in one line, that photos outside the catalogue's root (``catalogue apply`` cannot
    refer to them there) are copied under it when decided, and how to keep one copy."""
    if root is None:
        return
    outside = []
    for photo in photos:
        try:
            relative_photo_path(photo, root)
        except UserError:
            outside.append(photo)
    if outside:
        inbox = root / INCOMING
        log.warning(
            "%d photo(s) lie outside the catalogue root %s (%s): catalogue apply will copy those you decide "
            "into %s; to keep one copy, move the dive there first (e.g. %s) and identify it again",
            len(outside),
            root,
            examples(outside, 2),
            inbox,
            inbox / "DATE",
        )


def encounter_of(photo: str, encounter_by: str) -> str:
    return str(Path(photo).parent) if encounter_by == "folder" else photo


# -- pooling -----------------------------------------------------------------------------------------------


def pool_count(num_photos: int) -> int:
    """How many of an encounter's photo scores are averaged per individual: ⌈n/2⌉."""
    return (num_photos + 1) // 2


def pool(scores: np.ndarray) -> np.ndarray:
    """Pooled scores of an encounter: ``scores`` is (photos, individuals); per individual, the mean of its
    best ``pool_count(photos)`` photo scores."""
    best = -np.sort(-np.asarray(scores, dtype=np.float64), axis=0)[: pool_count(scores.shape[0])]
    return best.mean(axis=0)


def encounter_depth(top_k: int, num_photos: int) -> int:
    """How many individuals to gather per photo of an encounter at first."""
    return top_k if num_photos == 1 else max(top_k, POOL_DEPTH)


def rank_encounter(
    index: CatalogueIndex, query: np.ndarray, top_k: int, ranking: IndividualRanking | None = None
) -> list[Candidate]:
    """The exact top ``top_k`` individuals of an encounter (``query``: its photos' embeddings) by pooled
    score, ties in catalogue order; ``ranking`` is the photos' ranking when already computed (at least
    ``encounter_depth`` wide). Probabilities are left to the caller."""
    n_ids = len(index.names)
    if ranking is None:
        ranking = index.rank(query, min(encounter_depth(top_k, len(query)), n_ids))
    k = min(ranking.identity.shape[1], n_ids)
    if len(query) == 1:  # one photo: its ranking is the answer
        width = min(top_k, int((ranking.identity[0] >= 0).sum()))
        return [
            Candidate(
                j + 1,
                int(ranking.identity[0, j]),
                index.names[ranking.identity[0, j]],
                float(ranking.score[0, j]),
                [float(ranking.score[0, j])],
                int(ranking.best_photo[0, j]),
                0,
                None,
            )
            for j in range(width)
        ]
    while True:
        candidates = np.unique(ranking.identity[:, :k][ranking.identity[:, :k] >= 0])
        full = index.rank_among(query, candidates)
        position = np.searchsorted(candidates, full.identity)
        scores = np.empty((len(query), len(candidates)), dtype=np.float32)
        rows = np.empty((len(query), len(candidates)), dtype=np.int64)
        np.put_along_axis(scores, position, full.score, axis=1)
        np.put_along_axis(rows, position, full.best_photo, axis=1)
        pooled = pool(scores)
        order = np.lexsort((candidates, -pooled))[:top_k]
        # an individual outside the candidates scores at most each photo's k-th score on every photo
        if k >= n_ids or pooled[order[-1]] > pool(ranking.score[:, k - 1 : k])[0]:
            break
        k = min(4 * k, n_ids)
        ranking = index.rank(query, k)
    result = []
    for rank, j in enumerate(order, start=1):
        best_query = int(np.argmax(scores[:, j]))
        result.append(
            Candidate(
                rank,
                int(candidates[j]),
                index.names[candidates[j]],
                float(pooled[j]),
                [float(s) for s in scores[:, j]],
                int(rows[best_query, j]),
                best_query,
                None,
            )
        )
    return result


def verdict(candidates: Sequence[Candidate], calibration: Calibration | None) -> str:
    """``new`` below τ, ``match`` at or above the accept level, else ``uncertain`` (``unverified`` without
    a calibration)."""
    if calibration is None:
        return "unverified"
    if not candidates or candidates[0].score < calibration.threshold:
        return "new"
    top = candidates[0].probability
    return "match" if top is not None and top >= calibration.accept else "uncertain"


# -- the whole path ----------------------------------------------------------------------------------------


def identify_photos(
    store: CatalogueStore,
    index: CatalogueIndex,
    embedder: Embedder,
    photos: Sequence[str],
    top_k: int = 5,
    encounter_by: str = "folder",
    calibration: Calibration | None = None,
) -> IdentifyResult:
    """Identify ``photos`` (absolute paths, from ``collect_photos``) against the catalogue (module
    docstring); without a ``calibration`` every verdict is ``unverified`` (or ``known-photo``)."""
    if encounter_by not in ENCOUNTER_BY:
        raise UserError(f"--encounter-by must be one of {', '.join(ENCOUNTER_BY)}, got {encounter_by!r}")
    unreadable: list[str] = []
    hashes: dict[str, str] = {}
    for photo in photos:
        try:
            hashes[photo] = file_sha256(photo)
        except OSError:
            unreadable.append(photo)
    known = store.photos_by_sha256(hashes.values())
    fresh = [photo for photo in photos if photo in hashes and hashes[photo] not in known]
    embeddings = embedder.embed(fresh)
    bad = np.isnan(embeddings).any(axis=1)
    unreadable += [photo for photo, is_bad in zip(fresh, bad, strict=True) if is_bad]
    good = {photo: row for row, photo in enumerate(fresh) if not bad[row]}
    if unreadable:
        log.warning("skipped %d unreadable photo(s): %s", len(unreadable), examples(unreadable, 5))

    groups: dict[str, list[str]] = {}
    for photo in photos:
        groups.setdefault(encounter_of(photo, encounter_by), []).append(photo)
    # one pass over the catalogue for every photo, deep enough for the largest encounter
    depth = max((encounter_depth(top_k, len(members)) for members in groups.values()), default=top_k)
    order = list(good)
    ranking = index.rank(embeddings[[good[photo] for photo in order]], min(depth, len(index.names)))
    where = {photo: i for i, photo in enumerate(order)}
    encounters: list[Encounter] = []
    for name in sorted(groups):
        members = [photo for photo in groups[name] if photo in good]
        if members:
            rows = [where[photo] for photo in members]
            mine = IndividualRanking(
                ranking.names, ranking.identity[rows], ranking.score[rows], ranking.best_photo[rows]
            )
            candidates = rank_encounter(index, embeddings[[good[photo] for photo in members]], top_k, mine)
            if calibration is not None:
                probability = calibration.probability(np.array([c.score for c in candidates]))
                candidates = [
                    replace(c, probability=float(p)) for c, p in zip(candidates, probability, strict=True)
                ]
            hashes_of = [hashes[photo] for photo in members]
            encounters.append(
                Encounter(name, members, hashes_of, verdict(candidates, calibration), candidates)
            )
        for photo in groups[name]:
            if photo in hashes and hashes[photo] in known:
                encounters.append(
                    Encounter(name, [photo], [hashes[photo]], "known-photo", known=known[hashes[photo]])
                )
    lost = set(unreadable)
    skipped = [(photo, encounter_of(photo, encounter_by)) for photo in photos if photo in lost]
    return IdentifyResult(encounters, skipped, top_k, encounter_by, calibration)
