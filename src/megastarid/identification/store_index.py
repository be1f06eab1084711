"""Reading a catalogue into a ``CatalogueIndex`` for search: every photo's embedding and individual, from one
consistent snapshot, one query read straight into one numpy array; 140,000 photos open in well under 2 s
(see bench/identify_speed.py). A stored photo path that would lead outside the root, photos and embeddings
that do not pair up, a photo of an individual the catalogue does not hold, an embedding of another size
than its model's and one holding a NaN or infinity (it would rank first with no score) are refused with one
line naming the photo; sizes are checked by SQLite before a blob is read, so a huge one is never loaded.
"""

from __future__ import annotations

import numpy as np

from megastarid.core.errors import UserError
from megastarid.evaluation.individuals import IdentityCodes
from megastarid.identification.index import CatalogueIndex, IndividualInfo
from megastarid.identification.store import CatalogueStore
from megastarid.identification.store_checks import damaged
from megastarid.identification.store_schema import MODEL

#: the first stored photo path that would lead outside the root (the same test as ``paths.escapes_root``)
ESCAPING_PATH = (
    "SELECT path FROM photos WHERE path = '' OR path LIKE '/%' OR path = '..' OR path LIKE '../%' "
    "OR path LIKE '%/..' OR path LIKE '%/../%' LIMIT 1"
)
UNPAIRED = "photos and embeddings do not pair up"


def load_index(store: CatalogueStore) -> CatalogueIndex:
    """Every photo's embedding and individual, from one consistent snapshot, for search."""
    root = store.root
    with store.snapshot() as con:
        people = con.execute(
            "SELECT id, name, first_seen, last_seen, num_photos FROM individuals ORDER BY name"
        ).fetchall()
        owners = np.array(con.execute("SELECT id, individual_id FROM photos ORDER BY id").fetchall())
        if root is None or not len(owners):
            raise UserError(
                f"catalogue {store.path} holds no photos yet (build it with megastarid catalogue build)"
            )
        escaping = con.execute(ESCAPING_PATH).fetchone()
        if escaping is not None:
            raise UserError(f"catalogue {store.path}: photo path {escaping[0]!r} escapes its root {root}")
        model = store.meta(MODEL)
        width = store.embedding_bytes()
        if width is None:  # photos, yet no embedding and no model
            raise damaged(store.path, UNPAIRED)
        embeddings, vector_ids = _read_vectors(store, len(owners), width)
        ids = np.array([row[0] for row in people], dtype=np.int64)  # sorted by name: codes follow names
        _check_rows(store, owners, ids, vector_ids, embeddings)
    order = np.argsort(ids)
    codes = order[np.searchsorted(ids[order], owners[:, 1])]
    individuals = {name: IndividualInfo(name, first, last, count) for _, name, first, last, count in people}
    return CatalogueIndex(
        catalogue=store.path,
        root=root,
        embeddings=embeddings,
        photo_ids=owners[:, 0].astype(np.int64),
        codes=IdentityCodes([row[1] for row in people], codes.astype(np.int64)),
        individuals=individuals,
        model=model or {},
    )


def _read_vectors(store: CatalogueStore, count: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``count`` embeddings (``width`` bytes each) in photo order, copied blob by blob straight into one
    float32 matrix (no list of 140,000 blobs, no second copy), with their photo ids. SQLite hands over only
    blobs of that size (it knows a blob's size without reading it): any other is refused unread."""
    unpaired = damaged(store.path, UNPAIRED)
    cursor = store.con.execute(
        "SELECT photo_id, CASE WHEN typeof(vector) = 'blob' AND length(vector) = ? THEN vector END "
        "FROM embeddings ORDER BY photo_id",
        (width,),
    )
    embeddings = np.empty((count, width // 4), dtype=np.float32)
    flat = embeddings.data.cast("B")
    ids = np.empty(count, dtype=np.int64)
    i = -1
    for i, (photo_id, blob) in enumerate(cursor):
        if i >= count:
            raise unpaired
        if blob is None:
            raise _wrong_size(store, photo_id, width)
        ids[i] = photo_id
        flat[i * width : (i + 1) * width] = blob
    if i + 1 != count:
        raise unpaired
    return embeddings, ids


def _check_rows(
    store: CatalogueStore, owners: np.ndarray, ids: np.ndarray, vector_ids: np.ndarray, embeddings: np.ndarray
) -> None:
    """Every photo has one embedding and an individual the catalogue holds, and no embedding holds a NaN or
    an infinity (it would rank first with no score)."""
    if not np.array_equal(vector_ids, owners[:, 0]):
        raise damaged(store.path, UNPAIRED)
    known = np.isin(owners[:, 1], ids)
    if not known.all():
        photo, individual = owners[np.argmin(known)]
        where = _photo_path(store, photo)
        raise damaged(store.path, f"photo {where} belongs to individual {individual}, which it does not hold")
    finite = np.isfinite(embeddings.sum(axis=1))  # a NaN or infinity anywhere in a row (30 ms for 140,000)
    if not finite.all():
        where = _photo_path(store, owners[np.argmin(finite), 0])
        raise damaged(store.path, f"the embedding of photo {where} is not finite")


def _photo_path(store: CatalogueStore, photo_id: int) -> str:
    return str(store.con.execute("SELECT path FROM photos WHERE id = ?", (int(photo_id),)).fetchone()[0])


def _wrong_size(store: CatalogueStore, photo_id: int, width: int) -> UserError:
    """What is wrong with the embedding of ``photo_id`` that is not a ``width``-byte blob."""
    path, kind, size = store.con.execute(
        "SELECT p.path, typeof(e.vector), length(e.vector) FROM embeddings e LEFT JOIN photos p "
        "ON p.id = e.photo_id WHERE e.photo_id = ?",
        (photo_id,),
    ).fetchone()
    if path is None:
        return damaged(store.path, UNPAIRED)
    what = f"{size} bytes, not {width}" if kind == "blob" else f"{kind}, not {width} bytes"
    return damaged(store.path, f"the embedding of photo {path} is {what}")
