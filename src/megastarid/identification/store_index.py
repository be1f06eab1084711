"""Reading a catalogue into a ``CatalogueIndex`` for search: every photo's embedding and individual, from one
consistent snapshot, one query read straight into one numpy array; 140,000 photos open in well under 2 s
(see bench/identify_speed.py). A stored photo path that would lead outside the root, and photos and
embeddings that do not pair up, are refused with one line.
"""

from __future__ import annotations

import itertools

import numpy as np

from megastarid.core.errors import UserError
from megastarid.evaluation.individuals import IdentityCodes
from megastarid.identification.index import CatalogueIndex, IndividualInfo
from megastarid.identification.store import CatalogueStore
from megastarid.identification.store_schema import MODEL

#: the first stored photo path that would lead outside the root (the same test as ``paths.escapes_root``)
ESCAPING_PATH = (
    "SELECT path FROM photos WHERE path = '' OR path LIKE '/%' OR path = '..' OR path LIKE '../%' "
    "OR path LIKE '%/..' OR path LIKE '%/../%' LIMIT 1"
)


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
        embeddings, vector_ids = _read_vectors(store, len(owners))
        model = store.meta(MODEL) or {}
    if not np.array_equal(vector_ids, owners[:, 0]):
        raise UserError(f"catalogue {store.path} is damaged: photos and embeddings do not pair up")
    ids = np.array([row[0] for row in people], dtype=np.int64)  # sorted by name: codes follow names
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
        model=model,
    )


def _read_vectors(store: CatalogueStore, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``count`` embeddings in photo order, copied blob by blob straight into one float32 matrix (no
    list of 140,000 blobs, no second copy), with their photo ids."""
    damaged = UserError(f"catalogue {store.path} is damaged: photos and embeddings do not pair up")
    cursor = store.con.execute("SELECT photo_id, vector FROM embeddings ORDER BY photo_id")
    first = cursor.fetchone()
    if first is None:
        raise damaged
    width = len(first[1])
    embeddings = np.empty((count, width // 4), dtype=np.float32)
    flat = embeddings.data.cast("B")
    ids = np.empty(count, dtype=np.int64)
    for i, (photo_id, blob) in enumerate(itertools.chain([first], cursor)):
        if i >= count:
            raise damaged
        if len(blob) != width:
            raise UserError(f"catalogue {store.path} is damaged: its embeddings differ in size")
        ids[i] = photo_id
        flat[i * width : (i + 1) * width] = blob
    if i + 1 != count:
        raise damaged
    return embeddings, ids
