"""Query/gallery embeddings with their identities, paths and folders, and their ``.npz`` file format.

The gallery is the whole train side, validation included; ``gallery_splits`` says which gallery rows are
validation ("val"), so the validation figures (val rows against the "train" rows) can be recomputed from
the file too. ``protocol`` is the split protocol the sides come from (temporal, time-cut, identity-holdout).

The file lets anyone recompute every reported number without the model, so loading it checks
everything a hand-edited or truncated file can get wrong and says what, in one line.
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from megastarid.core.errors import UserError
from megastarid.core.files import atomic_write
from megastarid.data.splits import PROTOCOLS

_SIDES = ("query", "gallery")
_LABELS = ("identities", "paths", "folders")


@dataclass(frozen=True)
class EmbeddingSet:
    """Row i of each ``query_*`` array describes query image i; likewise for the gallery."""

    query_embeddings: np.ndarray
    gallery_embeddings: np.ndarray
    query_identities: np.ndarray
    gallery_identities: np.ndarray
    query_paths: np.ndarray
    gallery_paths: np.ndarray
    query_folders: np.ndarray
    gallery_folders: np.ndarray
    gallery_splits: np.ndarray | None = None  # "train" / "val" per gallery row; None: all "train"
    protocol: str = "temporal"

    def __post_init__(self) -> None:
        if self.gallery_splits is None:
            object.__setattr__(self, "gallery_splits", np.full(len(self.gallery_identities), "train"))

    @property
    def is_val(self) -> np.ndarray:
        """Gallery rows on the validation side."""
        assert self.gallery_splits is not None
        return self.gallery_splits == "val"

    @classmethod
    def from_arrays(cls, **arrays: object) -> EmbeddingSet:
        """Coerce to float32 embeddings and unicode string labels (never object arrays)."""
        protocol = str(arrays.get("protocol", "temporal"))
        splits = arrays.get("gallery_splits")
        gallery_splits = None if splits is None else np.asarray(splits).astype(str)

        def coerce(name: str) -> np.ndarray:
            value = np.asarray(arrays[name])
            if name.endswith("_embeddings"):
                return value.astype(np.float32, copy=False)
            return value.astype(str) if value.size else np.zeros(0, dtype="<U1")

        return cls(
            query_embeddings=coerce("query_embeddings"),
            gallery_embeddings=coerce("gallery_embeddings"),
            query_identities=coerce("query_identities"),
            gallery_identities=coerce("gallery_identities"),
            query_paths=coerce("query_paths"),
            gallery_paths=coerce("gallery_paths"),
            query_folders=coerce("query_folders"),
            gallery_folders=coerce("gallery_folders"),
            gallery_splits=gallery_splits,
            protocol=protocol,
        )


#: The arrays every ``star_embeddings.npz`` has, in file order; ``OPTIONAL_ARRAYS`` were added later.
OPTIONAL_ARRAYS = ("gallery_splits", "protocol")
NPZ_ARRAYS: tuple[str, ...] = tuple(f.name for f in fields(EmbeddingSet) if f.name not in OPTIONAL_ARRAYS)


def save_embeddings(path: Path, embeddings: EmbeddingSet) -> Path:
    """Write the arrays atomically (temp file + rename) as an uncompressed ``.npz``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with tmp.open("wb") as handle:  # a file, not a name: np.savez would append ".npz" to the name
            arrays = {name: getattr(embeddings, name) for name in (*NPZ_ARRAYS, *OPTIONAL_ARRAYS)}
            np.savez(handle, **arrays)

    return atomic_write(path, write)


