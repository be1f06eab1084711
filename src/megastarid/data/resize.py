"""A one-off pre-resized copy of an image tree, so training decodes 620 px photos
instead of 4000 px ones every epoch.

Every photo is written to the same relative path under ``--dst`` in the same format (JPEG stays JPEG) with
its *shorter* side scaled down to ``--size`` (aspect ratio kept, never upscaled): the same rule as
``load_rgb(min_side=...)``, so random crops see the same field of view as from the original. Resized photos
are stored upright (EXIF orientation applied); photos already small enough are copied byte for byte. Other
files (``metadata.csv`` …) are copied too, so ``--dst`` can replace ``--src`` as a data root. Files already
done are skipped, which makes an interrupted run resumable; unreadable photos are reported, not copied.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from megastarid.core.errors import UserError
from megastarid.core.files import atomic_write, atomic_write_text
from megastarid.data.images import BadImageError, is_image_file, load_rgb
from megastarid.data.readers import list_files, require_dir

#: Written into ``--dst`` so a later run with another ``--size`` cannot silently mix two sizes.
MARKER = ".megastarid-prepare.json"
JPEG_QUALITY = 95


@dataclass
class PrepareReport:
    """What one ``prepare_tree`` call did, file by file kind."""

    counts: Counter[str] = field(default_factory=Counter)  # resized / copied / skipped / other
    unreadable: dict[str, str] = field(default_factory=dict)  # source path -> reason


def prepare_tree(
    src: Path, dst: Path, size: int, quality: int = JPEG_QUALITY, workers: int = 4
) -> PrepareReport:
    """Write the pre-resized copy of ``src`` into ``dst`` (see the module docstring) and report on it."""
    src = require_dir(src, "--src")
    dst = Path(os.path.abspath(dst))
    if size < 16:
        raise UserError(f"--size must be at least 16 pixels (got {size})")
    if not 1 <= quality <= 100:
        raise UserError(f"--quality must be between 1 and 100 (got {quality})")
    if dst == src or src in dst.parents:
        raise UserError(f"--dst {dst} must not be --src or inside it")
    _claim(dst, size)
    files = list_files(src)

    def one(path: Path) -> tuple[str, str | None]:
        return _prepare_file(path, dst / path.relative_to(src), size, quality)

    report = PrepareReport()
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(one, files)
        for path, (outcome, reason) in zip(
            files, tqdm(results, total=len(files), desc="preparing", unit="file", disable=None), strict=True
        ):
            report.counts[outcome] += 1
            if reason is not None:
                report.unreadable[str(path)] = reason
    return report


def _claim(dst: Path, size: int) -> None:
    """Refuse a ``dst`` prepared at another size; mark it with this one."""
    marker = dst / MARKER
    if marker.is_file():
        previous = json.loads(marker.read_text()).get("size")
        if previous != size:
            raise UserError(f"--dst {dst} holds photos prepared with --size {previous}; use another --dst")
    try:
        dst.mkdir(parents=True, exist_ok=True)
        atomic_write_text(marker, json.dumps({"size": size}) + "\n")
    except OSError as err:
        raise UserError(f"cannot write to --dst {dst}: {err.strerror}") from err


def _prepare_file(path: Path, out: Path, size: int, quality: int) -> tuple[str, str | None]:
    """Handle one file; returns (outcome, reason when unreadable)."""
    if out.is_file() and out.stat().st_mtime >= path.stat().st_mtime:
        return "skipped", None
    if not is_image_file(path):
        _atomic(out, lambda tmp: shutil.copyfile(path, tmp))
        return "other", None
    try:
        image = load_rgb(path, size)
    except BadImageError as err:
        return "unreadable", str(err).removeprefix(f"cannot read image {path}: ")
    if not _is_larger(path, size):
        _atomic(out, lambda tmp: shutil.copyfile(path, tmp))
        return "copied", None
    scale = size / min(image.size)
    if scale < 1:
        image = image.resize(
            (round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS
        )
    is_jpeg = path.suffix.lower() in {".jpg", ".jpeg"}
    options = {"format": "JPEG", "quality": quality} if is_jpeg else {"format": "PNG"}
    _atomic(out, lambda tmp: image.save(tmp, **options))
    return "resized", None


def _is_larger(path: Path, size: int) -> bool:
    """True when the stored photo's shorter side exceeds ``size`` (header only, no decode)."""
    with Image.open(path) as image:
        return min(image.size) > size


def _atomic(out: Path, write: Callable[[Path], object]) -> None:
    """Write atomically, so a half-written file never looks done; a write error names the file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        atomic_write(out, write)
    except OSError as err:
        raise UserError(f"cannot write {out}: {err.strerror or err}") from err
