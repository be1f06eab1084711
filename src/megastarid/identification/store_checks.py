"""What can be wrong with a catalogue file that its user can fix, said in one line naming the file.

``sqlite_problem`` turns SQLite's own errors about the file (read-only, busy, not a database, unreadable,
disk full) into such a line; ``CatalogueStore`` raises it for any of them met while the file is open, so no
command shows an SQLite traceback for them.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from megastarid.core.errors import UserError

#: what a user is told to do when a catalogue it wants to change is read-only
READ_ONLY_HINT = (
    "build and apply change it (info, log, identify and captures only read it): make the file and its folder "
    "writable, or work on a copy"
)


def error_code(err: sqlite3.Error) -> str:
    """SQLite's primary result code of ``err`` without its prefix: ``BUSY``, ``READONLY``, ``CANTOPEN``."""
    name = getattr(err, "sqlite_errorname", None) or ""
    return name.split("_")[1] if name.startswith("SQLITE_") else ""


def read_only(path: Path, why: object) -> UserError:
    return UserError(f"catalogue {path} is read-only here ({why}): {READ_ONLY_HINT}")


def sqlite_problem(path: Path, err: sqlite3.Error) -> UserError | None:
    """The one line for an SQLite error about the catalogue file itself; None for any other error (a bug,
    which keeps its traceback)."""
    code = error_code(err)
    if code == "READONLY":
        return read_only(path, err)
    if code in ("BUSY", "LOCKED"):
        return UserError(f"catalogue {path} is busy: another program is writing to it ({err})")
    if code == "NOTADB":
        return UserError(f"{path} is not a MegaStarID catalogue (not an SQLite database: {err})")
    if code == "CANTOPEN":
        return UserError(f"catalogue {path} cannot be opened ({err})")
    if code in ("IOERR", "FULL"):
        return UserError(f"catalogue {path} cannot be read or written ({err})")
    return None