def load_embeddings(path: Path) -> EmbeddingSet:
    """Read and check a file written by :func:`save_embeddings`; any problem is a one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: embeddings file not found")
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path}: not an .npz embeddings file (expected a zip archive of named arrays)")
    try:
        _check_members(path)
        loaded = np.load(path, allow_pickle=False)
        with loaded:
            missing = [name for name in NPZ_ARRAYS if name not in loaded.files]
            if missing:
                raise UserError(f"{path}: missing array(s) {', '.join(missing)}")
            arrays = {name: loaded[name] for name in NPZ_ARRAYS}
            arrays.update({name: loaded[name] for name in OPTIONAL_ARRAYS if name in loaded.files})
    except MemoryError:
        raise UserError(f"{path}: its arrays do not fit in memory") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"{path}: not a readable .npz embeddings file ({reason})") from err
    _validate(path, arrays)
    return EmbeddingSet.from_arrays(**arrays)


#: Most bytes deflate can expand one byte into (about 1032): a bigger claimed ratio is a lie.
_MAX_DEFLATE_RATIO = 1100


def _check_members(path: Path) -> None:
    """Read the header of every array the loader would read, before any is loaded: a member that is not
    a ``.npy`` array (a raw pickle), holds Python objects, or claims more data than the file can hold
    (a header saying 256 GiB) is a one-line ``UserError``, never an allocation or an unpickling."""

    def refuse(why: str) -> UserError:
        return UserError(f"{path}: not a readable .npz embeddings file ({why})")

    names = [field.name for field in fields(EmbeddingSet)]
    wanted = {*names, *(f"{name}.npy" for name in names)}  # np.load reads a member by either name
    archive_size = path.stat().st_size
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if info.filename not in wanted:
                continue
            name = info.filename.removesuffix(".npy")
            stored = info.compress_type == zipfile.ZIP_STORED
            if (stored and info.file_size > archive_size) or (
                not stored and info.file_size > _MAX_DEFLATE_RATIO * max(info.compress_size, 1)
            ):
                raise refuse(f"{name} claims {info.file_size} bytes, more than the file can hold")
            with archive.open(info) as member:
                try:
                    version = np.lib.format.read_magic(member)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(member)
                    elif version == (2, 0):
                        shape, _, dtype = np.lib.format.read_array_header_2_0(member)
                    else:
                        raise ValueError(f"unsupported .npy version {version}")
                    header = member.tell()
                except ValueError as err:
                    raise refuse(f"{name} is not a plain .npy array: {err}; not loaded") from None
            if dtype.hasobject:
                raise refuse(f"{name} holds Python objects (a pickle), not loaded for safety")
            needed = math.prod(shape) * dtype.itemsize
            if needed > info.file_size - header:
                raise refuse(
                    f"{name} claims shape {shape} of {dtype}, {needed} bytes, but holds only "
                    f"{info.file_size - header}"
                )


def _validate(path: Path, arrays: dict[str, np.ndarray]) -> None:
    dims = {}
    for side in _SIDES:
        name = f"{side}_embeddings"
        emb = arrays[name]
        if emb.ndim != 2 or emb.shape[1] == 0:
            raise UserError(f"{path}: {name} must be 2-D (images, dimension), got shape {emb.shape}")
        if emb.dtype.kind not in "fiu":
            raise UserError(f"{path}: {name} must be numeric, got dtype {emb.dtype}")
        bad = int((~np.isfinite(emb)).any(axis=1).sum())
        if bad:
            raise UserError(f"{path}: {name} has {bad} row(s) with NaN or infinite values")
        zero = int((np.abs(emb).sum(axis=1) == 0).sum())
        if zero:
            raise UserError(f"{path}: {name} has {zero} all-zero row(s); cosine similarity is undefined")
        dims[side] = emb.shape[1]
        for label in _LABELS:
            other = f"{side}_{label}"
            if arrays[other].ndim != 1 or arrays[other].shape[0] != emb.shape[0]:
                raise UserError(
                    f"{path}: {other} has shape {arrays[other].shape} but {name} has {emb.shape[0]} rows"
                )
    if dims["query"] != dims["gallery"]:
        raise UserError(
            f"{path}: query_embeddings have dimension {dims['query']}, gallery_embeddings {dims['gallery']}"
        )
    for side in _SIDES:
        if arrays[f"{side}_embeddings"].shape[0] == 0:
            raise UserError(f"{path}: {side}_embeddings is empty; nothing to evaluate")
    splits = arrays.get("gallery_splits")
    if splits is not None and (
        splits.shape != (arrays["gallery_embeddings"].shape[0],)
        or not np.isin(splits.astype(str), ["train", "val"]).all()
    ):
        raise UserError(f"{path}: gallery_splits must hold train or val for every gallery row")
    protocol = arrays.get("protocol")
    if protocol is not None and (protocol.shape != () or str(protocol) not in PROTOCOLS):
        raise UserError(f"{path}: protocol must be one of {', '.join(PROTOCOLS)}")
