"""Building and updating a catalogue from a star_dataset tree or CSV.

A build is incremental and resumable:

- a photo whose file size and modification time are what the catalogue recorded is taken as unchanged
  (as ``git`` and ``rsync`` do) and is not read again; only its labels (identity, outing, date ...) are
  brought up to date;
- any other photo is hashed (sha256): a file whose bytes the catalogue already holds, under this or
  another path (a move, a rename, a copy), gets the stored embedding; only new or changed files are
  embedded;
- photos are committed in batches of ``commit_every``, each batch one transaction (photos, embeddings and
  the individuals' counts together), so a killed build keeps every finished batch and a rerun carries on
  where it stopped; photos that vanished from the source are dropped at the end;
- photos that joined by a lineup decision (``catalogue apply``) keep their decision's individual and are
  kept while their files exist, whatever the source says of them (a ``rebuild`` forgets them: apply the
  decisions files again);
- a catalogue built with another model (its fingerprint: weights, backbone, image size, TTA, embedding
  size) is refused unless ``rebuild``, which empties it and embeds every photo again;
- a build records itself in the catalogue while it runs (``build_running``: its pid, host and start), so
  that ``identify`` meanwhile says to wait for it rather than to rebuild (``running_build``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from megastarid.core.errors import UserError, quoted
from megastarid.data.catalogue import examples
from megastarid.identification.names import name_fault, printable
from megastarid.identification.paths import relative_photo_path
from megastarid.identification.store import CatalogueStore, PhotoRecord, now
from megastarid.identification.store_schema import MODEL, ROOT, UPDATED
from megastarid.models.embedder import Embedder, ModelFingerprint, file_sha256

log = logging.getLogger(__name__)

#: photos per transaction of a build
COMMIT_EVERY = 256
#: meta key: the build writing the catalogue now (pid, host, started), null when none
BUILDING = "building"
_EXIF_ORIENTATION = 0x0112


@dataclass
class BuildReport:
    """What a build did."""

    photos: int = 0  # in the catalogue afterwards
    individuals: int = 0
    embedded: int = 0
    reused: int = 0  # embedding taken from a stored photo with the same bytes
    relabelled: int = 0  # same file, new identity / outing / date / dataset / species (or touched)
    unchanged: int = 0
    removed: int = 0
    unreadable: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.embedded or self.reused or self.relabelled or self.removed)

    def line(self) -> str:
        return (
            f"{self.individuals} individuals, {self.photos} photos ({self.embedded} embedded, {self.reused} "
            f"re-used, {self.relabelled} relabelled, {self.unchanged} unchanged, {self.removed} removed, "
            f"{len(self.unreadable)} unreadable)"
        )


@contextlib.contextmanager
def build_running(store: CatalogueStore) -> Iterator[None]:
    """Record in the catalogue that this process builds it, until the build (calibration included) ends."""
    with store.transaction():
        store.set_meta(BUILDING, {"pid": os.getpid(), "host": socket.gethostname(), "started": now()})
    try:
        yield
    finally:
        with store.transaction():
            store.set_meta(BUILDING, None)


def running_build(store: CatalogueStore) -> dict | None:
    """The record of a build that has not finished: its process is alive here, or it ran on another host
    (whose processes cannot be seen); None when no build is recorded or its process is gone (killed)."""
    record = store.meta(BUILDING)
    if not isinstance(record, dict):
        return None
    pid = record.get("pid")
    if record.get("host") != socket.gethostname():
        return record
    if not isinstance(pid, int) or pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return None
    except PermissionError:  # alive, another user's
        return record
    return record


def iso_date(value: object) -> str | None:
    """A catalogue date: ``YYYY-MM-DD`` (with the time only when it is not midnight); None when unknown."""
    if value is None or pd.isna(value):  # type: ignore[call-overload]
        return None
    stamp = pd.Timestamp(value)  # type: ignore[arg-type]
    return stamp.date().isoformat() if stamp == stamp.normalize() else stamp.isoformat()


def image_dims(path: str | os.PathLike[str]) -> tuple[int | None, int | None]:
    """(width, height) as the photo is seen upright (EXIF rotation applied); (None, None) if unreadable."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # any decoder error: the embedding step reports the photo as unreadable
        return None, None
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def build_catalogue(
    store: CatalogueStore,
    table: pd.DataFrame,
    root: Path,
    embedder: Embedder,
    rebuild: bool = False,
    commit_every: int = COMMIT_EVERY,
    progress: bool = True,
) -> BuildReport:
    """Make ``store`` hold exactly the photos of ``table`` (a star catalogue read from under ``root``)
    with ``embedder``'s embeddings; see the module docstring."""
    root = Path(os.path.abspath(root))
    source = _wanted(table, root)  # every name checked before anything is written
    _claim(store, root, embedder.fingerprint, embedder.record(), rebuild)
    # photos that joined by a lineup decision (catalogue apply) belong to their decisions: a build neither
    # relabels them (a dive folder under the root reads as a bogus tree individual) nor drops them while
    # their files exist
    joined = store.decision_photo_paths()
    wanted = {rel: item for rel, item in source.items() if rel not in joined}
    existing = store.photo_records()
    report = BuildReport()
    pending: list[tuple[str, PhotoRecord]] = []
    relabel: list[PhotoRecord] = []
    for rel, (path, record) in wanted.items():
        old = existing.get(rel)
        if old is not None and (old[1].size, old[1].mtime_ns) == (record.size, record.mtime_ns):
            known = replace(record, sha256=old[1].sha256, width=old[1].width, height=old[1].height)
            if known.same_labels(old[1]):
                report.unchanged += 1
            else:
                relabel.append(known)
        else:
            pending.append((path, record))
    if relabel:
        with store.transaction():
            store.relabel_photos(relabel)
            store.refresh_individuals()
        report.relabelled += len(relabel)
    bar = tqdm(total=len(pending), desc="cataloguing", unit="photo", disable=None if progress else True)
    with bar:
        for start in range(0, len(pending), commit_every):
            batch = pending[start : start + commit_every]
            _add_batch(store, batch, {rel: old for rel, (_, old) in existing.items()}, embedder, report)
            bar.update(len(batch))
    kept = {rel for rel in joined if root.joinpath(*rel.split("/")).is_file()}
    vanished = [rel for rel in existing if rel not in wanted and rel not in kept]
    with store.transaction():
        store.remove_photos(vanished)
        store.refresh_individuals()
        store.set_meta(UPDATED, now())
    report.removed = len(vanished)
    report.photos = store.num_photos()
    report.individuals = int(store.con.execute("SELECT count(*) FROM individuals").fetchone()[0])
    if report.unreadable:
        log.warning(
            "%d photo(s) could not be read and are not in the catalogue: %s",
            len(report.unreadable),
            examples(report.unreadable, 5),
        )
    return report


