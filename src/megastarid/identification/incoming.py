"""Photos from elsewhere into a catalogue's root: ``catalogue apply`` places a photo the catalogue cannot
refer to where it is (outside the root, or a name that is not UTF-8: the catalogue stores text) as a copy,
byte for byte, under the root's hidden ``INCOMING`` folder, where new dives belong (a tree build does not
read it).

A copy keeps the photo's folders from the nearest one named by a date (its outing:
``/media/card/DCIM/2024-06-05/enc3/IMG_1.jpg`` -> ``.incoming/2024-06-05/enc3/IMG_1.jpg``), else its own
folder, and its name, bytes that are not UTF-8 as U+FFFD; a name that other bytes hold already gets the
photo's sha256 (16 hex digits) after its stem. The same bytes always find the same copy, so a file applied
again copies nothing.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath

from megastarid.core.files import atomic_write
from megastarid.data.dates import parse_folder_date
from megastarid.identification.paths import INCOMING
from megastarid.models.embedder import file_sha256


def _kept_parts(path: str) -> list[str]:
    """The folders (from the nearest dated one, else the last) and name a copy of ``path`` keeps, as UTF-8
    text (bytes that are not UTF-8 become U+FFFD)."""
    *folders, name = (os.fsencode(part).decode("utf-8", "replace") for part in Path(path).parts[1:])
    dated = [i for i, folder in enumerate(folders) if parse_folder_date(folder) is not None]
    start = dated[-1] if dated else max(len(folders) - 1, 0)
    return [*folders[start:], name]


class Incoming:
    """Where each photo from elsewhere goes under ``root``'s ``INCOMING`` folder, for one decisions file."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.planned: dict[str, str] = {}  # relative path -> sha256 of the photo planned there

    def _holder(self, rel: str) -> str | None:
        """The sha256 of the bytes at ``rel`` (planned or on disk), or None when it is free."""
        if rel in self.planned:
            return self.planned[rel]
        target = self.root.joinpath(*PurePosixPath(rel).parts)
        try:
            return file_sha256(target) if target.exists() else None
        except OSError:
            return ""  # there, unreadable: taken

    def place(self, path: str, sha256: str) -> str | None:
        """The relative path (``/``-separated) of the copy of ``path``, whose bytes have ``sha256``: where
        those bytes are already, else the first free name; None when none is free."""
        *folders, name = _kept_parts(path)
        stem, suffix = os.path.splitext(name)
        for candidate in (name, f"{stem}-{sha256[:16]}{suffix}"):
            rel = PurePosixPath(INCOMING, *folders, candidate).as_posix()
            if self._holder(rel) in (None, sha256):
                self.planned[rel] = sha256
                return rel
        return None


@contextlib.contextmanager
def copied_in(copies: Sequence[tuple[str, Path]]) -> Iterator[None]:
    """Copy each (source, target) not there yet (atomically, with its times) for the block, and remove
    those copies again if the block fails, so a refused apply leaves no copy behind."""
    made: list[Path] = []
    try:
        for source, target in copies:
            if target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(target, functools.partial(shutil.copy2, source))
            made.append(target)
        yield
    except BaseException:
        for target in made:
            target.unlink(missing_ok=True)
        raise
