"""What can be wrong with a catalogue file (damaged, hand-edited, read-only, busy), said in one line naming
the file and what is wrong.

Values are checked where they are read, before anything is built on them: every meta value
(``meta_value``: JSON, the root an absolute path, the model record complete, ``model_record``), and every
embedding's size against the model's (``embedding_bytes``; a 100 MB blob is refused by its size, never
read). ``sqlite_problem`` turns SQLite's own errors about the file (damaged pages, read-only, busy, not a
database, unreadable, disk full) into such a line; ``CatalogueStore`` raises it for any of them met while
the file is open, so no command shows an SQLite traceback for them.
"""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import fields
from pathlib import Path
from typing import Any

from megastarid.core.errors import UserError, quoted
from megastarid.evaluation.embed import tta_mode
from megastarid.identification.store_schema import CALIBRATION, CREATED, MODEL, ROOT, UPDATED
from megastarid.models.embedder import ModelFingerprint

#: the most dimensions an embedding may have (a larger size in a model record is damage)
MAX_EMBEDDING_DIM = 16384
#: the model kinds a catalogue records (``models.embedder``)
MODEL_KINDS = ("checkpoint", "backbone")

#: what a user is told to do when a catalogue it wants to change is read-only
READ_ONLY_HINT = (
    "build, apply and calibrate change it (info, log, identify, captures and evaluate only read it): make "
    "the file and its folder writable, or work on a copy"
)


def error_code(err: sqlite3.Error) -> str:
    """SQLite's primary result code of ``err`` without its prefix: ``BUSY``, ``READONLY``, ``CANTOPEN``."""
    name = getattr(err, "sqlite_errorname", None) or ""
    return name.split("_")[1] if name.startswith("SQLITE_") else ""


def read_only(path: Path, why: object) -> UserError:
    return UserError(f"catalogue {path} is read-only here ({why}): {READ_ONLY_HINT}")


def damaged(path: Path, what: str) -> UserError:
    """A catalogue whose content is not what MegaStarID writes (damaged, or edited by hand)."""
    return UserError(
        f"catalogue {path} is damaged: {what}; restore it from a backup, or build it again (megastarid "
        "catalogue build --rebuild)"
    )


def meta_value(path: Path, key: str, text: object) -> Any:
    """The meta value ``key`` as stored (JSON text), checked to be what that key holds."""
    try:
        value = json.loads(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise damaged(path, f"its meta value {key!r} is not JSON") from None
    if key == ROOT and not (isinstance(value, str) and os.path.isabs(value)):
        raise damaged(path, f"its root is {quoted(value)}, not a folder's path")
    if key == MODEL:
        return model_record(path, value)
    if key == CALIBRATION and not isinstance(value, dict):
        raise damaged(path, f"its calibration is {quoted(value)}, not a calibration record")
    if key in (CREATED, UPDATED) and not isinstance(value, str):
        raise damaged(path, f"its {key} time is {quoted(value)}")
    return value


def model_record(path: Path, record: Any) -> dict[str, Any]:
    """A model record (``Embedder.record``: fingerprint and source) checked field by field, its ``tta`` as a
    mode name (catalogues built before the test-time augmentation modes stored a bool: true is ``flip``)."""
    if not (
        isinstance(record, dict)
        and isinstance(record.get("fingerprint"), dict)
        and isinstance(record.get("source"), dict)
    ):
        raise damaged(path, f"its model record is {quoted(record)}, not a fingerprint and a source")
    fingerprint, source = record["fingerprint"], record["source"]
    missing = [f.name for f in fields(ModelFingerprint) if f.name not in fingerprint]
    if missing:
        raise damaged(path, f"its model record has no {', '.join(missing)}")
    try:
        tta = tta_mode(fingerprint["tta"])
    except ValueError as err:
        raise damaged(path, f"its model's tta is {err}") from None
    valid = {
        "kind": fingerprint["kind"] in MODEL_KINDS,
        "sha256": isinstance(fingerprint["sha256"], str),
        "backbone": isinstance(fingerprint["backbone"], str),
        "image_size": _whole(fingerprint["image_size"], 1 << 16),
        "embedding_dim": _whole(fingerprint["embedding_dim"], MAX_EMBEDDING_DIM),
    }
    for name, fine in valid.items():
        if not fine:
            raise damaged(path, f"its model's {name} is {quoted(fingerprint[name])}")
    if fingerprint["kind"] == "checkpoint" and not isinstance(source.get("checkpoint"), str):
        raise damaged(path, "its model record has no checkpoint path")
    if fingerprint["kind"] == "backbone" and not isinstance(source.get("weights"), str | None):
        raise damaged(path, f"its model's backbone weights are {quoted(source['weights'])}")
    return {**record, "fingerprint": {**fingerprint, "tta": tta}}


def _whole(value: object, most: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= most


def embedding_bytes(path: Path, model: dict[str, Any] | None, stored: tuple[str, int] | None) -> int | None:
    """The size every embedding blob of the catalogue must have: its model's (a checked ``model_record``),
    else that of a ``stored`` one (photo path, size); None when it has neither. A stored embedding of another
    size than its model's is damage."""
    if model is None:
        if stored is not None and (stored[1] % 4 or not 0 < stored[1] <= 4 * MAX_EMBEDDING_DIM):
            raise damaged(
                path, f"the embedding of photo {stored[0]} is {stored[1]} bytes, not a float32 vector"
            )
        return None if stored is None else stored[1]
    width = 4 * int(model["fingerprint"]["embedding_dim"])
    if stored is not None and stored[1] != width:
        photo, size = stored
        raise damaged(
            path, f"the embedding of photo {photo} is {size} bytes, not {width} (its model's {width // 4}-d)"
        )
    return width


def sqlite_problem(path: Path, err: sqlite3.Error) -> UserError | None:
    """The one line for an SQLite error about the catalogue file itself; None for any other error (a bug,
    which keeps its traceback)."""
    code = error_code(err)
    if code == "CORRUPT":
        return UserError(
            f"catalogue {path} is damaged ({err}): restore it from a backup, or build a new one (megastarid "
            "catalogue build --catalogue NEW_FILE)"
        )
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
