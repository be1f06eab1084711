"""What each row of a decisions file does to the catalogue, decided row by row in file order before anything
is written (``decisions_apply`` writes it):

- ``confirm``: the photo joins the named catalogue individual;
- ``new``: the encounter's photos become a new individual, named as given, else ``NEW-<YYYYMMDD>-<n>`` (the
  decision's date, the next free ``n``); a name that already belongs to an individual of the star tree is
  refused (confirm it instead), while one made by an earlier ``new`` decision is joined;
- ``unsure``: recorded, nothing else.

Every row, whatever its decision, names a .jpg/.jpeg/.png photo that exists, and one photo gets one decision
in a file (a photo named by path, relative to the root or absolute, or by ``file:`` URI). A photo the
catalogue cannot refer to where it is (outside the root, or a name that is not UTF-8) is placed as a copy
under the root's ``.incoming`` folder (``incoming``). A photo that joined by an earlier decision moves when a
later decision names another individual; a photo the star tree put in the catalogue is never relabelled here
(move it in the tree). A photo whose very bytes are already a catalogue photo, or placed by an earlier row, is
not added again; the same bytes never go to two individuals.

An older decision never overrides a newer one: a ``confirm`` or ``new`` row whose photo the log holds a later
decision for (by the decisions' own times, a row without one taking the time it was first applied; at equal
times the later applied wins) changes nothing (``superseded``). So a file applied again changes nothing, and
after a ``--rebuild`` it brings back only the photos it still has the last word on.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from megastarid.core.errors import UserError, quoted
from megastarid.data.images import is_image_file
from megastarid.identification.decisions_file import Decision, instant
from megastarid.identification.incoming import Incoming
from megastarid.identification.paths import INCOMING, ref_path, relative_photo_path, storable
from megastarid.identification.store import CatalogueStore
from megastarid.models.embedder import file_sha256

#: what applying a row did
EFFECTS = ("added", "moved", "already", "recorded", "superseded")
NEW_PREFIX = "NEW-"
DECISION_ORIGIN = "decision"


#: a decision's place in time: (when it was made, its row in the log; ``math.inf`` while not logged)
Order = tuple[dt.datetime, float]


def _logged_order(decided: str | None, applied: str, row: int) -> Order:
    """A logged decision's ``Order``: its own time, else (none, or unreadable) when it was applied."""
    try:
        return instant(decided or applied), row
    except ValueError:
        return instant(applied), row


def latest_decisions(con: sqlite3.Connection) -> dict[str, tuple[Order, str, int]]:
    """Per photo, the latest logged decision that placed it (``confirm`` or ``new``, not ``superseded``): its
    order, file sha256 and line."""
    latest: dict[str, tuple[Order, str, int]] = {}
    rows = con.execute(
        "SELECT id, photo, source_sha256, line, decided, applied FROM decisions WHERE photo IS NOT NULL "
        "AND decision != 'unsure' AND effect != 'superseded'"
    )
    for row, photo, sha, line, decided, applied in rows:
        order = _logged_order(decided, applied, row)
        if photo not in latest or order > latest[photo][0]:
            latest[photo] = (order, sha, line)
    return latest


@dataclass
class PlannedPhoto:
    """A photo a row adds (to embed) or moves."""

    decision: Decision
    path: str  # absolute, inside the root: where the catalogue has it
    rel: str
    identity: str
    sha256: str = ""
    old_identity: str | None = None
    source: str = ""  # absolute: the file as the row names it (``path``, or what is copied there)


