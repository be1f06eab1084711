"""Lineup decisions back into the catalogue (``megastarid catalogue apply``), without retraining.

A decisions file (``decisions_file``) is planned row by row (``decisions_plan``), then applied all in one
transaction (any bad row, and nothing of the file is applied): the photos to add are embedded with the
catalogue's own model (or not at all, when the catalogue already holds those bytes), those from outside the
root copied under its ``.incoming`` folder (``incoming``; the copies removed again if the apply fails), and
every row goes into the audit table (``decisions``) with the time, the file, its sha256 and line, and what it
changed (``effect``: ``added``, ``moved``, ``already``, ``recorded``, ``superseded``), with the query it
answered and, given identify's ``matches.json``, what identify proposed for it (``decisions_proposals``).

Applying the same file again changes nothing: its rows are already in the audit table, and their photos are
where they say unless a later decision moved them (an older decision never overrides a newer one). Photos
that joined by a decision are kept by later builds (``photos.origin = 'decision'``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from megastarid.core.errors import UserError
from megastarid.data.dates import parse_folder_date
from megastarid.identification.build import image_dims, iso_date
from megastarid.identification.decisions_file import read_decisions
from megastarid.identification.decisions_plan import DECISION_ORIGIN, EFFECTS, PlannedPhoto, Planner
from megastarid.identification.decisions_proposals import Proposals, proposal_columns
from megastarid.identification.incoming import copied_in
from megastarid.identification.paths import INCOMING
from megastarid.identification.store import CatalogueStore, PhotoRecord, now
from megastarid.identification.store_schema import UPDATED
from megastarid.models.embedder import Embedder, file_sha256


@dataclass
class ApplyReport:
    """What applying a decisions file did."""

    source: str
    rows: int = 0
    effects: dict[str, int] = field(default_factory=lambda: dict.fromkeys(EFFECTS, 0))
    confirmed: int = 0  # photos confirmed (added, moved or already there)
    created: list[str] = field(default_factory=list)  # new individuals made
    audited: int = 0  # audit rows written (0 when the file was applied before)
    copied: int = 0  # photos from outside the root added as copies under ``incoming``
    incoming: str = ""

    @property
    def changed(self) -> bool:
        return bool(self.effects["added"] or self.effects["moved"] or self.audited)

    def line(self) -> str:
        if not self.changed:
            return (
                f"{self.source}: applied before, nothing changed ({self.rows} decisions already in the log)"
            )
        e = self.effects
        created = f" ({', '.join(self.created)})" if self.created else ""
        return (
            f"{self.source}: {self.rows} decisions: {e['added']} photo(s) added, {e['moved']} moved, "
            f"{e['already']} already in place, {e['recorded']} unsure recorded; {len(self.created)} new "
            f"individual(s){created}"
            + (f"; {self.copied} copied into {self.incoming}" if self.copied else "")
            + (f"; {e['superseded']} superseded by a later decision" if e["superseded"] else "")
        )


def outing_of(rel: str) -> tuple[str, str | None]:
    """(outing, ISO date) of a photo that joins by decision: its nearest folder whose name starts with a
    date (``dives/2024-06-01/enc3/a.jpg`` -> ``2024-06-01``), else its own folder, undated."""
    folders = PurePosixPath(rel).parts[:-1]
    for name in reversed(folders):
        date = parse_folder_date(name)
        if date is not None:
            return name, iso_date(date)
    return (folders[-1] if folders else ""), None


def _labels(con: Any, identity: str) -> tuple[str, str]:
    """(dataset, species) most of an individual's photos have; ('', '') for a new one."""
    row = con.execute(
        "SELECT p.dataset, p.species FROM photos p JOIN individuals i ON i.id = p.individual_id "
        "WHERE i.name = ? GROUP BY p.dataset, p.species ORDER BY count(*) DESC, p.dataset LIMIT 1",
        (identity,),
    ).fetchone()
    return ("", "") if row is None else (row[0], row[1])


def _record(photo: PlannedPhoto, labels: tuple[str, str]) -> PhotoRecord:
    outing, date = outing_of(photo.rel)
    stat = os.stat(photo.path)
    width, height = image_dims(photo.path)
    dataset, species = labels
    first = PurePosixPath(photo.rel).parts[0]
    if not dataset and first != PurePosixPath(photo.rel).name and not first.startswith("."):
        dataset = first  # a new individual: the top folder, as a tree's dataset (not a hidden inbox)
    return PhotoRecord(
        photo.rel,
        photo.identity,
        outing,
        date,
        dataset,
        species,
        photo.sha256,
        width,
        height,
        stat.st_size,
        stat.st_mtime_ns,
    )