def _claim(
    store: CatalogueStore, root: Path, fingerprint: ModelFingerprint, record: dict, rebuild: bool
) -> None:
    """Check (or, new or ``rebuild``, set) the catalogue's model; record the root. One transaction, before
    any photo, so a killed first build resumes with the same model."""
    with store.transaction():
        stored = None if rebuild else store.meta(MODEL)  # a rebuild mends a damaged record
        if stored is not None:
            old = ModelFingerprint.from_dict(stored["fingerprint"])
            if old != fingerprint:
                differences = "; ".join(old.differences(fingerprint))
                raise UserError(
                    f"catalogue {store.path} was built with another model ({differences}, catalogue vs now): "
                    "pass --rebuild to embed every photo again with this one, or use another --catalogue file"
                )
        if rebuild and store.num_photos():
            log.info("--rebuild: emptying catalogue %s to embed every photo again", store.path)
            store.clear()
        old_root = None if rebuild else store.meta(ROOT)
        if old_root is not None and old_root != str(root):
            log.info("catalogue root moves from %s to %s", old_root, root)
        store.set_meta(MODEL, record)
        store.set_meta(ROOT, str(root))


def _wanted(table: pd.DataFrame, root: Path) -> dict[str, tuple[str, PhotoRecord]]:
    """Each photo of the source table by relative path: (absolute path, record without hash or size); a
    name that breaks the name rule (``names``) is one line naming its photo."""
    wanted: dict[str, tuple[str, PhotoRecord]] = {}
    for row in table.itertuples(index=False):
        path = str(row.path)
        rel = relative_photo_path(path, root)
        try:
            rel.encode("utf-8")
            stat = os.stat(path)
        except UnicodeEncodeError:
            log.warning("skipped %s: its name is not valid UTF-8", path)
            continue
        except OSError as err:
            log.warning("skipped %s: %s", path, err.strerror or err)
            continue
        identity = str(row.identity)
        fault = name_fault(identity)
        if fault is not None:
            raise UserError(
                f"photo {printable(path)}: its individual name {quoted(identity)} {fault}: rename it in the "
                "star tree (or the star CSV)"
            )
        wanted[rel] = (
            path,
            PhotoRecord(
                path=rel,
                identity=identity,
                outing=str(row.folder),
                date=iso_date(row.date),
                dataset=str(row.dataset),
                species=str(row.species),
                sha256="",
                width=None,
                height=None,
                size=int(stat.st_size),
                mtime_ns=int(stat.st_mtime_ns),
            ),
        )
    return wanted


def _add_batch(
    store: CatalogueStore,
    batch: Sequence[tuple[str, PhotoRecord]],
    existing: dict[str, PhotoRecord],
    embedder: Embedder,
    report: BuildReport,
) -> None:
    """Hash, embed (or re-use) and commit one batch of new or changed photos."""
    fresh: list[tuple[str, PhotoRecord]] = []
    relabel: list[PhotoRecord] = []
    replaced: list[str] = []
    for path, record in batch:
        try:
            sha = file_sha256(path)
        except OSError:
            report.unreadable.append(path)
            continue
        width, height = image_dims(path)
        record = replace(record, sha256=sha, width=width, height=height)
        old = existing.get(record.path)
        if old is not None and old.sha256 == sha:
            relabel.append(record)  # same bytes, touched or copied over: keep the embedding
            continue
        if old is not None:
            replaced.append(record.path)
        fresh.append((path, record))
    stored = store.vectors_by_sha256(record.sha256 for _, record in fresh)
    to_embed = [(path, record) for path, record in fresh if record.sha256 not in stored]
    vectors = embedder.embed([path for path, _ in to_embed])
    computed = {record.path: vector for (_, record), vector in zip(to_embed, vectors, strict=True)}
    records: list[PhotoRecord] = []
    blobs: list[bytes] = []
    for path, record in fresh:
        if record.sha256 in stored:
            records.append(record)
            blobs.append(stored[record.sha256])
            report.reused += 1
            continue
        vector = computed[record.path]
        if np.isnan(vector).any():
            report.unreadable.append(path)
            continue
        records.append(record)
        blobs.append(np.ascontiguousarray(vector, dtype=np.float32).tobytes())
        report.embedded += 1
    with store.transaction():
        store.remove_photos(replaced)
        store.relabel_photos(relabel)
        store.add_photos(records, blobs)
        touched = [record.identity for record in [*records, *relabel]]
        touched += [existing[record.path].identity for record in relabel]
        touched += [existing[path].identity for path in replaced]
        store.refresh_individuals(touched)
        store.set_meta(UPDATED, now())
    report.relabelled += len(relabel)
