"""Writing files atomically: readers (and a crash) never see half a file.

One mechanism for every output: a temp file ``.NAME.<random>.tmp`` in the target's folder is written,
flushed to disk (fsync) and renamed over the target (``os.replace``); on any failure, Ctrl-C included,
the temp file is removed and the old target is left as it was.

The temp file is created with mode ``0o666`` filtered by the process umask (not ``mkstemp``'s 0600), so
every output, checkpoints included, gets the mode any other new file of the program gets.

Text is UTF-8 with ``errors="surrogateescape"``: a Linux file name may hold bytes that are not UTF-8
(Python keeps them as lone surrogates), and such a name must still fit in a CSV or a list of paths.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

ENCODING = "utf-8"
ERRORS = "surrogateescape"
#: Longest prefix of the target's name kept in the temp file's name (file names are limited to 255 bytes).
_NAME_BYTES = 200


def _create_temp(path: Path) -> tuple[Path, int]:
    """A new empty file next to ``path``, opened for writing; mode 0o666 minus the umask."""
    stem = os.fsdecode(os.fsencode(path.name)[:_NAME_BYTES])
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = path.with_name(f".{stem}.{secrets.token_hex(4)}.tmp")
        try:
            return tmp, os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary file name next to {path}")


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Let ``write(tmp)`` fill a temp file (any writer that takes a path: ``torch.save``, ``savefig``,
    ``shutil.copyfile`` ...), then fsync it and rename it to ``path``; returns ``path``.

    Whatever ``write`` raises (an ``OSError``, a ``KeyboardInterrupt``) propagates after the temp file is
    removed; ``path`` is then untouched.
    """
    path = Path(path)
    tmp, fd = _create_temp(path)
    try:
        try:
            write(tmp)
            os.fsync(fd)  # the data, whichever descriptor ``write`` used, is on disk before the rename
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Replace ``path`` with ``text`` (UTF-8, surrogate-escaped bytes written back as they were)."""

    def write(tmp: Path) -> None:
        with tmp.open("w", encoding=ENCODING, errors=ERRORS) as handle:
            handle.write(text)

    return atomic_write(path, write)


def write_json(path: str | os.PathLike[str], data: Any, default: Callable[[Any], Any] | None = None) -> Path:
    """``data`` as indented JSON plus a newline, atomically; ``default`` as in ``json.dumps``."""
    return atomic_write_text(path, json.dumps(data, indent=2, default=default) + "\n")


def append_text(path: str | os.PathLike[str], text: str) -> None:
    """Append ``text`` to a log-like file (not atomic: each call adds whole lines), same encoding."""
    with Path(path).open("a", encoding=ENCODING, errors=ERRORS) as handle:
        handle.write(text)


def read_text(path: str | os.PathLike[str]) -> str:
    """Read a file written by this module, surrogate-escaped bytes included."""
    return Path(path).read_text(encoding=ENCODING, errors=ERRORS)
