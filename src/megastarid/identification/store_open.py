"""Opening a catalogue file (standard library ``sqlite3``): a new one is created, an older one migrated.

A new file gets large pages and WAL mode; every connection waits up to ``BUSY_TIMEOUT`` for another one's
write lock and has foreign keys on.

One writer at a time: a build or an apply works through many transactions (a build commits batch by batch)
and plans from what it read first, so two at once would trip over each other's rows. A writer holds the
catalogue's lock file (``archive.sqlite-lock``, ``core.locks``: its pid inside, released when it ends,
however it ends) from opening to closing; a second writer is refused in one line naming that pid, or
waits for it (``wait``). Readers take no lock: WAL lets them read the last commit while a writer works.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

from megastarid.core.errors import UserError
from megastarid.core.locks import LockBusy, take_lock
from megastarid.identification.store import CatalogueStore, now
from megastarid.identification.store_checks import error_code, read_only, sqlite_problem
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
#: the writer's lock file is the catalogue's name with this added (beside SQLite's -wal and -shm)
LOCK_SUFFIX = "-lock"


def _not_ours(path: Path, why: str) -> UserError:
    return UserError(f"{path} is not a MegaStarID catalogue ({why})")


def open_catalogue(
    path: str | os.PathLike[str], write: bool = False, create: bool = False, wait: bool = False
) -> CatalogueStore:
    """Open a catalogue file, to read it or (``write``) to change it; with ``create`` (a writer) a missing (or
    empty) file becomes a new catalogue. A writer holds the catalogue's lock until it closes; another
    writer holding it is one line naming its pid, unless ``wait`` (then it waits for it).

    A missing file (without ``create``), a file that is not SQLite, an SQLite file that is not a catalogue,
    a catalogue written by a newer MegaStarID and, for a writer, one that cannot be written here are each one
    line naming the file.
    """
    write = write or create
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
    if write and (why := _not_writable(path)):
        raise read_only(path, why)
    lock = _lock(path, wait) if write else None
    try:
        con = _connect(path, "rwc" if create else "rw") if write else _reader(path)
    except sqlite3.Error as err:
        if lock is not None:
            os.close(lock)
        raise sqlite_problem(path, err) or UserError(f"catalogue {path} cannot be opened ({err})") from None
    store = CatalogueStore(path, con, BUSY_TIMEOUT, lock)
    try:
        _check_or_create(store, create)
        con.execute("PRAGMA foreign_keys = ON")
    except BaseException as err:
        store.close()
        if isinstance(err, sqlite3.Error) and (problem := sqlite_problem(path, err)):
            raise problem from None
        raise
    return store


def _connect(path: Path, mode: str) -> sqlite3.Connection:
    """A connection in SQLite's URI ``mode`` (ro, rw, rwc; ``ro&immutable=1``), the file opened at once."""
    uri = f"{path.as_uri()}?mode={mode}"
    con = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT, isolation_level=None)
    try:
        con.execute("PRAGMA schema_version")  # SQLite opens the file (and its WAL index) on first use
    except BaseException:
        con.close()
        raise
    return con


def _reader(path: Path) -> sqlite3.Connection:
    """A read-only connection. In a folder no one can write, SQLite cannot make the -shm file readers share
    with writers; with no -wal file there (or an empty one) the database file is all there is, and no writer
    can come (it could not make one either), so it is read as an immutable file."""
    try:
        return _connect(path, "ro")
    except sqlite3.OperationalError as err:
        wal = path.with_name(path.name + "-wal")
        pending = wal.exists() and wal.stat().st_size > 0
        if error_code(err) != "CANTOPEN" or os.access(path.parent, os.W_OK) or pending:
            raise
    log.debug("catalogue %s: its folder is read-only, reading it as an immutable file", path)
    return _connect(path, "ro&immutable=1")


def _not_writable(path: Path) -> str | None:
    """Why a writer cannot change the catalogue here (the file, or its folder, where SQLite writes its -wal
    and -shm files beside it), as the kernel answers for this process; None when it can."""
    if path.exists() and not os.access(path, os.W_OK):
        return "the file cannot be written"
    if not os.access(path.parent, os.W_OK):
        return f"its folder {path.parent} cannot be written"
    return None


def _lock(path: Path, wait: bool) -> int:
    """Take the catalogue's writer lock (``wait``: for as long as another writer holds it)."""
    lock = path.with_name(path.name + LOCK_SUFFIX)
    try:
        try:
            return take_lock(lock)
        except LockBusy as busy:
            if not wait:
                raise UserError(
                    f"catalogue {path} is busy: another process (pid {busy.holder}) is writing to it; try "
                    "again when it ends, or pass --wait to wait for it"
                ) from None
            log.info("catalogue %s is busy (pid %s writes to it): waiting for it to end", path, busy.holder)
            return take_lock(lock, wait=True)
    except OSError as err:
        raise UserError(
            f"catalogue {path}: cannot create its lock file {lock} ({err.strerror or err})"
        ) from None


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
        _upgrade(store, version)
    if create:
        con.execute("PRAGMA journal_mode = WAL")


def _upgrade(store: CatalogueStore, version: int) -> None:
    """Migrate an older catalogue as it opens: through its own connection for a writer, through one of its
    own for a reader (each step is one transaction that checks the version again, so no lock is needed)."""
    if store.lock is not None:
        _migrate(store)
        return
    path = store.path
    if why := _not_writable(path):
        raise UserError(
            f"catalogue {path} is schema {version}: this version reads it once it is upgraded to schema "
            f"{SCHEMA_VERSION}, and it is read-only here ({why}): make it writable and open it once "
            "(e.g. megastarid catalogue info)"
        )
    with CatalogueStore(path, _connect(path, "rw"), BUSY_TIMEOUT) as writer:
        _migrate(writer)


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
