"""Reading a decisions file: what the lineup page exports (``lineup.DECISION_COLUMNS``) for ``megastarid
catalogue apply``.

One row per photo, columns ``query`` (the photo: absolute, or relative to the catalogue's root),
``encounter``, ``decision`` (``confirm`` / ``new`` / ``unsure``), ``identity`` (the confirmed individual, or
the new individual's name, may be empty), ``note``, ``time`` (ISO 8601, when the decision was made) and
``query_id`` (the query's ``id`` in identify's ``matches.json``; files written before it are read without).
UTF-8, a header line, RFC 4180
quoting, a cell that starts like a formula marked as text with a leading ``'`` (``core.files.plain_text``
reads it as it was typed); other columns are ignored. The photo, encounter and individual are
kept exactly as written (a file or an individual may be named with a space at either end), the decision,
note and time without surrounding spaces; an individual's name, whatever the decision, keeps the name rule
(``names``).
"""

from __future__ import annotations

import csv
import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from megastarid.core.errors import UserError, quoted
from megastarid.core.files import plain_text
from megastarid.identification.names import name_fault

DECISIONS = ("confirm", "new", "unsure")
#: columns a decisions file must have (``encounter``, ``identity``, ``note``, ``time``, ``query_id`` may be
#: left out)
REQUIRED_COLUMNS = ("query", "decision")
OPTIONAL_COLUMNS = ("encounter", "identity", "note", "time", "query_id")


@dataclass(frozen=True)
class Decision:
    """One row of a decisions file."""

    line: int
    query: str
    encounter: str
    decision: str
    identity: str
    note: str
    time: str | None
    query_id: int | None = None


def instant(text: str) -> dt.datetime:
    """The moment an ISO 8601 time or date names, in UTC (a time without a zone is taken as UTC); a
    ``ValueError`` if ``text`` names none."""
    stamp = dt.datetime.fromisoformat(text)
    return stamp.replace(tzinfo=dt.UTC) if stamp.tzinfo is None else stamp.astimezone(dt.UTC)


def read_decisions(path: Path) -> list[Decision]:
    """The rows of a decisions file; a file that cannot be read, a missing column or a malformed row is one
    line naming the file (and line)."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle, strict=True)
            lines: list[tuple[int, list[str]]] = []
            start = 1
            for fields in reader:
                lines.append((start, [plain_text(cell) for cell in fields]))  # the page's text cells
                start = reader.line_num + 1
    except FileNotFoundError:
        raise UserError(f"decisions file {path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"decisions file {path} is a folder") from None
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    except csv.Error as err:
        raise UserError(f"{path}:{start}: not valid CSV ({err})") from None
    except OSError as err:
        raise UserError(f"cannot read decisions file {path}: {err.strerror or err}") from None
    rows = [(number, fields) for number, fields in lines if any(cell.strip() for cell in fields)]
    if not rows:
        raise UserError(
            f"{path} is empty (expected a header: {','.join((*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS))})"
        )
    header_line, header = rows[0]
    columns = [cell.strip().lower() for cell in header]
    missing = [name for name in REQUIRED_COLUMNS if name not in columns]
    if missing:
        raise UserError(
            f"{path}:{header_line}: missing column(s) {', '.join(missing)} (header {quoted(header)})"
        )
    where = {name: columns.index(name) for name in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if name in columns}
    decisions = []
    for number, fields in rows[1:]:
        if len(fields) != len(columns):
            raise UserError(f"{path}:{number}: {len(fields)} fields, the header has {len(columns)}")
        raw = {name: fields[index] for name, index in where.items()}
        value = {name: cell.strip() for name, cell in raw.items()}
        decision = value["decision"].lower()
        if decision not in DECISIONS:
            raise UserError(
                f"{path}:{number}: decision {quoted(value['decision'])} is not one of {', '.join(DECISIONS)}"
            )
        if not value["query"]:
            raise UserError(f"{path}:{number}: no photo in the query column")
        # names and paths as written (a name or a folder may end in a space); a blank name is no name
        identity = raw.get("identity", "") if value.get("identity") else ""
        if decision == "confirm" and not identity:
            raise UserError(f"{path}:{number}: confirm needs the individual in the identity column")
        fault = name_fault(identity) if identity else None
        if fault is not None:
            raise UserError(f"{path}:{number}: individual name {quoted(identity)} {fault}")
        time = value.get("time") or None
        if time is not None:
            try:
                instant(time)
            except ValueError:
                raise UserError(f"{path}:{number}: time {quoted(time)} is not an ISO 8601 time") from None
        query_id = value.get("query_id") or None
        if query_id is not None and not query_id.isdigit():
            raise UserError(f"{path}:{number}: query_id {quoted(query_id)} is not a query number")
        decisions.append(
            Decision(
                number,
                raw["query"],
                raw.get("encounter", ""),
                decision,
                identity,
                value.get("note", ""),
                time,
                None if query_id is None else int(query_id),
            )
        )
    if not decisions:
        raise UserError(f"{path} holds no decisions (only its header)")
    return decisions
