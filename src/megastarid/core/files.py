"""Writing files atomically: readers (and a crash) never see half a file.

One mechanism for every output: a temp file ``.NAME.<random>.tmp`` in the target's folder is written,
flushed to disk (fsync) and renamed over the target (``os.replace``); on any failure, Ctrl-C included,
the temp file is removed and the old target is left as it was.

The temp file is created with mode ``0o666`` filtered by the process umask (not ``mkstemp``'s 0600), so
every output, checkpoints included, gets the mode any other new file of the program gets.

Text is UTF-8 with ``errors="surrogateescape"``: a Linux file name may hold bytes that are not UTF-8
(Python keeps them as lone surrogates), and such a name must still fit in a CSV or a list of paths.

``atomic_write_all`` writes a set of files (a report set) all or nothing: every temp file is filled
before the first rename (``bytes_writer`` and ``text_writer`` fill one from memory).
``remove_stale_temps`` clears the temp files a killed writer left behind.

Every CSV goes through ``csv_text``: people open our CSVs in spreadsheets, which run a cell that starts
with ``=``, ``+``, ``-``, ``@``, a tab or a CR as a formula (an individual named ``=cmd|' /C calc'!A0``).
Such a text cell is written with a leading ``'`` (the spreadsheets' own mark for text), numbers as they
are; ``plain_text`` undoes it exactly, for the readers of CSVs we wrote (an exported split, decisions.csv).
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from megastarid.core.errors import UserError

if TYPE_CHECKING:
    import pandas as pd

ENCODING = "utf-8"
ERRORS = "surrogateescape"
#: Longest prefix of the target's name kept in the temp file's name (file names are limited to 255 bytes).
_NAME_BYTES = 200


def _temp_stem(name: str) -> str:
    """The part of a temp file's name taken from its target's name."""
    return os.fsdecode(os.fsencode(name)[:_NAME_BYTES])


def _create_temp(path: Path) -> tuple[Path, int]:
    """A new empty file next to ``path``, opened for writing; mode 0o666 minus the umask."""
    stem = _temp_stem(path.name)
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


def atomic_write_all(writers: Mapping[Path, Callable[[Path], object]]) -> list[Path]:
    """Write several files all or nothing: each ``write(tmp)`` fills its temp file (as in ``atomic_write``)
    and only when every one is written and on disk are they renamed over their targets, in order.

    A failure while writing (an exception from any ``write``, a full disk) removes every temp file and
    leaves every target as it was; returns the targets.
    """
    temps: list[tuple[Path, Path]] = []
    try:
        for path, write in writers.items():
            tmp, fd = _create_temp(Path(path))
            temps.append((tmp, Path(path)))
            try:
                write(tmp)
                os.fsync(fd)
            finally:
                os.close(fd)
        for tmp, path in temps:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in temps:
            tmp.unlink(missing_ok=True)
        raise
    return [path for _, path in temps]


def bytes_writer(data: bytes) -> Callable[[Path], object]:
    """An ``atomic_write``/``atomic_write_all`` writer of ``data``."""
    return lambda tmp: tmp.write_bytes(data)


def text_writer(text: str) -> Callable[[Path], object]:
    """A writer of ``text`` in this module's encoding (non-UTF-8 file names survive)."""
    return bytes_writer(text.encode(ENCODING, ERRORS))


def remove_stale_temps(
    folder: str | os.PathLike[str], names: Iterable[str] = (), like: str | None = None
) -> list[Path]:
    """Remove the temp files (``.NAME.<8 hex>.tmp``) that writes of ``names`` (or of any name the regular
    expression ``like`` matches) killed mid-way left in ``folder``; nothing else is touched. Call it only
    while no writer of those names runs (under the folder's lock). Returns the removed files."""
    stems = "|".join([re.escape(_temp_stem(name)) for name in names] + ([like] if like else []))
    if not stems:
        return []
    pattern = re.compile(rf"\.(?:{stems})\.[0-9a-f]{{8}}\.tmp")
    removed = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if pattern.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                Path(entry.path).unlink(missing_ok=True)
                removed.append(Path(entry.path))
    return removed


