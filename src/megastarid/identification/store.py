"""The catalogue of known individuals: one SQLite file (standard library ``sqlite3``).

Tables (schema version ``SCHEMA_VERSION`` in ``PRAGMA user_version``; ``PRAGMA application_id`` marks the
file as ours, so any other SQLite file is refused with one line):

- ``individuals``: id, name (the identity, e.g. ``SiteA/star1``), first_seen / last_seen (ISO dates of its
  earliest / latest dated photo), num_photos;
- ``photos``: id, path (relative to the catalogue root, ``/``-separated), individual, outing, date, dataset,
  species, sha256 of the file, width / height, and the file's size and mtime (a rerun re-hashes a photo only
  when those changed);
- ``embeddings``: one float32 blob per photo (``ON DELETE CASCADE``: a photo never outlives its row);
- ``meta``: JSON values: the root, the model fingerprint and how to re-create the model, the calibration
  and where it came from, timestamps;
- ``decisions`` (schema 2): the audit of every lineup decision applied (``catalogue apply``): when, the
  decisions file and its sha256 and line, the decision, the photo, the individual it went to, the note and
  what it changed; ``photos.origin`` says whether a photo came from a build (``build``) or joined by a
  decision (``decision``; a build keeps those).

An older file is migrated when it is opened (``MIGRATIONS``: version n -> n + 1, each in one transaction).

The file is in WAL mode: readers (``identify``, ``catalogue info``) see the last committed state while a
build adds photos, and a killed build loses at most its open batch. Foreign keys are on for every
connection. Loading every embedding for search (``load_index``) reads one joined query into one numpy
array; 140,000 photos open in well under 2 s (see bench/identify_speed.py).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import json
import logging
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from megastarid.core.errors import UserError
from megastarid.evaluation.embed import tta_mode
from megastarid.evaluation.individuals import IdentityCodes
from megastarid.identification.index import CatalogueIndex, IndividualInfo
from megastarid.identification.paths import resolve_photo_path

log = logging.getLogger(__name__)

#: the schema this code writes; files of a higher version are refused, older ones migrated (``MIGRATIONS``)
SCHEMA_VERSION = 2
#: ``PRAGMA application_id`` of a MegaStarID catalogue ("MSID")
APPLICATION_ID = 0x4D534944
#: bytes per database page: many 2-3 KB embedding blobs fit one page (4 KB pages hold one each)
PAGE_SIZE = 65536
#: seconds a connection waits for another one's write lock before giving up
BUSY_TIMEOUT = 60.0

_SCHEMA = """
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE individuals (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    first_seen TEXT,
    last_seen TEXT,
    num_photos INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE photos (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    individual_id INTEGER NOT NULL REFERENCES individuals(id),
    outing TEXT NOT NULL DEFAULT '',
    date TEXT,
    dataset TEXT NOT NULL DEFAULT '',
    species TEXT NOT NULL DEFAULT '',
    sha256 TEXT NOT NULL,
    width INTEGER,
    height INTEGER,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    added TEXT NOT NULL,
    origin TEXT NOT NULL DEFAULT 'build'
);
CREATE INDEX photos_sha256 ON photos(sha256);
CREATE INDEX photos_individual ON photos(individual_id);
CREATE TABLE embeddings (
    photo_id INTEGER PRIMARY KEY REFERENCES photos(id) ON DELETE CASCADE,
    vector BLOB NOT NULL
);
"""
#: the audit of applied lineup decisions (schema 2)
_DECISIONS_TABLE = """
CREATE TABLE decisions (
    id INTEGER PRIMARY KEY,
    applied TEXT NOT NULL,
    source TEXT NOT NULL,
    source_sha256 TEXT NOT NULL,
    line INTEGER NOT NULL,
    decided TEXT,
    decision TEXT NOT NULL,
    query TEXT NOT NULL,
    photo TEXT,
    encounter TEXT NOT NULL DEFAULT '',
    identity TEXT NOT NULL DEFAULT '',
    note TEXT NOT NULL DEFAULT '',
    effect TEXT NOT NULL,
    UNIQUE (source_sha256, line)
)
"""
_SCHEMA += _DECISIONS_TABLE

#: schema upgrades: the statements that take a file of version n to n + 1 (run in one transaction)
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        "ALTER TABLE photos ADD COLUMN origin TEXT NOT NULL DEFAULT 'build'",
        _DECISIONS_TABLE,
    ),
}

#: the first stored photo path that would lead outside the root (the same test as ``paths.escapes_root``)
_ESCAPING = (
    "SELECT path FROM photos WHERE path = '' OR path LIKE '/%' OR path = '..' OR path LIKE '../%' "
    "OR path LIKE '%/..' OR path LIKE '%/../%' LIMIT 1"
)

# meta keys
ROOT = "root"
MODEL = "model"
CALIBRATION = "calibration"
CREATED = "created"
UPDATED = "updated"


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
    """An open catalogue file. Use ``open_catalogue``; close it (or use it as a context manager)."""

    def __init__(self, path: Path, connection: sqlite3.Connection) -> None:
        self.path = path
        self.con = connection

    # -- life cycle ------------------------------------------------------------------------------------------

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> CatalogueStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (taken at once, so two builds never interleave): all of it or none."""
        try:
            self.con.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) and "busy" not in str(err):
                raise
            raise UserError(
                f"catalogue {self.path} is busy: another build is writing to it (waited {BUSY_TIMEOUT:.0f} s)"
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
        row = self.con.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is None:
            return default
        value = json.loads(row[0])
        return self._model_record(value) if key == MODEL else value

    def _model_record(self, record: Any) -> Any:
        """The model record with its fingerprint's ``tta`` as a mode name: catalogues built before the
        test-time augmentation modes stored a bool (true: the mirror, now ``flip``). A malformed record is
        returned as it is, for whoever re-creates the model to refuse."""
        fingerprint = record.get("fingerprint") if isinstance(record, dict) else None
        if not isinstance(fingerprint, dict) or "tta" not in fingerprint:
            return record
        try:
            tta = tta_mode(fingerprint["tta"])
        except ValueError as err:
            raise UserError(f"catalogue {self.path}: its model's tta is {err}") from None
        return {**record, "fingerprint": {**fingerprint, "tta": tta}}

    def set_meta(self, key: str, value: Any) -> None:
        """Write a meta value (inside the caller's transaction)."""
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

    def add_photos(self, records: Sequence[PhotoRecord], vectors: Sequence[bytes]) -> None:
        """Insert photos with their embeddings (inside the caller's transaction)."""
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

    def load_index(self) -> CatalogueIndex:
        """Every photo's embedding and individual, from one consistent snapshot, for search."""
        root = self.root
        with self.snapshot() as con:
            people = con.execute(
                "SELECT id, name, first_seen, last_seen, num_photos FROM individuals ORDER BY name"
            ).fetchall()
            owners = np.array(con.execute("SELECT id, individual_id FROM photos ORDER BY id").fetchall())
            if root is None or not len(owners):
                raise UserError(
                    f"catalogue {self.path} holds no photos yet (build it with megastarid catalogue build)"
                )
            escaping = con.execute(_ESCAPING).fetchone()
            if escaping is not None:
                raise UserError(f"catalogue {self.path}: photo path {escaping[0]!r} escapes its root {root}")
            embeddings, vector_ids = self._read_vectors(len(owners))
            model = self.meta(MODEL) or {}
        if not np.array_equal(vector_ids, owners[:, 0]):
            raise UserError(f"catalogue {self.path} is damaged: photos and embeddings do not pair up")
        ids = np.array([row[0] for row in people], dtype=np.int64)  # sorted by name: codes follow names
        order = np.argsort(ids)
        codes = order[np.searchsorted(ids[order], owners[:, 1])]
        individuals = {
            name: IndividualInfo(name, first, last, count) for _, name, first, last, count in people
        }
        return CatalogueIndex(
            catalogue=self.path,
            root=root,
            embeddings=embeddings,
            photo_ids=owners[:, 0].astype(np.int64),
            codes=IdentityCodes([row[1] for row in people], codes.astype(np.int64)),
            individuals=individuals,
            model=model,
        )

    def _read_vectors(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``count`` embeddings in photo order, copied blob by blob straight into one float32 matrix (no
        list of 140,000 blobs, no second copy), with their photo ids."""
        damaged = UserError(f"catalogue {self.path} is damaged: photos and embeddings do not pair up")
        cursor = self.con.execute("SELECT photo_id, vector FROM embeddings ORDER BY photo_id")
        first = cursor.fetchone()
        if first is None:
            raise damaged
        width = len(first[1])
        embeddings = np.empty((count, width // 4), dtype=np.float32)
        flat = embeddings.data.cast("B")
        ids = np.empty(count, dtype=np.int64)
        for i, (photo_id, blob) in enumerate(itertools.chain([first], cursor)):
            if i >= count:
                raise damaged
            if len(blob) != width:
                raise UserError(f"catalogue {self.path} is damaged: its embeddings differ in size")
            ids[i] = photo_id
            flat[i * width : (i + 1) * width] = blob
        if i + 1 != count:
            raise damaged
        return embeddings, ids

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
            datasets = [row[0] for row in con.execute("SELECT DISTINCT dataset FROM photos ORDER BY dataset")]
            meta = {key: json.loads(value) for key, value in con.execute("SELECT key, value FROM meta")}
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
            "model": self._model_record(meta.get(MODEL)),
            "calibration": meta.get(CALIBRATION),
            "created": meta.get(CREATED),
            "updated": meta.get(UPDATED),
        }


# -- opening -----------------------------------------------------------------------------------------------


def _not_ours(path: Path, why: str) -> UserError:
    return UserError(f"{path} is not a MegaStarID catalogue ({why})")


def open_catalogue(path: str | os.PathLike[str], create: bool = False) -> CatalogueStore:
    """Open a catalogue file; with ``create`` a missing (or empty) file becomes a new catalogue.

    A missing file (without ``create``), a file that is not SQLite, an SQLite file that is not a catalogue
    and a catalogue written by a newer MegaStarID are each one line naming the file.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"catalogue {path} is a folder, not a catalogue file")
    if not path.exists():
        if not create:
            raise UserError(
                f"catalogue {path} does not exist (make one with megastarid catalogue build --catalogue ...)"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
    path = Path(os.path.abspath(path))
    try:
        uri = path.as_uri() + ("?mode=rwc" if create else "?mode=rw")
        con = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT, isolation_level=None)
    except sqlite3.Error as err:
        raise UserError(f"catalogue {path} cannot be opened ({err})") from None
    try:
        store = CatalogueStore(path, con)
        _check_or_create(store, create)
        con.execute("PRAGMA foreign_keys = ON")
    except sqlite3.DatabaseError as err:
        con.close()
        raise _not_ours(path, f"not an SQLite database: {err}") from None
    except BaseException:
        con.close()
        raise
    return store


def _check_or_create(store: CatalogueStore, create: bool) -> None:
    con, path = store.con, store.path
    app_id = con.execute("PRAGMA application_id").fetchone()[0]
    version = con.execute("PRAGMA user_version").fetchone()[0]
    tables = con.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    if app_id == 0 and tables == 0 and version == 0:
        if not create:
            raise _not_ours(path, "an empty file")
        con.execute(f"PRAGMA page_size = {PAGE_SIZE}")
        con.execute("PRAGMA journal_mode = WAL")
        with store.transaction():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    con.execute(statement)
            con.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            store.set_meta(CREATED, now())
        log.info("created catalogue %s", path)
        return
    if app_id != APPLICATION_ID:
        raise _not_ours(path, "an SQLite database of something else")
    if version > SCHEMA_VERSION:
        raise UserError(
            f"catalogue {path} was written by a newer MegaStarID (schema {version}; this version reads up to "
            f"{SCHEMA_VERSION}): upgrade megastarid"
        )
    if version < 1:
        raise _not_ours(path, f"schema version {version}")
    if version < SCHEMA_VERSION:
        _migrate(store)
    if create:
        con.execute("PRAGMA journal_mode = WAL")


def _migrate(store: CatalogueStore) -> None:
    """Bring an older catalogue up to ``SCHEMA_VERSION``, one version per transaction (a second process
    opening it meanwhile waits, then finds it done)."""
    while True:
        with store.transaction() as con:
            version = con.execute("PRAGMA user_version").fetchone()[0]
            if version >= SCHEMA_VERSION:
                return
            for statement in MIGRATIONS[version]:
                con.execute(statement)
            con.execute(f"PRAGMA user_version = {version + 1}")
        log.info("catalogue %s: schema %d -> %d", store.path, version, version + 1)
