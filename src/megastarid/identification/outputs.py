"""identify's output folder (``--out``): claimed before any work, written as one set, never read as photos.

- **Claimed** (``claimed_output_folder``, before the catalogue or the model is touched): a ``--out`` that is
  a file, lies under one, cannot be written, or holds the photos to identify is one line naming it. The
  folder is marked as identify's (``OUTPUT_MARKER``, one line of text) and that file is locked (``flock``)
  while the run lasts, so a second identify into the same folder is refused instead of mixing two sets.
- **One set** (``write_outputs``): the thumbnails come first, under new names beside the old ones (the old
  page still shows its own); then ``matches.json``, ``matches.csv`` and ``lineup.html`` are renamed into
  place together once all three are written (``atomic_write_all``); last, thumbnails the new page does not
  show go. A run killed anywhere leaves the old set or the new one, not a mix; the temp files a killed run
  leaves are removed by the next run into the folder. Other files there (a ``decisions.csv`` saved beside
  the page) stay.
- **Never read as photos**: ``data.readers.walk`` skips every folder holding the marker, so
  ``identify DIVE --out DIVE/matches`` twice does not take the thumbnails for an encounter.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from megastarid.core.errors import UserError
from megastarid.core.files import atomic_write_all, check_writable_folder, remove_stale_temps, text_writer
from megastarid.core.runfiles import LINEUP_HTML, MATCHES_CSV, MATCHES_JSON, OUTPUT_MARKER
from megastarid.identification.lineup import THUMB_SIZE, lineup_page, remove_unused_thumbnails
from megastarid.identification.matches import matches_texts

#: identify's files in its folder, renamed into place together
OUTPUT_SET = (MATCHES_JSON, MATCHES_CSV, LINEUP_HTML)
MARKER_TEXT = "megastarid identify writes this folder; no megastarid command reads photos from it.\n"


def _refuse_inputs(out: Path, inputs: Sequence[Path]) -> None:
    """``--out`` may lie inside a folder to identify (it is skipped), never be one or hold one."""
    real = Path(os.path.realpath(out))
    for item in inputs:
        path = Path(os.path.realpath(Path(item).expanduser()))
        if path == real or real in path.parents:
            raise UserError(
                f"--out {out} holds photos to identify ({item}): give identify a folder of its own, e.g. "
                f"{out / 'matches'}"
            )


@contextlib.contextmanager
def claimed_output_folder(out: Path, inputs: Sequence[Path]) -> Iterator[Path]:
    """``out`` checked, created, marked and locked for this run (module docstring), with the temp files of
    killed runs removed; the lock is let go on leaving. A run that fails before writing anything into a
    folder it created leaves no folder behind."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    _refuse_inputs(out, inputs)
    created = not out.exists()
    check_writable_folder(out, "--out")
    marker = out / OUTPUT_MARKER
    try:
        fd = os.open(marker, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError as err:
        raise UserError(f"--out {out}: cannot write {marker} ({err.strerror or err})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(
                f"--out {out}: another identify is writing there; wait for it, or give another folder"
            ) from None
        if not os.fstat(fd).st_size:
            os.write(fd, MARKER_TEXT.encode())
        remove_stale_temps(out, OUTPUT_SET)
        yield out
    except BaseException:
        if created and os.listdir(out) == [OUTPUT_MARKER]:
            marker.unlink()
            out.rmdir()
        raise
    finally:
        os.close(fd)


def write_outputs(document: dict[str, Any], out: Path, thumb_size: int = THUMB_SIZE) -> dict[str, Path]:
    """Write identify's set into the claimed folder ``out`` (module docstring); file name -> its path."""
    page, shown = lineup_page(document, out, thumb_size)
    texts = {**matches_texts(document), LINEUP_HTML: page}
    paths = atomic_write_all({out / name: text_writer(texts[name]) for name in OUTPUT_SET})
    remove_unused_thumbnails(out, shown)
    return dict(zip(OUTPUT_SET, paths, strict=True))
