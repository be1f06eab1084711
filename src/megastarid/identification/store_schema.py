"""The catalogue file's format: its tables, schema version and migrations, and the keys of its meta table.

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
  decision (``decision``; a build keeps those);
- ``decisions.query_id`` and ``decisions.proposal`` (schema 3): the lineup query a decision answered and, when
  ``catalogue apply`` was given identify's ``matches.json``, what identify proposed for it (JSON: verdict,
  model fingerprint, τ, top-k candidates with score and P), so the lab's decisions score the model
  (``decision_history``).

An older file is migrated when it is opened (``MIGRATIONS``: version n -> n + 1, each in one transaction;
``store_open``).
"""

from __future__ import annotations

#: the schema this code writes; files of a higher version are refused, older ones migrated (``MIGRATIONS``)
SCHEMA_VERSION = 3
#: ``PRAGMA application_id`` of a MegaStarID catalogue ("MSID")
APPLICATION_ID = 0x4D534944
#: bytes per database page: many 2-3 KB embedding blobs fit one page (4 KB pages hold one each)
PAGE_SIZE = 65536

#: the tables of a new file
SCHEMA = """
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
#: what identify proposed for each decision (schema 3)
_PROPOSAL_COLUMNS = (
    "ALTER TABLE decisions ADD COLUMN query_id INTEGER",
    "ALTER TABLE decisions ADD COLUMN proposal TEXT",
)
SCHEMA += _DECISIONS_TABLE + ";" + ";".join(_PROPOSAL_COLUMNS)

#: schema upgrades: the statements that take a file of version n to n + 1 (run in one transaction)
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        "ALTER TABLE photos ADD COLUMN origin TEXT NOT NULL DEFAULT 'build'",
        _DECISIONS_TABLE,
    ),
    2: _PROPOSAL_COLUMNS,
}

#: keys of the meta table
ROOT = "root"
MODEL = "model"
CALIBRATION = "calibration"
CREATED = "created"
UPDATED = "updated"
