"""Photo paths as a catalogue stores them: relative to its root, ``/``-separated, never outside the root; the
hidden folder under the root where photos from elsewhere are copied in (``INCOMING``); and how the lineup's
decisions.csv names a photo (``path_ref``, read back by ``ref_path``).

Linux file names are bytes, and Python holds those that are not UTF-8 with ``surrogateescape``: such a name
cannot be written as text (a browser writes U+FFFD instead), so decisions.csv names it by its ``file:`` URI,
the exact bytes percent-encoded; every other path, as it is."""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path, PurePosixPath

from megastarid.core.errors import UserError

#: the folder under a catalogue's root for new dives (hidden: a tree build does not read it); ``catalogue
#: apply`` copies the photos it places from outside the root there
INCOMING = ".incoming"
_FILE_URI = "file:///"


def relative_photo_path(path: str | os.PathLike[str], root: Path) -> str:
    """``path`` relative to ``root`` as stored (``a/b/c.jpg``); outside the root: a one-line error."""
    rel = os.path.relpath(os.path.abspath(path), root)
    parts = PurePosixPath(Path(rel).as_posix())
    if Path(rel).is_absolute() or ".." in parts.parts:
        raise UserError(f"photo {path} is outside the catalogue root {root}")
    return parts.as_posix()


def resolve_photo_path(rel: str, root: Path, catalogue: Path) -> Path:
    """The file behind a stored relative path; a stored path that escapes the root (a damaged or edited
    catalogue) is a one-line error, never followed."""
    if escapes_root(rel):
        raise UserError(f"catalogue {catalogue}: photo path {rel!r} escapes its root {root}")
    return root.joinpath(*PurePosixPath(rel).parts)


def escapes_root(rel: str) -> bool:
    """A stored path that would lead outside the root (absolute, ``..``) or is empty."""
    return (
        not rel
        or rel.startswith("/")
        or rel == ".."
        or rel.startswith("../")
        or rel.endswith("/..")
        or "/../" in rel
    )


def storable(text: str) -> bool:
    """Whether ``text`` (a path) can be written as UTF-8 text: no bytes held by ``surrogateescape``."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def path_ref(path: str) -> str:
    """How decisions.csv names an absolute path: as it is, or, when it is not UTF-8, its ``file:`` URI."""
    return path if storable(path) else Path(path).as_uri()


def ref_path(ref: str) -> str:
    """The path a decisions.csv cell names: a ``file:///`` URI decoded to the very bytes, else ``ref``."""
    if not ref.startswith(_FILE_URI):
        return ref
    return os.fsdecode(urllib.parse.unquote_to_bytes(ref[len(_FILE_URI) - 1 :]))