def _embed(planner: Planner, embedder: Callable[[], Embedder]) -> list[bytes]:
    """The embedding blob of each photo to add, made with the catalogue's model (created only when needed)."""
    adds = planner.adds
    if not adds:
        return []
    vectors = embedder().embed([photo.source for photo in adds])
    blobs = []
    for photo, vector in zip(adds, vectors, strict=True):
        if np.isnan(vector).any():
            raise planner.fail(photo.decision, f"cannot read photo {photo.source} (not a readable image)")
        blobs.append(np.ascontiguousarray(vector, dtype=np.float32).tobytes())
    return blobs


def _place(store: CatalogueStore, planner: Planner, blobs: list[bytes]) -> None:
    """Add and move the planned photos (the copies from outside the root are in place), recount their
    individuals."""
    con = store.con
    labels = {name: _labels(con, name) for name in {photo.identity for photo in planner.adds}}
    store.add_photos([_record(photo, labels[photo.identity]) for photo in planner.adds], blobs)
    con.executemany(
        f"UPDATE photos SET origin = '{DECISION_ORIGIN}' WHERE path = ?", [(p.rel,) for p in planner.adds]
    )
    for photo in planner.moves:
        con.execute("INSERT OR IGNORE INTO individuals(name) VALUES(?)", (photo.identity,))
        con.execute(
            "UPDATE photos SET individual_id = (SELECT id FROM individuals WHERE name = ?) WHERE path = ?",
            (photo.identity, photo.rel),
        )
    touched = [p.identity for p in [*planner.adds, *planner.moves]] + [
        p.old_identity for p in planner.moves if p.old_identity
    ]
    store.refresh_individuals(touched)


def _audit(
    store: CatalogueStore,
    planner: Planner,
    report: ApplyReport,
    source: str,
    sha: str,
    proposals: Proposals | None,
) -> str:
    """Count each row's effect and log the rows not logged before, each with its query and proposal;
    returns the time they were applied."""
    con = store.con
    done = {row[0] for row in con.execute("SELECT line FROM decisions WHERE source_sha256 = ?", (sha,))}
    applied = now()
    for decision, rel, identity, effect in planner.effects:
        report.effects[effect] += 1
        if decision.decision == "confirm":
            report.confirmed += 1
        if decision.line in done:
            continue
        query_id, proposal = proposal_columns(proposals, decision, f"{source}:{decision.line}")
        con.execute(
            "INSERT INTO decisions(applied, source, source_sha256, line, decided, decision, query, "
            "photo, encounter, identity, note, effect, query_id, proposal) "
            "VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                applied,
                source,
                sha,
                decision.line,
                decision.time,
                decision.decision,
                decision.query,
                rel,
                decision.encounter,
                identity,
                decision.note,
                effect,
                query_id,
                proposal,
            ),
        )
        report.audited += 1
    return applied


def apply_decisions(
    store: CatalogueStore, path: Path, embedder: Callable[[], Embedder], matches: Path | None = None
) -> ApplyReport:
    """Apply a decisions file to the catalogue in one transaction (module docstring); ``embedder`` makes the
    catalogue's model, called only when a photo must be embedded; ``matches`` is identify's matches.json the
    decisions answer (its proposals are logged with them)."""
    decisions = read_decisions(path)
    proposals = None if matches is None else Proposals(matches)
    try:
        sha = file_sha256(path)
    except OSError as err:
        raise UserError(f"cannot read decisions file {path}: {err.strerror or err}") from None
    report = ApplyReport(str(path), rows=len(decisions))
    with store.transaction():
        planner = Planner(store, path, sha)
        for decision in decisions:
            planner.plan(decision)
        blobs = _embed(planner, embedder)
        copies = [(photo.source, Path(photo.path)) for photo in planner.adds if photo.source != photo.path]
        report.copied, report.incoming = len(copies), str(planner.root / INCOMING)
        with copied_in(copies):  # removed again if anything below fails
            _place(store, planner, blobs)
            applied = _audit(store, planner, report, os.path.abspath(path), sha, proposals)
            report.created = sorted(
                {p.identity for p in [*planner.adds, *planner.moves] if p.identity in planner.planned_new}
            )
            if report.changed:
                store.set_meta(UPDATED, applied)
    return report
