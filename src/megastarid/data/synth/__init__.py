"""Built-in synthetic data: procedural sea stars and a WildlifeReID-10k look-alike, written to disk.

The tool runs and is tested without any download: ``generate_stars`` writes the exact star_dataset tree,
``generate_wildlife`` a ``metadata.csv`` + ``images/`` folder, and ``ensure_synthetic`` keeps one default
copy of each in the user cache. Every output is written to a temporary sibling folder and renamed into
place, so a crash or a parallel run never leaves a half-written set behind.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from megastarid.core.errors import UserError
from megastarid.data.synth.stars import write_stars
from megastarid.data.synth.wildlife import write_wildlife

log = logging.getLogger(__name__)

Kind = Literal["stars", "wildlife"]

DEFAULT_STAR_IDENTITIES = 30
DEFAULT_STAR_IMAGE_SIZE = 160
DEFAULT_WILDLIFE_IDENTITIES = 80
DEFAULT_WILDLIFE_IMAGE_SIZE = 128
MIN_IMAGE_SIZE = 32

__all__ = ["cache_dir", "ensure_synthetic", "generate_stars", "generate_wildlife", "generator_version"]


def generator_version() -> str:
    """A digest of the generator's own source: any change to how images are drawn gives a new cache key."""
    digest = hashlib.sha256()
    for source in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(source.name.encode())
        digest.update(source.read_bytes())
    return digest.hexdigest()[:12]


def cache_dir() -> Path:
    """``$MEGASTARID_CACHE`` when set, else ``~/.cache/megastarid``."""
    configured = os.environ.get("MEGASTARID_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "megastarid"


def _build_beside(target: Path, write: Callable[[Path], int]) -> tuple[Path, int]:
    """Run ``write`` into a fresh temporary sibling of ``target``; the caller renames it into place."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    except OSError as err:
        raise UserError(f"cannot write into {target.parent}: {err.strerror}") from err
    try:
        return staging, write(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@dataclass(frozen=True)
class _Generator:
    write: Callable[[Path, int, int, int], int]  # (root, identities, seed, image_size) -> images written
    identities: int
    image_size: int


GENERATORS: dict[str, _Generator] = {
    "stars": _Generator(write_stars, DEFAULT_STAR_IDENTITIES, DEFAULT_STAR_IMAGE_SIZE),
    "wildlife": _Generator(write_wildlife, DEFAULT_WILDLIFE_IDENTITIES, DEFAULT_WILDLIFE_IMAGE_SIZE),
}


def _generate(kind: str, out: Path, identities: int, seed: int, image_size: int, overwrite: bool) -> Path:
    out = Path(out)
    if identities < 1:
        raise UserError(f"--identities must be at least 1, got {identities}")
    if image_size < MIN_IMAGE_SIZE:
        raise UserError(f"--image-size must be at least {MIN_IMAGE_SIZE} px, got {image_size}")
    if out.exists() and not out.is_dir():
        raise UserError(f"output folder {out} is a file")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"output folder {out} is not empty; pass --overwrite to replace it")
    staging, count = _build_beside(
        out, lambda root: GENERATORS[kind].write(root, identities, seed, image_size)
    )
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    log.debug("wrote %d synthetic %s photos of %d identities to %s", count, kind, identities, out)
    return out


def generate_stars(
    out: Path,
    identities: int = DEFAULT_STAR_IDENTITIES,
    seed: int = 0,
    image_size: int = DEFAULT_STAR_IMAGE_SIZE,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic star tree ``out/<DATASET>/<individual>/<outing>/*.jpg``; returns ``out``."""
    return _generate("stars", out, identities, seed, image_size, overwrite)


def generate_wildlife(
    out: Path,
    identities: int = DEFAULT_WILDLIFE_IDENTITIES,
    seed: int = 0,
    image_size: int = DEFAULT_WILDLIFE_IMAGE_SIZE,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic WildlifeReID-10k folder (``metadata.csv`` + ``images/``); returns ``out``."""
    return _generate("wildlife", out, identities, seed, image_size, overwrite)


def ensure_synthetic(kind: Kind, seed: int = 0) -> Path:
    """The default synthetic set of ``kind``, generated into the cache on first use and reused afterwards.

    The folder name carries the generator version, so a changed generator regenerates instead of serving
    stale images. Parallel first calls are safe: each builds privately and the first rename wins.
    """
    if kind not in GENERATORS:
        raise UserError(f"unknown synthetic kind {kind!r}; choose one of {', '.join(GENERATORS)}")
    root = cache_dir() / "synthetic" / f"{kind}-seed{seed}-{generator_version()}"
    if root.is_dir():
        return root
    started = time.perf_counter()
    defaults = GENERATORS[kind]
    staging, count = _build_beside(
        root, lambda out: defaults.write(out, defaults.identities, seed, defaults.image_size)
    )
    try:
        staging.rename(root)
    except OSError:
        if not root.is_dir():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    elapsed = time.perf_counter() - started
    log.info(
        "generated the synthetic %s set (%d images, seed %d) in %.0f s at %s",
        kind,
        count,
        seed,
        elapsed,
        root,
    )
    return root
