"""An open catalogue file (``CatalogueStore``): its meta values, the photos and individuals it holds, and the
summary ``catalogue info`` prints. The file's format is ``store_schema``; ``store_open.open_catalogue`` opens
(or creates) one and ``store_index.load_index`` reads it for search.

The file is in WAL mode: readers (``identify``, ``catalogue info``) see the last committed state while a
build adds photos, and a killed build loses at most its open batch. Foreign keys are on for every
connection.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from megastarid.core.errors import UserError
from megastarid.identification.paths import resolve_photo_path
from megastarid.identification.store_checks import (
    damaged,
    embedding_bytes,
    error_code,
    meta_value,
    sqlite_problem,
)
from megastarid.identification.store_schema import CALIBRATION, CREATED, MODEL, ROOT, SCHEMA_VERSION, UPDATED


@dataclass(frozen=True)
class PhotoDetails:
    """A catalogue photo as reports show it."""

    id: int
    relative_path: str
    path: str  # absolute, inside the root
    identity: str
    outing: str
    date: str | None
    sha256: str


def now() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()


@dataclass(frozen=True)
class PhotoRecord:
    """One photo as the catalogue stores it (``path`` relative to the root, ``/``-separated)."""

    path: str
    identity: str
    outing: str
    date: str | None
    dataset: str
    species: str
    sha256: str
    width: int | None
    height: int | None
    size: int
    mtime_ns: int

    def same_labels(self, other: PhotoRecord) -> bool:
        """Same identity, outing, date, dataset and species (the file itself may differ)."""
        fields = ("identity", "outing", "date", "dataset", "species")
        return all(getattr(self, name) == getattr(other, name) for name in fields)


class CatalogueStore:
    """An open catalogue file. Use ``store_open.open_catalogue``; close it (or use it as a context manager).

    ``busy_timeout``: the seconds ``connection`` waits for another one's write lock; ``lock``: a writer's
    open lock file, released on closing (``store_open``).
    """

    def __init__(
        self, path: Path, connection: sqlite3.Connection, busy_timeout: float, lock: int | None = None
    ) -> None:
        self.path = path
        self.con = connection
        self.busy_timeout = busy_timeout
        self.lock = lock

    # -- life cycle ------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection, then let the next writer in."""
        try:
            self.con.close()
        finally:
            if self.lock is not None:
                os.close(self.lock)
                self.lock = None

    def __enter__(self) -> CatalogueStore:
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, *rest: object) -> None:
        """Close; an SQLite error about the file itself met inside the block (``store_checks``) becomes its
        one line."""
        self.close()
        if isinstance(err, sqlite3.Error) and (problem := sqlite_problem(self.path, err)):
            raise problem from None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (taken at once, so two writers never interleave): all of it or none."""
        try:
            self.con.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as err:
            if error_code(err) not in ("BUSY", "LOCKED"):
                raise
            raise UserError(
                f"catalogue {self.path} is busy: another program is writing to it "
                f"(waited {self.busy_timeout:.0f} s)"
            ) from None
        try:
            yield self.con
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every query inside sees the same committed state, whatever writers do (inside
        another one, that one's state)."""
        if self.con.in_transaction:
            yield self.con
            return
        self.con.execute("BEGIN")
        try:
            yield self.con
        finally:
            self.con.execute("COMMIT")

    # -- meta ------------------------------------------------------------------------------------------------

    def meta(self, key: str, default: Any = None) -> Any:
        """A meta value, checked to be what its key holds (``store_checks.meta_value``)."""
        row = self.con.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else meta_value(self.path, key, row[0])

    def set_meta(self, key: str, value: Any) -> None:
        """Write a meta value (inside the caller's transaction); None removes the key."""
        if value is None:
            self.con.execute("DELETE FROM meta WHERE key = ?", (key,))
            return
        self.con.execute(
            "INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, json.dumps(value)),
        )

    @property
    def root(self) -> Path | None:
        root = self.meta(ROOT)
        return None if root is None else Path(root)

    # -- photos ----------------------------------------------------------------------------------------------

    def photo_records(self) -> dict[str, tuple[int, PhotoRecord]]:
        """Every stored photo by relative path: (row id, record)."""
        rows = self.con.execute(
            "SELECT p.id, p.path, i.name, p.outing, p.date, p.dataset, p.species, p.sha256, p.width, "
            "p.height, p.size, p.mtime_ns FROM photos p JOIN individuals i ON i.id = p.individual_id"
        )
        return {row[1]: (row[0], PhotoRecord(*row[1:])) for row in rows}

    def vectors_by_sha256(self, hashes: Iterable[str]) -> dict[str, bytes]:
        """A stored embedding for each of ``hashes`` already in the catalogue (under any path)."""
        found: dict[str, bytes] = {}
        wanted = list(dict.fromkeys(hashes))
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self.con.execute(
                f"SELECT p.sha256, e.vector FROM photos p JOIN embeddings e ON e.photo_id = p.id "
                f"WHERE p.sha256 IN ({marks})",
                chunk,
            )
            found.update(rows)
        return found

    def _individual_ids(self, names: Iterable[str]) -> dict[str, int]:
        ids: dict[str, int] = {}
        for name in dict.fromkeys(names):
            self.con.execute("INSERT OR IGNORE INTO individuals(name) VALUES(?)", (name,))
            ids[name] = self.con.execute("SELECT id FROM individuals WHERE name = ?", (name,)).fetchone()[0]
        return ids

    def embedding_bytes(self) -> int | None:
        """The size of every embedding blob: its model's, which a stored one must match (``store_checks``);
        None in a catalogue with neither."""
        stored = self.con.execute(
            "SELECT p.path, length(e.vector) FROM embeddings e JOIN photos p ON p.id = e.photo_id LIMIT 1"
        ).fetchone()
        return embedding_bytes(self.path, self.meta(MODEL), stored)

    def add_photos(self, records: Sequence[PhotoRecord], vectors: Sequence[bytes]) -> None:
        """Insert photos with their embeddings (inside the caller's transaction); an embedding of another
        size than the catalogue's, or holding a NaN or infinity, is refused in one line before anything is
        written."""
        width = self.embedding_bytes() or (len(vectors[0]) if vectors else 0)
        for record, vector in zip(records, vectors, strict=True):
            wrong = f"{len(vector)} bytes, not {width} as the catalogue's" if len(vector) != width else ""
            if not wrong and not np.isfinite(np.frombuffer(vector, np.float32)).all():
                wrong = "not finite"
            if wrong:
                raise damaged(self.path, f"the embedding of photo {record.path} is {wrong}")
        ids = self._individual_ids(record.identity for record in records)
        added = now()
        for record, vector in zip(records, vectors, strict=True):
            cursor = self.con.execute(
                "INSERT INTO photos(path, individual_id, outing, date, dataset, species, sha256, width, "
                "height, size, mtime_ns, added) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.path,
                    ids[record.identity],
                    record.outing,
                    record.date,
                    record.dataset,
                    record.species,
                    record.sha256,
                    record.width,
                    record.height,
                    record.size,
                    record.mtime_ns,
                    added,
                ),
            )
            self.con.execute(
                "INSERT INTO embeddings(photo_id, vector) VALUES(?, ?)", (cursor.lastrowid, vector)
            )

    def relabel_photos(self, records: Sequence[PhotoRecord]) -> None:
        """Update the labels and file facts of stored photos whose file is unchanged (same sha256)."""
        ids = self._individual_ids(record.identity for record in records)
        for record in records:
            self.con.execute(
                "UPDATE photos SET individual_id = ?, outing = ?, date = ?, dataset = ?, species = ?, "
                "size = ?, mtime_ns = ? WHERE path = ?",
                (
                    ids[record.identity],
                    record.outing,
                    record.date,
                    record.dataset,
                    record.species,
                    record.size,
                    record.mtime_ns,
                    record.path,
                ),
            )

    def remove_photos(self, paths: Iterable[str]) -> None:
        """Delete photos (and, by cascade, their embeddings) by relative path."""
        self.con.executemany("DELETE FROM photos WHERE path = ?", [(path,) for path in paths])

    def refresh_individuals(self, names: Iterable[str] | None = None) -> None:
        """Recount the photos and sightings of the individuals ``names`` (default: all); drop those left
        without photos."""
        counts = (
            "num_photos = (SELECT count(*) FROM photos p WHERE p.individual_id = individuals.id), "
            "first_seen = (SELECT min(date) FROM photos p WHERE p.individual_id = individuals.id), "
            "last_seen = (SELECT max(date) FROM photos p WHERE p.individual_id = individuals.id)"
        )
        if names is None:
            self.con.execute(f"UPDATE individuals SET {counts}")
            self.con.execute("DELETE FROM individuals WHERE num_photos = 0")
            return
        chosen = [(name,) for name in dict.fromkeys(names)]
        self.con.executemany(f"UPDATE individuals SET {counts} WHERE name = ?", chosen)
        self.con.executemany("DELETE FROM individuals WHERE name = ? AND num_photos = 0", chosen)

    def clear(self) -> None:
        """Forget every photo, embedding and individual (a ``--rebuild``), inside the caller's transaction."""
        self.con.execute("DELETE FROM embeddings")
        self.con.execute("DELETE FROM photos")
        self.con.execute("DELETE FROM individuals")

    def decision_photo_paths(self) -> set[str]:
        """The relative paths of the photos that joined by a lineup decision (``catalogue apply``)."""
        return {row[0] for row in self.con.execute("SELECT path FROM photos WHERE origin = 'decision'")}

    def num_photos(self) -> int:
        return int(self.con.execute("SELECT count(*) FROM photos").fetchone()[0])

    # -- reading for search ----------------------------------------------------------------------------------

    def photos_by_sha256(self, hashes: Iterable[str]) -> dict[str, list[int]]:
        """For each of ``hashes`` found: the ids of the catalogue photos with those bytes."""
        found: dict[str, list[int]] = {}
        wanted = list(dict.fromkeys(hashes))
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self.con.execute(
                f"SELECT sha256, id FROM photos WHERE sha256 IN ({marks}) ORDER BY path", chunk
            )
            for sha, photo_id in rows:
                found.setdefault(sha, []).append(photo_id)
        return found

    def photo_details(self, photo_ids: Iterable[int]) -> dict[int, PhotoDetails]:
        """Path (checked to stay inside the root), individual, outing and date of the given photos."""
        root = self.root
        assert root is not None
        wanted = [int(i) for i in dict.fromkeys(photo_ids)]
        found: dict[int, PhotoDetails] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            rows = self.con.execute(
                "SELECT p.id, p.path, i.name, p.outing, p.date, p.sha256 FROM photos p "
                f"JOIN individuals i ON i.id = p.individual_id WHERE p.id IN ({','.join('?' * len(chunk))})",
                chunk,
            )
            for photo_id, rel, name, outing, date, sha in rows:
                path = resolve_photo_path(rel, root, self.path)
                found[photo_id] = PhotoDetails(photo_id, rel, str(path), name, outing, date, sha)
        return found

    def recent_photo_ids(self, identity: str, limit: int, skip: Iterable[int] = ()) -> list[int]:
        """Up to ``limit`` photos of ``identity``, latest first (undated last), leaving out ``skip``."""
        skipped = set(skip)
        rows = self.con.execute(
            "SELECT p.id FROM photos p JOIN individuals i ON i.id = p.individual_id WHERE i.name = ? "
            "ORDER BY p.date IS NULL, p.date DESC, p.path DESC LIMIT ?",
            (identity, limit + len(skipped)),
        )
        return [row[0] for row in rows if row[0] not in skipped][:limit]

    def photo_table(self) -> pd.DataFrame:
        """One row per photo, ordered by id as ``load_index`` orders them: id, identity, outing, date."""
        rows = self.con.execute(
            "SELECT p.id, i.name, p.outing, p.date FROM photos p "
            "JOIN individuals i ON i.id = p.individual_id ORDER BY p.id"
        ).fetchall()
        table = pd.DataFrame(rows, columns=["id", "identity", "outing", "date"])
        table["date"] = pd.to_datetime(table["date"], errors="coerce", format="ISO8601")
        return table

    # -- summary ---------------------------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """What ``catalogue info`` prints: counts, dates, model and calibration."""
        with self.snapshot() as con:
            individuals, photos = con.execute(
                "SELECT (SELECT count(*) FROM individuals), (SELECT count(*) FROM photos)"
            ).fetchone()
            outings = con.execute(
                "SELECT count(*) FROM (SELECT DISTINCT individual_id, outing FROM photos)"
            ).fetchone()[0]
            first, last, undated = con.execute(
                "SELECT min(date), max(date), sum(date IS NULL) FROM photos"
            ).fetchone()
            datasets = [
                row[0]
                for row in con.execute(
                    "SELECT DISTINCT dataset FROM photos WHERE dataset != '' ORDER BY dataset"
                )
            ]
            meta = {key: meta_value(self.path, key, text) for key, text in con.execute("SELECT * FROM meta")}
        return {
            "catalogue": str(self.path),
            "schema_version": SCHEMA_VERSION,
            "root": meta.get(ROOT),
            "individuals": int(individuals),
            "photos": int(photos),
            "outings": int(outings),
            "datasets": datasets,
            "first_date": first,
            "last_date": last,
            "undated_photos": int(undated or 0),
            "model": meta.get(MODEL),
            "calibration": meta.get(CALIBRATION),
            "created": meta.get(CREATED),
            "updated": meta.get(UPDATED),
        }
