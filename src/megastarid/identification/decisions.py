"""Lineup decisions back into the catalogue (``megastarid catalogue apply``), without retraining.

``decisions.csv`` (what the lineup page exports; ``lineup.DECISION_COLUMNS``): one row per photo, columns
``query`` (the photo: absolute, or relative to the catalogue's root), ``encounter``, ``decision``
(``confirm`` / ``new`` / ``unsure``), ``identity`` (the confirmed individual, or the new individual's name,
may be empty), ``note`` and ``time`` (ISO 8601, when the decision was made). UTF-8, a header line, RFC 4180
quoting, a cell that starts like a formula marked as text with a leading ``'`` (``core.files.plain_text``
reads it as it was typed); other columns are ignored.

What a file does, all in one transaction (any bad row, and nothing of the file is applied):

- ``confirm``: the photo joins the named catalogue individual, embedded with the catalogue's own model (or
  not at all, when the catalogue already holds those bytes);
- ``new``: the encounter's photos become a new individual, named as given, else ``NEW-<YYYYMMDD>-<n>`` (the
  decision's date, the next free ``n``); a name that already belongs to an individual of the star tree is
  refused (confirm it instead), while one made by an earlier ``new`` decision is joined;
- ``unsure``: recorded, nothing else;
- every row goes into the audit table (``decisions``) with the time, the file, its sha256 and line, and what
  it changed (``effect``: ``added``, ``moved``, ``already``, ``recorded``).

Photos must lie inside the catalogue's root and exist. A photo that joined by an earlier decision moves when
a later decision names another individual; a photo the star tree put in the catalogue is never relabelled
here (move it in the tree). Applying the same file again changes nothing: its rows are already in the audit
table and their photos already where they say. Photos that joined by a decision are kept by later builds
(``photos.origin = 'decision'``).
"""

from __future__ import annotations

import csv
import datetime as dt
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from megastarid.core.errors import UserError, quoted
from megastarid.core.files import plain_text
from megastarid.data.dates import parse_folder_date
from megastarid.identification.build import image_dims, iso_date
from megastarid.identification.paths import relative_photo_path
from megastarid.identification.store import UPDATED, CatalogueStore, PhotoRecord, now
from megastarid.models.embedder import Embedder, file_sha256

log = logging.getLogger(__name__)

DECISIONS = ("confirm", "new", "unsure")
#: columns a decisions file must have (``encounter``, ``identity``, ``note``, ``time`` may be left out)
REQUIRED_COLUMNS = ("query", "decision")
OPTIONAL_COLUMNS = ("encounter", "identity", "note", "time")
#: what applying a row did
EFFECTS = ("added", "moved", "already", "recorded")
NEW_PREFIX = "NEW-"
DECISION_ORIGIN = "decision"


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


@dataclass
class ApplyReport:
    """What applying a decisions file did."""

    source: str
    rows: int = 0
    effects: dict[str, int] = field(default_factory=lambda: dict.fromkeys(EFFECTS, 0))
    confirmed: int = 0  # photos confirmed (added, moved or already there)
    created: list[str] = field(default_factory=list)  # new individuals made
    audited: int = 0  # audit rows written (0 when the file was applied before)

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
        )


# -- reading -----------------------------------------------------------------------------------------------


def _iso_time(text: str) -> str:
    """``text`` if it is an ISO 8601 time or date, else a ``ValueError``."""
    dt.datetime.fromisoformat(text)
    return text


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
        value = {name: fields[index].strip() for name, index in where.items()}
        decision = value["decision"].lower()
        if decision not in DECISIONS:
            raise UserError(
                f"{path}:{number}: decision {quoted(value['decision'])} is not one of {', '.join(DECISIONS)}"
            )
        if not value["query"]:
            raise UserError(f"{path}:{number}: no photo in the query column")
        identity = value.get("identity", "")
        if decision == "confirm" and not identity:
            raise UserError(f"{path}:{number}: confirm needs the individual in the identity column")
        time = value.get("time") or None
        if time is not None:
            try:
                _iso_time(time)
            except ValueError:
                raise UserError(f"{path}:{number}: time {quoted(time)} is not an ISO 8601 time") from None
        decisions.append(
            Decision(
                number,
                fields[where["query"]],  # a file name may begin or end with a space: kept as written
                value.get("encounter", ""),
                decision,
                identity,
                value.get("note", ""),
                time,
            )
        )
    if not decisions:
        raise UserError(f"{path} holds no decisions (only its header)")
    return decisions


