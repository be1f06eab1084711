"""Opening a catalogue file (standard library ``sqlite3``): a new one is created, an older one migrated.

A new file gets large pages and WAL mode; every connection waits up to ``BUSY_TIMEOUT`` for another one's
write lock and has foreign keys on.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

from megastarid.core.errors import UserError
from megastarid.identification.store import CatalogueStore, now
from megastarid.identification.store_schema import (
    APPLICATION_ID,
    CREATED,
    MIGRATIONS,
    PAGE_SIZE,
    SCHEMA,
    SCHEMA_VERSION,
)

log = logging.getLogger(__name__)

#: seconds a connection waits for another one's write lock before giving up
BUSY_TIMEOUT = 60.0


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
        store = CatalogueStore(path, con, BUSY_TIMEOUT)
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
            for statement in SCHEMA.split(";"):
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