def check_writable_folder(
    path: str | os.PathLike[str], option: str, given: str | os.PathLike[str] | None = None
) -> Path:
    """Create ``path`` (and its parents) and prove a file can be written there, before any work is done;
    else a one-line ``UserError`` naming ``option`` and the folder (and the file ``given`` to the option
    when ``path`` is the folder it goes into)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        tmp, fd = _create_temp(path / "write-test")
        os.close(fd)
        tmp.unlink()
    except OSError as err:
        where = f"{path}: cannot write there" if given is None else f"{given}: cannot write in {path}"
        raise UserError(f"{option} {where} ({err.strerror or err})") from None
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


_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r"}
_UNESCAPES = {"\\\\": "\\", "\\n": "\n", "\\r": "\r"}


def escape_line(text: str) -> str:
    """``text`` on one line: a backslash, newline or carriage return (all legal in a Linux file name)
    becomes ``\\\\``, ``\\n`` or ``\\r``, so a list of names stays one name a line."""
    return re.sub(r"[\\\n\r]", lambda m: _ESCAPES[m.group()], text)


def unescape_line(line: str) -> str:
    """The inverse of ``escape_line``."""
    return re.sub(r"\\[\\nr]", lambda m: _UNESCAPES[m.group()], line)


def append_lines(path: str | os.PathLike[str], lines: Iterable[str]) -> None:
    """Append each of ``lines`` as one escaped line (``escape_line``) to a log-like file."""
    append_text(path, "".join(escape_line(line) + "\n" for line in lines))


def read_lines(path: str | os.PathLike[str]) -> list[str]:
    """The lines ``append_lines`` wrote, unescaped; [] when the file does not exist."""
    try:
        text = read_text(path)
    except FileNotFoundError:
        return []
    return [unescape_line(line) for line in text.split("\n") if line]


#: a cell a spreadsheet evaluates: its first character after any quotes marks a formula
_FORMULA = re.compile(r"'*[=+\-@\t\r]")
#: a quoted cell that ``spreadsheet_text`` made
_QUOTED = re.compile(r"'+[=+\-@\t\r]")
#: a plain number (``-0.5``, ``+1e-3``): a spreadsheet reads it as that number, never as a formula
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def spreadsheet_text(text: str) -> str:
    """``text`` as a CSV cell no spreadsheet runs: one that starts like a formula (after any quotes, so that
    ``plain_text`` is the exact inverse) gets a leading ``'``; a plain number stays as it is."""
    return "'" + text if _FORMULA.match(text) and not _NUMBER.fullmatch(text) else text


def plain_text(cell: str) -> str:
    """The text behind a cell ``spreadsheet_text`` wrote (a cell a person typed, ``'abc``, stays)."""
    return cell[1:] if _QUOTED.match(cell) else cell


def _text_cell(value: object) -> object:
    return spreadsheet_text(os.fspath(value)) if isinstance(value, str | os.PathLike) else value


def csv_text(table: pd.DataFrame) -> str:
    """``table`` as CSV without its index, every text cell (and column name) through ``spreadsheet_text``;
    numeric columns are written as they are. Lines end in CRLF (RFC 4180), so a CR inside a cell is quoted
    like a newline (with LF endings Python's writer leaves it bare, and the row splits when read back)."""
    safe = table.copy()
    for position in range(safe.shape[1]):
        column = safe.iloc[:, position]
        if column.dtype.kind == "O":  # object, string and category columns hold the text
            safe.isetitem(position, column.map(_text_cell).to_numpy())
    safe.columns = [spreadsheet_text(name) if isinstance(name, str) else name for name in safe.columns]
    return safe.to_csv(index=False, lineterminator="\r\n")


def write_csv(path: str | os.PathLike[str], table: pd.DataFrame) -> Path:
    """``csv_text(table)`` written atomically."""
    return atomic_write_text(path, csv_text(table))


def display_text(text: str) -> str:
    """``text`` for a plot or a terminal: bytes that are not UTF-8 (lone surrogates) shown as U+FFFD."""
    return text.encode(ENCODING, ERRORS).decode(ENCODING, "replace")