# -- where a photo belongs ---------------------------------------------------------------------------------


def outing_of(rel: str) -> tuple[str, str | None]:
    """(outing, ISO date) of a photo that joins by decision: its nearest folder whose name starts with a
    date (``dives/2024-06-01/enc3/a.jpg`` -> ``2024-06-01``), else its own folder, undated."""
    folders = PurePosixPath(rel).parts[:-1]
    for name in reversed(folders):
        date = parse_folder_date(name)
        if date is not None:
            return name, iso_date(date)
    return (folders[-1] if folders else ""), None


def _decision_date(decision: Decision) -> str:
    if decision.time:
        stamp = dt.datetime.fromisoformat(decision.time)
        if stamp.tzinfo is not None:
            stamp = stamp.astimezone(dt.UTC)
        return stamp.strftime("%Y%m%d")
    return dt.datetime.now(dt.UTC).strftime("%Y%m%d")


@dataclass
class _Photo:
    """A photo a row adds (to embed) or moves."""

    decision: Decision
    path: str  # absolute
    rel: str
    identity: str
    sha256: str = ""
    old_identity: str | None = None


class _Planner:
    """Decides, row by row in file order, what each decision does to the catalogue (in the transaction)."""

    def __init__(self, store: CatalogueStore, source: Path) -> None:
        self.store, self.con, self.source = store, store.con, source
        root = store.root
        if root is None or not store.num_photos():
            raise UserError(f"catalogue {store.path} holds no photos yet (megastarid catalogue build)")
        self.root = root
        self.individuals = {row[0] for row in self.con.execute("SELECT name FROM individuals")}
        self.made_by_decision = {
            row[0]
            for row in self.con.execute("SELECT DISTINCT identity FROM decisions WHERE decision = 'new'")
        }
        self.planned_new: set[str] = set()
        self.unnamed: dict[str, str] = {}  # encounter (or photo) of an unnamed new individual -> its name
        self.seen: dict[str, tuple[Decision, str]] = {}  # photo -> (first row, identity)
        self.adds: list[_Photo] = []
        self.moves: list[_Photo] = []
        self.effects: list[tuple[Decision, str | None, str, str]] = []  # row, photo, identity, effect

    def fail(self, decision: Decision, message: str) -> UserError:
        return UserError(f"{self.source}:{decision.line}: {message}")

    def photo(self, decision: Decision) -> tuple[str, str]:
        """(absolute path, path relative to the root) of a row's photo, which must exist inside the root."""
        query = Path(decision.query).expanduser()
        path = os.path.abspath(query if query.is_absolute() else self.root / query)
        try:
            rel = relative_photo_path(path, self.root)
        except UserError:
            raise self.fail(decision, f"photo {path} is outside the catalogue root {self.root}") from None
        if not os.path.isfile(path):
            raise self.fail(decision, f"photo {path} does not exist (any more)")
        return path, rel

    def known(self, rel: str) -> tuple[str, str] | None:
        """(individual, origin) of a catalogue photo at ``rel``, or None."""
        row = self.con.execute(
            "SELECT i.name, p.origin FROM photos p JOIN individuals i ON i.id = p.individual_id "
            "WHERE p.path = ?",
            (rel,),
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def new_name(self, decision: Decision, rel: str) -> str:
        if decision.identity:
            name = decision.identity
            taken = name in self.individuals and name not in self.made_by_decision
            if taken and name not in self.planned_new:
                raise self.fail(
                    decision,
                    f"new individual {quoted(name)} is already a catalogue individual: confirm it instead, "
                    "or give the new one another name",
                )
            return name
        group = decision.encounter or decision.query
        if group in self.unnamed:
            return self.unnamed[group]
        known = self.known(rel)
        if known is not None and known[0] in self.made_by_decision:
            name = known[0]  # applied before: the same new individual
        else:
            prefix = f"{NEW_PREFIX}{_decision_date(decision)}-"
            pattern = re.compile(re.escape(prefix) + r"(\d+)$")
            names = self.individuals | self.made_by_decision | self.planned_new
            used = [int(m[1]) for m in map(pattern.match, names) if m]
            name = f"{prefix}{max(used, default=0) + 1}"
        self.unnamed[group] = name
        return name

    def plan(self, decision: Decision) -> None:
        if decision.decision == "unsure":
            try:
                query = Path(decision.query).expanduser()
                rel: str | None = relative_photo_path(
                    query if query.is_absolute() else self.root / query, self.root
                )
            except UserError:
                rel = None
            self.effects.append((decision, rel, decision.identity, "recorded"))
            return
        path, rel = self.photo(decision)
        if decision.decision == "confirm":
            name = decision.identity
            if name not in self.individuals and name not in self.planned_new:
                raise self.fail(
                    decision, f"individual {quoted(name)} is not in the catalogue {self.store.path}"
                )
        else:
            name = self.new_name(decision, rel)
        first = self.seen.get(rel)
        if first is not None:
            if (first[0].decision, first[1]) != (decision.decision, name):
                raise self.fail(
                    decision,
                    f"photo {path} was decided otherwise on line {first[0].line} ({first[0].decision})",
                )
            self.effects.append((decision, rel, name, "already"))
            return
        self.seen[rel] = (decision, name)
        if decision.decision == "new" and name not in self.individuals:
            self.planned_new.add(name)
        known = self.known(rel)
        if known is not None:
            owner, origin = known
            if owner == name:
                effect = "already"
            elif origin == DECISION_ORIGIN:
                self.moves.append(_Photo(decision, path, rel, name, old_identity=owner))
                effect = "moved"
            else:
                raise self.fail(
                    decision,
                    f"photo {rel} is a catalogue photo of {quoted(owner)} from the star tree: move it there "
                    "to relabel it",
                )
            self.effects.append((decision, rel, name, effect))
            return
        try:
            sha = file_sha256(path)
        except OSError as err:
            raise self.fail(decision, f"cannot read photo {path}: {err.strerror or err}") from None
        copies = self.store.photos_by_sha256([sha]).get(sha, [])
        if copies:  # the very bytes are a catalogue photo already (a copy): not a new sighting
            details = self.store.photo_details(copies)
            if all(d.identity == name for d in details.values()):
                self.effects.append((decision, rel, name, "already"))
                return
            other = next(d for d in details.values() if d.identity != name)
            raise self.fail(
                decision,
                f"photo {path} is the same file as catalogue photo {other.relative_path} of "
                f"{quoted(other.identity)}",
            )
        self.adds.append(_Photo(decision, path, rel, name, sha))
        self.effects.append((decision, rel, name, "added"))


def _labels(con: Any, identity: str) -> tuple[str, str]:
    """(dataset, species) most of an individual's photos have; ('', '') for a new one."""
    row = con.execute(
        "SELECT p.dataset, p.species FROM photos p JOIN individuals i ON i.id = p.individual_id "
        "WHERE i.name = ? GROUP BY p.dataset, p.species ORDER BY count(*) DESC, p.dataset LIMIT 1",
        (identity,),
    ).fetchone()
    return ("", "") if row is None else (row[0], row[1])


def _record(photo: _Photo, labels: tuple[str, str]) -> PhotoRecord:
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


def _embed(planner: _Planner, embedder: Callable[[], Embedder]) -> list[bytes]:
    """The embedding blob of each photo to add, made with the catalogue's model (created only when needed)."""
    adds = planner.adds
    if not adds:
        return []
    vectors = embedder().embed([photo.path for photo in adds])
    blobs = []
    for photo, vector in zip(adds, vectors, strict=True):
        if np.isnan(vector).any():
            raise planner.fail(photo.decision, f"cannot read photo {photo.path} (not a readable image)")
        blobs.append(np.ascontiguousarray(vector, dtype=np.float32).tobytes())
    return blobs


def apply_decisions(store: CatalogueStore, path: Path, embedder: Callable[[], Embedder]) -> ApplyReport:
    """Apply a decisions file to the catalogue in one transaction (module docstring); ``embedder`` makes the
    catalogue's model, called only when a photo must be embedded."""
    decisions = read_decisions(path)
    try:
        sha = file_sha256(path)
    except OSError as err:
        raise UserError(f"cannot read decisions file {path}: {err.strerror or err}") from None
    source = os.path.abspath(path)
    report = ApplyReport(str(path), rows=len(decisions))
    with store.transaction() as con:
        planner = _Planner(store, path)
        for decision in decisions:
            planner.plan(decision)
        blobs = _embed(planner, embedder)
        labels = {name: _labels(con, name) for name in {photo.identity for photo in planner.adds}}
        records = [_record(photo, labels[photo.identity]) for photo in planner.adds]
        store.add_photos(records, blobs)
        con.executemany(
            f"UPDATE photos SET origin = '{DECISION_ORIGIN}' WHERE path = ?", [(p.rel,) for p in planner.adds]
        )
        for photo in planner.moves:
            con.execute("INSERT OR IGNORE INTO individuals(name) VALUES(?)", (photo.identity,))
            con.execute(
                "UPDATE photos SET individual_id = (SELECT id FROM individuals WHERE name = ?) "
                "WHERE path = ?",
                (photo.identity, photo.rel),
            )
        touched = [p.identity for p in [*planner.adds, *planner.moves]] + [
            p.old_identity for p in planner.moves if p.old_identity
        ]
        store.refresh_individuals(touched)
        done = {row[0] for row in con.execute("SELECT line FROM decisions WHERE source_sha256 = ?", (sha,))}
        applied = now()
        for decision, rel, identity, effect in planner.effects:
            report.effects[effect] += 1
            if decision.decision == "confirm":
                report.confirmed += 1
            if decision.line in done:
                continue
            con.execute(
                "INSERT INTO decisions(applied, source, source_sha256, line, decided, decision, query, "
                "photo, encounter, identity, note, effect) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                ),
            )
            report.audited += 1
        report.created = sorted(
            {p.identity for p in [*planner.adds, *planner.moves] if p.identity in planner.planned_new}
        )
        if report.changed:
            store.set_meta(UPDATED, applied)
    return report


# -- the log -----------------------------------------------------------------------------------------------

LOG_COLUMNS = (
    "applied", "source", "line", "source_sha256", "decided", "decision", "query", "photo", "encounter",
    "identity", "note", "effect",
)  # fmt: skip


def decision_log(store: CatalogueStore) -> list[dict[str, Any]]:
    """Every applied decision, oldest first (the audit table's rows)."""
    rows = store.con.execute(f"SELECT {', '.join(LOG_COLUMNS)} FROM decisions ORDER BY id").fetchall()
    return [dict(zip(LOG_COLUMNS, row, strict=True)) for row in rows]


def log_lines(entries: Sequence[dict[str, Any]]) -> list[str]:
    """``catalogue log``'s table: time, source (file:line), decision, query, identity, effect."""
    header = ("time", "source", "decision", "query", "identity", "effect")
    table = [header] + [
        (
            e["applied"],
            f"{os.path.basename(e['source'])}:{e['line']}",
            e["decision"],
            e["photo"] or e["query"],
            e["identity"] or "-",
            e["effect"],
        )
        for e in entries
    ]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header) - 1)]
    return [
        "  ".join([*(f"{c!s:<{w}}" for c, w in zip(row[:-1], widths, strict=True)), row[-1]]) for row in table
    ]