class Planner:
    """Decides, row by row in file order, what each decision does to the catalogue (in the transaction)."""

    def __init__(self, store: CatalogueStore, source: Path, sha256: str) -> None:
        self.store, self.con, self.source, self.sha256 = store, store.con, source, sha256
        root = store.root
        if root is None or not store.num_photos():
            raise UserError(f"catalogue {store.path} holds no photos yet (megastarid catalogue build)")
        self.root = root
        self.individuals = {row[0] for row in self.con.execute("SELECT name FROM individuals")}
        self.made_by_decision = {
            row[0]
            for row in self.con.execute("SELECT DISTINCT identity FROM decisions WHERE decision = 'new'")
        }
        self.latest = latest_decisions(self.con)
        self.logged = {  # this file's rows already in the log (applied before): line -> order
            line: _logged_order(decided, applied, row)
            for row, line, decided, applied in self.con.execute(
                "SELECT id, line, decided, applied FROM decisions WHERE source_sha256 = ?", (sha256,)
            )
        }
        self.now = dt.datetime.now(dt.UTC)
        self.planned_new: set[str] = set()
        self.incoming = Incoming(root)
        self.unnamed: dict[str, str] = {}  # encounter (or photo) of an unnamed new individual -> its name
        self.seen: dict[str, tuple[Decision, str]] = {}  # photo (absolute) -> (first row, identity)
        self.placed: dict[str, tuple[Decision, str, str]] = {}  # sha256 -> (first row, photo, identity)
        self.adds: list[PlannedPhoto] = []
        self.moves: list[PlannedPhoto] = []
        self.effects: list[tuple[Decision, str | None, str, str]] = []  # row, photo, identity, effect

    def fail(self, decision: Decision, message: str) -> UserError:
        return UserError(f"{self.source}:{decision.line}: {message}")

    def photo(self, decision: Decision) -> tuple[str, str | None]:
        """(absolute path, path relative to the root) of a row's photo, whatever its decision: a photo that
        exists; None for the relative path when the catalogue cannot refer to it where it is (outside the
        root, or a name that is not UTF-8)."""
        query = Path(ref_path(decision.query)).expanduser()
        path = os.path.abspath(query if query.is_absolute() else self.root / query)
        if not is_image_file(path):
            raise self.fail(decision, f"photo {path} is not a .jpg/.jpeg/.png photo")
        if not os.path.isfile(path):
            raise self.fail(decision, f"photo {path} does not exist (any more)")
        try:
            rel = relative_photo_path(path, self.root)
        except UserError:
            return path, None
        return path, (rel if storable(rel) else None)

    def hash(self, decision: Decision, path: str) -> str:
        """The photo's sha256; a photo that cannot be read is one line naming the row."""
        try:
            return file_sha256(path)
        except OSError as err:
            raise self.fail(decision, f"cannot read photo {path}: {err.strerror or err}") from None

    def copy_place(self, decision: Decision, path: str, sha: str) -> str:
        """Where in the root the copy of a photo from elsewhere goes (``incoming``)."""
        rel = self.incoming.place(path, sha)
        if rel is None:
            raise self.fail(decision, f"photo {path}: no free name for its copy under {self.root / INCOMING}")
        return rel

    def order(self, decision: Decision) -> Order:
        """The row's place in time: as logged when applied before, else its own time (or now) after all."""
        logged = self.logged.get(decision.line)
        if logged is not None:
            return logged
        return (instant(decision.time) if decision.time else self.now), math.inf

    def superseded(self, decision: Decision, rel: str) -> bool:
        """Whether the log holds a later decision for the photo at ``rel`` than this row."""
        latest = self.latest.get(rel)
        if latest is None or (latest[1], latest[2]) == (self.sha256, decision.line):
            return False
        return latest[0] > self.order(decision)

    def date(self, decision: Decision) -> str:
        """``YYYYMMDD`` of the decision's time (UTC), else today's."""
        return (instant(decision.time) if decision.time else self.now).strftime("%Y%m%d")

    def known(self, rel: str) -> tuple[str, str, str] | None:
        """(individual, origin, sha256) of a catalogue photo at ``rel``, or None."""
        row = self.con.execute(
            "SELECT i.name, p.origin, p.sha256 FROM photos p JOIN individuals i ON i.id = p.individual_id "
            "WHERE p.path = ?",
            (rel,),
        ).fetchone()
        return None if row is None else (row[0], row[1], row[2])

    def same_bytes(self, decision: Decision, path: str, sha: str, name: str) -> bool:
        """Whether an earlier row of the file places these very bytes, with the same individual; bytes that
        an earlier row gives another individual are refused, naming both lines."""
        first = self.placed.setdefault(sha, (decision, path, name))
        if first[0] is decision:
            return False
        if first[2] != name:
            raise self.fail(
                decision,
                f"photo {path} holds the same bytes as {first[1]} on line {first[0].line}, which goes to "
                f"{quoted(first[2])}: one photo, one individual",
            )
        return True

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
            prefix = f"{NEW_PREFIX}{self.date(decision)}-"
            pattern = re.compile(re.escape(prefix) + r"(\d+)$")
            names = self.individuals | self.made_by_decision | self.planned_new
            used = [int(m[1]) for m in map(pattern.match, names) if m]
            name = f"{prefix}{max(used, default=0) + 1}"
        self.unnamed[group] = name
        return name

    def plan(self, decision: Decision) -> None:
        path, rel = self.photo(decision)
        sha = ""
        if rel is None and decision.decision != "unsure":  # placed as a copy (``incoming``)
            sha = self.hash(decision, path)
            rel = self.copy_place(decision, path, sha)
        if decision.decision == "confirm":
            name = decision.identity
            if name not in self.individuals and name not in self.planned_new:
                near = name.strip() if name.strip() in self.individuals else None
                hint = f" (did you mean {quoted(near)}?)" if near else ""
                raise self.fail(
                    decision, f"individual {quoted(name)} is not in the catalogue {self.store.path}{hint}"
                )
        elif decision.decision == "new":
            assert rel is not None
            name = self.new_name(decision, rel)
        else:
            name = decision.identity
        first = self.seen.get(path)
        if first is not None:
            if (first[0].decision, first[1]) != (decision.decision, name):
                raise self.fail(
                    decision,
                    f"photo {path} was decided otherwise on line {first[0].line} ({first[0].decision})",
                )
            self.effects.append((decision, rel, name, "already"))
            return
        self.seen[path] = (decision, name)
        if rel is None or decision.decision == "unsure":
            self.effects.append((decision, rel, name, "recorded"))
            return
        if self.superseded(decision, rel):
            self.effects.append((decision, rel, name, "superseded"))
            return
        if decision.decision == "new" and name not in self.individuals:
            self.planned_new.add(name)
        known = self.known(rel)
        if known is not None:
            owner, origin, stored = known
            self.same_bytes(decision, path, stored, name)  # another copy of it may go nowhere else
            if owner == name:
                effect = "already"
            elif origin == DECISION_ORIGIN:
                self.moves.append(PlannedPhoto(decision, path, rel, name, old_identity=owner, source=path))
                effect = "moved"
            else:
                raise self.fail(
                    decision,
                    f"photo {rel} is a catalogue photo of {quoted(owner)} from the star tree: move it there "
                    "to relabel it",
                )
            self.effects.append((decision, rel, name, effect))
            return
        sha = sha or self.hash(decision, path)
        if self.same_bytes(decision, path, sha, name):  # a copy of a photo this file places already
            self.effects.append((decision, rel, name, "already"))
            return
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
        inside = str(self.root.joinpath(*PurePosixPath(rel).parts))
        self.adds.append(PlannedPhoto(decision, inside, rel, name, sha, source=path))
        self.effects.append((decision, rel, name, "added"))
